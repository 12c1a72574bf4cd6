"""``timm-astro galaxy10 prepare H5 OUT_DIR``: the published Galaxy10 HDF5 file as an ImageFolder timm reads."""
import argparse
import re
from pathlib import Path
from typing import List, Optional

from timm_astro.commands import positive_int, run_command
from timm_astro.data.galaxy10 import IMAGE_FORMATS, prepare_galaxy10

PROG = 'timm-astro galaxy10'


def _sha256_arg(value: str) -> str:
    if value == 'published' or re.fullmatch(r'[0-9a-fA-F]{64}', value):
        return value
    raise argparse.ArgumentTypeError(
        f'expected 64 hex digits (or nothing, for the published Galaxy10_DECals.h5 checksum), got {value!r}; '
        f'a bare --sha256 goes after the file names')


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description='Galaxy10 DECals / SDSS tools.')
    commands = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    prep = commands.add_parser(
        'prepare', help='turn the published HDF5 file into an ImageFolder timm train.py reads',
        description='Write OUT_DIR/train/<class>/, OUT_DIR/validation/<class>/ (and, with --test-fraction, '
                    'OUT_DIR/test/<class>/), manifest.csv, class_names.json and dataset.json from '
                    'Galaxy10_DECals.h5 (or the older SDSS Galaxy10.h5). Then: train.py --data-dir OUT_DIR '
                    '--num-classes 10.')
    prep.add_argument('h5', type=Path, metavar='H5', help='Galaxy10_DECals.h5 or Galaxy10.h5 (SDSS)')
    prep.add_argument('out_dir', type=Path, metavar='OUT_DIR',
                      help='output directory: new, empty, or (with --overwrite) an earlier output')
    prep.add_argument('--val-fraction', type=float, default=0.1,
                      help='fraction of each class put in validation (default: 0.1)')
    prep.add_argument('--test-fraction', type=float, default=0.0,
                      help='fraction of each class held out in test/ (default: 0, no test split); choose on '
                           'validation, report on test')
    prep.add_argument('--seed', type=int, default=0, help='seed of the stratified split (default: 0)')
    prep.add_argument('--format', dest='image_format', choices=sorted(IMAGE_FORMATS), default='png',
                      help='png is lossless (default); jpeg (quality 95) is ~3x smaller and much faster to write')
    prep.add_argument('--sha256', type=_sha256_arg, nargs='?', const='published', metavar='HEX',
                      help='check the file first: against HEX, or without a value against the published '
                           'Galaxy10_DECals.h5 checksum')
    prep.add_argument('--overwrite', action='store_true',
                      help='replace OUT_DIR if it holds an earlier output of this command')
    prep.add_argument('--workers', type=positive_int, default=None,
                      help='image-encoding threads (default: CPU count, at most 8); does not change the output')
    prep.add_argument('--no-progress', action='store_true', help='no progress bar')
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0), or a usage error argparse has already printed (2)
        return int(e.code or 0)

    def run() -> None:
        result = prepare_galaxy10(
            args.h5, args.out_dir, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
            seed=args.seed, image_format=args.image_format, sha256=args.sha256, overwrite=args.overwrite,
            workers=args.workers, progress=not args.no_progress)
        n, s = result.num_images, result.seconds
        counts = ', '.join(f'{split} {count}' for split, count in result.splits.items())
        print(f'{result.variant.name}: {n} images -> {result.out_dir} ({counts}) in {s:.1f} s, '
              f'{n / max(s, 1e-9):.0f} images/s')
        print(f'train with: train.py --data-dir {result.out_dir} --num-classes {result.num_classes}')
        total = len(result.variant.class_names)
        if result.num_classes != total:  # timm numbers only the class folders that hold images
            print(f'note: train/ holds images of {result.num_classes} of the {total} {result.variant.name} classes '
                  f"({', '.join(result.train_classes)}); timm will find {result.num_classes} classes and number them "
                  f'0-{result.num_classes - 1} in that order, not by their {result.variant.name} labels')
    return run_command(PROG, run)
