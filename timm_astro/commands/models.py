"""The model table (name, parameters, GMACs at the default input, default input size), computed from the code.

``timm-astro models`` prints it as markdown; the README's table is this command's output. Models are built on the
meta device, so even the 595M-parameter model costs no memory, and MACs are counted with torch's FlopCounterMode
(attention counted as the two matmuls it performs, at the head width the kernel really sees).
"""
import argparse
from typing import Dict, List, Optional

import timm
import torch
from torch.utils.flop_counter import FlopCounterMode

from timm_astro.commands import positive_int, run_command


def model_row(name: str, num_classes: int = 1000) -> Dict[str, object]:
    """Parameters and GMACs of one registered model at its default input size."""
    model = timm.create_model(name, num_classes=num_classes, device='meta').eval()
    input_size = model.pretrained_cfg['input_size']
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, *input_size, device='meta'))
    return dict(
        model=name,
        params=sum(p.numel() for p in model.parameters()),
        gmacs=counter.get_total_flops() / 2e9,
        input_size='x'.join(str(s) for s in input_size),
    )


def markdown_table(rows: List[Dict[str, object]]) -> str:
    lines = ['| model | params | GMACs | default input |', '|---|---:|---:|---|']
    lines += [f"| {r['model']} | {r['params']:,} | {r['gmacs']:.2f} | {r['input_size']} |" for r in rows]
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='timm-astro models', description=__doc__.splitlines()[0])
    parser.add_argument('pattern', nargs='?', default='astroformer*', help='timm model name filter')
    parser.add_argument('--num-classes', type=positive_int, default=1000, help='classifier width the counts are for')
    args = parser.parse_args(argv)
    names = timm.list_models(args.pattern)
    if not names:
        parser.error(f'no registered model matches {args.pattern!r}')
    rows = lambda: [model_row(name, args.num_classes) for name in names]  # noqa: E731
    return run_command(parser.prog, lambda: print(markdown_table(rows())))
