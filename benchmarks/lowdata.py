#!/usr/bin/env python3
"""Accuracy with few labelled images: Astroformer against timm peers, same recipe and budget for every model.

For each k in ``--shots`` (images per class; ``all`` = the whole training split) and each seed, every model trains
from scratch on the same k images per class (the subsets are nested: the 10 images of a class are the first 10 of
its 50) with the same augmentation, optimizer, schedule, image size and number of optimizer steps, then is scored
(top-1) on the whole validation split. Reports the mean and spread over seeds, a markdown table and a plot of
accuracy against images per class.

Data: any ImageFolder with ``train/`` and ``validation/`` (``--data-dir``); by default the package's synthetic
galaxies (``timm_astro.data.synthetic_galaxies``), generated once into ``--cache-dir``.

Budget: ``--epochs`` over the subset, but never fewer than ``--min-steps`` optimizer steps (an epoch of 60 images is
two steps). The defaults are sized for a 2-core CPU (under 20 minutes); see benchmarks/README.md for GPU settings.

Examples::

    python benchmarks/lowdata.py                                  # defaults: synthetic galaxies, 32 px, CPU
    python benchmarks/lowdata.py --data-dir /data/galaxy10_decals --img-size 64 --shots 10 50 200 all \\
        --models astroformer_base astroformer_0 resnet18 coatnet_0_rw_224 --epochs 100 --seeds 0 1 2 --device cuda
"""
import argparse
import json
import math
import statistics
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from torch.utils.data import DataLoader, Subset  # noqa: E402

import timm  # noqa: E402
import timm_astro  # noqa: E402,F401  registers the astroformer models
from timm.data import Mixup, create_dataset, create_transform  # noqa: E402
from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy  # noqa: E402
from timm.optim import create_optimizer_v2  # noqa: E402
from timm.scheduler import create_scheduler_v2  # noqa: E402

from benchutils import command_line, fmt_num, machine_info, markdown_table, write_text_atomic  # noqa: E402

DEFAULT_MODELS = ('astroformer_small', 'resnet18', 'coatnet_0_rw_224')
MEAN = STD = (0.5, 0.5, 0.5)  # one normalisation for every model: nothing here is pretrained


def synthetic_dataset(cache_dir: Path, train_per_class: int, val_per_class: int, img_size: int, seed: int = 0) -> Path:
    """The package's synthetic galaxies as an ImageFolder, generated once per setting."""
    from timm_astro.data.synthetic_galaxies import GENERATOR_VERSION, write_image_folder
    # the generator's version is in the name: images from an older generator are never reused
    root = cache_dir / (f'synthetic_galaxies_v{GENERATOR_VERSION}_{img_size}px_{train_per_class}x{val_per_class}'
                        f'_seed{seed}')
    done = root / '.complete'
    if not done.exists():
        write_image_folder(root, train_per_class, num_val_per_class=val_per_class, seed=seed, image_size=img_size,
                           overwrite=True)
        done.write_text('ok\n')
    return root


def class_indices(dataset) -> Dict[int, List[int]]:
    """Sample indices of each class of a timm ImageFolder dataset, in file order."""
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
    return chosen


def create_peer(name: str, num_classes: int, img_size: int, drop_path_rate: float) -> nn.Module:
    """A model for this image size; MaxxVit-family peers are built for it (their attention windows are fixed)."""
    kwargs: Dict[str, Any] = {}
    if any(k in name for k in ('coatnet', 'maxvit', 'maxxvit')) and not name.startswith('astroformer'):
        kwargs['img_size'] = img_size
    return timm.create_model(name, num_classes=num_classes, drop_path_rate=drop_path_rate, **kwargs)


@torch.no_grad()
def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, autocast) -> float:
    model.eval()
    correct = total = 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        with autocast():
            logits = model(images)
        correct += (logits.argmax(-1) == targets).sum().item()
        total += targets.numel()
    return 100. * correct / max(total, 1)


def train_one(
        name: str,
        train_set,
        val_loader: DataLoader,
        num_classes: int,
        seed: int,
        args: argparse.Namespace,
        device: torch.device,
) -> Dict[str, Any]:
    """Train one model from scratch on one subset with the shared recipe; top-1 on the validation split."""
    torch.manual_seed(seed)
    model = create_peer(name, num_classes, args.img_size, args.drop_path).to(device)
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=min(args.batch_size, len(train_set)), shuffle=True, drop_last=True,
                        num_workers=args.workers, generator=generator)
    steps_per_epoch = len(loader)
    total_steps = max(args.epochs * steps_per_epoch, args.min_steps)
    epochs = math.ceil(total_steps / steps_per_epoch)
    optimizer = create_optimizer_v2(model, args.opt, lr=args.lr, weight_decay=args.weight_decay)
    scheduler, _ = create_scheduler_v2(
        optimizer, 'cosine', num_epochs=epochs, warmup_epochs=min(args.warmup_epochs, max(epochs - 1, 0)),
        warmup_lr=args.lr * 0.01, min_lr=args.lr * 0.01, step_on_epochs=False, updates_per_epoch=steps_per_epoch)
    mixup = Mixup(mixup_alpha=args.mixup, label_smoothing=args.smoothing, num_classes=num_classes) \
        if args.mixup > 0 else None
    criterion = SoftTargetCrossEntropy() if mixup else LabelSmoothingCrossEntropy(args.smoothing)
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if args.amp else nullcontext
    start, step, losses = time.time(), 0, []
    model.train()
    for epoch in range(epochs):
        for images, targets in loader:
            if step >= total_steps:
                break
            images, targets = images.to(device), targets.to(device)
            if mixup:
                if images.shape[0] % 2:  # mixup pairs a batch with its flip: it needs an even batch
                    images, targets = images[:-1], targets[:-1]
                images, targets = mixup(images, targets)
            with autocast():
                loss = criterion(model(images).float(), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            scheduler.step_update(step)
            losses.append(loss.item())
    train_time = time.time() - start
    top1 = evaluate(model, val_loader, device, autocast)
    return {
        'model': name, 'seed': seed, 'top1': top1, 'steps': step, 'epochs': epochs, 'train_images': len(train_set),
        'final_loss': statistics.mean(losses[-max(1, steps_per_epoch):]), 'train_time_s': train_time,
        'eval_time_s': time.time() - start - train_time, 'params': sum(p.numel() for p in model.parameters()),
    }


def summarize(results: List[Dict[str, Any]], models: Sequence[str], shots: Sequence[str]) -> List[Dict[str, Any]]:
    """Mean, standard deviation and range of top-1 over seeds, per model and k."""
    summary = []
    for shot in shots:
        for name in models:
            accs = [r['top1'] for r in results if r['model'] == name and r['shots'] == shot]
            if not accs:
                continue
            summary.append({
                'model': name, 'shots': shot, 'top1_mean': statistics.mean(accs),
                'top1_std': statistics.stdev(accs) if len(accs) > 1 else 0., 'top1_min': min(accs),
                'top1_max': max(accs), 'seeds': len(accs),
                'train_time_s': statistics.mean(r['train_time_s'] for r in results
                                                if r['model'] == name and r['shots'] == shot),
            })
    return summary


def render_markdown(report: Dict[str, Any]) -> str:
    m, s = report['machine'], report['settings']
    lines = [
        '# Low-data accuracy\n',
        f"Data: `{s['data']}` ({s['num_classes']} classes, {s['train_size']} training / {s['val_size']} validation "
        f"images), {s['img_size']}x{s['img_size']} px. Recipe (every model): {s['opt']} lr {s['lr']} wd "
        f"{s['weight_decay']}, cosine schedule with {s['warmup_epochs']} warm-up epoch(s), batch {s['batch_size']}, "
        f"{s['epochs']} epochs but at least {s['min_steps']} steps, label smoothing {s['smoothing']}, mixup "
        f"{s['mixup']}, augmentation `{s['augmentation']}`, drop path {s['drop_path']}; seeds {s['seeds']}.\n",
        f"Machine: {m['cpu_model']} x{m['logical_cpus']} ({m['device']}), torch {m['torch']}, timm {m['timm']}. "
        f"Command: `{report['command']}` ({report['wall_time_s'] / 60:.1f} min, started {report['date']}).\n",
        'Top-1 (%) on the validation split: mean ± standard deviation over seeds (min-max).\n',
    ]
    models = list(dict.fromkeys(r['model'] for r in report['summary']))
    params = {r['model']: r['params'] for r in report['results']}
    header = ['images per class'] + [f"`{name}` ({params[name] / 1e6:.2f}M)" for name in models]
    table = []
    for shot in dict.fromkeys(r['shots'] for r in report['summary']):
        row = [shot]
        for name in models:
            match = [r for r in report['summary'] if r['model'] == name and r['shots'] == shot]
            row.append(f"{match[0]['top1_mean']:.1f} ± {match[0]['top1_std']:.1f} ({match[0]['top1_min']:.1f}-"
                       f"{match[0]['top1_max']:.1f})" if match else '')
        table.append(row)
    lines.append(markdown_table(header, table))
    lines.append(f"Chance: {100 / s['num_classes']:.1f}%. Mean training time per run (s): " + ', '.join(
        f"{name} {fmt_num(statistics.mean(r['train_time_s'] for r in report['summary'] if r['model'] == name))}"
        for name in models) + '.\n')
    return '\n'.join(lines)


def render_plot(report: Dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    s = report['settings']
    fig, ax = plt.subplots(figsize=(7, 5))
    for name in dict.fromkeys(r['model'] for r in report['summary']):
        points = [r for r in report['summary'] if r['model'] == name]
        xs = [s['shot_counts'][r['shots']] for r in points]
        means = [r['top1_mean'] for r in points]
        ax.errorbar(xs, means, yerr=[[m - r['top1_min'] for m, r in zip(means, points)],
                                     [r['top1_max'] - m for m, r in zip(means, points)]],
                    marker='o', capsize=3, label=name)
    ax.axhline(100 / s['num_classes'], color='gray', ls=':', lw=1, label='chance')
    ax.set_xscale('log')
    ax.set_xlabel('labelled training images per class')
    ax.set_ylabel('top-1 (%) on validation')
    ax.set_title(f"{Path(s['data']).name}, {s['img_size']} px, {len(s['seeds'])} seeds (bars: min-max)", fontsize=9)
    ax.grid(True, which='both', alpha=.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--data-dir', type=Path, default=None,
                        help='ImageFolder root with train/ and validation/ (default: synthetic galaxies)')
    parser.add_argument('--train-split', default='train')
    parser.add_argument('--val-split', default='validation')
    parser.add_argument('--cache-dir', type=Path, default=Path.home() / '.cache' / 'timm-astro' / 'benchmarks')
    parser.add_argument('--synthetic-train', type=int, default=100, help='synthetic training images per class')
    parser.add_argument('--synthetic-val', type=int, default=50, help='synthetic validation images per class')
    parser.add_argument('--models', nargs='+', default=list(DEFAULT_MODELS))
    parser.add_argument('--shots', nargs='+', default=['10', '30', 'all'], help="images per class, or 'all'")
    parser.add_argument('--seeds', nargs='+', type=int, default=[0, 1])
    parser.add_argument('--img-size', type=int, default=32)
    parser.add_argument('--epochs', type=int, default=2)
    parser.add_argument('--min-steps', type=int, default=24, help='optimizer steps at least, however small the subset')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--opt', default='adamw')
    parser.add_argument('--lr', type=float, default=2e-3)
    parser.add_argument('--weight-decay', type=float, default=0.05)
    parser.add_argument('--warmup-epochs', type=int, default=1)
    parser.add_argument('--smoothing', type=float, default=0.1)
    parser.add_argument('--mixup', type=float, default=0.0, help='mixup alpha (0: off); the paper used 0.8')
    parser.add_argument('--aa', default=None, help="RandAugment policy, e.g. 'rand-m7-mstd0.5' (avoid inc1)")
    parser.add_argument('--drop-path', type=float, default=0.1)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--amp', action='store_true', help='bf16 autocast')
    parser.add_argument('--workers', type=int, default=0)
    parser.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    parser.add_argument('--out-dir', type=Path, default=HERE / 'results')
    parser.add_argument('--name', default='lowdata')
    parser.add_argument('--no-plot', action='store_true')
    args = parser.parse_args(argv)

    started = time.time()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = args.data_dir or synthetic_dataset(args.cache_dir, args.synthetic_train, args.synthetic_val, args.img_size)
    train_tf = create_transform(
        args.img_size, is_training=True, scale=(0.6, 1.0), hflip=0.5, vflip=0.5, color_jitter=0.,
        auto_augment=args.aa, interpolation='bicubic', mean=MEAN, std=STD)
    eval_tf = create_transform(args.img_size, is_training=False, crop_pct=1.0, interpolation='bicubic', mean=MEAN,
                               std=STD)
    train_full = create_dataset('', root=str(data), split=args.train_split, transform=train_tf)
    val_set = create_dataset('', root=str(data), split=args.val_split, transform=eval_tf)
    num_classes = len(train_full.reader.class_to_idx)
    by_class = class_indices(train_full)
    smallest = min(len(v) for v in by_class.values())
    shot_counts = {shot: smallest if shot == 'all' else int(shot) for shot in args.shots}
    for shot, count in shot_counts.items():
        if count > smallest:
            raise SystemExit(f'--shots {shot}: the smallest class has only {smallest} training images')
    val_loader = DataLoader(val_set, batch_size=128, shuffle=False, num_workers=args.workers)

    results: List[Dict[str, Any]] = []
    out_base = args.out_dir / args.name
    args.out_dir.mkdir(parents=True, exist_ok=True)
    machine = machine_info(args.device)
    augmentation = f"RandomResizedCrop(scale 0.6-1), h+v flips{', ' + args.aa if args.aa else ''}"
    report: Dict[str, Any] = {}
    for shot in args.shots:
        for seed in args.seeds:
            indices = few_shot_indices(by_class, None if shot == 'all' else int(shot), seed)
            subset = Subset(train_full, indices)
            for name in args.models:
                result = train_one(name, subset, val_loader, num_classes, seed, args, device)
                result['shots'] = shot
                results.append(result)
                print(f"[{(time.time() - started) / 60:5.1f} min] {name} k={shot} seed {seed}: top-1 "
                      f"{result['top1']:.1f}% ({result['steps']} steps, {result['train_time_s']:.0f} s)", flush=True)
                report = {
                    'command': command_line(), 'date': time.strftime('%Y-%m-%d %H:%M', time.localtime(started)),
                    'wall_time_s': time.time() - started, 'machine': machine,
                    'settings': {
                        'data': str(data), 'num_classes': num_classes, 'train_size': len(train_full),
                        'val_size': len(val_set), 'img_size': args.img_size, 'shots': args.shots,
                        'shot_counts': shot_counts, 'seeds': args.seeds, 'epochs': args.epochs,
                        'min_steps': args.min_steps, 'batch_size': args.batch_size, 'opt': args.opt, 'lr': args.lr,
                        'weight_decay': args.weight_decay, 'warmup_epochs': args.warmup_epochs,
                        'smoothing': args.smoothing, 'mixup': args.mixup, 'augmentation': augmentation,
                        'drop_path': args.drop_path, 'amp': args.amp,
                    },
                    'summary': summarize(results, args.models, args.shots), 'results': results,
                }
                write_text_atomic(out_base.with_suffix('.json'), json.dumps(report, indent=1))
                write_text_atomic(out_base.with_suffix('.md'), render_markdown(report))
    if not args.no_plot:
        render_plot(report, out_base.with_suffix('.png'))
    print(f"wrote {out_base.with_suffix('.json')}, {out_base.with_suffix('.md')}"
          + ('' if args.no_plot else f", {out_base.with_suffix('.png')}"))
    return report


if __name__ == '__main__':
    main()
