"""``timm-astro import SOURCE SRC OUT_DIR``: real labelled galaxy images as a train / validation / test ImageFolder."""
import argparse
from typing import List, Optional

from timm_astro.commands import run_command
from timm_astro.data.real_galaxies import SOURCES, import_images

PROG = 'timm-astro import'


def main(argv: Optional[List[str]] = None) -> int:
    sources = '\n'.join(f'  {key}: {s.title}; SRC is {s.expected}' for key, s in SOURCES.items())
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description='Copy the images of your copy of a public galaxy dataset into OUT_DIR/{train,validation,test}/'
                    '<class>/ with manifest.csv, class_names.json and dataset.json (stratified, seeded split).',
        epilog=f'sources:\n{sources}\n\nThe images keep their own terms: cite the source, do not commit them.')
    parser.add_argument('source', choices=sorted(SOURCES), metavar='SOURCE', help='one of: ' + ', '.join(SOURCES))
    parser.add_argument('src', metavar='SRC', help='your copy of the source (see below)')
    parser.add_argument('out_dir', metavar='OUT_DIR', help='output folder: new, empty, or (--overwrite) an earlier one')
    parser.add_argument('--val-fraction', type=float, default=None,
                        help="fraction of each class for validation (default: the source's, 0.1)")
    parser.add_argument('--test-fraction', type=float, default=None,
                        help="fraction of each class held out for test (default: the source's, 0.1; 0.35 for "
                             "gz2-votes)")
    parser.add_argument('--seed', type=int, default=0, help='seed of the split')
    parser.add_argument('--split', choices=('stratified', 'source'), default='stratified',
                        help="'source' keeps the source's published split (first)")
    parser.add_argument('--overwrite', action='store_true', help='replace OUT_DIR if it is an earlier import')
    args = parser.parse_args(argv)

    def run() -> None:
        result = import_images(
            args.source, args.src, args.out_dir, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
            seed=args.seed, split=args.split, overwrite=args.overwrite)
        counts = ', '.join(f'{split} {n}' for split, n in result.splits.items())
        total = len(result.source.class_names)
        found = len(result.class_names)
        of = f' (of {total}: SRC has no images of the others; timm numbers these {found} 0-{found - 1})' \
            if found < total else ''
        print(f'{result.source.title}: {sum(result.splits.values())} images, {found} classes{of} -> {result.out_dir} '
              f'({counts})')
        if result.unclassified:
            print(f'{result.unclassified} of them meet no class: kept for the vote benchmark under '
                  f'{result.source.unlabelled_folder}/<split>/, not in the class folders')
    return run_command(PROG, run)
