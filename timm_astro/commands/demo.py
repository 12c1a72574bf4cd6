"""``timm-astro demo``: the whole pipeline on this machine, no downloads, a few minutes on 2 CPU cores.

1. Renders a synthetic galaxy-morphology ImageFolder (``timm_astro.data.synthetic_galaxies``).
2. Trains an Astroformer with the paper's recipe through timm's own pieces, as train.py does: ``create_dataset``,
   ``create_loader`` with RandAugment (no random erasing), ``Mixup`` (mixup 0.8, CutMix off, label smoothing 0.1)
   with ``SoftTargetCrossEntropy``, ``create_optimizer_v2`` (AdamW) and ``create_scheduler_v2`` (cosine, warmup),
   stochastic depth on.
3. Writes a contact sheet of the data, the loss/accuracy curves, and the model as a Hub-ready folder, reloads that
   folder with ``timm.create_model('local-dir:...', pretrained=True)`` and checks the logits are identical.
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

import timm
from timm.data import Mixup, create_dataset, create_loader, resolve_model_data_config
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import create_scheduler_v2
from timm.utils import random_seed

from timm_astro.data.synthetic_galaxies import (
    CLASS_NAMES, LABEL_NAMES, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, write_image_folder)

RAND_AUGMENT = 'rand-m9-mstd0.5'  # timm's 'inc1' posterize crashes under Pillow 13 (bits=0), so no inc1


class DemoError(Exception):
    """A bad option or output directory, reported as one line."""


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='timm-astro demo', description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--output', default='astroformer-demo', help='output directory (must be empty or new)')
    parser.add_argument('--overwrite', action='store_true', help='replace a non-empty output directory')
    parser.add_argument('--model', default='astroformer_small', help='timm model name')
    parser.add_argument('--epochs', type=int, default=7)
    parser.add_argument('--images-per-class', type=int, default=40, help='training images per class')
    parser.add_argument('--val-per-class', type=int, default=24, help='validation images per class')
    parser.add_argument('--image-size', type=int, default=16, help='rendered image size in pixels (16..512)')
    parser.add_argument('--batch-size', type=int, default=32)
    parser.add_argument('--lr', type=float, default=2e-3)
    parser.add_argument('--drop-path', type=float, default=0.1, help='stochastic depth rate')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--workers', type=int, default=0, help='data loader worker processes')
    args = parser.parse_args(argv)
    for name in ('epochs', 'images_per_class', 'val_per_class', 'batch_size'):
        if getattr(args, name) < 1:
            raise DemoError(f'--{name.replace("_", "-")} must be at least 1, got {getattr(args, name)}')
    if not MIN_IMAGE_SIZE <= args.image_size <= MAX_IMAGE_SIZE:
        raise DemoError(f'--image-size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {args.image_size}')
    if args.lr <= 0 or not 0 <= args.drop_path < 1 or args.workers < 0:
        raise DemoError('--lr must be positive, --drop-path in [0, 1) and --workers at least 0')
    if args.model not in timm.list_models():
        raise DemoError(f'unknown model {args.model!r}; Astroformer models: {", ".join(timm.list_models("astroformer*"))}')
    return args


# everything the demo writes into --output; --overwrite removes these and nothing else
OUTPUTS = ('data', 'model', 'contact_sheet.png', 'training_curves.png', 'summary.json')


def _prepare_output(output: Path, overwrite: bool) -> None:
    """Refuse a non-empty output directory unless ``overwrite``; then remove only the demo's own outputs."""
    if output.exists() and not output.is_dir():
        raise DemoError(f'{output} exists and is not a directory')
    if output.is_dir() and any(output.iterdir()):
        if not overwrite:
            raise DemoError(f'{output} is not empty; pass --overwrite to replace it, or choose another --output')
        for name in OUTPUTS:
            path = output / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()
    output.mkdir(parents=True, exist_ok=True)


def contact_sheet(data_root: Path, path: Path, per_class: int = 8, scale: int = 4) -> None:
    """A grid of training images, one labelled row per class."""
    label_width, rows = 200, []
    for class_name, label in zip(CLASS_NAMES, LABEL_NAMES):
        files = sorted((data_root / 'train' / class_name).glob('*.png'))[:per_class]
        rows.append((label, [Image.open(f).convert('RGB') for f in files]))
    size = rows[0][1][0].width * scale
    sheet = Image.new('RGB', (label_width + per_class * (size + 2), len(rows) * (size + 2)), 'white')
    draw = ImageDraw.Draw(sheet)
    for r, (class_name, images) in enumerate(rows):
        y = r * (size + 2)
        draw.text((4, y + size // 2 - 6), class_name, fill='black')
        for c, image in enumerate(images):
            sheet.paste(image.resize((size, size), Image.NEAREST), (label_width + c * (size + 2), y))
    sheet.save(path)


def training_curves(history: List[Dict[str, float]], path: Path) -> bool:
    """Loss and validation accuracy per epoch; False when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [h['epoch'] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h['train_loss'] for h in history], marker='o', label='train (mixup, smoothed)')
    ax_loss.plot(epochs, [h['val_loss'] for h in history], marker='o', label='validation')
    ax_loss.set_xlabel('epoch'), ax_loss.set_ylabel('loss'), ax_loss.legend()
    ax_acc.plot(epochs, [h['val_top1'] for h in history], marker='o', color='C2')
    ax_acc.axhline(100 / len(CLASS_NAMES), ls='--', color='grey', label='chance')
    ax_acc.set_xlabel('epoch'), ax_acc.set_ylabel('validation top-1 (%)'), ax_acc.set_ylim(0, 100), ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader) -> Dict[str, float]:
    model.eval()
    loss_fn, total, correct, loss_sum = torch.nn.CrossEntropyLoss(reduction='sum'), 0, 0, 0.0
    for images, targets in loader:
        logits = model(images)
        loss_sum += loss_fn(logits, targets).item()
        correct += (logits.argmax(1) == targets).sum().item()
        total += targets.numel()
    return dict(val_loss=loss_sum / total, val_top1=100.0 * correct / total)


def run(args: argparse.Namespace) -> Dict[str, object]:
    start = time.time()
    output = Path(args.output)
    _prepare_output(output, args.overwrite)
    random_seed(args.seed)  # python, numpy and torch, as train.py does: RandAugment draws from python's random
    num_classes = len(CLASS_NAMES)

    data_root = output / 'data'
    print(f'rendering {args.images_per_class}+{args.val_per_class} synthetic galaxies per class '
          f'({num_classes} classes, {args.image_size} px) into {data_root}')
    write_image_folder(
        data_root, args.images_per_class, num_val_per_class=args.val_per_class, seed=args.seed,
        image_size=args.image_size)
    contact_sheet(data_root, output / 'contact_sheet.png')
    data_seconds = time.time() - start

    model = timm.create_model(args.model, num_classes=num_classes, drop_path_rate=args.drop_path)
    data_config = resolve_model_data_config(model)
    data_config.update(input_size=(3, args.image_size, args.image_size), crop_pct=1.0)
    train_set = create_dataset('', root=str(data_root), split='train', is_training=True)
    val_set = create_dataset('', root=str(data_root), split='validation')
    train_loader = create_loader(
        train_set, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=True,
        auto_augment=RAND_AUGMENT, re_prob=0., hflip=0.5, vflip=0.5, scale=(0.8, 1.0),
        interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
        num_workers=args.workers, use_prefetcher=False, device=torch.device('cpu'))
    val_loader = create_loader(
        val_set, input_size=data_config['input_size'], batch_size=args.batch_size, is_training=False,
        interpolation=data_config['interpolation'], mean=data_config['mean'], std=data_config['std'],
        crop_pct=1.0, num_workers=args.workers, use_prefetcher=False, device=torch.device('cpu'))

    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.1, num_classes=num_classes)
    loss_fn = SoftTargetCrossEntropy()  # what train.py uses when mixup is on
    optimizer = create_optimizer_v2(model, 'adamw', lr=args.lr, weight_decay=0.05)
    scheduler, num_epochs = create_scheduler_v2(
        optimizer, 'cosine', num_epochs=args.epochs, warmup_epochs=1 if args.epochs > 2 else 0,
        warmup_lr=args.lr / 10, min_lr=args.lr / 100)

    history = []
    for epoch in range(num_epochs):
        model.train()
        losses = []
        bar = tqdm(train_loader, desc=f'epoch {epoch + 1}/{num_epochs}', unit='batch', leave=False, file=sys.stderr)
        for images, targets in bar:
            if images.shape[0] % 2:  # mixup pairs a batch with its flip: it needs an even batch
                images, targets = images[:-1], targets[:-1]
            images, targets = mixup(images, targets)
            loss = loss_fn(model(images), targets)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f'{loss.item():.3f}')
        scheduler.step(epoch + 1)
        stats = dict(epoch=epoch + 1, train_loss=sum(losses) / len(losses), **evaluate(model, val_loader))
        history.append(stats)
        print(f"epoch {stats['epoch']:2d}  train loss {stats['train_loss']:.3f}  val loss {stats['val_loss']:.3f}  "
              f"val top-1 {stats['val_top1']:.1f}%")
    curves = training_curves(history, output / 'training_curves.png')

    from timm_astro.hub import export_model  # imported here: the Hub code is only needed at the end
    model.eval()
    model_dir = export_model(
        model, output / 'model', label_names=list(LABEL_NAMES), data_config=data_config,
        metrics=dict(top1=history[-1]['val_top1'], epoch=num_epochs), dataset='synthetic galaxies (timm-astro demo)',
        train_args=dict(model=args.model, epochs=num_epochs, batch_size=args.batch_size, opt='adamw', lr=args.lr,
                        weight_decay=0.05, sched='cosine', aa=RAND_AUGMENT, mixup=0.8, cutmix=0.0, smoothing=0.1,
                        reprob=0.0, drop_path=args.drop_path, img_size=args.image_size, seed=args.seed))
    reloaded = timm.create_model(f'local-dir:{model_dir}', pretrained=True).eval()
    images, _ = next(iter(val_loader))
    with torch.no_grad():
        identical = torch.equal(model(images), reloaded(images))
    if not identical:
        raise RuntimeError(f'the model reloaded from {model_dir} gives different logits')

    summary = dict(
        model=args.model, validation_top1=history[-1]['val_top1'], chance=100.0 / num_classes,
        epochs=num_epochs, train_images=len(train_set), val_images=len(val_set), image_size=args.image_size,
        seconds=round(time.time() - start, 1), data_seconds=round(data_seconds, 1), reload_identical=identical, history=history)
    (output / 'summary.json').write_text(json.dumps(summary, indent=2) + '\n')
    print(f"\nvalidation top-1 {summary['validation_top1']:.1f}% ({len(CLASS_NAMES)} classes, chance "
          f"{summary['chance']:.1f}%) after {num_epochs} epochs on {len(train_set)} images, {summary['seconds']} s")
    print(f'reloaded from the exported folder with identical logits: {identical}')
    print(f'data:            {data_root}')
    print(f"contact sheet:   {output / 'contact_sheet.png'}")
    print(f"training curves: {output / 'training_curves.png'}" if curves else
          "training curves: skipped (pip install 'timm-astro[plot]' for matplotlib)")
    print(f'Hub-ready model: {model_dir}  (timm-astro push {model_dir} ORG/REPO)')
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    try:
        run(_parse(argv))
    except DemoError as e:
        print(f'timm-astro demo: {e}', file=sys.stderr)
        return 2
    return 0
