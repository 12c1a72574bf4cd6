#!/usr/bin/env python3
"""The pretrained classifiers used as they are, against what fine-tuning them on a few labels gave.

A pretraining on a set's own classes is already a classifier of them. Before a few-label cell credits fine-tuning,
it should show that fine-tuning beats the pretrained classifier left alone. For each pretrained model of one or
more ``lowdata.py`` reports (``NAME[pretrained_path=FOLDER/FILE]@SIZE``), this builds the spec's model with the
weights' own classifier (``timm_astro.load_model``: the strict load fails if the spec and the weights disagree),
scores it on the reports' validation and test images (plain and D4, per image, with the reports' input size, crop
and normalisation) and states, on test, each paired 95% interval (bootstrap over the test images and seeds;
``lowdata``'s own pairing and ``timm_astro.evaluation.compare``):

* each model as it is against every other model as it is (the same images);
* each fine-tuned model (its chosen lr's runs, for each cell of each report) against its own pretraining as it is,
  paired over the fine-tuned runs' seeds (the as-is predictions stand for every seed: they have no seed).

The weights' class names (train.py's ``label_names``) are checked against the data's class folders; weights that
carry none are assumed to be in the data's folder order (train.py's ImageFolder sorts class folders as the data's
reader does), and the report says so. Writes ``<out-dir>/<name>.json`` (the settings, every as-is model's per-image
predictions, every interval) and ``<name>.md``. Test is scored after the reports' lr choices, and chooses nothing::

    python benchmarks/asis.py --data-dir DATA_DIR --pretrained-dir PRETRAINED_DIR \\
        --reports benchmarks/results/gz2pool_k30.json benchmarks/results/gz2pool_k100.json --name gz2pool_asis
"""
import argparse
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from timm_astro.evaluation.compare import correct_matrix, paired_bootstrap  # noqa: E402
from timm_astro.evaluation.evaluate import label_mismatches, label_names_for  # noqa: E402
from timm_astro.loading import load_model  # noqa: E402

from benchutils import (  # noqa: E402
    command_line, json_dumps_compact, machine_info, markdown_table, write_text_atomic)
from lowdata import (  # noqa: E402
    interval_text, versus_on_test, chosen_runs, eval_config, eval_data, load_report, parse_model, pretrained_file,
    pretraining_of, regime_title, score)

SPLITS = ('validation', 'test')
MODES = ('', '_d4')  # plain, D4-averaged


def as_is(spec: str, data_dir: Path, crop_pct: float, args: argparse.Namespace) -> Dict[str, Any]:
    """One pretrained model scored with its own classifier on every split, per image, plain and D4."""
    name, kwargs, size = parse_model(spec)
    weights_name = kwargs.pop('pretrained_path')
    model = load_model(name, pretrained_file(spec, args.pretrained_dir), **kwargs)
    data = {split: eval_data(data_dir, split) for split in SPLITS}
    class_names = data['test'].class_names
    names = (model.pretrained_cfg or {}).get('label_names')
    wrong = label_mismatches(label_names_for(model, class_names), class_names)
    if wrong:
        raise SystemExit(f'{spec}: its classes are not the data\'s ({"; ".join(wrong[:3])}); expected a pretraining '
                         f'on the same classes, in the same order')
    out: Dict[str, Any] = {'model': spec, 'weights': weights_name,
                           'class_names_checked': bool(names)}  # False: assumed the data's folder order
    for split in SPLITS:
        out.update(score(model, data[split], eval_config(size, crop_pct), args, split))
    return out


def compare(reports: Dict[str, Dict[str, Any]], scored: Dict[str, Dict[str, Any]], labels: List[int],
            n_boot: int) -> List[Dict[str, Any]]:
    """Every as-is model against the others, and every fine-tuned cell against its pretraining as it is."""
    out = []
    names = list(scored)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            for mode in MODES:
                diff = paired_bootstrap(correct_matrix([scored[a][f'test_pred{mode}']], labels),
                                        correct_matrix([scored[b][f'test_pred{mode}']], labels), n_boot=n_boot)
                out.append({'kind': 'as_is', 'model': a, 'reference': b, 'mode': mode.strip('_') or 'plain',
                            'split': 'test', **vars(diff)})
    for file, report in reports.items():
        first_recipe = next(iter(report['recipes']))
        for (regime, recipe, spec, shots), runs in chosen_runs(report).items():
            if spec not in scored:
                continue
            summary = next(e for e in report['summary'] if (e['regime'], e['recipe'], e['model'], e['shots'])
                           == (regime, recipe, spec, shots))
            scored_seeds = sorted(s for s, r in runs.items() if 'test_pred' in r)
            if scored_seeds != summary['seeds']:
                raise SystemExit(f'{file}: {spec} at k = {shots} has test predictions for seeds {scored_seeds} of '
                                 f'{summary["seeds"]}; expected every chosen run scored on test')
            cell = (f"{regime_title(report['settings']['regimes'][regime])}, k = {shots}"
                    + ('' if recipe == first_recipe else f', recipe {recipe}'))
            out += versus_on_test(runs, {s: scored[spec] for s in runs}, labels, n_boot, kind='fine_tuned',
                                   model=spec, reference=f'{spec}, as it is', report=file, cell=cell)
    return out


def render_markdown(result: Dict[str, Any]) -> str:
    rows = [[f"`{s['model']}`, as it is" + ('' if s['class_names_checked'] else ' (class names not in the weights: '
                                                                               "assumed the data's folder order)"),
             f"{s['validation_top1']:.1f} / {s['validation_top1_d4']:.1f}",
             f"{s['test_top1']:.1f} / {s['test_top1_d4']:.1f}"] for s in result['as_is'].values()]
    pairs: Dict[str, Dict[str, str]] = {}
    for c in result['comparisons']:
        what = (f"`{c['model']}` minus `{c['reference']}`, both as they are" if c['kind'] == 'as_is' else
                f"`{c['model']}` fine-tuned ({c['report']}: {c['cell']}; seeds {c['seeds']}) minus the same "
                f"pretraining as it is")
        pairs.setdefault(what, {})[c['mode']] = interval_text(c)
    settings = result['settings']
    lines = [
        '# The pretrained classifiers used as they are\n',
        f"Data: `{settings['data']}` (validation {settings['eval_sizes']['validation']}, test "
        f"{settings['eval_sizes']['test']} images); crop_pct {settings['crop_pct']}. Command: "
        f"`{result['command']}`. Intervals: paired bootstrap 95% over the test images (and the fine-tuned runs' "
        f"seeds), {settings['n_boot']} resamples.\n",
        markdown_table(['model', 'validation top-1 plain / D4', 'test top-1 plain / D4'], rows), '',
        markdown_table(['test, points [95%]', 'plain', 'D4'],
                       [[what, v.get('plain', '—'), v.get('d4', '—')] for what, v in pairs.items()]), '']
    return '\n'.join(lines)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-dir', type=Path, required=True, help="the reports' data (train/validation/test)")
    parser.add_argument('--pretrained-dir', type=Path, required=True, help="the reports' --pretrained-dir")
    parser.add_argument('--reports', type=Path, nargs='+', required=True, help='lowdata.py report JSONs')
    parser.add_argument('--eval-batch-size', type=int, default=50)
    parser.add_argument('--workers', type=int, default=0)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: leave as is)')
    parser.add_argument('--n-boot', type=int, default=10000)
    parser.add_argument('--out-dir', type=Path, default=HERE / 'results')
    parser.add_argument('--name', default='asis')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    reports = {path.name: load_report(path) for path in args.reports}
    if len(reports) != len(args.reports):
        raise SystemExit('--reports: two files of one name; expected each report once')
    labels = {split: eval_data(args.data_dir, split).targets for split in SPLITS}
    for file, report in reports.items():
        theirs = report['settings']['labels']
        if any(theirs.get(split) != labels[split] for split in SPLITS):
            raise SystemExit(f"--reports {file}: its validation or test images are not {args.data_dir}'s (or it "
                             f'has no test scores); expected reports scored on that folder')
    crops = {report['settings']['crop_pct'] for report in reports.values()}
    if len(crops) != 1:
        raise SystemExit(f'--reports: their crop_pct differ ({sorted(crops)}); expected one preprocessing')
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        specs = dict.fromkeys(s for r in reports.values() for s in r['settings']['models'] if pretraining_of(s))
        scored = {spec: as_is(spec, args.data_dir, next(iter(crops)), args) for spec in specs}
    finally:
        torch.set_num_threads(threads)
    if not scored:
        raise SystemExit('--reports: no model fine-tuned from a pretraining (NAME[pretrained_path=...]@SIZE)')
    result = {'command': command_line({args.data_dir: 'DATA_DIR', args.pretrained_dir: 'PRETRAINED_DIR'}),
              'machine': machine_info(args.device),
              'settings': {'data': 'DATA_DIR', 'eval_sizes': {s: len(v) for s, v in labels.items()},
                           'reports': list(reports), 'n_boot': args.n_boot, 'crop_pct': next(iter(crops)),
                           'labels': labels},
              'as_is': scored}
    result['comparisons'] = compare(reports, scored, labels['test'], args.n_boot)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out_dir / f'{args.name}.json', json_dumps_compact(result) + '\n')
    write_text_atomic(args.out_dir / f'{args.name}.md', render_markdown(result))
    print(render_markdown(result))
    return result


if __name__ == '__main__':
    main()
