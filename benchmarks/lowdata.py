#!/usr/bin/env python3
"""Accuracy with few labelled images: Astroformer against timm peers on real galaxies, same recipe for all.

Data: an ImageFolder with ``train/``, ``validation/`` and ``test/`` (``timm-astro import galaxy10-decals-sample
...`` writes one from the 1,000 real Galaxy10 DECals images); ``--data-dir synthetic`` renders the package's
synthetic galaxies instead (no download: for a quick check of the script).

For each k in ``--shots`` (training images per class; ``all`` = the whole training split), each seed and each model,
a model is trained from scratch on k images per class (nested subsets: the 10 of a class are the first 10 of its
30, per seed) with one recipe (``timm_astro.recipes.LOWDATA_GALAXY_RECIPE``, train.py's keys, ``--set KEY=VALUE``
to change a value, ``--grid 'KEY=V1|V2'`` to try several) for about ``--steps`` optimizer steps whatever k is (the
number of epochs follows), through ``timm_astro.training`` (timm's own loader, Mixup, optimizer, scheduler). It is
then scored on the test split (and validation, which is the one to choose on) without and with D4 test-time
averaging (``timm_astro.evaluation``). Training cost is the CPU time of the training process (data loading
included: it runs in the process).

Models are ``NAME@SIZE`` (input size in px) with optional model arguments, ``NAME[key=value,...]@SIZE``, e.g.
``astroformer_small[rel_pos_type=table]@32``. Every model gets the same normalisation (nothing is pretrained).

Runs go side by side in ``--jobs`` single-threaded processes (one per core by default: on a small CPU that beats
one run on every thread). Writes ``<out-dir>/<name>.json`` (every run), ``<name>.md`` (tables: mean ± std over
seeds) and ``<name>_shots.png`` / ``<name>_cost.png`` (accuracy against images per class, and against training
cost); ``--resume`` skips runs already in the JSON, ``--merge`` adds the runs of other JSONs (parts of one study
run on several machines) and ``--report-only`` reports them without training the cells they lack. Examples::

    timm-astro import galaxy10-decals-sample <copy>/galaxy_type_dataset data/galaxy10_sample
    # the default: the k=30 cell, 8 models, 3 seeds, ~160 steps a run: about 50 min on 2 cores
    python benchmarks/lowdata.py --data-dir data/galaxy10_sample
    # the full study: k = 10, 30 and all (~2.5 h on 2 cores)
    python benchmarks/lowdata.py --data-dir data/galaxy10_sample --shots 10 30 all
    python benchmarks/lowdata.py --data-dir synthetic --models resnet18@16 --shots 4 --seeds 0 --steps 4
"""
import argparse
import itertools
import json
import multiprocessing
import os
import re
import statistics
import sys
import textwrap
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

import timm_astro  # noqa: E402,F401  registers the astroformer models
from timm.data import create_dataset  # noqa: E402
from timm_astro.evaluation.evaluate import evaluate, open_labelled_data  # noqa: E402
from timm_astro.recipes import LOWDATA_GALAXY_RECIPE  # noqa: E402
from timm_astro.training import train_args, train_classifier  # noqa: E402

from benchutils import (  # noqa: E402
    command_line, create_benchmark_model, fmt_num, machine_info, markdown_table, write_text_atomic)

DEFAULT_MODELS = ('astroformer_small@32', 'resnet18@32', 'convnext_atto@32', 'coatnet_nano_rw_224@32',
                  'astroformer_0@64', 'resnet18@64', 'convnext_atto@64', 'coatnet_nano_rw_224@64')
NORMALISE = {'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5)}  # one normalisation for every model
EVAL_TTA = 'd4'


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


def run_one(spec: str, recipe: Dict[str, Any], shots: str, seed: int, train_root: Path, eval_data: Dict[str, Any],
            args: argparse.Namespace) -> Dict[str, Any]:
    """Train one model on one subset with one recipe, then score it on the evaluation splits."""
    name, model_kwargs, size = parse_model(spec)
    dataset = create_dataset('', root=str(train_root), split='train', is_training=True)
    by_class = class_indices(dataset)
    dataset.reader.samples = [dataset.reader.samples[i] for i in
                              few_shot_indices(by_class, None if shots == 'all' else int(shots), seed)]
    batch = recipe['batch_size']
    updates_per_epoch = len(dataset) // batch
    epochs = max(1, round(args.steps / max(updates_per_epoch, 1)))
    run_recipe = {**recipe, 'epochs': epochs, 'seed': seed,
                  'warmup_epochs': min(recipe.get('warmup_epochs', 0), max(1, round(epochs * args.warmup_fraction)))}
    num_classes = len(by_class)
    torch.manual_seed(seed)
    model = create_benchmark_model(name, num_classes=num_classes, img_size=size,
                                   drop_path_rate=run_recipe.get('drop_path') or 0.0, **model_kwargs)
    data_config = {'input_size': (3, size, size), 'crop_pct': args.crop_pct, 'interpolation': 'bicubic', **NORMALISE}
    result = train_classifier(model, dataset, train_args(run_recipe), data_config=data_config,
                              num_classes=num_classes, device=torch.device(args.device), workers=args.workers)
    trained = result.final_model.eval()
    out = {'model': spec, 'shots': shots, 'seed': seed, 'train_images': len(dataset), 'epochs': epochs,
           'steps': result.steps, 'train_cpu_s': result.cpu_seconds, 'train_wall_s': result.wall_seconds,
           'params': sum(p.numel() for p in trained.parameters()), 'final_train_loss': result.history[-1]['train_loss']}
    for split, data in eval_data.items():
        evaluation = evaluate(trained, data, data_config=data_config, tta=EVAL_TTA, batch_size=args.eval_batch_size,
                              workers=args.workers, device=args.device, progress=False)
        for mode, metrics in evaluation.metrics.items():
            tag = '' if mode == 'none' else f'_{mode}'
            out[f'{split}_top1{tag}'] = metrics['top1']
            out[f'{split}_balanced{tag}'] = metrics['balanced_accuracy']
    return out


def _run_in_worker(spec: str, recipe: Dict[str, Any], shots: str, seed: int, data_root: Path,
                   args: argparse.Namespace) -> Dict[str, Any]:
    """``run_one`` in a ``--jobs`` worker process: one torch thread, its own evaluation readers."""
    torch.set_num_threads(args.threads or 1)
    eval_data = {split: open_labelled_data(data_root, split) for split in args.eval_splits}
    return run_one(spec, recipe, shots, seed, data_root, eval_data, args)


def _stats(values: List[float]) -> Dict[str, float]:
    return {'mean': statistics.mean(values), 'std': statistics.stdev(values) if len(values) > 1 else 0.0,
            'min': min(values), 'max': max(values), 'n': len(values)}


METRICS = ('test_top1', 'test_top1_d4', 'test_balanced', 'test_balanced_d4', 'validation_top1',
           'validation_top1_d4', 'validation_balanced', 'validation_balanced_d4', 'train_cpu_s')


def summarize(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Mean, std and range over seeds per (recipe, model, k)."""
    groups: Dict[Tuple[str, str, str], List[Dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r['recipe'], r['model'], r['shots']), []).append(r)
    summary = []
    for (recipe, model, shots), members in groups.items():
        entry = {'recipe': recipe, 'model': model, 'shots': shots, 'seeds': sorted(r['seed'] for r in members),
                 'params': members[0]['params'], 'steps': statistics.mean(r['steps'] for r in members)}
        for metric in METRICS:
            values = [r[metric] for r in members if metric in r]
            if values:
                entry[metric] = _stats(values)
        summary.append(entry)
    return summary


def _cell(stats: Optional[Dict[str, float]]) -> str:
    if not stats:
        return ''
    return f"{stats['mean']:.1f} ± {stats['std']:.1f}"


def render_markdown(report: Dict[str, Any]) -> str:
    s, m = report['settings'], report['machine']
    recipe_text = ', '.join(f'{k} {v}' for k, v in s['recipe'].items())
    lines = [
        f"# Low-data accuracy: {s['data_name']}\n",
        f"Data: `{s['data']}` ({s['num_classes']} classes; {s['train_size']} training, "
        + ', '.join(f'{n} {split}' for split, n in s['eval_sizes'].items()) + " images)."
        f" Every model: about {s['steps']} optimizer steps of batch {s['recipe']['batch_size']} whatever k "
        f"is (so k=10 runs many more epochs than k=all), the same recipe, input size per model as given, "
        f"evaluation centre crop {s.get('crop_pct', 1.0)}. Recipe (train.py keys): {recipe_text}.\n",
        f"Machine: {m['cpu_model']} x{m['logical_cpus']} ({m['device']}), torch {m['torch']}, timm {m['timm']}. "
        f"Command: `{report['command']}` ({report['wall_time_s'] / 60:.0f} min, started {report['date']})"
        + (''.join(f"; merging `{p['file']}` ({p['runs']} runs, {p['wall_time_s'] / 60:.0f} min: `{p['command']}`)"
                   for p in report.get('parts', [])) + '.\n'),
        f"Top-1 (%) and balanced accuracy, mean ± std over seeds {s['seeds']}, plain / with D4 test-time "
        f"averaging; training cost in CPU-seconds (both cores count). "
        + ' '.join(f"The {split} split has {n} images: one image is {100 / max(1, n):.1f} points."
                   for split, n in sorted(s['eval_sizes'].items(), reverse=True))
        + ('' if 'test' in s['eval_sizes'] else ' The test split was not evaluated (a recipe search).') + '\n',
    ]
    splits = [split for split in ('test', 'validation') if split in s['eval_sizes']]
    for recipe in dict.fromkeys(e['recipe'] for e in report['summary']):
        if len(report['recipes']) > 1:
            lines.append(f'## Recipe `{recipe}`\n')
        rows = []
        for e in [e for e in report['summary'] if e['recipe'] == recipe]:
            rows.append([f"`{e['model']}`", e['shots'], f"{e['params'] / 1e6:.2f}M", len(e['seeds']),
                         *[f"{_cell(e.get(f'{split}_{metric}'))} / {_cell(e.get(f'{split}_{metric}_d4'))}"
                           for split in splits for metric in ('top1', 'balanced')][:3],
                         fmt_num(e['train_cpu_s']['mean'])])
        rows.sort(key=lambda r: (report['settings']['shots'].index(r[1]), r[0]))
        lines.append(markdown_table(
            ['model', 'k', 'params', 'seeds',
             *[f'{split} {name} plain / D4' for split in splits for name in ('top-1', 'balanced')][:3],
             'train CPU-s'], rows))
    if len(report['recipes']) > 1:
        lines += _recipe_comparison(report, splits[-1])
    lines.append(f"Chance: {100 / s['num_classes']:.1f}%.\n")
    return '\n'.join(lines)


def _recipe_comparison(report: Dict[str, Any], split: str) -> List[str]:
    """One row per model and k, one column per recipe: top-1 with D4 on ``split`` (validation, the one to choose
    on, when it was evaluated), the best recipe of each row in bold."""
    recipes = list(report['recipes'])
    cells: Dict[Tuple[str, str], Dict[str, float]] = {}
    for e in report['summary']:
        if f'{split}_top1_d4' in e:
            cells.setdefault((e['model'], e['shots']), {})[e['recipe']] = e[f'{split}_top1_d4']['mean']
    rows = []
    for (model, shots), by_recipe in sorted(cells.items()):
        best = max(by_recipe.values())
        rows.append([f'`{model}`', shots] + ['' if r not in by_recipe else
                                             f'**{by_recipe[r]:.1f}**' if by_recipe[r] == best else
                                             f'{by_recipe[r]:.1f}' for r in recipes])
    return [f'## {split.capitalize()} top-1 with D4 (%), by recipe\n',
            markdown_table(['model', 'k'] + [f'`{r}`' for r in recipes], rows)]


def render_plots(report: Dict[str, Any], base: Path) -> None:
    from timm_astro.evaluation.plots import pyplot
    plt = pyplot()
    s = report['settings']
    summary = [e for e in report['summary'] if 'test_top1_d4' in e]
    colours = plt.get_cmap('tab20')  # in dark-light pairs: ten hues, then their light shades past ten models
    for kind in ('shots', 'cost'):
        fig, ax = plt.subplots(figsize=(11, 5.5))
        for i, (recipe, model) in enumerate(dict.fromkeys((e['recipe'], e['model']) for e in summary)):
            points = [e for e in summary if e['recipe'] == recipe and e['model'] == model]
            points.sort(key=lambda e: s['shot_counts'][e['shots']])
            xs = [s['shot_counts'][e['shots']] if kind == 'shots' else e['train_cpu_s']['mean'] for e in points]
            ys = [e['test_top1_d4']['mean'] for e in points]
            err = [e['test_top1_d4']['std'] for e in points]
            label = model if len(report['recipes']) == 1 else f'{model} ({recipe})'
            if len(points[0]['seeds']) != len(s['seeds']):
                label += f" ({len(points[0]['seeds'])} seed{'s' if len(points[0]['seeds']) > 1 else ''})"
            style = '-' if model.startswith('astroformer') else '--'
            ax.errorbar(xs, ys, yerr=err, marker='os^D'[i // 10 % 4], ls=style, capsize=3, label=label,
                        color=colours(2 * (i % 10) + i // 10 % 2))
            if kind == 'cost':
                for x, y, e in zip(xs, ys, points):
                    ax.annotate(f"k={e['shots']}", (x, y), fontsize=6, xytext=(3, 3), textcoords='offset points')
        ax.axhline(100 / s['num_classes'], color='grey', ls=':', lw=1, label='chance')
        ax.set_xscale('log')
        if kind == 'shots':  # the k that ran, not powers of ten
            ticks = sorted(set(s['shot_counts'].values()))
            ax.set_xticks(ticks, [str(k) for k in ticks])
            ax.minorticks_off()
        ax.set_xlabel('labelled training images per class' if kind == 'shots' else
                      'training cost (CPU-seconds, log scale)')
        ax.set_ylabel('test top-1 with D4 averaging (%)')
        ax.set_title('\n'.join(textwrap.wrap(f"{s['data_name']}: mean ± std over {len(s['seeds'])} seeds, "
                                             f"~{s['steps']} steps per run", 90)), fontsize=9)
        ax.grid(True, which='both', alpha=.3)
        ax.legend(fontsize=7, loc='upper left', bbox_to_anchor=(1.01, 1))  # beside the axes, off the points
        fig.tight_layout()
        fig.savefig(base.with_name(f'{base.name}_{kind}.png'), dpi=120)
        plt.close(fig)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-dir', required=True,
                        help="ImageFolder with train/, validation/ and test/ (timm-astro import), or 'synthetic'")
    parser.add_argument('--cache-dir', type=Path, default=Path.home() / '.cache' / 'timm-astro' / 'benchmarks')
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS))
    parser.add_argument('--shots', nargs='+', default=['30'],
                        help="images per class, or 'all' (the full study: 10 30 all)")
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1, 2])
    parser.add_argument('--steps', type=int, default=160, help='optimizer steps per run, about (epochs follow)')
    parser.add_argument('--warmup-fraction', type=float, default=0.05, help='warm-up epochs as a fraction of all')
    parser.add_argument('--recipe', default=None, help="a train.py YAML recipe (default: the low-data galaxy one)")
    parser.add_argument('--set', dest='sets', nargs='*', default=[], metavar='KEY=VALUE', help='recipe overrides')
    parser.add_argument('--grid', nargs='*', default=[], metavar='KEY=V1|V2', help='recipe values to try (YAML)')
    parser.add_argument('--crop-pct', type=float, default=1.0,
                        help="evaluation centre crop (timm's crop_pct): 0.5 keeps the central half of each side, where a "
                             "catalogue cutout has its galaxy; pair it with the recipe's training crop `scale`")
    parser.add_argument('--eval-splits', nargs='+', default=['validation', 'test'], choices=['validation', 'test'])
    parser.add_argument('--eval-batch-size', type=int, default=50)
    parser.add_argument('--workers', type=int, default=0, help='loader workers (0: in process, counted in CPU-s)')
    parser.add_argument('--threads', type=int, default=0,
                        help='torch threads (0: torch default; 1 in each --jobs worker)')
    parser.add_argument('--jobs', type=int, default=None,
                        help='runs side by side, each in its own single-threaded process (default: one per core on '
                             'the CPU, 1 on a GPU; 1: every run in this process, on --threads threads)')
    parser.add_argument('--device', default='cpu', help="where to train and evaluate ('cuda' on a GPU)")
    parser.add_argument('--out-dir', type=Path, default=HERE / 'results')
    parser.add_argument('--name', default='lowdata')
    parser.add_argument('--resume', action='store_true', help='keep the runs already in the JSON, run the rest')
    parser.add_argument('--merge', nargs='*', type=Path, default=[],
                        help='also report the runs of these JSON files (e.g. parts of one study run in parallel)')
    parser.add_argument('--report-only', action='store_true',
                        help='train nothing: report the runs of --merge (and --resume); k, seeds and models are '
                             "those runs', whatever --shots, --seeds and --models say")
    parser.add_argument('--no-plot', action='store_true')
    args = parser.parse_args(argv)

    if args.jobs is None:
        args.jobs = len(os.sched_getaffinity(0)) if args.device == 'cpu' else 1
    if args.jobs < 1:
        raise SystemExit(f'--jobs {args.jobs}: expected 1 or more processes')
    started = time.time()
    if args.threads:
        torch.set_num_threads(args.threads)
    data_root = synthetic_data(args.cache_dir) if args.data_dir == 'synthetic' else Path(args.data_dir)
    base = dict(LOWDATA_GALAXY_RECIPE)
    if args.recipe:
        base = yaml.safe_load(Path(args.recipe).read_text())
    recipes = recipe_variants(base, args.sets, args.grid)
    for recipe in recipes.values():
        train_args(recipe)  # refuse a bad recipe before the first run
    for spec in args.models:
        parse_model(spec)
    eval_data = {split: open_labelled_data(data_root, split) for split in args.eval_splits}
    train_full = create_dataset('', root=str(data_root), split='train')
    by_class = class_indices(train_full)
    smallest = min(len(v) for v in by_class.values())

    out_base = args.out_dir / args.name
    # appended, not with_suffix: a name such as part_lr0.001 keeps its dot
    json_path, md_path = Path(f'{out_base}.json'), Path(f'{out_base}.md')
    args.out_dir.mkdir(parents=True, exist_ok=True)
    runs: List[Dict[str, Any]] = []
    earlier_wall_s = 0.0
    reported: List[Dict[str, Any]] = []  # the reports whose runs are kept, for --report-only's recipes and steps
    if args.resume and json_path.exists():
        previous = json.loads(json_path.read_text())
        runs, earlier_wall_s = previous['runs'], previous['wall_time_s']
        reported.append(previous)
    parts = []
    for part in args.merge:
        known = {(r['recipe'], r['model'], r['shots'], r['seed']) for r in runs}
        merged = json.loads(part.read_text())
        reported.append(merged)
        runs += [r for r in merged['runs'] if (r['recipe'], r['model'], r['shots'], r['seed']) not in known]
        parts.append({'file': part.name, 'command': merged['command'], 'wall_time_s': merged['wall_time_s'],
                      'runs': len(merged['runs'])})
    if args.report_only:
        if not runs:
            raise SystemExit('--report-only reports earlier runs: give --merge FILES (or --resume with --name)')
        args.shots = sorted({r['shots'] for r in runs}, key=lambda k: float('inf') if k == 'all' else int(k))
        args.seeds = sorted({r['seed'] for r in runs})
        args.models = list(dict.fromkeys(r['model'] for r in runs))
        # the recipes and step budget are the runs' too, not this command line's
        recipes = {rid: recipe for report in reported for rid, recipe in report['recipes'].items()}
        steps = {report['settings']['steps'] for report in reported}
        if len(steps) > 1:
            raise SystemExit(f'--report-only: the runs were trained for different --steps ({sorted(steps)}); '
                             f'report them apart')
        args.steps = steps.pop()
    shot_counts = {shot: smallest if shot == 'all' else int(shot) for shot in args.shots}
    if any(count > smallest for count in shot_counts.values()):
        raise SystemExit(f'--shots {args.shots}: the smallest class has only {smallest} training images')
    done = {(r['recipe'], r['model'], r['shots'], r['seed']) for r in runs}
    meta_path = data_root / 'dataset.json'
    data_name = json.loads(meta_path.read_text()).get('title', data_root.name) if meta_path.exists() \
        else data_root.name
    machine = machine_info(args.device)
    plan = [(recipe_id, spec, shots, seed) for shots in args.shots for seed in args.seeds
            for recipe_id in recipes for spec in args.models]
    pending = [(recipe_id, spec, shots, seed) for recipe_id, spec, shots, seed in plan
               if (recipe_id, spec, shots, seed) not in done and not args.report_only]

    def write_report() -> Dict[str, Any]:
        report = {
            'command': command_line(), 'date': time.strftime('%Y-%m-%d %H:%M', time.localtime(started)),
            'wall_time_s': earlier_wall_s + time.time() - started, 'machine': machine,
            'settings': {'data': str(data_root), 'data_name': data_name, 'num_classes': len(by_class),
                         'train_size': len(train_full),
                         'eval_sizes': {k: len(v.item_ids) for k, v in eval_data.items()}, 'shots': args.shots,
                         'shot_counts': shot_counts, 'seeds': args.seeds, 'steps': args.steps,
                         'recipe': recipes[next(iter(recipes))], 'models': args.models,
                         'crop_pct': args.crop_pct, 'jobs': args.jobs},
            'recipes': recipes, 'summary': summarize(runs), 'runs': runs, 'parts': parts,
        }
        write_text_atomic(json_path, json.dumps(report, indent=1))
        write_text_atomic(md_path, render_markdown(report))
        return report

    finished = itertools.count(1)  # runs done by this invocation, of the pending ones (resumed and merged runs apart)

    def record(key: Tuple[str, str, str, int], result: Dict[str, Any]) -> None:
        recipe_id, spec, shots, seed = key
        result['recipe'] = recipe_id
        runs.append(result)
        shown = result.get('test_top1_d4', result.get('validation_top1_d4'))
        print(f"[{(time.time() - started) / 60:6.1f} min {next(finished)}/{len(pending)}] {spec} {recipe_id} k={shots} "
              f"seed {seed}: top-1 (D4) {shown:.1f}%, {result['steps']} steps, {result['train_cpu_s']:.0f} CPU-s",
              flush=True)
        write_report()

    if args.jobs == 1:
        for key in pending:
            recipe_id, spec, shots, seed = key
            record(key, run_one(spec, recipes[recipe_id], shots, seed, data_root, eval_data, args))
    elif pending:
        # one single-threaded process per job: on a small CPU, N runs side by side beat one run on N threads
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context('spawn')) as pool:
            futures = {}
            for key in pending:
                recipe_id, spec, shots, seed = key
                futures[pool.submit(_run_in_worker, spec, recipes[recipe_id], shots, seed, data_root, args)] = key
            for future in as_completed(futures):
                record(futures[future], future.result())
    report = write_report()
    if not args.no_plot and report['summary']:
        render_plots(report, out_base)
    print(f"wrote {json_path}, {md_path}"
          + ('' if args.no_plot else f", {out_base}_shots.png, {out_base}_cost.png"))
    return report


if __name__ == '__main__':
    main()
