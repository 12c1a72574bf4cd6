"""Arguments for a catalogue input (a CSV, ``timm_astro.data.catalogue``), shared by predict, evaluate and embed."""
import argparse
from typing import Any, Dict

__all__ = ['add_catalogue_arguments', 'catalogue_options']


def add_catalogue_arguments(parser: argparse.ArgumentParser, labels: bool = False) -> None:
    group = parser.add_argument_group('catalogue (an input ending in .csv: one row per object)')
    group.add_argument('--id-column', default='id', help='the column of unique object ids (default: id)')
    group.add_argument('--path-column', default='path', help='the column of image files (default: path)')
    group.add_argument('--images-root', default=None,
                       help="the folder the paths are relative to, and must stay in (default: the catalogue's folder)")
    group.add_argument('--hdf5', default=None,
                       help='a Galaxy10-schema HDF5 file: images are its rows, named by --row-column, not files')
    group.add_argument('--row-column', default='row', help='the column of HDF5 rows, with --hdf5 (default: row)')
    group.add_argument('--columns', nargs='*', default=None, metavar='COLUMN',
                       help='columns copied into every output row (default: those of ra, dec and label it has)')
    if labels:
        group.add_argument('--label-column', default='label',
                           help='the column of class labels: indices (0, 1, ...) or class names (default: label)')


def catalogue_options(args: argparse.Namespace) -> Dict[str, Any]:
    """The arguments of ``add_catalogue_arguments`` as ``read_catalogue``'s keyword arguments."""
    options = {'id_column': args.id_column, 'path_column': args.path_column, 'root': args.images_root,
               'hdf5': args.hdf5, 'row_column': args.row_column, 'columns': args.columns}
    if getattr(args, 'label_column', None):
        options['label_column'] = args.label_column
    return options
