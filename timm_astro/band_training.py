"""Train a classifier on survey data - FITS cutouts, N bands, 16-bit or float images - that timm's train.py cannot read.

timm's train.py reads its data through Pillow (``ImageFolder`` / ``ImageDataset``): 8-bit images of 1 or 3 channels.
It cannot read FITS, and it has no way to give a model more than three bands or to keep the dynamic range of
16-bit or float data (Pillow clips them to 8 bits, or refuses float pixels). ``train_bands`` fills that gap with
the same loop (``timm_astro.training.train_classifier``: timm's ``create_loader``, optimizer, scheduler, EMA):

* the files are read by ``timm_astro.data.images.ImageReader`` with a ``Stretch``: float32 tensors ``(bands, H, W)``
  in [0, 1], which timm's train transform (random resized crop, flips; ``MaybeToTensor`` passes tensors through)
  and eval transform take as they are; the model gets ``in_chans`` = the band count of the data;
* colour jitter and AutoAugment work on 8-bit RGB colours and are refused (never silently skipped);
* every file is read once before training, so an unreadable one (all-NaN, truncated, another band count) is one
  line before any work, not a crash in epoch 7;
* the model is exported (``timm_astro.hub.export_model``) with its stretch and FITS bands in ``config.json``, and
  reloaded to check it gives the same outputs: ``evaluate`` and ``predict`` then read new data as in training.
"""
import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

from timm_astro.data.images import BandMismatch, ImageFiles, ImageReader, UnreadableImage, band_data_config
from timm_astro.data.images import list_image_folder
from timm_astro.data.stretch import Stretch
from timm_astro.errors import UserError

__all__ = ['BAND_RECIPE', 'BandData', 'open_band_data', 'check_band_recipe', 'train_bands']

# A small default recipe for cutouts (train.py keys). Flips both ways: a galaxy has no preferred orientation.
BAND_RECIPE: Dict[str, Any] = {
    'train_split': 'train', 'val_split': 'validation', 'crop_pct': 1.0, 'scale': [0.5, 1.0], 'ratio': [1.0, 1.0],
    'batch_size': 32, 'opt': 'adamw', 'lr': 1e-3, 'weight_decay': 0.05, 'sched': 'cosine', 'epochs': 20,
    'warmup_epochs': 1, 'warmup_lr': 1e-5, 'min_lr': 1e-5, 'hflip': 0.5, 'vflip': 0.5, 'color_jitter': 0.0,
    'aa': None, 'reprob': 0.0, 'mixup': 0.0, 'cutmix': 0.0, 'smoothing': 0.1, 'drop_path': 0.1, 'model_ema': False,
}
CREATED_BY = 'timm-astro train-fits'


@dataclass
class BandData:
    """The training and validation files of an ImageFolder of survey data, read through ``reader``."""
    root: Path
    train: List[Tuple[str, int]]
    val: List[Tuple[str, int]]
    class_names: List[str]
    label_names: List[str]
    reader: ImageReader
    bands: int = 0
    unreadable: List[Tuple[str, str]] = field(default_factory=list)


def check_band_recipe(args: argparse.Namespace) -> None:
    """Refuse the augmentations that act on 8-bit RGB colours (timm's ColorJitter, AutoAugment / RandAugment)."""
    if args.aa:
        raise UserError(f"aa={args.aa!r}: AutoAugment/RandAugment work on 8-bit RGB images; survey bands are "
                        f"trained without them (set aa to null)")
    jitter = args.color_jitter
    if jitter and (any(jitter) if isinstance(jitter, (list, tuple)) else jitter > 0):
        raise UserError(f'color_jitter={jitter!r}: colour jitter works on RGB colours, not on stretched survey bands; '
                        f'set it to 0')


def _split(root: Path, name: str, class_to_idx: Optional[Dict[str, int]] = None):
    folder = root / name
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        raise UserError(f'{folder}: no such split folder (found: {", ".join(found) or "none"}); expected '
                        f'{root}/{name}/<class>/<files>, as timm-astro import writes')
    samples, index = list_image_folder(folder, class_to_idx)
    if not samples:
        raise UserError(f'{folder}: no image or FITS files in class folders')
    if '' in index:
        raise UserError(f'{folder}: files lie directly in it, not in class folders; expected {folder}/<class>/<files>')
    return samples, index


def _label_names(root: Path, class_names: Sequence[str]) -> List[str]:
    """``class_names.json`` of an import (its class names, in label order) when it fits, else the folder names."""
    path = root / 'class_names.json'
    try:
        names = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return list(class_names)
    ok = isinstance(names, list) and len(names) == len(class_names) and all(isinstance(n, str) for n in names)
    return list(names) if ok else list(class_names)


def open_band_data(root: Union[str, Path], stretch: Stretch, *, hdu: Optional[Union[int, str]] = None,
                   bands: Optional[Sequence[Union[int, str]]] = None, train_split: str = 'train',
                   val_split: Optional[str] = 'validation',
                   progress: Callable[[str], None] = lambda text: None) -> BandData:
    """The splits of ``root`` (``root/<split>/<class>/<files>``), each file read once through the stretch: the band
    count is that of the files (all must have it), and any file that cannot be read is a UserError naming it."""
    root = Path(root)
    train, class_to_idx = _split(root, train_split)
    val = _split(root, val_split, class_to_idx)[0] if val_split and (root / val_split).is_dir() else []
    class_names = sorted(class_to_idx, key=class_to_idx.get)
    reader = ImageReader(None, stretch, hdu, tuple(bands) if bands is not None else None)
    count = None
    files = train + val
    for number, (path, _) in enumerate(files):
        try:
            data = reader(path)
        except UnreadableImage as e:
            raise UserError(f'{e}; every training and validation file must be readable (remove or replace it)') \
                from None
        if count is None:
            count = data.shape[0]
        elif data.shape[0] != count:
            raise BandMismatch(path, f'{data.shape[0]} bands, but {files[0][0]} has {count}: a model takes one band '
                                     f'count')
        if (number + 1) % 200 == 0:
            progress(f'read {number + 1} of {len(files)} files')
    reader = ImageReader(count, stretch, reader.hdu, reader.bands)
    return BandData(root, train, val, class_names, _label_names(root, class_names), reader, count or 0)


@dataclass
class BandRun:
    """What ``train_bands`` produced: the trained model (EMA weights when EMA was on) and its history."""
    model: nn.Module
    data_config: Dict[str, Any]
    history: List[Dict[str, float]]


def band_model(name: str, data: BandData, img_size: int, recipe: Mapping[str, Any],
               args: argparse.Namespace) -> Tuple[nn.Module, Dict[str, Any]]:
    """``name`` with ``in_chans`` = the data's bands and one output per class, checked to run at ``img_size`` (on
    the meta device: costs nothing), and its data config: one mean and std per band (default 0.5: stretched data
    lie in [0, 1])."""
    import timm
    from timm.data import resolve_model_data_config
    try:
        with torch.no_grad():
            timm.create_model(name, in_chans=data.bands, num_classes=len(data.class_names), device='meta')(
                torch.empty(2, data.bands, img_size, img_size, device='meta'))
    except (ValueError, RuntimeError, TypeError, AssertionError) as e:
        raise UserError(f'{name} cannot run on {data.bands} bands at {img_size} px: {" ".join(str(e).split())}') \
            from None
    model = timm.create_model(name, in_chans=data.bands, num_classes=len(data.class_names), drop_rate=args.drop,
                              drop_path_rate=args.drop_path)
    overrides: Dict[str, Any] = {'input_size': (data.bands, img_size, img_size), 'mean': (0.5,), 'std': (0.5,)}
    overrides.update({k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()
                      if k in ('crop_pct', 'mean', 'std', 'interpolation') and v is not None})
    try:  # timm asserts one mean / std per band, or one for all
        config = band_data_config(resolve_model_data_config(model, args=overrides), data.bands)
    except AssertionError:
        raise UserError(f"mean {recipe.get('mean')} / std {recipe.get('std')}: give one value per band "
                        f"({data.bands}), or one for all") from None
    model.pretrained_cfg = {**model.pretrained_cfg, **config, 'label_names': list(data.label_names),
                            'num_classes': len(data.class_names), 'stretch': data.reader.stretch.to_config()}
    for key, value in (('fits_hdu', data.reader.hdu), ('fits_bands', data.reader.bands)):
        if value is not None:
            model.pretrained_cfg[key] = list(value) if isinstance(value, tuple) else value
    return model, config


def train_bands(model: nn.Module, data: BandData, args: argparse.Namespace, config: Dict[str, Any], *,
                device: torch.device = torch.device('cpu'), workers: int = 0,
                log: Callable[[str], None] = print) -> BandRun:
    """Train ``model`` (from ``band_model``) on ``data`` with train.py's ``args`` (``timm_astro.training.train_args``)
    and report each epoch's training loss and, when there is a validation split, its top-1 and log loss."""
    from timm_astro.evaluation.evaluate import LabelledData, evaluate
    from timm_astro.training import train_classifier
    check_band_recipe(args)
    train_set = ImageFiles(data.train, reader=data.reader, strict=True)
    val = None
    if data.val:
        ids = [Path(p).relative_to(data.root).as_posix() for p, _ in data.val]
        val = LabelledData(ImageFiles(data.val, reader=data.reader), f'{data.root} [validation]',
                           list(data.class_names), ids, [t for _, t in data.val])

    def on_epoch_end(epoch: float, trained: nn.Module, stats: Dict[str, float]) -> Dict[str, float]:
        line = f"epoch {epoch:g}/{args.epochs}  train loss {stats['train_loss']:.3f}"
        found: Dict[str, float] = {}
        if val is not None:
            result = evaluate(trained, val, data_config=config, batch_size=args.batch_size, workers=workers,
                              device=device, progress=False)
            found = {'val_top1': result.metrics['none']['top1'], 'val_loss': result.metrics['none']['log_loss']}
            line += f"  val top-1 {found['val_top1']:.1f}%  val loss {found['val_loss']:.3f}"
        log(f"{line}  lr {stats['lr']:.2e}")
        return found

    result = train_classifier(model, train_set, args, data_config=config, num_classes=len(data.class_names),
                              device=device, workers=workers, on_epoch_end=on_epoch_end)
    final = result.final_model.eval().cpu()
    final.pretrained_cfg = dict(model.pretrained_cfg)  # the EMA copy's too
    return BandRun(final, config, result.history)
