"""``timm-astro evaluate MODEL DATA``: per-class metrics, calibration and test-time symmetry on a labelled split, or,
for a model trained on Galaxy Zoo votes and a vote set, the vote-fraction metrics (``timm_astro.evaluation.votes``)."""
import argparse
import sys
from pathlib import Path
from typing import List, Optional

from timm_astro.commands import run_command
from timm_astro.commands._catalogue_args import add_catalogue_arguments, catalogue_options
from timm_astro.commands._model_args import (
    add_data_config_arguments, add_model_arguments, data_config_overrides, load_model_from_args, reader_options)
from timm_astro.evaluation.evaluate import evaluate, open_labelled_data, summary_table, write_report
from timm_astro.errors import UserError
from timm_astro.evaluation.tta import TTA_MODES
from timm_astro.evaluation.votes import check_task, evaluate_votes, vote_summary_table, write_vote_report

PROG = 'timm-astro evaluate'


def check_output_outside_data(output: str, data: str) -> None:
    """Refuse an ``--output`` inside the data folder: the next evaluate of that folder would read the report's
    images as a class of its own."""
    data_path, out_path = Path(data).resolve(), Path(output).resolve()
    if data_path.is_dir() and (out_path == data_path or data_path in out_path.parents):
        raise UserError(f'--output {output} is inside the data folder {data}, where its pictures would be read as a '
                        f'class of images; choose a folder outside it')


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Score a model on a labelled split and write metrics.json (top-1, top-5, balanced accuracy, '
                    'macro F1, per-class precision/recall/F1/support, log loss, calibration error), '
                    'confusion_matrix.png, reliability.png and predictions.csv into --output. A votes model (from '
                    'train-votes) on a vote set: per question the fraction MAE and the accuracy where volunteers '
                    'agree, calibration.png and predictions.csv.')
    add_model_arguments(parser)
    parser.add_argument('data', metavar='DATA',
                        help='an ImageFolder split (DATA/<class>/...), a folder of splits with --split, a '
                             'Galaxy10-schema HDF5 file with --split, a catalogue CSV with a label column, or (for a '
                             'votes model) a vote set with --split')
    parser.add_argument('--split', default=None, help='train, validation or test (of a split folder or HDF5 file)')
    parser.add_argument('--val-fraction', type=float, default=0.1, help='HDF5: the split it was prepared with')
    parser.add_argument('--test-fraction', type=float, default=0.0, help='HDF5: the split it was prepared with')
    parser.add_argument('--seed', type=int, default=0, help='HDF5: the split it was prepared with')
    parser.add_argument('--tta', choices=list(TTA_MODES), default='none',
                        help="average the softmax over symmetries: 'd4' the 8 of the square, 'flip' 4 flips; the "
                             'report gives the metrics with and without it side by side')
    parser.add_argument('--output', default='evaluation', help='folder to write (new, empty or, with --overwrite, '
                                                               'an earlier evaluation)')
    parser.add_argument('--overwrite', action='store_true', help='replace an earlier evaluation in --output')
    parser.add_argument('--no-plots', action='store_true', help='skip the PNGs (no matplotlib needed)')
    add_catalogue_arguments(parser, labels=True)
    add_data_config_arguments(parser)
    args = parser.parse_args(argv)

    def run() -> None:
        from timm_astro.outputs import check_output_location
        check_output_outside_data(args.output, args.data)
        check_output_location(args.output, overwrite=args.overwrite, created_by='timm-astro evaluate')
        reading = reader_options(args)
        from timm_astro.data.votes import is_vote_set
        data = None if is_vote_set(args.data) else open_labelled_data(
            args.data, args.split, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
            catalogue=catalogue_options(args))
        model = load_model_from_args(args, PROG)
        if check_task(model, args.data, args.split, args.model):  # a votes model and a vote set; else both classes
            return run_votes(args, model)
        result = evaluate(
            model, data, data_config=data_config_overrides(args, getattr(model, 'in_chans', 3)), tta=args.tta,
            batch_size=args.batch_size, workers=args.workers, device=args.device, progress=not args.no_progress,
            **reading)
        for warning in result.warnings:
            print(f'{PROG}: warning: {warning}', file=sys.stderr)
        write_report(result, args.output, overwrite=args.overwrite, plots=not args.no_plots,
                     extra={'model_spec': args.model, 'checkpoint': args.checkpoint})
        left_out = f' ({len(result.left_out)} left out: unreadable)' if result.left_out else ''
        stretch = f', stretch {result.reader.stretch}' if result.reader.stretch is not None else ''
        print(f'{result.model_name} on {data.source}: {len(result.data.item_ids)} images{left_out}, '
              f'{len(result.label_names)} classes{stretch}')
        print(summary_table(result))
        shown = list(result.metrics)[-1]
        worst = sorted(result.metrics[shown]['per_class'], key=lambda c: c['recall'])[:3]
        print('lowest recall: ' + ', '.join(f"{c['name']} {c['recall']:.1f}% (n={c['support']})" for c in worst))
        print(f'wrote {args.output}/: metrics.json, predictions.csv'
              + ('' if args.no_plots else ', confusion_matrix.png, reliability.png'))
    return run_command(PROG, run)


def run_votes(args: argparse.Namespace, model) -> None:
    """Score a votes model on a split of a vote set and write its report (``check_task`` said they fit)."""
    if args.tta != 'none':
        raise UserError(f'--tta {args.tta}: test-time symmetry is for class models here; a votes model is scored on '
                        f'the plain view (leave out --tta)')
    result = evaluate_votes(
        model, args.data, args.split, data_config=data_config_overrides(args, getattr(model, 'in_chans', 3)),
        batch_size=args.batch_size, workers=args.workers, device=args.device, progress=not args.no_progress,
        **reader_options(args))
    for warning in result.warnings:
        print(f'{PROG}: warning: {warning}', file=sys.stderr)
    write_vote_report(result, args.output, overwrite=args.overwrite, plots=not args.no_plots,
                      extra={'model_spec': args.model, 'checkpoint': args.checkpoint})
    left_out = f' ({len(result.left_out)} left out: unreadable)' if result.left_out else ''
    print(f'{result.model_name} on {result.source}: {len(result.item_ids)} galaxies{left_out}, '
          f'{result.tree.n_answers} answers of the {result.tree.name} tree')
    print(vote_summary_table(result))
    print(f"Dirichlet-multinomial loss per galaxy: {result.metrics['nll']:.3f}")
    print(f'wrote {args.output}/: metrics.json, predictions.csv' + ('' if args.no_plots else ', calibration.png'))
