"""``timm-astro export CHECKPOINT OUT_DIR``: a train.py checkpoint (or a state dict) as a Hub-ready folder."""
import argparse
import json
from typing import List, Optional

from timm_astro.commands import run_command

PROG = 'timm-astro export'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Turn a train.py checkpoint (or a state dict) into a Hub-ready folder: config.json, '
                    'model.safetensors and a README.md model card.')
    parser.add_argument('checkpoint', help='model_best.pth.tar / last.pth.tar from train.py, or a state dict')
    parser.add_argument('out_dir', help='folder to write (must not exist unless --overwrite)')
    parser.add_argument('--model', default=None, help="architecture, if the checkpoint's arch/args lack it")
    parser.add_argument('--no-ema', action='store_true', help='export the raw weights even if EMA weights exist')
    parser.add_argument('--summary', default=None, help="train.py's summary.csv (default: next to the checkpoint)")
    parser.add_argument('--args', dest='args_yaml', default=None, help="train.py's args.yaml (default: next to it)")
    parser.add_argument('--overwrite', action='store_true', help='replace OUT_DIR if it is an earlier export')
    parser.add_argument('--training-data', default=None, metavar='TEXT',
                        help='what the model was trained on, in words, for the model card (default, for a folder '
                             '`timm-astro import` wrote: its source, the split trained on and what was held out)')
    parser.add_argument('--allow-nan', action='store_true', help='export weights that hold NaN or infinity')
    args = parser.parse_args(argv)

    def run() -> None:
        from timm_astro.hub import EXPORT_FILES, export_checkpoint
        out = export_checkpoint(
            args.checkpoint, args.out_dir, model_name=args.model, use_ema=not args.no_ema,
            summary_csv=args.summary, args_yaml=args.args_yaml, overwrite=args.overwrite, allow_nan=args.allow_nan,
            training_data=args.training_data)
        config = json.loads((out / 'config.json').read_text(encoding='utf-8'))
        size = 'x'.join(str(s) for s in config['pretrained_cfg']['input_size'])
        print(f"wrote {out}: {config['architecture']}, {config['num_classes']} classes, input {size} "
              f"({', '.join(EXPORT_FILES)})")
    return run_command(PROG, run)
