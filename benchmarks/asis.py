#!/usr/bin/env python3
"""The pretrained classifiers used as they are, against what fine-tuning them on a few labels gave.

A pretraining on a set's own classes is already a classifier of them. Before a few-label cell credits fine-tuning,
it should show that fine-tuning beats the pretrained classifier left alone. For each pretrained model of one or
more ``lowdata.py`` reports (``NAME[pretrained_path=FOLDER/FILE]@SIZE``), this loads the weights with their own
classifier (``timm_astro.load_model``, as ``timm-astro evaluate`` loads a train.py checkpoint), checks its class
names against the data's, scores it on the report's validation and test splits (plain and D4, per image, with the
report's input size and normalisation) and states, on test, each paired 95% interval (bootstrap over the test
images and seeds; ``timm_astro.evaluation.compare``):

* each model as it is against every other model as it is (the same images);
* each fine-tuned model (its chosen lr's runs, for each k of each report) against its own pretraining as it is,
  paired over the fine-tuned runs' seeds (the as-is predictions stand for every seed: they have no seed).

Writes ``<out-dir>/<name>.json`` (the settings, every as-is model's per-image predictions and every interval: the
intervals can be recomputed from it and the reports alone) and ``<name>.md``. Scoring is done once per weights
file; the test split is scored after the reports' lr choices were made, and chooses nothing::

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
    NORMALISE, _interval, eval_data, load_report, parse_model, pretrained_file, scratch_spec, score)

SPLITS = ('validation', 'test')
MODES = ('', '_d4')  # plain, D4-averaged


def as_is(spec: str, data_dir: Path, args: argparse.Namespace) -> Dict[str, Any]:
    """One pretrained model scored with its own classifier on every split, per image, plain and D4."""
    weights = pretrained_file(spec, args.pretrained_dir)
    size = parse_model(spec)[2]
    model = load_model(str(weights))
    data_config = {'input_size': (3, size, size), 'crop_pct': args.crop_pct, 'interpolation': 'bicubic', **NORMALISE}
    out: Dict[str, Any] = {'model': scratch_spec(spec), 'weights': parse_model(spec)[1]['pretrained_path']}
    for split in SPLITS:
        data = eval_data(data_dir, split)
        wrong = label_mismatches(label_names_for(model, data.class_names), data.class_names)
        if wrong:
            raise SystemExit(f'{spec}: its classes are not the data\'s ({"; ".join(wrong[:3])}); expected a '
                             f'pretraining on the same classes, in the same order')
        out.update(score(model, data, data_config, args, split))
    return out


def chosen_runs(report: Dict[str, Any], spec: str) -> Dict[str, Dict[int, Dict[str, Any]]]:
    """{'REGIME k = K': {seed: run}} of the chosen lr of ``spec`` in a report, for the runs scored on test (a cell of
    a recipe other than the report's first says which)."""
    out: Dict[str, Dict[int, Dict[str, Any]]] = {}
    for e in report['summary']:
        if e['model'] == spec and e.get('complete'):
            runs = {r['seed']: r for r in report['runs'] if r['model'] == spec and r['regime'] == e['regime']
                    and r['recipe'] == e['recipe'] and r['shots'] == e['shots'] and r['lr'] == e['lr']
                    and 'test_pred' in r}
            if runs:
                recipe = '' if e['recipe'] == next(iter(report['recipes'])) else f", recipe {e['recipe']}"
                out[f"{e['regime']} k = {e['shots']}{recipe}"] = runs
    return out


def compare(reports: List[Dict[str, Any]], scored: Dict[str, Dict[str, Any]], labels: List[int],
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
                            **vars(diff)})
    for report in reports:
        for spec in report['settings']['models']:
            if spec not in scored:
                continue
            for cell, runs in chosen_runs(report, spec).items():
                seeds = sorted(runs)
                for mode in MODES:
                    tuned = correct_matrix([runs[s][f'test_pred{mode}'] for s in seeds], labels)
                    alone = correct_matrix([scored[spec][f'test_pred{mode}']] * len(seeds), labels)
                    diff = paired_bootstrap(tuned, alone, n_boot=n_boot)
                    out.append({'kind': 'fine_tuned', 'model': spec, 'cell': cell, 'seeds': seeds,
                                'mode': mode.strip('_') or 'plain', **vars(diff)})
    return out


def render_markdown(result: Dict[str, Any]) -> str:
    rows = [[f"`{s['model']}` ({s['weights']}), as it is", f"{s['validation_top1']:.1f} / "
             f"{s['validation_top1_d4']:.1f}", f"{s['test_top1']:.1f} / {s['test_top1_d4']:.1f}"]
            for s in result['as_is'].values()]
    pairs: Dict[tuple, Dict[str, str]] = {}
    for c in result['comparisons']:
        what = (f"`{c['model']}` minus `{c['reference']}`, both as they are" if c['kind'] == 'as_is' else
                f"`{c['model']}` fine-tuned ({c['cell']}, seeds {c['seeds']}) minus its pretraining as it is")
        pairs.setdefault((what,), {})[c['mode']] = _interval(c)
    lines = [
        '# The pretrained classifiers used as they are\n',
        f"Data: `{result['settings']['data']}` (validation {result['settings']['eval_sizes']['validation']}, test "
        f"{result['settings']['eval_sizes']['test']} images); weights under `PRETRAINED_DIR`. Command: "
        f"`{result['command']}`. Reports: {', '.join(result['settings']['reports'])}. Intervals: paired bootstrap "
        f"95% over the test images (and the fine-tuned runs' seeds), {result['settings']['n_boot']} resamples.\n",
        markdown_table(['model', 'validation top-1 plain / D4', 'test top-1 plain / D4'], rows), '',
        markdown_table(['test, points [95%]', 'plain', 'D4'],
                       [[k[0], v.get('plain', '—'), v.get('d4', '—')] for k, v in pairs.items()]), '']
    return '\n'.join(lines)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--data-dir', type=Path, required=True, help="the reports' data (train/validation/test)")
    parser.add_argument('--pretrained-dir', type=Path, required=True, help="the reports' --pretrained-dir")
    parser.add_argument('--reports', type=Path, nargs='+', required=True, help='lowdata.py report JSONs')
    parser.add_argument('--crop-pct', type=float, default=1.0)
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
    reports = [load_report(path) for path in args.reports]
    sizes = {tuple(sorted(r['settings']['eval_sizes'].items())) for r in reports}
    if len(sizes) != 1:
        raise SystemExit(f'--reports: their validation and test splits differ ({sorted(sizes)}); expected reports '
                         'of one data folder')
    test = eval_data(args.data_dir, 'test')
    if test.targets != reports[0]['settings']['labels']['test']:
        raise SystemExit(f"--data-dir {args.data_dir}: its test labels are not the reports' (expected the folder "
                         'the reports were run on)')
    threads = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        specs = dict.fromkeys(s for r in reports for s in r['settings']['models'] if 'pretrained_path' in s)
        scored = {spec: as_is(spec, args.data_dir, args) for spec in specs}
    finally:
        torch.set_num_threads(threads)
    if not scored:
        raise SystemExit('--reports: no model fine-tuned from a pretraining (NAME[pretrained_path=...]@SIZE)')
    command = command_line()
    for path, name in sorted(((str(args.data_dir), 'DATA_DIR'), (str(args.pretrained_dir), 'PRETRAINED_DIR')),
                             key=lambda p: -len(p[0])):
        command = command.replace(path, name)  # no path of this machine in a report
    result = {'command': command, 'machine': machine_info(args.device),
              'settings': {'data': 'DATA_DIR', 'eval_sizes': dict(reports[0]['settings']['eval_sizes']),
                           'reports': [p.name for p in args.reports], 'n_boot': args.n_boot,
                           'crop_pct': args.crop_pct, 'labels': {s: eval_data(args.data_dir, s).targets
                                                                 for s in SPLITS}},
              'as_is': scored}
    result['comparisons'] = compare(reports, scored, test.targets, args.n_boot)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out_dir / f'{args.name}.json', json_dumps_compact(result) + '\n')
    write_text_atomic(args.out_dir / f'{args.name}.md', render_markdown(result))
    print(render_markdown(result))
    return result


if __name__ == '__main__':
    main()
