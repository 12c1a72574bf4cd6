#!/usr/bin/env python3
"""Accuracy with few labelled images: Astroformer against timm peers on real galaxies, under a fixed protocol.

Data: an ImageFolder with ``train/``, ``validation/`` and ``test/`` (``timm-astro import ...`` writes one);
``--data-dir synthetic`` renders the package's synthetic galaxies instead (no download: for a quick check).

For each k in ``--shots`` (training images per class; ``all`` = the whole training split), each seed, each model
and each learning rate of ``--lr-grid``, a model is trained from scratch on k images per class (nested subsets: the
10 of a class are the first 10 of its 30, per seed) with one recipe (``timm_astro.recipes.LOWDATA_GALAXY_RECIPE``,
train.py's keys; ``--set KEY=VALUE`` changes a value, ``--grid 'KEY=V1|V2'`` tries several) through
``timm_astro.training`` (timm's own loader, optimizer and scheduler). How long a run trains is its regime:

* ``--budget-cpu-s S [S ...]``: equal compute. A probe of a few optimizer steps at the run's batch and input size
  measures the model's CPU-seconds per step; the run gets ``S / that`` steps. The probe and the CPU-seconds the
  run actually took are both kept. On a shared machine a probe per run is noisy: ``--probe-only`` measures every
  model one after another and prints ``MODEL=CPU_S`` for ``--step-cost``, which then sets every run's steps.
* ``--converge``: validation top-1 every ``--eval-every`` steps; training stops when it has not improved for
  ``--patience`` evaluations (at most ``--max-steps``, over which the schedule is laid) and the best-validation
  weights are scored.
* ``--steps N``: exactly N steps (the regime when neither of the others is given).

The schedule counts in steps: warm-up is ``--warmup-fraction`` of a run's steps (at least ``--warmup-min-steps``),
then cosine to the end. Every run logs train loss, lr, validation top-1 and training CPU-seconds along the way
(validation's own time is not counted). The lr of each (regime, model, k) is the one with the best mean plain
validation top-1 over the seeds (ties to the smaller lr); a choice at an end of the grid is reported as not
bracketed, and ``--extend-grid N`` trains up to N further values past that end. Only the chosen lr's runs are
scored on test, with and without D4 test-time averaging: the other lrs' test predictions are never computed (their
weights wait in ``--cache-dir`` until the choice, then are deleted). Every scored run keeps its per-image
predictions, so the report's paired bootstrap intervals (``timm_astro.evaluation.compare``) can be recomputed from
the JSON alone.

Models are ``NAME@SIZE`` (input size in px) with optional model arguments, ``NAME[key=value,...]@SIZE``, e.g.
``astroformer_small[rel_pos_type=table]@32``. Every model gets the same normalisation. A model fine-tunes from a
pretraining with ``NAME[pretrained_path=FOLDER/FILE]@SIZE`` (relative to ``--pretrained-dir``): its weights load as
train.py's ``--pretrained-path`` loads them (a new head), the folder names the pretraining, the report compares each
model with peers of the same pretraining and each pretrained model with the same model from scratch (when both ran).

Runs go side by side in ``--jobs`` single-threaded processes (one per core by default). Writes
``<out-dir>/<name>.json`` (every run), ``<name>.md`` (the tables and intervals), ``<name>_curves.png``
(validation top-1 and train loss against CPU-seconds, one column per k) and ``<name>_shots.png``; ``--resume``
keeps the runs already in the JSON, ``--merge`` adds the runs of other JSONs (parts of one study) and
``--report-only`` reports them without training. Reports written before this protocol (no per-image predictions)
are refused. Examples::

    # the CPU study: equal compute at two budgets and to convergence, 3 lrs, 3 seeds, k = 10, 30, 100, all
    python benchmarks/lowdata.py --data-dir data/gz2_classes --budget-cpu-s 60 240 --converge \
        --lr-grid 3e-4 1e-3 3e-3 --shots 10 30 100 all --seeds 0 1 2
    python benchmarks/lowdata.py --data-dir synthetic --models resnet18@16 --shots 4 --seeds 0 --steps 4
"""
import argparse
import copy
import hashlib
import itertools
import json
import math
import multiprocessing
import os
import re
import statistics
import sys
import textwrap
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import timm_astro  # noqa: E402,F401  registers the astroformer models
from timm.data import create_dataset  # noqa: E402
from timm_astro.evaluation.compare import correct_matrix, paired_bootstrap  # noqa: E402
from timm_astro.evaluation.evaluate import LabelledData, evaluate, open_labelled_data  # noqa: E402
from timm_astro.recipes import LOWDATA_GALAXY_RECIPE  # noqa: E402
from timm_astro.training import train_args, train_classifier  # noqa: E402

from benchutils import (  # noqa: E402
    command_line, create_benchmark_model, fmt_num, json_dumps_compact, machine_info, markdown_table,
    write_text_atomic)

FORMAT = 2  # the report format: 2 = the study protocol of issue 25 (regimes, lr choice, per-image predictions)
FORMAT_1_LOWDATA = 'c377f1a'  # the last commit whose lowdata.py reports format-1 JSONs
DEFAULT_MODELS = ('astroformer_small@32', 'resnet18@32', 'convnext_atto@32', 'coatnet_nano_rw_224@32',
                  'astroformer_0@64', 'resnet18@64', 'convnext_atto@64', 'coatnet_nano_rw_224@64')
NORMALISE = {'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5)}  # one normalisation for every model
EVAL_TTA = 'd4'
LR_RULE = 'the best mean plain validation top-1 over the seeds, ties to the smaller lr'
# Two mean top-1s closer than this are a tie: each top-1 is rounded to 1e-4 points (timm_astro.evaluation.metrics),
# so equal numbers of correct images can differ by up to 1e-4 in the mean, while one image more in S seeds of N
# validation images is 100 / (S * N) points, above this for S * N < 500,000.
TIE_POINTS = 2e-4
Key = Tuple[str, str, str, str, int, float]  # regime, recipe, model, shots, seed, lr
Cell = Tuple[str, str, str, str]  # regime, recipe, model, shots


def parse_model(spec: str) -> Tuple[str, Dict[str, Any], int]:
    """``NAME[k=v,...]@SIZE`` -> (name, model kwargs, input size)."""
    match = re.fullmatch(r'([\w.]+)(?:\[([^\]]*)\])?@(\d+)', spec)
    if not match:
        raise SystemExit(f'--models {spec!r}: expected NAME@SIZE or NAME[key=value,...]@SIZE')
    kwargs = dict(_key_value(item) for item in match.group(2).split(',')) if match.group(2) else {}
    return match.group(1), kwargs, int(match.group(3))


def _key_value(item: str) -> Tuple[str, Any]:
    key, sep, value = item.partition('=')
    if not sep or not key:
        raise SystemExit(f'{item!r}: expected KEY=VALUE')
    return key.strip(), yaml.safe_load(value)


def recipe_variants(base: Dict[str, Any], sets: Sequence[str], grids: Sequence[str]) -> Dict[str, Dict[str, Any]]:
    """The recipes to run, keyed by a short id ('base', or 'lr=0.001,mixup=0.2' for grid points)."""
    recipe = {**base, **dict(_key_value(s) for s in sets)}
    axes = []
    for grid in grids:
        key, _, values = grid.partition('=')
        axes.append([(key, yaml.safe_load(v)) for v in values.split('|')])
    if not axes:
        return {'base': recipe}
    return {','.join(f'{k}={v}' for k, v in point): {**recipe, **dict(point)} for point in itertools.product(*axes)}


def class_indices(dataset) -> Dict[int, List[int]]:
    by_class: Dict[int, List[int]] = {}
    for index, (_, target) in enumerate(dataset.reader.samples):
        by_class.setdefault(int(target), []).append(index)
    return by_class


def few_shot_indices(by_class: Dict[int, List[int]], shots: Optional[int], seed: int) -> List[int]:
    """k images per class (all if None), nested across k for one seed: the first k of a seeded permutation."""
    rng = np.random.default_rng(seed)
    chosen = []
    for target in sorted(by_class):
        order = [by_class[target][i] for i in rng.permutation(len(by_class[target]))]
        chosen += order if shots is None else order[:shots]
    return sorted(chosen)


def synthetic_data(cache_dir: Path) -> Path:
    """The package's synthetic galaxies with a test split, rendered once (a download-free stand-in)."""
    from timm_astro.data.synthetic_galaxies import GENERATOR_VERSION, write_image_folder
    root = cache_dir / f'synthetic_galaxies_v{GENERATOR_VERSION}_64px_lowdata'
    if not root.exists():
        write_image_folder(root, 40, num_val_per_class=8, num_test_per_class=8, seed=0, image_size=64)
    return root


def regimes_from_args(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """The training regimes a run can be given, keyed by a short id ('steps160', 'cpu60s', 'converge')."""
    regimes: Dict[str, Dict[str, Any]] = {}
    if args.steps is not None or not (args.budget_cpu_s or args.converge):
        steps = 160 if args.steps is None else args.steps
        regimes[f'steps{steps}'] = {'kind': 'steps', 'steps': steps}
    for budget in args.budget_cpu_s or []:
        regimes[f'cpu{budget:g}s'] = {'kind': 'budget', 'cpu_s': budget}
    if args.converge:
        regimes['converge'] = {'kind': 'converge', 'max_steps': args.max_steps, 'eval_every': args.eval_every,
                               'patience': args.patience}
    return regimes


def regime_title(regime: Dict[str, Any]) -> str:
    if regime['kind'] == 'steps':
        return f"Fixed length: {regime['steps']} optimizer steps per run"
    if regime['kind'] == 'budget':
        return f"Equal compute: {regime['cpu_s']:g} CPU-seconds of training per run"
    return (f"Trained to convergence: validation every {regime['eval_every']} steps, stopped after "
            f"{regime['patience']} evaluations without improvement (at most {regime['max_steps']} steps), "
            f"best-validation weights")


def warmup_steps(steps: int, fraction: float, floor: int) -> int:
    """Warm-up length in steps: a fraction of the run, at least ``floor``, at most half the run."""
    return min(max(floor, round(fraction * steps)), steps // 2)


def key_of(run: Dict[str, Any]) -> Key:
    return run['regime'], run['recipe'], run['model'], run['shots'], run['seed'], run['lr']


def cell_of(run: Dict[str, Any]) -> Cell:
    return run['regime'], run['recipe'], run['model'], run['shots']


_EVAL_DATA: Dict[Tuple[str, str], LabelledData] = {}


def eval_data(root: Path, split: str) -> LabelledData:
    """A split's labelled data, opened once per process."""
    if (str(root), split) not in _EVAL_DATA:
        _EVAL_DATA[str(root), split] = open_labelled_data(root, split)
    return _EVAL_DATA[str(root), split]


def eval_config(size: int, crop_pct: float) -> Dict[str, Any]:
    """The data config every model of the study is trained and scored with at input ``size``."""
    return {'input_size': (3, size, size), 'crop_pct': crop_pct, 'interpolation': 'bicubic', **NORMALISE}


def score(model: torch.nn.Module, data: LabelledData, data_config: Dict[str, Any], args: argparse.Namespace,
          split: str) -> Dict[str, Any]:
    """Top-1, balanced accuracy and the predicted class of every image, plain and with D4 averaging."""
    evaluation = evaluate(model, data, data_config=data_config, tta=EVAL_TTA, batch_size=args.eval_batch_size,
                          workers=args.workers, device=args.device, progress=False)
    out: Dict[str, Any] = {}
    for mode, metrics in evaluation.metrics.items():
        tag = '' if mode == 'none' else f'_{mode}'
        out[f'{split}_top1{tag}'] = metrics['top1']
        out[f'{split}_balanced{tag}'] = metrics['balanced_accuracy']
        out[f'{split}_pred{tag}'] = evaluation.probs(mode).argmax(-1).tolist()
    return out


def _step_cost(text: str) -> Tuple[str, float]:
    """``MODEL=CPU_S`` (``--step-cost``): a model spec without pretrained_path and its CPU-seconds per step."""
    spec, sep, value = text.rpartition('=')
    try:
        cost = float(value)
    except ValueError:
        cost = float('nan')
    if not sep or not spec or not math.isfinite(cost) or cost <= 0:
        raise argparse.ArgumentTypeError(f'{text!r}: expected MODEL@SIZE=CPU_S, CPU-seconds per step above 0 '
                                         f'(resnet18@64=0.674)')
    return scratch_spec(spec), cost


def pretraining_of(spec: str) -> str:
    """The pretraining a model spec starts from: the folder of its ``pretrained_path`` ('' from scratch). The
    weights of one pretraining (one per model) share a folder, so 'the same pretraining' is the same folder."""
    path = parse_model(spec)[1].get('pretrained_path')
    return '' if path is None else (Path(str(path)).parent.name or Path(str(path)).name)


def scratch_spec(spec: str) -> str:
    """The same model spec without its pretrained weights (what a pretrained model is compared with), cut from the
    spec's text so that the other arguments read exactly as the scratch model's spec writes them."""
    name, _, size = parse_model(spec)
    inner = re.fullmatch(r'[\w.]+(?:\[([^\]]*)\])?@\d+', spec).group(1) or ''
    rest = ','.join(i for i in inner.split(',') if i.partition('=')[0].strip() != 'pretrained_path')
    return f'{name}[{rest}]@{size}' if rest else f'{name}@{size}'


def pretrained_file(spec: str, pretrained_dir: Optional[Path]) -> Optional[Path]:
    """The weights file a spec's ``pretrained_path`` names, relative to ``--pretrained-dir`` (so that reports name
    no machine's folders); refused, with the path it looked at, when it is not a file."""
    path = parse_model(spec)[1].get('pretrained_path')
    if path is None:
        return None
    full = Path(pretrained_dir or '.') / str(path)
    if not full.is_file():
        raise SystemExit(f'--models {spec}: pretrained_path {path} is not a file under --pretrained-dir '
                         f'({full}); expected the weights of a pretraining (train.py\'s model_best.pth.tar, an '
                         f'exported model.safetensors)')
    return full


def build_model(spec: str, num_classes: int, recipe: Dict[str, Any], seed: int,
                pretrained_dir: Optional[Path] = None, load_pretrained: bool = True) -> Tuple[torch.nn.Module, int]:
    """The spec's model with a fresh head of ``num_classes`` initialised from ``seed``; with ``pretrained_path``,
    the rest comes from those weights exactly as train.py's ``--pretrained-path`` loads them (timm's
    ``load_pretrained`` with ``num_classes=-1``: every weight but the classifier's)."""
    name, model_kwargs, size = parse_model(spec)
    model_kwargs.pop('pretrained_path', None)
    weights = pretrained_file(spec, pretrained_dir) if load_pretrained else None
    if weights is not None:
        model_kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights), num_classes=-1))
    torch.manual_seed(seed)
    model = create_benchmark_model(name, num_classes=num_classes, img_size=size,
                                   drop_path_rate=recipe.get('drop_path') or 0.0, **model_kwargs)
    return model, size


def probe_step_cost(model: torch.nn.Module, dataset, targs: argparse.Namespace, data_config: Dict[str, Any],
                    num_classes: int, args: argparse.Namespace,
                    loss_fn: Optional[torch.nn.Module] = None) -> Dict[str, float]:
    """CPU-seconds per optimizer step of this model at this batch and input size, data loading included: a few
    steps of a copy of the model (the first, which allocates and starts the loader, left out; the median of the
    rest). ``loss_fn``: another task's loss, as the run will train with (votes_benchmark.py)."""
    result = train_classifier(copy.deepcopy(model), dataset, targs, data_config=data_config, num_classes=num_classes,
                              device=torch.device(args.device), workers=args.workers, steps=args.probe_steps + 1,
                              log_every=1, loss_fn=loss_fn)
    elapsed = [h['cpu_s'] for h in result.history]
    per_step = [b - a for a, b in zip(elapsed, elapsed[1:])]
    return {'steps': len(per_step), 'cpu_s_per_step': round(statistics.median(per_step), 5),
            'first_step_cpu_s': round(elapsed[0], 4), 'cpu_s': round(result.cpu_seconds, 3)}


def run_inputs(key: Key, recipe: Dict[str, Any], data_root: Path, args: argparse.Namespace):
    """A run's training subset, model, data config, train.py arguments and number of classes."""
    _, _, spec, shots, seed, lr = key
    torch.set_num_threads(args.threads or torch.get_num_threads())
    dataset = create_dataset('', root=str(data_root), split='train', is_training=True)
    by_class = class_indices(dataset)
    dataset.reader.samples = [dataset.reader.samples[i] for i in
                              few_shot_indices(by_class, None if shots == 'all' else int(shots), seed)]
    model, size = build_model(spec, len(by_class), recipe, seed, args.pretrained_dir)
    data_config = eval_config(size, args.crop_pct)
    targs = train_args({**recipe, 'lr': lr, 'seed': seed, 'sched_on_updates': True})
    return dataset, model, data_config, targs, len(by_class)


def probe_only(args: argparse.Namespace, recipes: Dict[str, Dict[str, Any]], data_root: Path) -> List[str]:
    """``--probe-only``: each architecture's CPU-seconds per step, one after another in this process (so that
    their ratios are measured side by side), as ``MODEL=CPU_S`` for ``--step-cost``."""
    recipe_id, recipe = next(iter(recipes.items()))
    costs = []
    for spec in dict.fromkeys(scratch_spec(s) for s in args.models):
        key = ('probe', recipe_id, spec, args.shots[0], args.seeds[0], float(recipe['lr']))
        dataset, model, data_config, targs, num_classes = run_inputs(key, recipe, data_root, args)
        probe = probe_step_cost(model, dataset, targs, data_config, num_classes, args)
        costs.append(f"{spec}={probe['cpu_s_per_step']}")
        print(costs[-1], flush=True)
    return costs


def train_run(key: Key, recipe: Dict[str, Any], regime: Dict[str, Any], data_root: Path, args: argparse.Namespace,
              weights: Optional[Path]) -> Dict[str, Any]:
    """Train one model on one subset with one lr under one regime, log its curve, score it on validation (plain and
    D4, per image) and, when ``weights`` is given, save the scored weights there for the test split (scored only
    if this lr is chosen)."""
    regime_id, recipe_id, spec, shots, seed, lr = key
    dataset, model, data_config, targs, num_classes = run_inputs(key, recipe, data_root, args)
    steps_per_epoch = max(1, len(dataset) // targs.batch_size)  # train_classifier refuses 0 with a clear message
    out: Dict[str, Any] = {'regime': regime_id, 'recipe': recipe_id, 'model': spec, 'shots': shots, 'seed': seed,
                           'lr': lr, 'train_images': len(dataset), 'params': sum(p.numel() for p in model.parameters())}
    if regime['kind'] == 'budget':
        given = dict(args.step_cost).get(scratch_spec(spec))  # a pretrained model costs what its architecture does
        out['probe'] = ({'cpu_s_per_step': given, 'given': True} if given is not None else
                        probe_step_cost(model, dataset, targs, data_config, num_classes, args))
        steps = max(1, round(regime['cpu_s'] / out['probe']['cpu_s_per_step']))
    else:
        steps = regime['steps'] if regime['kind'] == 'steps' else regime['max_steps']
    warmup = warmup_steps(steps, args.warmup_fraction, args.warmup_min_steps)
    targs.warmup_epochs = warmup / steps_per_epoch  # train_classifier converts it back to steps
    every = regime['eval_every'] if regime['kind'] == 'converge' else max(1, math.ceil(steps / args.curve_points))
    validation = eval_data(data_root, 'validation')
    best: Dict[str, Any] = {'top1': -1.0, 'state': None, 'step': 0, 'cpu_s': 0.0}

    def watch(epoch: float, trained: torch.nn.Module, stats: Dict[str, float]) -> Dict[str, float]:
        plain = evaluate(trained, validation, data_config=data_config, tta='none', batch_size=args.eval_batch_size,
                         workers=args.workers, device=args.device, progress=False).metrics['none']['top1']
        if regime['kind'] == 'converge' and plain > best['top1']:
            best.update(top1=plain, step=stats['step'], cpu_s=stats['cpu_s'],
                        state={k: v.detach().clone() for k, v in trained.state_dict().items()})
        return {'validation_top1': plain}

    def stalled(history: List[Dict[str, float]]) -> bool:
        return regime['kind'] == 'converge' and history[-1]['step'] - best['step'] >= regime['patience'] * every

    result = train_classifier(model, dataset, targs, data_config=data_config, num_classes=num_classes,
                              device=torch.device(args.device), workers=args.workers, steps=steps, log_every=every,
                              on_epoch_end=watch, should_stop=stalled)
    trained = result.final_model
    if regime['kind'] == 'converge':
        trained.load_state_dict(best['state'])
        out.update(best_step=best['step'], best_cpu_s=round(best['cpu_s'], 3), stopped_early=result.steps < steps)
    out.update(steps=result.steps, warmup_steps=warmup, eval_every=every, train_cpu_s=round(result.cpu_seconds, 3),
               train_wall_s=round(result.wall_seconds, 3), final_train_loss=round(result.history[-1]['train_loss'], 5),
               history=[{'step': h['step'], 'epoch': round(h['epoch'], 3), 'train_loss': round(h['train_loss'], 5),
                         'lr': float(f"{h['lr']:.4g}"), 'cpu_s': round(h['cpu_s'], 3),
                         'validation_top1': h['validation_top1']} for h in result.history])
    out.update(score(trained.eval(), validation, data_config, args, 'validation'))
    if weights is not None:
        weights.parent.mkdir(parents=True, exist_ok=True)
        partial = weights.with_name(f'.{weights.name}.partial')
        torch.save(trained.state_dict(), partial)
        os.replace(partial, weights)  # a run killed mid-save leaves no weights, never half of them
    return out


def test_run(key: Key, recipe: Dict[str, Any], num_classes: int, data_root: Path, args: argparse.Namespace,
             weights: Path) -> Dict[str, Any]:
    """Score a chosen run's saved weights on the test split (plain and D4, per image), then delete them."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    spec = key[2]
    model, size = build_model(spec, num_classes, recipe, key[4], load_pretrained=False)
    model.load_state_dict(torch.load(weights, map_location='cpu'))
    data_config = eval_config(size, args.crop_pct)
    out = score(model.eval(), eval_data(data_root, 'test'), data_config, args, 'test')
    weights.unlink()
    return out


def weights_path(cache_dir: Path, name: str, key: Key) -> Path:
    digest = hashlib.sha1(json.dumps(list(key)).encode()).hexdigest()[:16]
    return cache_dir / 'lowdata_weights' / name / f'{digest}.pt'


def decide(runs: Sequence[Dict[str, Any]], cell: Cell, seeds: Sequence[int], base_grid: Sequence[float],
           extend: int) -> Dict[str, Any]:
    """The lr choice of one (regime, recipe, model, k) from its validation scores.

    Returns the cell's grid, the mean plain validation top-1 of each lr over ``seeds``, and, once every lr has
    every seed: the chosen ``lr`` and ``edge`` ('low' / 'high' when it is an end of a grid of 2 or more), or
    ``extend`` (the next lr past that end, while fewer than ``extend`` values have been added).
    """
    members = [r for r in runs if cell_of(r) == cell and r['seed'] in seeds]
    grid = sorted(set(base_grid) | {r['lr'] for r in members})
    by_lr = {lr: [r['validation_top1'] for r in members if r['lr'] == lr] for lr in grid}
    decision: Dict[str, Any] = {'grid': grid, 'validation_by_lr': {
        lr: statistics.mean(v) for lr, v in by_lr.items() if v}}
    if any(len(v) < len(seeds) for v in by_lr.values()):
        return decision
    best = grid[0]
    for lr in grid[1:]:  # top-1 is rounded to 1e-4 points: means within TIE_POINTS are the same count of images
        if statistics.mean(by_lr[lr]) > statistics.mean(by_lr[best]) + TIE_POINTS:
            best = lr
    edge = None if len(grid) < 2 else 'low' if best == grid[0] else 'high' if best == grid[-1] else None
    if edge and sum(lr not in base_grid for lr in grid) < extend:
        a, b = (grid[0], grid[1]) if edge == 'low' else (grid[-1], grid[-2])
        return {**decision, 'extend': float(f'{a * a / b:.2g}')}  # the grid's own ratio, one step further
    return {**decision, 'lr': best, 'edge': edge}


class InProcess:
    """An executor that runs each task as it is submitted, in this process (``--jobs 1``)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as error:  # noqa: B902  re-raised by future.result(), as a pool would
            future.set_exception(error)
        return future

    def __enter__(self) -> 'InProcess':
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def _set_threads(threads: int) -> None:
    torch.set_num_threads(threads)


def _stats(values: List[float]) -> Dict[str, float]:
    return {'mean': statistics.mean(values), 'std': statistics.stdev(values) if len(values) > 1 else 0.0,
            'min': min(values), 'max': max(values), 'n': len(values)}


METRICS = ('test_top1', 'test_top1_d4', 'test_balanced', 'test_balanced_d4', 'validation_top1',
           'validation_top1_d4', 'validation_balanced', 'validation_balanced_d4', 'train_cpu_s', 'steps')


def summarize(runs: List[Dict[str, Any]], decisions: Dict[Cell, Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Per (regime, recipe, model, k): the lr choice, and mean, std and range over seeds of the chosen lr's runs."""
    summary = []
    for cell, decision in decisions.items():
        entry: Dict[str, Any] = {'regime': cell[0], 'recipe': cell[1], 'model': cell[2], 'shots': cell[3],
                                 'lr_grid': decision['grid'],
                                 'validation_by_lr': {f'{lr:g}': v for lr, v in decision['validation_by_lr'].items()}}
        if 'lr' not in decision:
            summary.append({**entry, 'complete': False})
            continue
        members = [r for r in runs if cell_of(r) == cell and r['lr'] == decision['lr']]
        entry.update(complete=True, lr=decision['lr'], lr_edge=decision['edge'],
                     seeds=sorted(r['seed'] for r in members), params=members[0]['params'])
        for metric in METRICS + ('best_step',):
            values = [r[metric] for r in members if metric in r]
            if values:
                entry[metric] = _stats(values)
        summary.append(entry)
    return summary


def _is_astroformer(spec: str) -> bool:
    return spec.startswith('astroformer')


def versus_on_test(runs: Dict[int, Dict[str, Any]], other: Dict[int, Dict[str, Any]], labels: List[int],
                    n_boot: int, modes: Sequence[str] = ('', '_d4'), **what: Any) -> List[Dict[str, Any]]:
    """``runs`` minus ``other`` (both {seed: run}) on test, paired over the seeds both have scored and the test
    images, for each of ``modes`` ('' plain, '_d4' D4-averaged; none when no seed has both)."""
    seeds = [s for s in sorted(runs) if 'test_pred' in runs[s] and 'test_pred' in other.get(s, {})]
    out = []
    for mode in modes if seeds else ():
        a = correct_matrix([runs[s][f'test_pred{mode}'] for s in seeds], labels)
        b = correct_matrix([other[s][f'test_pred{mode}'] for s in seeds], labels)
        out.append({**what, 'mode': mode.strip('_') or 'plain', 'split': 'test', 'seeds': seeds,
                    **vars(paired_bootstrap(a, b, n_boot=n_boot))})
    return out


def chosen_runs(report: Dict[str, Any]) -> Dict[Cell, Dict[int, Dict[str, Any]]]:
    """The runs of each complete cell's chosen lr, ``{cell: {seed: run}}``."""
    chosen: Dict[Cell, Dict[int, Dict[str, Any]]] = {}
    for e in report['summary']:
        if e.get('complete'):
            cell = (e['regime'], e['recipe'], e['model'], e['shots'])
            chosen[cell] = {r['seed']: r for r in report['runs'] if cell_of(r) == cell and r['lr'] == e['lr']}
    return chosen


def comparisons(report: Dict[str, Any], n_boot: int) -> List[Dict[str, Any]]:
    """Every difference the report states, each with its paired bootstrap 95% interval over test images and seeds,
    plain and D4 apart: each model against the best of the other side with the same pretraining (best peer for an
    Astroformer, best Astroformer for a peer; 'best' on mean validation top-1 in the same mode); a pretrained model
    against itself from scratch and against the same architecture's earlier-listed pretrainings; a model under a
    later recipe against the first recipe; and D4 minus plain per model, on validation and on test."""
    labels = report['settings']['labels']
    chosen = chosen_runs(report)
    out = []
    for group in dict.fromkeys(cell[:2] + cell[3:] for cell in chosen):
        models = {cell[2]: runs for cell, runs in chosen.items() if cell[:2] + cell[3:] == group}
        where = {'regime': group[0], 'recipe': group[1], 'shots': group[2]}
        for model, runs in models.items():
            for split in ('validation', 'test'):
                seeds = [s for s in sorted(runs) if f'{split}_pred' in runs[s]]
                if not seeds:
                    continue
                d4 = correct_matrix([runs[s][f'{split}_pred_d4'] for s in seeds], labels[split])
                plain = correct_matrix([runs[s][f'{split}_pred'] for s in seeds], labels[split])
                out.append({**where, 'kind': 'd4_effect', 'model': model, 'split': split, 'seeds': seeds,
                            **vars(paired_bootstrap(d4, plain, n_boot=n_boot))})
        for model, runs in models.items():
            # the other side with the same pretraining (or none): a fair peer has what the model had
            others = [m for m in models if _is_astroformer(m) != _is_astroformer(model)
                      and pretraining_of(m) == pretraining_of(model)] or \
                     [m for m in models if m != model and pretraining_of(m) == pretraining_of(model)]
            for mode in ('', '_d4') if others else ():
                val = {m: statistics.mean(r[f'validation_top1{mode}'] for r in models[m].values()) for m in others}
                reference = max(others, key=lambda m: val[m])
                out += versus_on_test(runs, models[reference], labels.get('test', []), n_boot, [mode], **where,
                                       kind='versus', model=model, reference=reference)
            if pretraining_of(model) and scratch_spec(model) in models:  # what the pretraining gave
                out += versus_on_test(runs, models[scratch_spec(model)], labels.get('test', []), n_boot, **where,
                                       kind='pretraining', model=model, reference=scratch_spec(model))
            # one pretraining against another of the same architecture (labels against votes, say)
            order = list(models)
            for other in order[:order.index(model)]:
                if pretraining_of(other) and pretraining_of(model) and scratch_spec(other) == scratch_spec(model):
                    out += versus_on_test(runs, models[other], labels.get('test', []), n_boot, **where,
                                           kind='pretraining_vs', model=model, reference=other)
    first = next(iter(report['recipes']))
    for (regime, recipe, model, shots), runs in chosen.items():  # what a recipe changed: the first recipe's runs
        if recipe != first and (regime, first, model, shots) in chosen:
            out += versus_on_test(runs, chosen[(regime, first, model, shots)], labels.get('test', []), n_boot,
                                   regime=regime, recipe=recipe, shots=shots, kind='recipe', model=model,
                                   reference=first)
    return out


def interval_text(c: Optional[Dict[str, Any]]) -> str:
    if c is None:
        return '—'
    text = f"{c['mean']:+.1f} [{c['low']:+.1f}, {c['high']:+.1f}]"
    return text + (' no measurable difference' if c['low'] <= 0 <= c['high'] else '')


def _mean(entry: Dict[str, Any], metric: str, digits: int = 1) -> str:
    return f"{entry[metric]['mean']:.{digits}f}" if metric in entry else '—'


def render_markdown(report: Dict[str, Any]) -> str:
    s, m = report['settings'], report['machine']
    recipe_text = ', '.join(f'{k} {v}' for k, v in s['recipe'].items() if k not in ('epochs', 'warmup_epochs'))
    lr_source = ('each model\'s grid (' + '; '.join(f'`{spec}` {grid}' for spec, grid in s['lr_grid_by_model'].items())
                 + ')'
                 if s.get('lr_grid_by_model') else f"the grid {s['lr_grid']}" if s['lr_grid'] else 'the recipe')
    sizes = s['eval_sizes']
    lines = [
        f"# Low-data accuracy: {s['data_name']}\n",
        f"Data: `{s['data']}` ({s['num_classes']} classes; {s['train_size']} training, "
        + ', '.join(f'{n} {split}' for split, n in sizes.items()) + " images). "
        + ' '.join(f"One {split} image is {100 / max(1, n):.2f} points." for split, n in sizes.items()) + '\n',
        f"Protocol: seeds {s['seeds']} (a seed fixes the k-image subset, the initialisation and the augmentation); "
        f"recipe (train.py keys) {recipe_text}; warm-up {s['warmup_fraction']:.0%} of a run's steps (at least "
        f"{s['warmup_min_steps']}), then cosine, counted in steps; lr chosen per model, k and regime from "
        f"{lr_source} by {s['lr_rule']}; only the chosen "
        f"lr is scored on test, so its validation top-1 is optimistic (it chose the lr) and only test is unbiased. "
        + (f"Steps per run: the budget over CPU-seconds per step measured beforehand, not probed in the run ("
           + ', '.join(f'`{m}` {c:g}' for m, c in s['step_cost'].items()) + '); a run may use more or fewer '
           'CPU-seconds than its budget. ' if s.get('step_cost') else '')
        + f"Test top-1 is the mean over seeds; the differences are paired bootstrap 95% "
        f"intervals over test images and seeds ({s['n_boot']} resamples; `timm_astro.evaluation.compare`), the "
        f"reference chosen on validation.\n",
        f"Machine: {m['cpu_model']} x{m['logical_cpus']} ({m['device']}), torch {m['torch']}, timm {m['timm']}. "
        f"Command: `{report['command']}` ({report['wall_time_s'] / 60:.0f} min, started {report['date']})"
        + ''.join(f"; merging `{p['file']}` ({p['runs']} runs, {p['wall_time_s'] / 60:.0f} min: `{p['command']}`)"
                  for p in report.get('parts', [])) + '.\n',
    ]
    found = {(c['regime'], c['recipe'], c['shots'], c['model'], c.get('mode'), c['kind'], c['split']): c
             for c in report.get('comparisons', [])}
    summary = report['summary']
    edges = [e for e in summary if e.get('lr_edge')]
    if edges:
        lines.append('**Warning: the lr grid does not bracket the optimum** of '
                     + '; '.join(f"`{e['model']}` at k = {e['shots']} ({e['regime']}: {e['lr']:g}, the grid's "
                                 f"{e['lr_edge']} end)" for e in edges)
                     + '. Their scores may be below what the model can do; extend the grid (`--extend-grid`).\n')
    chosen = {(e['regime'], e['recipe'], e['model'], e['shots']): e['lr'] for e in summary if e['complete']}
    unchosen = sorted({(r['model'], r['shots'], r['regime'], r['lr']) for r in report['runs']
                       if 'test_top1' in r and chosen.get(cell_of(r)) != r['lr']}, key=str)
    if unchosen:  # parts merged that each chose their own lr, --resume with more seeds or lrs, weights retrained
        lines.append('**Warning: test was scored for an lr that is not the one chosen** (the protocol scores test '
                     'once, for the chosen lr only): '
                     + '; '.join(f"`{model}` at k = {shots} ({regime}: {lr:g})"
                                 for model, shots, regime, lr in unchosen)
                     + '. Those test scores are not reported, but they were computed: these cells\' test numbers '
                       'are not untouched.\n')
    incomplete = [e for e in summary if not e['complete']]
    if incomplete:
        lines.append('Not scored (some lr or seed missing, so no lr is chosen yet): '
                     + ', '.join(f"`{e['model']}` k = {e['shots']} ({e['regime']})" for e in incomplete) + '.\n')
    shots_order = {k: i for i, k in enumerate(s['shots'])}
    for regime_id, regime in s['regimes'].items():
        for recipe in report['recipes']:
            entries = [e for e in summary if e['regime'] == regime_id and e['recipe'] == recipe and e['complete']]
            if not entries:
                continue
            lines.append(f"## {regime_title(regime)}"
                         + (f' (recipe `{recipe}`)' if len(report['recipes']) > 1 else '') + '\n')
            if regime['kind'] == 'converge':
                lines.append('Validation here is more optimistic still: the split that chose the lr also chose the '
                             'stopping point (the best plain top-1 of every evaluation), so D4 minus plain on '
                             'validation is biased against D4 (plain was maximised, D4 was not); read test.\n')
            for shots in sorted({e['shots'] for e in entries}, key=shots_order.get):
                rows, d4_rows = [], []
                for e in sorted((e for e in entries if e['shots'] == shots), key=lambda e: e['model']):
                    where = (regime_id, recipe, shots, e['model'])
                    steps = _mean(e, 'steps', 0) + (f" (best {_mean(e, 'best_step', 0)})" if 'best_step' in e else '')
                    rows.append([f"`{e['model']}`", f"{e['lr']:g}" + (f" **({e['lr_edge']} end)**" if e['lr_edge']
                                                                      else ''),
                                 steps, fmt_num(e['train_cpu_s']['mean']),
                                 f"{_mean(e, 'validation_top1')} / {_mean(e, 'validation_top1_d4')}",
                                 f"{_mean(e, 'test_top1')} / {_mean(e, 'test_top1_d4')}"]
                                + [interval_text(found.get((*where, mode, 'versus', 'test'))) + (
                                    f" vs `{found[(*where, mode, 'versus', 'test')]['reference']}`"
                                    if (*where, mode, 'versus', 'test') in found else '') for mode in ('plain', 'd4')])
                    d4_rows.append([f"`{e['model']}`"] + [interval_text(found.get((*where, None, 'd4_effect', split)))
                                                          for split in ('validation', 'test')])
                count = s['shot_counts'][shots]
                which = 'the whole training split' if shots == 'all' else f'{count} per class'
                lines.append(f"### k = {shots} ({which}, {len(entries[0]['seeds'])} seeds)\n")
                lines.append(markdown_table(
                    ['model', 'lr', 'steps', 'train CPU-s', 'validation top-1 plain / D4', 'test top-1 plain / D4',
                     'test plain: difference [95%]', 'test D4: difference [95%]'], rows))
                lines.append('D4 averaging minus plain (points, [95%]):\n')
                lines.append(markdown_table(['model', 'validation', 'test'], d4_rows))
                pretrained = [e['model'] for e in entries if e['shots'] == shots
                              and (regime_id, recipe, shots, e['model'], 'plain', 'pretraining', 'test') in found]
                if recipe != next(iter(report['recipes'])):
                    changed = [e['model'] for e in entries if e['shots'] == shots
                               and (regime_id, recipe, shots, e['model'], 'plain', 'recipe', 'test') in found]
                    if changed:
                        lines.append(f"Recipe `{recipe}` minus recipe `{next(iter(report['recipes']))}`, the same "
                                     f"model (test, points, [95%]):\n")
                        lines.append(markdown_table(
                            ['model', 'plain', 'D4'],
                            [[f'`{model}`'] + [interval_text(found[(regime_id, recipe, shots, model, mode, 'recipe',
                                                                'test')]) for mode in ('plain', 'd4')]
                             for model in sorted(changed)]))
                between = [c for c in report.get('comparisons', []) if c['kind'] == 'pretraining_vs'
                           and (c['regime'], c['recipe'], c['shots']) == (regime_id, recipe, shots)]
                if between:
                    lines.append('One pretraining minus another, the same model (test, points, [95%]):\n')
                    lines.append(markdown_table(
                        ['model', 'minus', 'plain', 'D4'],
                        [[f"`{c['model']}`", f"`{c['reference']}`",
                          interval_text(c), interval_text(next(d for d in between if d['model'] == c['model']
                                                       and d['reference'] == c['reference'] and d['mode'] == 'd4'))]
                         for c in between if c['mode'] == 'plain']))
                if pretrained:
                    lines.append('Pretrained minus the same model from scratch (test, points, [95%]):\n')
                    lines.append(markdown_table(
                        ['model', 'from scratch', 'plain', 'D4'],
                        [[f'`{model}`', f'`{scratch_spec(model)}`']
                         + [interval_text(found[(regime_id, recipe, shots, model, mode, 'pretraining', 'test')])
                            for mode in ('plain', 'd4')] for model in sorted(pretrained)]))
    lines.append('## Validation top-1 (plain, mean over seeds) by lr\n')
    rows = []
    for e in sorted(summary, key=lambda e: (e['regime'], e['recipe'], e['model'], shots_order.get(e['shots'], 0))):
        rows.append([e['regime'], f"`{e['model']}`", e['shots']]
                    + [', '.join((f'**{lr}: {v:.1f}**' if e.get('lr') == float(lr) else f'{lr}: {v:.1f}')
                                 for lr, v in e['validation_by_lr'].items())])
    lines.append(markdown_table(['regime', 'model', 'k', 'lr: validation top-1 (chosen in bold)'], rows))
    majority = {split: 100 * max(np.bincount(v)) / len(v) for split, v in s['labels'].items() if v}
    lines.append(f"Chance: {100 / s['num_classes']:.1f}% (uniform guess); always the most common class: "
                 + ', '.join(f'{v:.1f}% of {split}' for split, v in majority.items()) + '.\n')
    return '\n'.join(lines)


def render_plots(report: Dict[str, Any], base: Path) -> List[Path]:
    """``<name>_curves.png``: validation top-1 and train loss against training CPU-seconds, every seed of each
    model's chosen lr, one column per k and two rows per regime; ``<name>_shots.png``: test top-1 with D4 against
    k, one panel per regime."""
    from timm_astro.evaluation.plots import pyplot
    plt = pyplot()
    s = report['settings']
    chosen = {(e['regime'], e['recipe'], e['model'], e['shots']): e['lr'] for e in report['summary'] if e['complete']}
    if not chosen:
        return []
    colours = plt.get_cmap('tab20')
    colour = {model: colours(2 * (i % 10) + i // 10 % 2) for i, model in enumerate(s['models'])}
    regimes = [r for r in s['regimes'] if any(c[0] == r for c in chosen)]
    shots = [k for k in s['shots'] if any(c[3] == k for c in chosen)]
    fig, axes = plt.subplots(2 * len(regimes), len(shots), figsize=(4.2 * len(shots), 2.8 * 2 * len(regimes)),
                             squeeze=False, sharex='col')
    for i, regime in enumerate(regimes):
        for j, k in enumerate(shots):
            acc, loss = axes[2 * i, j], axes[2 * i + 1, j]
            for r in report['runs']:
                if chosen.get(cell_of(r)) != r['lr'] or r['regime'] != regime or r['shots'] != k:
                    continue
                xs = [h['cpu_s'] for h in r['history']]
                style = dict(color=colour.get(r['model']), lw=1, alpha=.8, label=r['model'] if r['seed'] == min(
                    s['seeds']) else None, ls='-' if _is_astroformer(r['model']) else '--')
                acc.plot(xs, [h['validation_top1'] for h in r['history']], **style)
                loss.plot(xs, [h['train_loss'] for h in r['history']], **style)
            acc.set_title(f'{regime}, k = {k}', fontsize=9)
            acc.set_ylabel('validation top-1 (%)', fontsize=8)
            loss.set_ylabel('train loss', fontsize=8)
            loss.set_xlabel('training CPU-seconds', fontsize=8)
            for ax in (acc, loss):
                ax.grid(True, alpha=.3)
                ax.tick_params(labelsize=7)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    title = textwrap.wrap(f"{s['data_name']}: one line per seed, the chosen lr", int(55 * len(shots)))
    fig.suptitle('\n'.join(title), fontsize=9, y=0.995)
    # as many columns as the figure's width holds (about 64 characters of 7-point text per column of panels), long
    # model specs (pretrained_path=...) wrapped to the column, and the panels below the legend's lines
    width = 64 * len(shots)
    ncol = max(1, min(4, len(labels), width // (max(map(len, labels), default=1) + 6)))
    labels = ['\n'.join(textwrap.wrap(label, width // ncol - 6)) for label in labels]
    heights = [label.count('\n') + 1 for label in labels]
    lines = sum(max(heights[i:i + ncol]) for i in range(0, len(heights), ncol))
    legend_top = 0.99 - 0.028 * len(title)
    fig.legend(handles, labels, fontsize=7, loc='upper center', bbox_to_anchor=(0.5, legend_top), ncol=ncol)
    fig.tight_layout(rect=(0, 0, 1, min(0.93, legend_top - 0.03 * (lines + 1) / (2 * len(regimes)))))
    paths = [base.with_name(f'{base.name}_curves.png')]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)

    summary = [e for e in report['summary'] if e['complete'] and 'test_top1_d4' in e]
    if summary:
        fig, axes = plt.subplots(1, len(regimes), figsize=(5.5 * len(regimes), 4.5), squeeze=False)
        for ax, regime in zip(axes[0], regimes):
            for model in s['models']:
                points = sorted((e for e in summary if e['regime'] == regime and e['model'] == model),
                                key=lambda e: s['shot_counts'][e['shots']])
                if points:
                    ax.errorbar([s['shot_counts'][e['shots']] for e in points],
                                [e['test_top1_d4']['mean'] for e in points],
                                yerr=[e['test_top1_d4']['std'] for e in points], marker='o', capsize=3,
                                ls='-' if _is_astroformer(model) else '--', color=colour[model], label=model)
            ax.axhline(100 / s['num_classes'], color='grey', ls=':', lw=1, label='chance')
            ax.set_xscale('log')
            ticks = sorted({s['shot_counts'][k] for k in shots})
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.minorticks_off()
            ax.set_xlabel('labelled training images per class')
            ax.set_ylabel('test top-1 with D4 (%, mean ± std over seeds)')
            ax.set_title('\n'.join(textwrap.wrap(regime_title(s['regimes'][regime]), 60)), fontsize=8)
            ax.grid(True, alpha=.3)
        axes[0, -1].legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1))
        fig.tight_layout()
        paths.append(base.with_name(f'{base.name}_shots.png'))
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def load_report(path: Path) -> Dict[str, Any]:
    """A report of this protocol; an earlier one is refused, since its runs cannot be paired or merged."""
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SystemExit(f'{path}: cannot read a lowdata report ({error})')
    if report.get('settings', {}).get('format') != FORMAT:
        raise SystemExit(f'{path}: a lowdata report from before the study protocol (no per-image predictions, no lr '
                         f'choice, format {report.get("settings", {}).get("format", 1)}); this lowdata.py reads format '
                         f'{FORMAT} only: report it with the lowdata.py of commit {FORMAT_1_LOWDATA}')
    return report


def parse_args(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-dir', required=True,
                        help="ImageFolder with train/, validation/ and test/ (timm-astro import), or 'synthetic'")
    parser.add_argument('--cache-dir', type=Path, default=Path.home() / '.cache' / 'timm-astro' / 'benchmarks',
                        help='synthetic data, and the weights that wait for the lr choice before test')
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS))
    parser.add_argument('--shots', nargs='+', default=['30'], help="images per class, or 'all' (10 30 100 all)")
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    regime = parser.add_argument_group('how long a run trains (one or more regimes)')
    regime.add_argument('--steps', type=int, default=None, help='exactly this many optimizer steps (default 160 '
                                                                'when no other regime is given)')
    regime.add_argument('--budget-cpu-s', type=float, nargs='+', default=[], metavar='S',
                        help='equal compute: steps chosen so that training costs about S CPU-seconds (a probe '
                             'measures each model)')
    regime.add_argument('--converge', action='store_true', help='until validation top-1 stops improving')
    regime.add_argument('--eval-every', type=int, default=20, help='--converge: validation every this many steps')
    regime.add_argument('--patience', type=int, default=5, help='--converge: evaluations without improvement')
    regime.add_argument('--max-steps', type=int, default=2000, help='--converge: the cap (the schedule spans it)')
    regime.add_argument('--step-cost', nargs='+', default=[], type=_step_cost, metavar='MODEL=CPU_S',
                        help='--budget-cpu-s: CPU-seconds per step of a model measured beforehand (on an idle core), '
                             'used instead of the probe: a probe beside other jobs can be off by 2x')
    regime.add_argument('--probe-steps', type=int, default=5, help='--budget-cpu-s: steps of the cost probe')
    regime.add_argument('--probe-only', action='store_true',
                        help="print each model's CPU-seconds per step (MODEL=CPU_S, for --step-cost) and stop")
    regime.add_argument('--curve-points', type=int, default=10,
                        help='validation evaluations along a --steps / --budget-cpu-s run (its curve)')
    parser.add_argument('--warmup-fraction', type=float, default=0.05, help="warm-up steps as a fraction of a run's")
    parser.add_argument('--warmup-min-steps', type=int, default=5, help='warm-up steps at least (at most half a run)')
    parser.add_argument('--lr-grid', type=float, nargs='+', default=None, metavar='LR',
                        help="learning rates to choose from on validation, per model, k and regime (default: the "
                             "recipe's lr alone)")
    parser.add_argument('--extend-grid', type=int, default=0, metavar='N',
                        help='when the chosen lr is an end of the grid, train up to N further values past it')
    parser.add_argument('--pretrained-dir', type=Path, default=None, metavar='DIR',
                        help='where the pretrained_path of a model spec is found: NAME[pretrained_path=gz2/w.pth.tar]'
                             '@SIZE fine-tunes from DIR/gz2/w.pth.tar (a new head; the folder names the pretraining)')
    parser.add_argument('--recipe', default=None, help="a train.py YAML recipe (default: the low-data galaxy one)")
    parser.add_argument('--set', dest='sets', nargs='*', default=[], metavar='KEY=VALUE', help='recipe overrides')
    parser.add_argument('--grid', nargs='*', default=[], metavar='KEY=V1|V2', help='recipe values to try (YAML)')
    parser.add_argument('--crop-pct', type=float, default=1.0,
                        help="evaluation centre crop (timm's crop_pct): 0.5 keeps the central half of each side, "
                             "where a catalogue cutout has its galaxy; pair it with the recipe's training crop `scale`")
    parser.add_argument('--eval-splits', nargs='+', default=['validation', 'test'], choices=['validation', 'test'],
                        help='validation is always scored; leave test out for a recipe search')
    parser.add_argument('--eval-batch-size', type=int, default=50)
    parser.add_argument('--n-boot', type=int, default=10000, help='bootstrap resamples of each interval')
    parser.add_argument('--workers', type=int, default=0, help='loader workers (0: in process, counted in CPU-s)')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch threads (0: torch default; 1 in each --jobs worker)')
    parser.add_argument('--jobs', type=int, default=None,
                        help='runs side by side, each in its own single-threaded process (default: one per core on '
                             'the CPU, 1 on a GPU; 1: every run in this process, on --threads threads)')
    parser.add_argument('--time-budget-s', type=float, default=None,
                        help='start no run after this many seconds (what is done is reported; --resume goes on)')
    parser.add_argument('--device', default='cpu', help="where to train and evaluate ('cuda' on a GPU)")
    parser.add_argument('--out-dir', type=Path, default=HERE / 'results')
    parser.add_argument('--name', default='lowdata')
    parser.add_argument('--resume', action='store_true', help='keep the runs already in the JSON, run the rest')
    parser.add_argument('--merge', nargs='*', type=Path, default=[],
                        help='also report the runs of these JSON files (e.g. parts of one study run in parallel)')
    parser.add_argument('--report-only', action='store_true',
                        help='train nothing: report the runs of --merge (and --resume); k, seeds, models, regimes, '
                             "recipes and lr grid are those runs', whatever the command line says")
    parser.add_argument('--no-plot', action='store_true')
    args = parser.parse_args(argv)
    for name in ('steps', 'eval_every', 'patience', 'max_steps', 'probe_steps', 'curve_points', 'n_boot'):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SystemExit(f"--{name.replace('_', '-')} {value}: expected 1 or more")
    if any(b <= 0 for b in args.budget_cpu_s):
        raise SystemExit(f'--budget-cpu-s {args.budget_cpu_s}: expected CPU-seconds above 0')
    if args.budget_cpu_s and args.device != 'cpu':
        raise SystemExit(f'--budget-cpu-s counts CPU-seconds, which do not measure training on {args.device}: '
                         f'use --converge or --steps there')
    if args.lr_grid and any(lr <= 0 for lr in args.lr_grid):
        raise SystemExit(f'--lr-grid {args.lr_grid}: expected learning rates above 0')
    if args.lr_grid and any(g.partition('=')[0].strip() == 'lr' for g in args.grid):
        raise SystemExit("--grid 'lr=...' and --lr-grid both set the lr: give the lrs to --lr-grid alone")
    if args.jobs is None:
        args.jobs = len(os.sched_getaffinity(0)) if args.device == 'cpu' else 1
    if args.jobs < 1:
        raise SystemExit(f'--jobs {args.jobs}: expected 1 or more processes')
    return args


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    args = parse_args(argv)
    started = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_root = synthetic_data(args.cache_dir) if args.data_dir == 'synthetic' else Path(args.data_dir)
    # the report names these folders by what they are, never by where they lie on the machine it ran on
    placeholders = {args.cache_dir: 'CACHE_DIR', **({} if args.data_dir == 'synthetic' else {data_root: 'DATA_DIR'}),
                    **({args.pretrained_dir: 'PRETRAINED_DIR'} if args.pretrained_dir else {})}
    base = dict(LOWDATA_GALAXY_RECIPE)
    if args.recipe:
        base = yaml.safe_load(Path(args.recipe).read_text())
    recipes = recipe_variants(base, args.sets, args.grid)
    for recipe in recipes.values():
        train_args(recipe)  # refuse a bad recipe before the first run
    for spec in args.models:
        parse_model(spec)
        if not args.report_only:
            pretrained_file(spec, args.pretrained_dir)  # refuse a missing file before the first run
    if args.probe_only:
        return {'step_cost': probe_only(args, recipes, data_root)}
    regimes = regimes_from_args(args)
    splits = ['validation'] + (['test'] if 'test' in args.eval_splits else [])
    data = {split: open_labelled_data(data_root, split) for split in splits}
    labels = {split: list(d.targets) for split, d in data.items()}
    train_full = create_dataset('', root=str(data_root), split='train')
    by_class = class_indices(train_full)
    smallest = min(len(v) for v in by_class.values())

    out_base = args.out_dir / args.name
    # appended, not with_suffix: a name such as part_lr0.001 keeps its dot
    json_path, md_path = Path(f'{out_base}.json'), Path(f'{out_base}.md')
    args.out_dir.mkdir(parents=True, exist_ok=True)
    runs: List[Dict[str, Any]] = []
    earlier_wall_s = 0.0
    reported: List[Dict[str, Any]] = []  # the reports whose runs are kept, for --report-only's settings
    if args.resume and json_path.exists():
        previous = load_report(json_path)
        runs, earlier_wall_s = previous['runs'], previous['wall_time_s']
        reported.append(previous)
    parts = []
    for part in args.merge:
        merged = load_report(part)
        known = {key_of(r) for r in runs}
        reported.append(merged)
        runs += [r for r in merged['runs'] if key_of(r) not in known]
        parts.append({'file': part.name, 'command': merged['command'], 'wall_time_s': merged['wall_time_s'],
                      'runs': len(merged['runs'])})
    for report in reported:
        theirs = {split: report['settings']['labels'].get(split) for split in labels}
        if any(theirs[split] is not None and theirs[split] != labels[split] for split in labels):
            raise SystemExit(f"{report['command']}: its runs were scored on other validation/test images than "
                             f"{data_root}'s: runs are paired image by image, so they cannot be reported together")
    model_grids: Dict[str, set] = {}
    if args.report_only:
        if not runs:
            raise SystemExit('--report-only reports earlier runs: give --merge FILES (or --resume with --name)')
        args.shots = sorted({r['shots'] for r in runs}, key=lambda k: float('inf') if k == 'all' else int(k))
        args.seeds = sorted({r['seed'] for r in runs})
        args.models = list(dict.fromkeys(r['model'] for r in runs))
        # the recipes, regimes and grid are the runs' too, not this command line's
        recipes = {rid: recipe for report in reported for rid, recipe in report['recipes'].items()}
        regimes = {rid: regime for report in reported for rid, regime in report['settings']['regimes'].items()}
        grids = [report['settings']['lr_grid'] for report in reported]
        if any(grid is None for grid in grids) and not all(grid is None for grid in grids):
            raise SystemExit("--report-only: some runs chose their lr from a grid, some took the recipe's: report "
                             "them apart")
        # parts of one grid, run apart, are one grid; a model's grid is that of the parts that ran it
        args.lr_grid = None if grids[0] is None else sorted(set().union(*grids))
        for report in reported:
            for spec in {r['model'] for r in report['runs']}:
                model_grids.setdefault(spec, set()).update(report['settings']['lr_grid'] or [])
        if len({tuple(sorted(g)) for g in model_grids.values()}) < 2:
            model_grids.clear()  # one grid for every model: said once
        first = reported[0]['settings']
        args.warmup_fraction, args.warmup_min_steps = first['warmup_fraction'], first['warmup_min_steps']
        args.extend_grid = max(report['settings']['extend_grid'] for report in reported)
        args.step_cost = sorted({(m, c) for report in reported for m, c in report['settings'].get('step_cost',
                                                                                                   {}).items()})
    shot_counts = {shot: smallest if shot == 'all' else int(shot) for shot in args.shots}
    if any(count > smallest for count in shot_counts.values()):
        raise SystemExit(f'--shots {args.shots}: the smallest class has only {smallest} training images')
    meta_path = data_root / 'dataset.json'
    data_name = json.loads(meta_path.read_text()).get('title', data_root.name) if meta_path.exists() \
        else data_root.name
    machine = machine_info(args.device)
    seeds = list(args.seeds)
    cells: List[Cell] = [(regime_id, recipe_id, spec, shots) for regime_id in regimes for shots in args.shots
                         for recipe_id in recipes for spec in args.models]

    def base_grid(cell: Cell) -> List[float]:
        if cell[2] in model_grids:
            return sorted(model_grids[cell[2]])
        return list(args.lr_grid) if args.lr_grid else [float(recipes[cell[1]]['lr'])]

    def decisions() -> Dict[Cell, Dict[str, Any]]:
        return {cell: decide(runs, cell, seeds, base_grid(cell), args.extend_grid) for cell in cells}

    def write_report(final: bool = False) -> Dict[str, Any]:
        report = {
            'command': command_line(placeholders), 'date': time.strftime('%Y-%m-%d %H:%M', time.localtime(started)),
            'wall_time_s': earlier_wall_s + time.time() - started, 'machine': machine,
            'settings': {'format': FORMAT, 'data': 'synthetic' if args.data_dir == 'synthetic' else 'DATA_DIR',
                         'data_name': data_name,
                         'num_classes': len(by_class), 'train_size': len(train_full),
                         'eval_sizes': {k: len(v) for k, v in labels.items()}, 'shots': args.shots,
                         'shot_counts': shot_counts, 'seeds': seeds, 'regimes': regimes,
                         'lr_grid': args.lr_grid,
                         **({'lr_grid_by_model': {m: sorted(g) for m, g in model_grids.items()}} if model_grids
                            else {}),
                         'extend_grid': args.extend_grid, 'lr_rule': LR_RULE,
                         'warmup_fraction': args.warmup_fraction, 'warmup_min_steps': args.warmup_min_steps,
                         'probe_steps': args.probe_steps, 'step_cost': dict(args.step_cost),
                         'curve_points': args.curve_points, 'n_boot': args.n_boot,
                         'recipe': recipes[next(iter(recipes))], 'models': args.models, 'crop_pct': args.crop_pct,
                         'jobs': args.jobs, 'labels': labels},
            'recipes': recipes, 'summary': summarize(runs, decisions()), 'runs': runs, 'parts': parts,
        }
        if final:  # the intervals take seconds each: computed once, at the end
            report['comparisons'] = comparisons(report, args.n_boot)
            write_text_atomic(md_path, render_markdown(report))
        write_text_atomic(json_path, json_dumps_compact(report))
        return report

    in_flight: Dict[Future, Tuple[str, Key]] = {}
    counter = itertools.count(1)

    def next_tasks() -> List[Tuple[str, Key]]:
        """What is left to do, test scoring first (it frees the weights): the runs of the chosen lrs that lack test,
        then the training runs of the cells' grids."""
        busy = {key for _, key in in_flight.values()}
        done = {key_of(r) for r in runs}
        tests, trains = [], []
        for cell, decision in decisions().items():
            for r in [r for r in runs if cell_of(r) == cell]:
                path = weights_path(args.cache_dir, args.name, key_of(r))
                if 'lr' in decision and r['lr'] != decision['lr'] and path.exists():
                    path.unlink()  # never scored on test
                if 'lr' in decision and r['lr'] == decision['lr'] and 'test' in splits and 'test_top1' not in r \
                        and key_of(r) not in busy:
                    if path.exists():
                        tests.append(('test', key_of(r)))
                    elif not args.report_only:
                        print(f'{r["model"]} k={r["shots"]} seed {r["seed"]} lr {r["lr"]:g}: its weights are '
                              f'gone from {path.parent}; trained again', flush=True)
                        runs.remove(r)
            grid = decision['grid'] + ([decision['extend']] if 'extend' in decision else [])
            trains += [('train', (*cell[:4], seed, lr)) for lr in grid for seed in seeds
                       if (*cell[:4], seed, lr) not in done and (*cell[:4], seed, lr) not in busy]
        return tests + trains

    def record(kind: str, key: Key, result: Dict[str, Any]) -> None:
        if kind == 'train':
            runs.append(result)
        else:
            next(r for r in runs if key_of(r) == key).update(result)
        regime_id, recipe_id, spec, shots, seed, lr = key
        shown = (f"test top-1 {result['test_top1']:.1f} / D4 {result['test_top1_d4']:.1f}%" if kind == 'test' else
                 f"validation top-1 {result['validation_top1']:.1f}%, {result['steps']} steps, "
                 f"{result['train_cpu_s']:.0f} CPU-s")
        print(f"[{(time.time() - started) / 60:6.1f} min {next(counter)}] {kind} {spec} {regime_id} {recipe_id} "
              f"k={shots} seed {seed} lr {lr:g}: {shown}", flush=True)
        write_report()

    def submit(pool: Any, kind: str, key: Key) -> None:
        recipe = recipes[key[1]]
        path = weights_path(args.cache_dir, args.name, key)
        if kind == 'train':
            future = pool.submit(train_run, key, recipe, regimes[key[0]], data_root, args,
                                 path if 'test' in splits else None)
        else:
            future = pool.submit(test_run, key, recipe, len(by_class), data_root, args, path)
        in_flight[future] = (kind, key)

    if not args.report_only:
        pool: Any = InProcess() if args.jobs == 1 else ProcessPoolExecutor(
            args.jobs, mp_context=multiprocessing.get_context('spawn'), initializer=_set_threads,
            initargs=(args.threads or 1,))
        with pool:
            while True:
                out_of_time = args.time_budget_s is not None and time.time() - started > args.time_budget_s
                for kind, key in ([] if out_of_time else next_tasks()):
                    if len(in_flight) >= args.jobs:
                        break
                    submit(pool, kind, key)
                if not in_flight:
                    break
                finished, _ = wait(list(in_flight), return_when=FIRST_COMPLETED)
                for future in finished:
                    kind, key = in_flight.pop(future)
                    record(kind, key, future.result())
        if args.time_budget_s is not None and next_tasks():
            print(f'--time-budget-s {args.time_budget_s:g}: stopped starting runs with {len(next_tasks())} left '
                  f'(--resume goes on; weights waiting for test are in {args.cache_dir})', flush=True)
    report = write_report(final=True)
    written = [json_path, md_path]
    if not args.no_plot:
        written += render_plots(report, out_base)
    print('wrote ' + ', '.join(str(p) for p in written))
    return report


if __name__ == '__main__':
    main()
