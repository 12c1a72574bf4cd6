"""``timm-astro demo``: the whole pipeline on this machine, no downloads, a few minutes on 2 CPU cores.

1. Renders a synthetic galaxy-morphology ImageFolder (``timm_astro.data.synthetic_galaxies``).
2. Trains an Astroformer with the low-data galaxy recipe (``timm_astro.recipes``) through ``timm_astro.training``
   (timm's own factories, as train.py); ``--epochs``, ``--batch-size`` and ``--lr`` fit it to the demo's budget.
3. Evaluates the trained model on the validation split as ``timm-astro evaluate`` does (``evaluation/``: metrics,
   confusion matrix, reliability diagram, per-image CSV, plain and with D4 test-time symmetry), draws the learned
   relative-position kernels, and writes the model as a Hub-ready folder that it reloads with
   ``timm.create_model('local-dir:...', pretrained=True)``, checking that the logits are identical.

Everything is built in a partial folder beside ``--output`` and renamed into place at the end. The figures follow
``--seed`` and ``--threads`` (data, initial weights, batch order, augmentation; torch's deterministic algorithms):
the same pair prints the same figures on the same kind of CPU.
"""
import argparse
import contextlib
import math
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import torch
from PIL import Image, ImageDraw

import timm
from timm.data import create_dataset, resolve_model_data_config
from timm.utils import random_seed

from timm_astro.commands import run_command
from timm_astro.data.synthetic_galaxies import CLASS_NAMES, LABEL_NAMES, MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, \
    write_image_folder
from timm_astro.errors import UserError
from timm_astro.outputs import atomic_output_dir, write_json
from timm_astro.recipes import LOWDATA_GALAXY_RECIPE
from timm_astro.training import mixes, train_args, train_classifier

PROG = 'timm-astro demo'
CREATED_BY = 'timm-astro demo'
DEMO_THREADS = 2  # the README's figures were measured on two cores


@contextlib.contextmanager
def reproducible(threads: int) -> Iterator[None]:
    """Same seed, same figures: a fixed thread count (the order of float sums depends on it) and torch's
    deterministic algorithms, both restored on exit (the demo also runs inside other programs and tests)."""
    saved_threads, saved_deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_deterministic)


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--output', default='astroformer-demo', help='output directory (must be empty or new)')
    parser.add_argument('--overwrite', action='store_true', help='replace an earlier demo output')
    parser.add_argument('--model', default='astroformer_small', help='timm model name')
    parser.add_argument('--epochs', type=int, default=7)
    parser.add_argument('--images-per-class', type=int, default=40, help='training images per class')
    parser.add_argument('--val-per-class', type=int, default=24, help='validation images per class')
    parser.add_argument('--image-size', type=int, default=16, help=f'rendered image size in pixels '
                                                                   f'({MIN_IMAGE_SIZE}..{MAX_IMAGE_SIZE})')
    parser.add_argument('--batch-size', type=int, default=LOWDATA_GALAXY_RECIPE['batch_size'],
                        help='even when the recipe uses Mixup (it pairs images)')
    parser.add_argument('--lr', type=float, default=LOWDATA_GALAXY_RECIPE['lr'])
    parser.add_argument('--drop-path', type=float, default=LOWDATA_GALAXY_RECIPE['drop_path'],
                        help='stochastic depth rate')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--workers', type=int, default=0, help='data loader worker processes')
    parser.add_argument('--threads', type=int, default=DEMO_THREADS,
                        help='torch CPU threads; the figures depend on it (float sums split across threads add up in '
                             'another order), so the default is fixed rather than one per core')
    return parser.parse_args(argv)


def _check(args: argparse.Namespace) -> Dict[str, Any]:
    """Every option checked before any work; returns the recipe (train.py's keys) the demo trains with."""
    recipe = {**LOWDATA_GALAXY_RECIPE, 'epochs': args.epochs, 'batch_size': args.batch_size, 'lr': args.lr,
              'drop_path': args.drop_path, 'seed': args.seed,
              'warmup_epochs': 1 if args.epochs > 2 else 0, 'warmup_lr': args.lr / 10, 'min_lr': args.lr / 100}
    for name in ('epochs', 'images_per_class', 'val_per_class', 'batch_size'):
        if getattr(args, name) < 1:
            raise UserError(f'--{name.replace("_", "-")} must be at least 1, got {getattr(args, name)}')
    if not MIN_IMAGE_SIZE <= args.image_size <= MAX_IMAGE_SIZE:
        raise UserError(f'--image-size must be in [{MIN_IMAGE_SIZE}, {MAX_IMAGE_SIZE}], got {args.image_size}')
    if args.workers < 0:
        raise UserError(f'--workers must be at least 0, got {args.workers}')
    if args.threads < 1:
        raise UserError(f'--threads must be at least 1, got {args.threads}')
    if not math.isfinite(args.lr) or args.lr <= 0:
        raise UserError(f'--lr must be a finite number above 0, got {args.lr}')
    if not 0 <= args.drop_path < 1:
        raise UserError(f'--drop-path must be in [0, 1), got {args.drop_path}')
    num_train = args.images_per_class * len(CLASS_NAMES)
    if args.batch_size > num_train:
        raise UserError(f'--batch-size {args.batch_size} is more than the {num_train} training images '
                        f'(--images-per-class {args.images_per_class} x {len(CLASS_NAMES)} classes): no batch would '
                        f'be complete; lower --batch-size or raise --images-per-class')
    if mixes(recipe) and args.batch_size % 2:
        raise UserError(f'--batch-size must be even, got {args.batch_size}: the demo trains with Mixup/CutMix, which '
                        f'pairs each image with another')
    if not timm.is_model(args.model):
        raise UserError(f'unknown model {args.model!r}; Astroformer models: '
                        f'{", ".join(timm.list_models("astroformer*"))}')
    try:  # the model's own size rules, on the meta device: costs nothing, fails before any rendering
        model = timm.create_model(args.model, num_classes=len(CLASS_NAMES), device='meta')
        with torch.no_grad():
            model(torch.empty(2, 3, args.image_size, args.image_size, device='meta'))
    except (ValueError, RuntimeError) as e:
        raise UserError(f'--model {args.model} cannot run at --image-size {args.image_size}: {e}') from None
    train_args(recipe)  # the recipe's own checks (train.py's ranges), before any work
    return recipe


def contact_sheet(data_root: Path, path: Path, image_size: int, per_class: int = 8, scale: int = 4) -> None:
    """A grid of training images, one labelled row per class."""
    label_width, size = 200, image_size * scale
    sheet = Image.new('RGB', (label_width + per_class * (size + 2), len(CLASS_NAMES) * (size + 2)), 'white')
    draw = ImageDraw.Draw(sheet)
    for r, (class_name, label) in enumerate(zip(CLASS_NAMES, LABEL_NAMES)):
        y = r * (size + 2)
        draw.text((4, y + size // 2 - 6), label, fill='black')
        for c, file in enumerate(sorted((data_root / 'train' / class_name).glob('*.png'))[:per_class]):
            with Image.open(file) as image:
                sheet.paste(image.resize((size, size), Image.NEAREST), (label_width + c * (size + 2), y))
    sheet.save(path)


def training_curves(history: List[Dict[str, float]], path: Path, mixup: bool) -> bool:
    """Loss and validation accuracy per epoch; False when matplotlib is missing."""
    from timm_astro.evaluation.plots import pyplot
    try:
        plt = pyplot()
    except UserError:  # MissingDependency
        return False
    epochs = [h['epoch'] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_loss.plot(epochs, [h['train_loss'] for h in history], marker='o',
                 label='train (label smoothing' + (', Mixup)' if mixup else ')'))
    ax_loss.plot(epochs, [h['val_loss'] for h in history], marker='o', label='validation')
    ax_loss.set_xlabel('epoch'), ax_loss.set_ylabel('loss'), ax_loss.legend()
    ax_acc.plot(epochs, [h['val_top1'] for h in history], marker='o', color='C2')
    ax_acc.axhline(100 / len(CLASS_NAMES), ls='--', color='grey', label='chance')
    ax_acc.set_xlabel('epoch'), ax_acc.set_ylabel('validation top-1 (%)'), ax_acc.set_ylim(0, 100), ax_acc.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def run(args: argparse.Namespace) -> Dict[str, object]:
    from timm_astro.evaluation.evaluate import evaluate, open_labelled_data, summary_table, write_report
    from timm_astro.hub import export_model
    from timm_astro.inspection import write_kernel_pictures
    start = time.time()
    recipe = _check(args)
    output = Path(args.output)
    num_classes = len(CLASS_NAMES)
    with atomic_output_dir(output, CREATED_BY, overwrite=args.overwrite) as tmp, reproducible(args.threads):
        data_root = tmp / 'data'
        print(f'rendering {args.images_per_class}+{args.val_per_class} synthetic galaxies per class '
              f'({num_classes} classes, {args.image_size} px) into {output / "data"}')
        write_image_folder(data_root, args.images_per_class, num_val_per_class=args.val_per_class, seed=args.seed,
                           image_size=args.image_size)
        contact_sheet(data_root, tmp / 'contact_sheet.png', args.image_size)
        data_seconds = time.time() - start

        random_seed(args.seed)  # the initial weights follow --seed too (train_classifier seeds the rest again)
        model = timm.create_model(args.model, num_classes=num_classes, drop_path_rate=args.drop_path)
        model.pretrained_cfg = {**model.pretrained_cfg, 'label_names': list(LABEL_NAMES)}  # for the evaluation
        data_config = resolve_model_data_config(
            model, args={'input_size': (3, args.image_size, args.image_size), 'crop_pct': 1.0})
        train_set = create_dataset('', root=str(data_root), split='train', is_training=True)
        val_data = open_labelled_data(data_root, 'validation')

        def validate(epoch: int, trained: torch.nn.Module, stats: Dict[str, float]) -> Dict[str, float]:
            result = evaluate(trained, val_data, data_config=data_config, batch_size=args.batch_size,
                              workers=args.workers, progress=False)
            metrics = result.metrics['none']
            print(f"epoch {epoch:2d}  train loss {stats['train_loss']:.3f}  val loss {metrics['log_loss']:.3f}  "
                  f"val top-1 {metrics['top1']:.1f}%")
            return {'val_loss': metrics['log_loss'], 'val_top1': metrics['top1']}

        trained = train_classifier(model, train_set, train_args(recipe), data_config=data_config,
                                   num_classes=num_classes, workers=args.workers, on_epoch_end=validate)
        history = trained.history
        model = trained.final_model.eval()
        curves = training_curves(history, tmp / 'training_curves.png', mixes(recipe))

        evaluation = evaluate(model, val_data, data_config=data_config, tta='d4', batch_size=args.batch_size,
                              workers=args.workers, progress=False)
        write_report(evaluation, tmp / 'evaluation', plots=curves)
        try:  # the learned kernels W at the demo's feature size
            feature_size = (args.image_size // model.feature_info[-1]['reduction'],) * 2
            kernels = write_kernel_pictures(model, tmp / 'kernel', feature_size=feature_size)
        except UserError:  # no relative-position kernel to draw (a peer, rel_pos_type='none'), or no matplotlib
            kernels = []

        model_dir = export_model(
            model, tmp / 'model', label_names=list(LABEL_NAMES), data_config=data_config,
            metrics=dict(top1=history[-1]['val_top1'], epoch=len(history)),
            dataset='synthetic galaxies (timm-astro demo)', train_args={'model': args.model, **recipe,
                                                                        'img_size': args.image_size})
        reloaded = timm.create_model(f'local-dir:{model_dir}', pretrained=True).eval()
        images = torch.randn(8, *data_config['input_size'])
        with torch.no_grad():
            identical = torch.equal(model(images), reloaded(images))
        if not identical:
            raise RuntimeError(f'the model reloaded from {model_dir} gives different logits')

        summary = dict(
            model=args.model, validation_top1=history[-1]['val_top1'], chance=100.0 / num_classes,
            validation_top1_d4=evaluation.metrics['d4']['top1'], epochs=len(history), train_images=len(train_set),
            val_images=len(val_data.item_ids), image_size=args.image_size, seed=args.seed, threads=args.threads,
            seconds=round(time.time() - start, 1),
            data_seconds=round(data_seconds, 1), reload_identical=identical, recipe=recipe, history=history)
        write_json(tmp / 'summary.json', summary)
    print(f"\nvalidation top-1 {summary['validation_top1']:.1f}% ({num_classes} classes, chance "
          f"{summary['chance']:.1f}%) after {len(history)} epochs on {len(train_set)} images, {summary['seconds']} s "
          f"(seed {args.seed}, {args.threads} threads: the same pair gives the same figures)")
    print(summary_table(evaluation))
    print(f'reloaded from the exported folder with identical logits: {identical}')
    print(f'data:            {output / "data"}')
    print(f"contact sheet:   {output / 'contact_sheet.png'}")
    print(f"training curves: {output / 'training_curves.png'}" if curves else
          "training curves: skipped (pip install 'timm-astro[plot]' for matplotlib)")
    print(f"evaluation:      {output / 'evaluation'} (metrics.json, predictions.csv"
          + (', confusion_matrix.png, reliability.png)' if curves else ')'))
    if kernels:
        print(f"learned kernels: {output / 'kernel'}")
    print(f"Hub-ready model: {output / 'model'}  (timm-astro push {output / 'model'} ORG/REPO)")
    return summary


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv)

    def body() -> None:
        run(args)
    return run_command(PROG, body)
