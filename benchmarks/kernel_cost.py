"""What each form of the relative-position kernel W costs in a training step, side by side in one process, and which
SDPA kernel each form runs (profiler).

    python benchmarks/kernel_cost.py                                   # astroformer_small, batch 64, 32x32, fp32
    python benchmarks/kernel_cost.py --model astroformer_base --repeats 3 --variants none fourier4 table-sdpa
    python benchmarks/kernel_cost.py --profile                         # kernels only (batch 2), no timing

Variants take turns, repeat by repeat (interleaved), so a change in the machine's load hits all of them alike; each
reports the median and range of its step times, the peak resident memory above the resident memory before the
step, and both as ratios to 'none' (no W: the maskless fused kernel). The kernel column is the SDPA kernel the
profiler saw in a training step (at batch 2): 'flash' or 'math' (the N x N fallback).
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchutils import (  # noqa: E402
    MemoryProbe, command_line, fmt_num, machine_info, markdown_table, write_text_atomic,
)

VARIANTS: Dict[str, Dict[str, Any]] = {
    'none': dict(rel_pos_type='none'),
    'fourier4': dict(rel_pos_type='fourier', rel_pos_freqs=4),
    'fourier16': dict(rel_pos_type='fourier', rel_pos_freqs=16),
    'table-sdpa': dict(rel_pos_type='table', attn_impl='sdpa'),
    'table-explicit': dict(rel_pos_type='table', attn_impl='explicit'),
}
KERNELS = {
    'aten::_scaled_dot_product_flash_attention_for_cpu': 'flash',
    'aten::_scaled_dot_product_attention_math': 'math',
    'aten::_scaled_dot_product_efficient_attention': 'efficient',
    'aten::_scaled_dot_product_flash_attention': 'flash',
    'aten::_scaled_dot_product_cudnn_attention': 'cudnn',
}


def build(model_name: str, variant: str, device: str) -> torch.nn.Module:
    import timm
    import timm_astro  # noqa: F401
    torch.manual_seed(0)
    return timm.create_model(model_name, num_classes=10, **VARIANTS[variant]).to(device)


def kernels_used(model: torch.nn.Module, x: torch.Tensor, train: bool) -> str:
    """The SDPA kernels (or 'explicit softmax') the profiler sees in one forward (+ backward when training)."""
    model.train(train)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        if train:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    names = {e.name for e in prof.events()}
    found = sorted({label for op, label in KERNELS.items() if op in names})
    if not found and 'aten::_softmax' in names:
        found = ['explicit softmax']
    return '+'.join(found) or '?'


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    opt.step()


def measure(args: argparse.Namespace) -> Dict[str, Any]:
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, args.img_size, args.img_size)
    y = torch.randint(0, 10, (args.batch_size,))
    models = {v: build(args.model, v, 'cpu').train() for v in args.variants}
    opts = {v: torch.optim.SGD(m.parameters(), lr=1e-3) for v, m in models.items()}
    small = torch.randn(2, 3, args.img_size, args.img_size)
    kernel = {v: kernels_used(m, small, train=True) for v, m in models.items()}
    times: Dict[str, List[float]] = {v: [] for v in args.variants}
    memory: Dict[str, List[float]] = {v: [] for v in args.variants}
    for v in args.variants:  # warm-up, in the same order as the timed rounds
        for _ in range(args.warmup):
            train_step(models[v].train(), opts[v], x, y)
    probe = MemoryProbe(torch.device('cpu'))
    for _ in range(args.repeats):
        for v in args.variants:
            probe.start()
            start = time.perf_counter()
            for _ in range(args.steps):
                train_step(models[v], opts[v], x, y)
            times[v].append((time.perf_counter() - start) / args.steps)
            if probe.method != 'none':
                memory[v].append(probe.stop()[0])
    rows = {}
    for v in args.variants:
        rows[v] = dict(kwargs=VARIANTS[v], kernel=kernel[v], step_s=times[v], median_s=statistics.median(times[v]),
                       min_s=min(times[v]), max_s=max(times[v]),
                       peak_mb=statistics.median(memory[v]) if memory[v] else None)
    base = rows.get('none')
    for row in rows.values():
        row['x_none'] = row['median_s'] / base['median_s'] if base else None
        row['mem_x_none'] = row['peak_mb'] / base['peak_mb'] if base and base['peak_mb'] and row['peak_mb'] else None
    return rows


def profile_kernels(args: argparse.Namespace) -> Dict[str, Dict[str, str]]:
    x = torch.randn(2, 3, args.img_size, args.img_size)
    out = {}
    for v in args.variants:
        model = build(args.model, v, 'cpu')
        out[v] = {'inference': kernels_used(model, x, train=False), 'training': kernels_used(model, x, train=True)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', default='astroformer_small')
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--img-size', type=int, default=32)
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--repeats', type=int, default=5, help='timed rounds over all variants')
    parser.add_argument('--steps', type=int, default=1, help='training steps per timed repeat')
    parser.add_argument('--warmup', type=int, default=1, help='untimed steps per variant first')
    parser.add_argument('--threads', type=int, default=None, help='torch threads (default: torch decides)')
    parser.add_argument('--profile', action='store_true', help='only report the SDPA kernels, inference and training')
    parser.add_argument('--json', type=Path, default=None, help='also write the results here')
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    result: Dict[str, Any] = {'command': command_line(), 'machine': machine_info('cpu'), 'model': args.model,
                              'batch_size': args.batch_size, 'img_size': args.img_size}
    if args.profile:
        result['kernels'] = profile_kernels(args)
        print(markdown_table(['W form', 'inference', 'training'],
                             [[v, k['inference'], k['training']] for v, k in result['kernels'].items()]))
    else:
        result['rows'] = measure(args)
        print(f'{args.model}, training step, batch {args.batch_size}, {args.img_size}x{args.img_size}, fp32, '
              f'{args.repeats} interleaved repeats (median, min-max):\n')
        print(markdown_table(
            ['W form', 'SDPA kernel', 'step s', 'x none', 'peak MB above idle', 'x none'],
            [[v, r['kernel'], f"{fmt_num(r['median_s'])} ({fmt_num(r['min_s'])}-{fmt_num(r['max_s'])})",
              fmt_num(r['x_none']), fmt_num(r['peak_mb']), fmt_num(r['mem_x_none'])]
             for v, r in result['rows'].items()]))
    if args.json:
        write_text_atomic(args.json, json.dumps(result, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
