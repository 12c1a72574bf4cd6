"""``timm-astro predict MODEL INPUT --out predictions.csv``: classify a catalogue, streamed to a CSV (a model trained on
Galaxy Zoo votes: its vote fractions, ``timm_astro.evaluation.votes.predict_votes_to_csv``)."""
import argparse
from typing import List, Optional

from timm_astro.commands import run_command
from timm_astro.commands._catalogue_args import add_catalogue_arguments, catalogue_options
from timm_astro.commands._model_args import (
    add_data_config_arguments, add_model_arguments, data_config_overrides, load_model_from_args, reader_options)
from timm_astro.evaluation.predict import open_prediction_inputs, predict_to_csv, read_label_names
from timm_astro.evaluation.tta import TTA_MODES
from timm_astro.evaluation.votes import predict_votes_to_csv
from timm_astro.votes_model import is_votes_model
from timm_astro.errors import UserError
from timm_astro.outputs import check_output_location

PROG = 'timm-astro predict'


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Predict every image of INPUT into a CSV: path (or HDF5 row and sky coordinates), predicted '
                    'label, its probability, one probability per class, entropy and, with --tta, how much the '
                    'symmetric views disagree (a votes model from train-votes: the expected fraction and its '
                    'spread per answer). Constant memory, atomic output, --resume after an interruption.')
    add_model_arguments(parser)
    parser.add_argument('input', metavar='INPUT', help='a folder of images (recursive), a text file of image paths '
                                                       '(.txt/.lst), a Galaxy10-schema HDF5 file or a catalogue CSV')
    parser.add_argument('--out', default='predictions.csv', help='the CSV to write')
    parser.add_argument('--tta', choices=list(TTA_MODES), default='none',
                        help="'d4': average over the 8 symmetries of the square and report their disagreement")
    parser.add_argument('--label-names', default=None,
                        help="class names: a JSON list (class_names.json), a text file (one a line) or 'a,b,c'; "
                             "default: the model's own, else class indices")
    parser.add_argument('--resume', action='store_true', help='continue an interrupted run of the same command')
    parser.add_argument('--overwrite', action='store_true', help='replace --out (and any interrupted run of it)')
    parser.add_argument('--strict', action='store_true', help='stop at the first unreadable image')
    add_catalogue_arguments(parser)
    add_data_config_arguments(parser)
    args = parser.parse_args(argv)

    def run() -> None:
        reading = reader_options(args)  # an impossible --stretch is one line before anything loads
        inputs = open_prediction_inputs(args.input, catalogue_options(args))
        label_names = read_label_names(args.label_names) if args.label_names else None
        try:  # before the model loads (minutes, for a large checkpoint): a bad --out is said at once
            check_output_location(args.out, overwrite=args.overwrite or args.resume, kind='file')
        except UserError as e:
            raise type(e)(f'--out {e}') from None
        model = load_model_from_args(args, PROG)
        predict = predict_votes_to_csv if is_votes_model(model) else predict_to_csv
        summary = predict(
            model, inputs, args.out, label_names=label_names,
            data_config=data_config_overrides(args, getattr(model, 'in_chans', 3)), tta=args.tta,
            batch_size=args.batch_size, workers=args.workers, device=args.device, resume=args.resume,
            overwrite=args.overwrite, strict=args.strict, progress=not args.no_progress, reading=reading)
        resumed = f', {summary.resumed} kept from the interrupted run' if summary.resumed else ''
        errors = f', {summary.errors} unreadable (skipped)' if summary.errors else ''
        print(f'{summary.out}: {summary.predicted} images predicted in {summary.seconds:.1f} s '
              f'({summary.images_per_second:.1f} img/s){resumed}{errors}')
        return 1 if summary.errors else 0
    return run_command(PROG, run)
