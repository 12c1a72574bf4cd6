"""``timm-astro embed MODEL INPUT --out DIR``: one pooled feature vector per image, and nearest neighbours."""
import argparse
from typing import List, Optional

from timm_astro.commands import positive_int, run_command
from timm_astro.commands._catalogue_args import add_catalogue_arguments, catalogue_options
from timm_astro.commands._model_args import (
    add_data_config_arguments, add_model_arguments, data_config_overrides, load_model_from_args, reader_options)
from timm_astro.errors import UserError

PROG = 'timm-astro embed'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Write each image's pooled features (timm's pre-logits, float32) to DIR/embeddings.npy with "
                    'DIR/ids.csv (the id columns, row for row) and, with --neighbours K, DIR/neighbours.csv: each '
                    "object's K nearest others by cosine distance and an outlier score (the mean distance to them). "
                    'Constant memory, atomic output, --resume after an interruption.')
    add_model_arguments(parser)
    parser.add_argument('input', metavar='INPUT', help='a folder of images (recursive), a text file of image paths '
                                                       '(.txt/.lst), a Galaxy10-schema HDF5 file or a catalogue CSV')
    parser.add_argument('--out', required=True, help='the folder to write (new, empty, or an earlier embed output '
                                                     'with --overwrite)')
    parser.add_argument('--neighbours', type=positive_int, default=0, metavar='K',
                        help='also find each object\'s K nearest neighbours (cosine; needs scikit-learn)')
    parser.add_argument('--resume', action='store_true', help='continue an interrupted run of the same command')
    parser.add_argument('--overwrite', action='store_true', help='replace --out (and any interrupted run of it)')
    parser.add_argument('--strict', action='store_true', help='stop at the first unreadable image')
    add_catalogue_arguments(parser)
    add_data_config_arguments(parser)
    args = parser.parse_args(argv)

    def run() -> int:
        from timm_astro.evaluation.embed import COMMAND, NEIGHBOURS, check_neighbours, embed_to_folder
        from timm_astro.evaluation.predict import open_prediction_inputs
        from timm_astro.outputs import check_output_location
        reading = reader_options(args)  # an impossible --stretch is one line before anything loads
        inputs = open_prediction_inputs(args.input, catalogue_options(args))
        check_neighbours(args.neighbours, len(inputs))  # a missing scikit-learn is said before the model loads
        try:
            check_output_location(args.out, overwrite=args.overwrite or args.resume, created_by=COMMAND)
        except UserError as e:
            raise type(e)(f'--out {e}') from None
        model = load_model_from_args(args, PROG)
        summary = embed_to_folder(
            model, inputs, args.out, neighbours=args.neighbours,
            data_config=data_config_overrides(args, getattr(model, 'in_chans', 3)), batch_size=args.batch_size,
            workers=args.workers, device=args.device, resume=args.resume, overwrite=args.overwrite,
            strict=args.strict, progress=not args.no_progress, reading=reading)
        resumed = f', {summary.resumed} kept from the interrupted run' if summary.resumed else ''
        errors = f', {summary.errors} unreadable (skipped)' if summary.errors else ''
        print(f'{summary.out}: {summary.predicted} images embedded ({summary.dim} features each) in '
              f'{summary.seconds:.1f} s ({summary.images_per_second:.1f} img/s){resumed}{errors}')
        if summary.neighbours:
            shown = ', '.join(f'{name} {score:.3f}' for name, score in summary.outliers[:3])
            print(f'{NEIGHBOURS}: {summary.neighbours} nearest neighbours (cosine) of each; highest outlier scores '
                  f'(mean distance to them): {shown}')
        return 1 if summary.errors else 0
    return run_command(PROG, run)
