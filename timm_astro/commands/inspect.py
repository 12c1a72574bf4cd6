"""``timm-astro inspect MODEL [IMAGE ...] --output DIR``: pictures of the learned kernels W and of S4's attention."""
import argparse
from typing import List, Optional

from timm_astro.commands import run_command
from timm_astro.commands._model_args import band_keys, hdu_key, reader_options

PROG = 'timm-astro inspect'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Draw each head's relative-position kernel W_h over 2-D offsets (zero offset at the centre) and, "
                    'for the images given, where the transformer stage attends from a few query positions.')
    parser.add_argument('model', help='registered name (with --checkpoint), a train.py checkpoint, local-dir:PATH '
                                      'or hf-hub:ORG/NAME')
    parser.add_argument('images', nargs='*', help='images to draw the attention over (optional)')
    parser.add_argument('--checkpoint', default=None, help='weights for a registered model name')
    parser.add_argument('--output', required=True, help='folder to write (new or empty, or an earlier one with --overwrite)')
    parser.add_argument('--overwrite', action='store_true', help='replace OUTPUT if it is an earlier inspect output')
    parser.add_argument('--stretch', default=None, metavar='SPEC',
                        help='for a model that records none: how FITS / 16-bit / float images become input (e.g. '
                             'asinh:softening=0.05); a model trained with one applies its own')
    parser.add_argument('--hdu', type=hdu_key, default=None, help='FITS: the HDU holding the image')
    parser.add_argument('--bands', type=band_keys, default=None, metavar='B1,B2,...',
                        help='FITS: one band per named image HDU')
    args = parser.parse_args(argv)

    def run() -> None:
        from timm_astro.inspection import inspect_model
        out = inspect_model(args.model, args.images, args.output, checkpoint=args.checkpoint, overwrite=args.overwrite,
                            **reader_options(args))
        print(f'wrote {out}')
    return run_command(PROG, run)
