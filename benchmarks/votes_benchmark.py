#!/usr/bin/env python3
"""Vote prediction: Astroformer against timm peers on Galaxy Zoo vote fractions, under the study's protocol.

Data: a vote set (``timm-astro import gz2-votes`` writes one: dataset.json ``"kind": "votes"``, manifest.csv with a
vote-count column per answer of its decision tree, train / validation / test).

The protocol is ``lowdata.py``'s (benchmarks/README.md), with the vote task's loss and metric:

* Every run trains a model from scratch on the whole training split with the Dirichlet-multinomial loss of the
  vote counts (``timm_astro.losses``) and the built-in ``gz2_votes`` recipe (train.py's keys; ``--set KEY=VALUE``
  changes one) through ``timm_astro.training``, for an equal compute budget: a probe of a few optimizer steps
  measures the model's CPU-seconds per step (``lowdata.probe_step_cost``), and the run gets ``--budget-cpu-s / that``
  steps. Warm-up is ``--warmup-fraction`` of the steps (``lowdata.warmup_steps``), then cosine, counted in steps.
* Each model's lr is chosen from ``--lr-grid`` by the lowest mean validation loss over the seeds (ties to the
  smaller lr); a choice at an end of the grid is flagged as not bracketed. Only the chosen lr's runs are scored on
  test, once; the other lrs' weights are deleted unscored.
* Scored on test: the Dirichlet-multinomial loss, and per question the mean absolute error of the expected vote
  fractions (``timm_astro.evaluation.votes.vote_metrics``: over the galaxies with at least one vote on it,
  unweighted). Every galaxy's error per question is kept, so each difference the report states comes with a paired
  two-level bootstrap 95% interval (``timm_astro.evaluation.compare.paired_bootstrap_mean``: galaxies and seeds
  resampled, the same draws for both models): an Astroformer against the best peer (on validation loss) and a peer
  against the best Astroformer, overall (a galaxy's error is the mean over the questions it has votes on) and per
  question.

Writes ``<out-dir>/<name>.json`` (every run, with its per-galaxy test errors) and ``<name>.md``. Example::

    python benchmarks/votes_benchmark.py --data-dir data/gz2 --models astroformer_small@16 resnet18@64 \\
        --seeds 0 1 --budget-cpu-s 90 --lr-grid 1e-3 3e-3 --jobs 1 --threads 1 --name votes_cpu
"""
import argparse
import hashlib
import json
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import timm_astro  # noqa: E402,F401  registers the astroformer models
from timm.data import create_transform  # noqa: E402
from timm_astro.commands.train_votes import GZ2_VOTES_RECIPE  # noqa: E402
from timm_astro.data.votes import VotesDataset, read_vote_set_info  # noqa: E402
from timm_astro.evaluation.compare import paired_bootstrap_mean  # noqa: E402
from timm_astro.evaluation.votes import (expected_fractions, observed_fractions, predict_votes,  # noqa: E402
                                         vote_metrics)
from timm_astro.losses import DirichletMultinomialLoss, mean_galaxy_nll  # noqa: E402
from timm_astro.training import train_args, train_classifier  # noqa: E402

from benchutils import (  # noqa: E402
    command_line, fmt_num, json_dumps_compact, machine_info, markdown_table, write_text_atomic)
from lowdata import (  # noqa: E402
    NORMALISE, InProcess, _set_threads, build_model, parse_model, probe_step_cost, warmup_steps)

FORMAT = 1
DEFAULT_MODELS = ('astroformer_small@16', 'resnet18@64')
LR_RULE = 'the lowest mean validation loss over the seeds, ties to the smaller lr'
Key = Tuple[str, int, float]  # model, seed, lr


def data_config(size: int, args: argparse.Namespace) -> Dict[str, Any]:
    return {'input_size': (3, size, size), 'crop_pct': args.crop_pct, 'interpolation': 'bicubic', **NORMALISE}


def eval_set(root: Path, split: str, config: Dict[str, Any]) -> VotesDataset:
    dataset = VotesDataset(root, split)
    dataset.transform = create_transform(**config, is_training=False)
    return dataset


def galaxy_errors(fractions: np.ndarray, counts: np.ndarray, tree) -> np.ndarray:
    """``[galaxies, questions]``: each galaxy's mean absolute fraction error over a question's answers, NaN where
    it has no vote on that question (as ``vote_metrics`` leaves it out)."""
    observed = observed_fractions(counts, tree)
    return np.stack([np.abs(fractions[:, s] - observed[:, s]).mean(1) for s in tree.slices], 1)


def score(model: torch.nn.Module, dataset: VotesDataset, args: argparse.Namespace, split: str,
          per_galaxy: bool) -> Dict[str, Any]:
    """The loss per galaxy, the mean of the questions' fraction MAEs, each question's MAE and (``per_galaxy``)
    every galaxy's error per question."""
    tree = dataset.tree
    concentrations, counts = predict_votes(model, dataset, batch_size=args.eval_batch_size, workers=args.workers)
    fractions = expected_fractions(concentrations, tree).numpy()
    metrics = vote_metrics(fractions, counts.numpy(), tree)
    loss = mean_galaxy_nll(concentrations.double(), counts.double(), tree)
    out = {f'{split}_loss': round(float(loss), 5), f'{split}_mae': round(metrics['mean_mae'], 6),
           f'{split}_mae_by_question': {q: None if m['mae'] is None else round(m['mae'], 6)
                                        for q, m in metrics['questions'].items()}}
    if per_galaxy:
        errors = galaxy_errors(fractions, counts.numpy(), tree)
        out[f'{split}_errors'] = [[None if np.isnan(v) else round(float(v), 5) for v in row] for row in errors]
    return out


def weights_path(cache_dir: Path, name: str, key: Key) -> Path:
    digest = hashlib.sha1(json.dumps(list(key)).encode()).hexdigest()[:16]
    return cache_dir / 'votes_weights' / name / f'{digest}.pt'


def train_run(key: Key, recipe: Dict[str, Any], data_root: Path, args: argparse.Namespace,
              weights: Path) -> Dict[str, Any]:
    """Train one model with one seed and lr for the CPU budget, score it on validation, keep its weights for test."""
    spec, seed, lr = key
    torch.set_num_threads(args.threads or torch.get_num_threads())
    dataset = VotesDataset(data_root, 'train')
    tree = dataset.tree
    model, size = build_model(spec, tree.n_answers, recipe, seed)
    config = data_config(size, args)
    targs = train_args({**recipe, 'lr': lr, 'seed': seed, 'sched_on_updates': True})
    loss_fn = DirichletMultinomialLoss(tree)
    probe = probe_step_cost(model, dataset, targs, config, tree.n_answers, args, loss_fn=loss_fn)
    steps = max(1, round(args.budget_cpu_s / probe['cpu_s_per_step']))
    warmup = warmup_steps(steps, args.warmup_fraction, args.warmup_min_steps)
    targs.warmup_epochs = warmup / max(1, len(dataset) // targs.batch_size)  # train_classifier: back to steps
    result = train_classifier(model, dataset, targs, data_config=config, num_classes=tree.n_answers,
                              device=torch.device(args.device), workers=args.workers, steps=steps,
                              log_every=max(1, steps // 10), loss_fn=loss_fn)
    trained = result.final_model.eval()
    out: Dict[str, Any] = {
        'model': spec, 'seed': seed, 'lr': lr, 'params': sum(p.numel() for p in trained.parameters()),
        'probe': probe, 'steps': result.steps, 'warmup_steps': warmup, 'train_cpu_s': round(result.cpu_seconds, 3),
        'train_wall_s': round(result.wall_seconds, 3),
        'history': [{'step': h['step'], 'train_loss': round(h['train_loss'], 4), 'cpu_s': round(h['cpu_s'], 3)}
                    for h in result.history]}
    out.update(score(trained, eval_set(data_root, 'validation', config), args, 'validation', per_galaxy=False))
    weights.parent.mkdir(parents=True, exist_ok=True)
    partial = weights.with_name(f'.{weights.name}.partial')
    torch.save(trained.state_dict(), partial)
    os.replace(partial, weights)
    return out


def test_run(key: Key, recipe: Dict[str, Any], num_answers: int, data_root: Path, args: argparse.Namespace,
             weights: Path) -> Dict[str, Any]:
    """Score a chosen run's weights on the test split, per galaxy, then delete them."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    model, size = build_model(key[0], num_answers, recipe, key[1])
    model.load_state_dict(torch.load(weights, map_location='cpu'))
    out = score(model.eval(), eval_set(data_root, 'test', data_config(size, args)), args, 'test', per_galaxy=True)
    weights.unlink()
    return out


def choose_lr(runs: Sequence[Dict[str, Any]], model: str, seeds: Sequence[int],
              grid: Sequence[float]) -> Dict[str, Any]:
    """The lr with the lowest mean validation loss over ``seeds`` (ties, within 1e-4, to the smaller), and whether
    it is an end of a grid of two or more."""
    by_lr = {lr: [r['validation_loss'] for r in runs if r['model'] == model and r['lr'] == lr and r['seed'] in seeds]
             for lr in sorted(grid)}
    means = {lr: statistics.mean(v) for lr, v in by_lr.items() if len(v) == len(seeds)}
    if len(means) < len(by_lr):
        return {'validation_loss_by_lr': means}
    best = min(means, key=lambda lr: (round(means[lr], 4), lr))
    lrs = sorted(means)
    edge = None if len(lrs) < 2 else 'low' if best == lrs[0] else 'high' if best == lrs[-1] else None
    return {'validation_loss_by_lr': means, 'lr': best, 'edge': edge}


def _is_astroformer(spec: str) -> bool:
    return spec.startswith('astroformer')


def _errors(run: Dict[str, Any]) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in run['test_errors']], dtype=np.float64)


def comparisons(report: Dict[str, Any], n_boot: int) -> List[Dict[str, Any]]:
    """Each model against the best of the other side (best peer for an Astroformer, best Astroformer for a peer;
    best by validation loss), on test: the per-galaxy error overall and per question, paired over the seeds both
    have, with the paired bootstrap interval over galaxies and seeds (same draws for both models)."""
    chosen = {e['model']: {r['seed']: r for r in report['runs'] if r['model'] == e['model'] and r['lr'] == e['lr']
                           and 'test_errors' in r}
              for e in report['summary'] if 'lr' in e}
    val = {m: statistics.mean(r['validation_loss'] for r in runs.values()) for m, runs in chosen.items() if runs}
    questions = report['settings']['questions']
    out = []
    for model, runs in chosen.items():
        others = [m for m in val if _is_astroformer(m) != _is_astroformer(model)] or [m for m in val if m != model]
        if not others or not runs:
            continue
        reference = min(others, key=lambda m: val[m])
        seeds = sorted(set(runs) & set(chosen[reference]))
        if not seeds:
            continue
        a = np.stack([_errors(runs[s]) for s in seeds])  # [seeds, galaxies, questions]
        b = np.stack([_errors(chosen[reference][s]) for s in seeds])
        with np.errstate(all='ignore'):
            overall_a, overall_b = np.nanmean(a, axis=2), np.nanmean(b, axis=2)
        answered = ~np.isnan(overall_a[0])  # the counts decide which galaxies are answered: the same for both
        entry = {'model': model, 'reference': reference, 'seeds': seeds,
                 'overall': {'galaxies': int(answered.sum()),
                             **vars(paired_bootstrap_mean(overall_a[:, answered], overall_b[:, answered],
                                                          n_boot=n_boot))},
                 'by_question': {}}
        for i, question in enumerate(questions):
            has = ~np.isnan(a[0, :, i])
            if has.any():
                entry['by_question'][question] = {'galaxies': int(has.sum()), **vars(
                    paired_bootstrap_mean(a[:, has, i], b[:, has, i], n_boot=n_boot))}
        out.append(entry)
    return out


def _stats(values: List[float]) -> Dict[str, float]:
    return {'mean': statistics.mean(values), 'std': statistics.stdev(values) if len(values) > 1 else 0.0,
            'n': len(values)}


def summarize(runs: List[Dict[str, Any]], models: Sequence[str], seeds: Sequence[int],
              grid: Sequence[float]) -> List[Dict[str, Any]]:
    summary = []
    for model in models:
        decision = choose_lr(runs, model, seeds, grid)
        entry: Dict[str, Any] = {'model': model, 'validation_loss_by_lr': {f'{lr:g}': v for lr, v in
                                                                          decision['validation_loss_by_lr'].items()}}
        if 'lr' in decision:
            members = [r for r in runs if r['model'] == model and r['lr'] == decision['lr']]
            entry.update(lr=decision['lr'], lr_edge=decision['edge'], params=members[0]['params'])
            for metric in ('validation_loss', 'validation_mae', 'test_loss', 'test_mae', 'train_cpu_s', 'steps'):
                values = [r[metric] for r in members if metric in r]
                if values:
                    entry[metric] = _stats(values)
        summary.append(entry)
    return summary


def _interval(c: Optional[Dict[str, Any]], digits: int = 4) -> str:
    if c is None:
        return '—'
    text = f"{c['mean']:+.{digits}f} [{c['low']:+.{digits}f}, {c['high']:+.{digits}f}]"
    return text + (' no measurable difference' if c['low'] <= 0 <= c['high'] else '')


def _mean_std(entry: Dict[str, Any], metric: str, digits: int) -> str:
    if metric not in entry:
        return '—'
    return f"{entry[metric]['mean']:.{digits}f} ± {entry[metric]['std']:.{digits}f}"


def render_markdown(report: Dict[str, Any]) -> str:
    s, m = report['settings'], report['machine']
    sizes = s['sizes']
    lines = [
        f"# Galaxy Zoo vote prediction: {s['data_name']}\n",
        f"Data: `{s['data']}` (the {s['tree']} tree, {len(s['questions'])} questions, {s['answers']} answers; "
        f"{sizes['train']} training, {sizes['validation']} validation, {sizes['test']} test galaxies).\n",
        f"Protocol: equal compute, {s['budget_cpu_s']:g} CPU-seconds of training per run (steps from a "
        f"{s['probe_steps']}-step probe of each model); seeds {s['seeds']} (a seed fixes the initialisation, the "
        f"order and the augmentation); the gz2_votes recipe (train.py keys; changed: {s['sets'] or 'nothing'}), "
        f"Dirichlet-multinomial loss of the vote counts; warm-up {s['warmup_fraction']:.0%} of a run's steps (at "
        f"least {s['warmup_min_steps']}), then cosine; lr chosen per model from {s['lr_grid']} by {s['lr_rule']}; "
        f"only the chosen lr is scored on test. Fraction MAE: per question, the mean over the galaxies with a vote "
        f"on it of |predicted - observed fraction| (mean over its answers), unweighted; the headline is the mean "
        f"over the questions. Differences are paired bootstrap 95% intervals over test galaxies and seeds "
        f"({s['n_boot']} resamples; `timm_astro.evaluation.compare.paired_bootstrap_mean`), the reference chosen "
        f"on validation loss; negative: lower error than the reference.\n",
        f"Machine: {m['cpu_model']} x{m['logical_cpus']} ({m['device']}), torch {m['torch']}, timm {m['timm']}. "
        f"Command: `{report['command']}` ({report['wall_time_s'] / 60:.0f} min, started {report['date']}).\n",
    ]
    summary = report['summary']
    edges = [e for e in summary if e.get('lr_edge')]
    if edges:
        lines.append('**Warning: the lr grid does not bracket the optimum** of '
                     + '; '.join(f"`{e['model']}` ({e['lr']:g}, the grid's {e['lr_edge']} end)" for e in edges)
                     + '. Their scores may be below what the model can do.\n')
    found = {c['model']: c for c in report.get('comparisons', [])}
    rows = []
    for e in summary:
        if 'lr' not in e:
            rows.append([f"`{e['model']}`", 'incomplete', '', '', '', '', '', '', ''])
            continue
        c = found.get(e['model'])
        rows.append([f"`{e['model']}`", f"{e['lr']:g}" + (f" **({e['lr_edge']} end)**" if e['lr_edge'] else ''),
                     fmt_num(e['params'] / 1e6), _mean_std(e, 'steps', 0), fmt_num(e['train_cpu_s']['mean']),
                     _mean_std(e, 'validation_loss', 2), _mean_std(e, 'test_loss', 2), _mean_std(e, 'test_mae', 4),
                     (_interval(c['overall']) + f" vs `{c['reference']}`") if c else '—'])
    lines.append(markdown_table(['model', 'lr', 'params (M)', 'steps', 'train CPU-s', 'validation loss',
                                 'test loss', 'test fraction MAE', 'test per-galaxy MAE difference [95%]'], rows))
    for c in report.get('comparisons', []):
        if not _is_astroformer(c['model']) and any(_is_astroformer(o['model']) for o in report['comparisons']):
            continue  # the peers' rows mirror the Astroformers'
        by_model = {e['model']: e for e in summary}
        lines.append(f"### Per question: `{c['model']}` − `{c['reference']}` (test, seeds {c['seeds']})\n")
        q_rows = []
        for question, d in c['by_question'].items():
            mae = [by_model[x]['test_mae_by_question'].get(question) for x in (c['model'], c['reference'])]
            q_rows.append([question, d['galaxies']] + ['—' if v is None else f'{v:.4f}' for v in mae]
                          + [_interval(d)])
        lines.append(markdown_table(['question', 'galaxies', f"`{c['model']}` MAE", f"`{c['reference']}` MAE",
                                     'difference [95%]'], q_rows))
    lines.append('## Validation loss (mean over seeds) by lr\n')
    lines.append(markdown_table(['model', 'lr: validation loss (chosen in bold)'], [
        [f"`{e['model']}`", ', '.join(f'**{lr}: {v:.2f}**' if e.get('lr') == float(lr) else f'{lr}: {v:.2f}'
                                      for lr, v in e['validation_loss_by_lr'].items())] for e in summary]))
    return '\n'.join(lines)


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-dir', type=Path, required=True, help='a vote set (timm-astro import gz2-votes)')
    parser.add_argument('--cache-dir', type=Path, default=Path.home() / '.cache' / 'timm-astro' / 'benchmarks',
                        help='the weights that wait for the lr choice before test')
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS), help='NAME@SIZE or NAME[k=v,...]@SIZE')
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    parser.add_argument('--budget-cpu-s', type=float, default=90.0, help='training CPU-seconds per run')
    parser.add_argument('--probe-steps', type=int, default=5, help='steps of the cost probe')
    parser.add_argument('--lr-grid', type=float, nargs='+', default=[1e-3, 3e-3], metavar='LR')
    parser.add_argument('--warmup-fraction', type=float, default=0.05)
    parser.add_argument('--warmup-min-steps', type=int, default=5)
    parser.add_argument('--set', dest='sets', nargs='*', default=[], metavar='KEY=VALUE', help='recipe overrides')
    parser.add_argument('--crop-pct', type=float, default=1.0, help='evaluation centre crop (timm crop_pct)')
    parser.add_argument('--eval-batch-size', type=int, default=64)
    parser.add_argument('--n-boot', type=int, default=10000, help='bootstrap resamples of each interval')
    parser.add_argument('--workers', type=int, default=0, help='loader workers (0: in process, counted in CPU-s)')
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default; 1 per --jobs worker)')
    parser.add_argument('--jobs', type=int, default=1, help='runs side by side, one single-threaded process each')
    parser.add_argument('--device', default='cpu', choices=['cpu'], help='CPU-seconds measure CPU training only')
    parser.add_argument('--out-dir', type=Path, default=HERE / 'results')
    parser.add_argument('--name', default='votes')
    args = parser.parse_args(argv)
    for name in ('probe_steps', 'n_boot', 'jobs', 'eval_batch_size'):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} {getattr(args, name)}: expected 1 or more")
    if args.budget_cpu_s <= 0 or any(lr <= 0 for lr in args.lr_grid) or len(args.seeds) < 1:
        raise SystemExit('--budget-cpu-s and every --lr-grid value must be above 0, with at least one seed')
    for spec in args.models:
        parse_model(spec)
    return args


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    started = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_root = args.data_dir
    info = read_vote_set_info(data_root)
    recipe = {k: v for k, v in GZ2_VOTES_RECIPE.items() if k != 'img_size'}  # each model's size is its own
    for item in args.sets:
        key, _, value = item.partition('=')
        recipe[key.strip()] = yaml.safe_load(value)
    train_args({**recipe, 'lr': args.lr_grid[0]})  # refuse a bad recipe before the first run
    sets = {split: VotesDataset(data_root, split) for split in ('train', 'validation', 'test')}
    tree = sets['train'].tree
    grid = sorted(args.lr_grid)
    out_base = args.out_dir / args.name
    json_path, md_path = Path(f'{out_base}.json'), Path(f'{out_base}.md')
    args.out_dir.mkdir(parents=True, exist_ok=True)
    runs: List[Dict[str, Any]] = []
    machine = machine_info(args.device)

    def write_report(final: bool = False) -> Dict[str, Any]:
        summary = summarize(runs, args.models, args.seeds, grid)
        for entry in summary:  # per question test MAE of the chosen runs, mean over seeds
            members = [r for r in runs if r['model'] == entry['model'] and r['lr'] == entry.get('lr')
                       and 'test_mae_by_question' in r]
            if members:
                entry['test_mae_by_question'] = {
                    q: None if any(r['test_mae_by_question'][q] is None for r in members) else
                    statistics.mean(r['test_mae_by_question'][q] for r in members) for q in members[0][
                        'test_mae_by_question']}
        report = {
            'command': command_line({args.data_dir: 'DATA_DIR'}),  # no path of this machine
            'date': time.strftime('%Y-%m-%d %H:%M', time.localtime(started)),
            'wall_time_s': time.time() - started, 'machine': machine,
            'settings': {'format': FORMAT, 'data': data_root.name,
                         'data_name': info.get('title', data_root.name), 'tree': tree.name,
                         'questions': [q.name for q in tree.questions], 'answers': tree.n_answers,
                         'sizes': {k: len(v) for k, v in sets.items()}, 'models': args.models, 'seeds': args.seeds,
                         'budget_cpu_s': args.budget_cpu_s, 'probe_steps': args.probe_steps, 'lr_grid': grid,
                         'lr_rule': LR_RULE, 'warmup_fraction': args.warmup_fraction,
                         'warmup_min_steps': args.warmup_min_steps, 'sets': args.sets, 'recipe': recipe,
                         'crop_pct': args.crop_pct, 'n_boot': args.n_boot, 'jobs': args.jobs,
                         'test_files': sets['test'].files},
            'summary': summary, 'runs': runs,
        }
        if final:
            report['comparisons'] = comparisons(report, args.n_boot)
            write_text_atomic(md_path, render_markdown(report))
        write_text_atomic(json_path, json_dumps_compact(report))
        return report

    def log(kind: str, key: Key, result: Dict[str, Any]) -> None:
        shown = (f"validation loss {result['validation_loss']:.2f}, MAE {result['validation_mae']:.4f}, "
                 f"{result['steps']} steps, {result['train_cpu_s']:.0f} CPU-s" if kind == 'train' else
                 f"test loss {result['test_loss']:.2f}, MAE {result['test_mae']:.4f}")
        print(f"[{(time.time() - started) / 60:6.1f} min] {kind} {key[0]} seed {key[1]} lr {key[2]:g}: {shown}",
              flush=True)

    pool: Any = InProcess() if args.jobs == 1 else ProcessPoolExecutor(
        args.jobs, mp_context=multiprocessing.get_context('spawn'), initializer=_set_threads,
        initargs=(args.threads or 1,))
    with pool:
        def collect(future: Any, key: Key) -> None:
            runs.append(future.result())
            log('train', key, runs[-1])
            write_report()
        pending = []
        for key in [(spec, seed, lr) for spec in args.models for lr in grid for seed in args.seeds]:
            future = pool.submit(train_run, key, recipe, data_root, args,
                                 weights_path(args.cache_dir, args.name, key))
            if args.jobs == 1:  # InProcess has run it already: report it now, not after every other run
                collect(future, key)
            else:
                pending.append((future, key))
        for future, key in pending:
            collect(future, key)
        tests = {}
        for spec in args.models:
            decision = choose_lr(runs, spec, args.seeds, grid)
            for r in runs:
                if r['model'] != spec:
                    continue
                path = weights_path(args.cache_dir, args.name, (spec, r['seed'], r['lr']))
                if r['lr'] == decision['lr']:
                    tests[pool.submit(test_run, (spec, r['seed'], r['lr']), recipe, tree.n_answers, data_root,
                                      args, path)] = r
                elif path.exists():
                    path.unlink()  # never scored on test
        for future, r in tests.items():
            r.update(future.result())
            log('test', (r['model'], r['seed'], r['lr']), r)
            write_report()
    report = write_report(final=True)
    print(f'wrote {md_path} and {json_path}')
    return report


if __name__ == '__main__':
    main()
