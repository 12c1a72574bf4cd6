"""Paired differences over seeds from a lowdata report: which differences between two rows can the seeds resolve?

Runs with the same k and seed train on the same images and are scored on the same validation and test images, so two
rows of a report are compared seed by seed: the per-seed differences, their mean, a 95% t-interval (n - 1 degrees of
freedom) and the two-sided p of the paired t-test (``scipy.stats.ttest_rel``). An interval that includes 0 reads
"no measurable difference". ``--d4`` does the same for one row's D4-averaged score against its plain score.

What the interval covers: the spread between training seeds, on one fixed split. It leaves out a second source of
uncertainty, the sampling of the evaluation images themselves (100 test images: a binomial standard deviation of
about 5 points near 50%), which would widen it. The lowdata reports keep no per-image predictions, so a bootstrap
over images cannot be computed from them.

    python benchmarks/lowdata_paired.py benchmarks/results/lowdata.json \\
        --pair 30 'astroformer_small[rel_pos_type=fourier,rel_pos_freqs=16]@32' coatnet_nano_rw_224@64 \\
        --d4 30 resnet18@64 --out paired.md
"""
import argparse
import json
import math
import shlex
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from scipy import stats

from timm_astro.commands import run_command
from timm_astro.errors import UserError
from timm_astro.outputs import atomic_file

# (label, report key of the plain score, report key of the D4-averaged score)
SPLITS = (('test', 'test_top1', 'test_top1_d4'), ('validation', 'validation_top1', 'validation_top1_d4'))
NO_DIFFERENCE = 'no measurable difference'
NOT_ESTIMABLE = 'no interval: the same difference in every seed'
EXPECTED = 'the JSON file benchmarks/lowdata.py writes'


def load_runs(path: Path, recipe: Optional[str] = None) -> Dict[Tuple[str, str], Dict[int, Dict[str, Any]]]:
    """The report's runs as {(model, k): {seed: run}}; refuses a report with two runs for one model, k and seed."""
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f'{path}: no such report; expected {EXPECTED}') from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f'{path}: not a JSON report ({e}); expected {EXPECTED}') from None
    if not isinstance(report, dict) or not isinstance(report.get('runs'), list):
        raise UserError(f"{path}: no 'runs' list; expected {EXPECTED}")
    runs: Dict[Tuple[str, str], Dict[int, Dict[str, Any]]] = {}
    for run in report['runs']:
        if recipe is not None and run.get('recipe') != recipe:
            continue
        seeds = runs.setdefault((run['model'], str(run['shots'])), {})
        if run['seed'] in seeds:
            raise UserError(f"{path}: two runs of {run['model']} at k = {run['shots']}, seed {run['seed']} "
                            '(a report of several recipes); name one with --recipe')
        seeds[run['seed']] = run
    if not runs:
        raise UserError(f"{path}: no runs{f' of recipe {recipe}' if recipe else ''}; expected {EXPECTED}")
    return runs


def scores(runs: Dict[Tuple[str, str], Dict[int, Dict[str, Any]]], model: str, shots: str,
           key: str) -> Dict[int, float]:
    """{seed: score} of one row; a row or score missing from the report is a UserError naming what exists."""
    row = runs.get((model, shots))
    if row is None:
        known = sorted({m for m, k in runs if k == shots}) or sorted({k for _, k in runs})
        raise UserError(f'no runs of {model} at k = {shots} in the report; it has {", ".join(known)}')
    missing = [seed for seed, run in row.items() if run.get(key) is None]
    if missing:
        raise UserError(f'{model} at k = {shots} has no {key} for seed(s) {missing} (a validation-only report?)')
    return {seed: float(run[key]) for seed, run in row.items()}


def paired(first: Dict[int, float], second: Dict[int, float], what: str) -> Dict[str, Any]:
    """first - second over their common seeds: differences, mean, 95% t-interval, paired-t p and a reading."""
    seeds = sorted(set(first) & set(second))
    if len(seeds) < 2:
        raise UserError(f'{what}: {len(seeds)} seed(s) in common; a paired interval needs at least 2')
    diffs = [first[s] - second[s] for s in seeds]
    mean = sum(diffs) / len(diffs)
    if all(d == diffs[0] for d in diffs):
        # the same difference in every seed: no spread to estimate, so no interval (not a zero-width one)
        low = high = p = float('nan')
        reading = NO_DIFFERENCE if mean == 0 else NOT_ESTIMABLE
    else:
        test = stats.ttest_rel([first[s] for s in seeds], [second[s] for s in seeds])
        interval = test.confidence_interval(0.95)
        low, high, p = float(interval.low), float(interval.high), float(test.pvalue)
        if low <= 0 <= high:
            reading = NO_DIFFERENCE
        else:
            reading = 'first higher' if mean > 0 else 'second higher'
    return {'seeds': seeds, 'diffs': diffs, 'mean': mean, 'low': low, 'high': high, 'p': p, 'reading': reading}


def compare(runs, pairs: Sequence[Sequence[str]], d4_rows: Sequence[Sequence[str]]) -> List[Dict[str, Any]]:
    """One result row per (pair, measure) and per (D4 row, split), with a mean of the D4 gains per k."""
    rows = []
    for shots, first, second in pairs:
        for split, plain, d4 in SPLITS:
            for key, label in ((plain, 'plain'), (d4, 'D4')):
                what = f'`{first}` − `{second}`'
                result = paired(scores(runs, first, shots, key), scores(runs, second, shots, key), what)
                rows.append(dict(result, shots=shots, comparison=what, measure=f'{split} top-1, {label}'))
    gains: Dict[Tuple[str, str], List[float]] = {}
    for shots, model in d4_rows:
        for split, plain, d4 in SPLITS:
            what = f'`{model}`: D4 − plain'
            result = paired(scores(runs, model, shots, d4), scores(runs, model, shots, plain), what)
            rows.append(dict(result, shots=shots, comparison=what, measure=f'{split} top-1'))
            gains.setdefault((shots, split), []).append(result['mean'])
    for (shots, split), means in gains.items():
        rows.append({'shots': shots, 'comparison': f'D4 − plain, mean over the {len(means)} rows above',
                     'measure': f'{split} top-1', 'mean': sum(means) / len(means), 'summary': True})
    return rows


def _num(value: float) -> str:
    text = f'{value:+.1f}'
    return '0.0' if text in ('+0.0', '-0.0') else text


def markdown(rows: List[Dict[str, Any]], source: str, command: str) -> str:
    """The rows as a table under a header that names the report and the command."""
    lines = [
        f'# Paired differences over seeds, from `{source}`', '',
        f'Command: `{command}`.', '',
        'Per seed, first row minus second (or D4 minus plain), in points of top-1 (%); '
        'the mean over seeds, its 95% t-interval and the paired t-test p (scipy.stats.ttest_rel). The interval '
        'covers training seeds on one fixed split, not the sampling of the evaluation images. '
        f'"{NO_DIFFERENCE}": the interval includes 0. No correction for multiple comparisons: '
        'where two rows do not differ, about one interval in twenty still excludes 0.', '',
        '| k | comparison | measure | per seed | mean | 95% interval | p | reading |',
        '|---|---|---|---|---|---|---|---|',
    ]
    for r in rows:
        if r.get('summary'):
            cells = [r['shots'], r['comparison'], r['measure'], '—', _num(r['mean']), '—', '—', '—']
            lines.append('| ' + ' | '.join(cells) + ' |')
            continue
        per_seed = ', '.join(f'{d:+.0f}' if d else '0' for d in r['diffs'])
        interval = '—' if math.isnan(r['low']) else f"{_num(r['low'])} to {_num(r['high'])}"
        p = '—' if math.isnan(r['p']) else f"{r['p']:.2f}"
        lines.append(f"| {r['shots']} | {r['comparison']} | {r['measure']} | {per_seed} | {_num(r['mean'])} | "
                     f"{interval} | {p} | {r['reading']} |")
    return '\n'.join(lines) + '\n'


def main(argv: Optional[List[str]] = None) -> List[Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('report', type=Path, help='a JSON report of benchmarks/lowdata.py')
    parser.add_argument('--pair', nargs=3, action='append', default=[], metavar=('K', 'FIRST', 'SECOND'),
                        help='compare two rows of cell k: FIRST - SECOND, on test and validation, plain and D4')
    parser.add_argument('--d4', nargs=2, action='append', default=[], metavar=('K', 'MODEL'),
                        help="a row's D4-averaged score minus its plain score, on test and validation")
    parser.add_argument('--recipe', default=None, help='only runs of this recipe (for reports of a recipe grid)')
    parser.add_argument('--out', type=Path, default=None, help='also write the table here (markdown)')
    args = parser.parse_args(argv)
    if not args.pair and not args.d4:
        parser.error('nothing to compare: give --pair K FIRST SECOND and/or --d4 K MODEL')
    rows = compare(load_runs(args.report, args.recipe), args.pair, args.d4)
    # the command as typed from the repository root (not sys.argv: main() is also called from Python)
    words = ['python', 'benchmarks/lowdata_paired.py', str(args.report)]
    words += [w for k, a, b in args.pair for w in ('--pair', k, a, b)] + [w for k, m in args.d4 for w in ('--d4', k, m)]
    words += ['--recipe', args.recipe] if args.recipe else []
    words += ['--out', str(args.out)] if args.out else []
    text = markdown(rows, str(args.report), ' '.join(shlex.quote(w) for w in words))
    print(text, end='')
    if args.out:
        with atomic_file(args.out) as f:
            f.write(text)
    return rows


def cli() -> int:
    """main() as a command: a bad report, row or seed set is one line on stderr and exit code 2."""
    def body() -> None:
        main()
    return run_command('lowdata_paired.py', body)


if __name__ == '__main__':
    sys.exit(cli())
