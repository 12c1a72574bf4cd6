"""Train a classifier in-process the way timm's train.py does, from train.py's own arguments.

A recipe is a mapping of train.py ``--config`` keys (its argparse dest names: ``lr``, ``weight_decay``, ``mixup``,
``aa``, ...), so a recipe file in ``train_configs/`` means the same here as under train.py. ``train_args`` turns
it into train.py's arguments; ``train_classifier`` builds everything with timm's own factories, as train.py does:
``create_loader`` (augmentation), ``Mixup``, the loss train.py picks, ``create_optimizer_v2`` with
``optimizer_kwargs`` (layer decay included), ``create_scheduler_v2`` with ``scheduler_kwargs``, and ``ModelEmaV3``.

Another task trains through the same loop with its own ``loss_fn`` and targets (Galaxy Zoo vote counts with
the Dirichlet-multinomial loss: ``timm-astro train-votes``); Mixup and label smoothing, which act on class labels,
are then refused rather than ignored. With ``checkpoint`` the loop writes one checkpoint after every epoch (atomically:
the file is replaced whole or not at all) holding the weights, optimizer, scheduler, EMA weights, epoch, update count,
history and random-number states, and ``resume`` continues from one exactly as if the run had not stopped.

Not implemented (train.py-only): distributed training, AMP loss scaling, gradient accumulation and the prefetcher.
Per-epoch validation is the caller's (``on_epoch_end``). The demo, the benchmarks and ``train-votes`` use this loop;
train.py remains the tool for real classification runs.
"""
import argparse
import contextlib
import importlib
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from timm_astro.errors import UserError

__all__ = ['TRAIN_DEFAULTS', 'IGNORED_KEYS', 'mixes', 'train_args', 'train_classifier', 'TrainResult',
           'read_checkpoint', 'check_resumable', 'check_own_loss_args']

# The train.py options this loop implements, with train.py's own defaults (pytorch-image-models train.py).
TRAIN_DEFAULTS: Dict[str, Any] = {
    'batch_size': 128, 'epochs': 300, 'opt': 'sgd', 'opt_eps': None, 'opt_betas': None, 'momentum': 0.9,
    'weight_decay': 2e-5, 'layer_decay': None, 'lr': None, 'lr_base': 0.1, 'lr_base_size': 256, 'lr_base_scale': '',
    'sched': 'cosine', 'sched_on_updates': False, 'warmup_lr': 1e-5, 'min_lr': 0.0, 'warmup_epochs': 5,
    'warmup_prefix': False, 'cooldown_epochs': 0, 'decay_rate': 0.1, 'decay_epochs': 90,
    'lr_cycle_decay': 0.5, 'lr_cycle_limit': 1, 'lr_cycle_mul': 1.0, 'lr_k_decay': 1.0,
    'no_aug': False, 'scale': [0.08, 1.0], 'ratio': [3. / 4., 4. / 3.], 'hflip': 0.5, 'vflip': 0.0,
    'color_jitter': 0.4, 'aa': None, 'reprob': 0.0, 'remode': 'pixel', 'recount': 1,
    'train_interpolation': 'random',
    'mixup': 0.0, 'cutmix': 0.0, 'cutmix_minmax': None, 'mixup_prob': 1.0, 'mixup_switch_prob': 0.5,
    'mixup_mode': 'batch', 'smoothing': 0.1, 'drop': 0.0, 'drop_path': None,
    'model_ema': False, 'model_ema_decay': 0.9998, 'model_ema_warmup': False,
    'seed': 42,
    # imported as train.py imports them; timm_astro.data.d4_augment among them turns D4 training views on
    'device_modules': None,
}

# Recipe keys that choose the model, the data or the run rather than the optimisation: accepted and ignored here
# (the caller builds the model and the dataset).
IGNORED_KEYS = {
    'model', 'num_classes', 'label_names', 'img_size', 'input_size', 'in_chans', 'train_split',
    'val_split', 'data_dir', 'dataset', 'dataset_download', 'amp', 'amp_dtype', 'workers', 'output', 'experiment',
    'log_interval', 'checkpoint_hist', 'eval_metric', 'pin_mem', 'crop_pct', 'mean', 'std', 'interpolation',
    'grad_accum_steps', 'drop_block', 'pretrained', 'pretrained_path', 'channels_last', 'torchcompile',
    'grad_checkpointing', 'model_kwargs',
}

# Keys that change the optimisation but that this loop implements only at train.py's default: any other value is
# refused, never ignored. key -> (the one value accepted, why)
DEFAULT_ONLY_KEYS: Dict[str, Tuple[Any, str]] = {'grad_accum_steps': (1, 'one optimizer step per batch')}


def mixes(recipe: Mapping[str, Any]) -> bool:
    """Whether a recipe (train.py keys) mixes images, as train.py decides it: Mixup or CutMix pairs each image with
    another, so the batch must be even."""
    return (recipe.get('mixup') or 0) > 0 or (recipe.get('cutmix') or 0) > 0 or recipe.get('cutmix_minmax') is not None


def train_args(recipe: Optional[Mapping[str, Any]] = None) -> argparse.Namespace:
    """train.py's arguments for ``recipe``: its defaults for every key not given.

    Raises a UserError naming any key this loop does not implement (rather than ignoring it, as train.py does
    with unknown keys).
    """
    given = dict(recipe or {})
    unknown = sorted(k for k in given if k not in TRAIN_DEFAULTS and k not in IGNORED_KEYS)
    if unknown:
        raise UserError(f"recipe keys not implemented by timm_astro.training: {', '.join(unknown)}; it implements "
                        f"the train.py options in timm_astro.training.TRAIN_DEFAULTS (train.py itself takes them all)")
    for key, (default, why) in DEFAULT_ONLY_KEYS.items():
        if given.get(key, default) != default:
            raise UserError(f"{key} must be {default!r} here ({why}), got {given[key]!r}; timm's train.py "
                            f"implements it")
    args = argparse.Namespace(**{**TRAIN_DEFAULTS, **{k: v for k, v in given.items() if k in TRAIN_DEFAULTS}})
    for key in ('batch_size', 'epochs'):
        value = getattr(args, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f'{key} must be a whole number of at least 1, got {value!r}')
    for key in ('lr', 'lr_base', 'weight_decay', 'warmup_lr', 'min_lr'):
        value = getattr(args, key)
        positive = key in ('lr', 'lr_base')
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or value < 0 or (positive and value == 0)):
            raise UserError(f'{key} must be a finite number {"above 0" if positive else "of at least 0"}, '
                            f'got {value!r}')
    for key, closed in (('drop_path', False), ('drop', False), ('smoothing', False), ('mixup_prob', True),
                        ('reprob', True), ('hflip', True), ('vflip', True)):
        value = getattr(args, key)
        if value is not None and (not isinstance(value, (int, float))
                                  or not (0.0 <= value <= 1.0 if closed else 0.0 <= value < 1.0)):
            raise UserError(f'{key} must be in [0, 1{"]" if closed else ")"}, got {value!r}')
    if mixes(vars(args)) and args.batch_size % 2:
        raise UserError(f'batch_size must be even when mixup/cutmix is on (Mixup pairs each image with another), '
                        f'got {args.batch_size}')
    if not args.lr:
        # train.py: lr from lr_base and the global batch, sqrt scaling for adaptive optimizers
        scale = args.lr_base_scale or ('sqrt' if any(o in args.opt.lower() for o in ('ada', 'lamb')) else 'linear')
        ratio = args.batch_size / args.lr_base_size
        args.lr = args.lr_base * (ratio ** 0.5 if scale == 'sqrt' else ratio)
    return args


PathLike = Union[str, os.PathLike]
CHECKPOINT_KEYS = ('epoch', 'state_dict', 'optimizer', 'scheduler', 'updates', 'history', 'rng', 'args')


class TrainResult:
    """What a training run produced: the trained model (its EMA copy, when EMA is on), and its history."""

    def __init__(self, model: nn.Module, history: List[Dict[str, float]], steps: int, cpu_seconds: float,
                 wall_seconds: float, ema: Optional[nn.Module] = None):
        self.model, self.ema, self.history = model, ema, history
        self.steps, self.cpu_seconds, self.wall_seconds = steps, cpu_seconds, wall_seconds

    @property
    def final_model(self) -> nn.Module:
        """The weights to evaluate: the EMA ones when EMA was on, as train.py's model_best would be chosen from."""
        return self.ema if self.ema is not None else self.model


def _rng_state() -> Dict[str, Any]:
    """Every random-number state the loop draws from (shuffling, augmentation, stochastic depth), in a form
    ``torch.load(weights_only=True)`` reads back: tensors, numbers and tuples only."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {'torch': torch.get_rng_state(), 'python': random.getstate(),
            'numpy': (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
            'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state['torch'])
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if state['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['cuda'])


def read_checkpoint(path: PathLike) -> Dict[str, Any]:
    """A checkpoint ``train_classifier`` wrote, read safely (no pickled code runs; CRC-32s checked)."""
    from timm_astro.loading import _read_pickle, existing_file
    path = existing_file(path, 'a checkpoint written by timm_astro.training (last.pth.tar)')
    checkpoint = _read_pickle(path)
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(checkpoint, Mapping) or k not in checkpoint]
    if missing:
        raise UserError(f'{path}: not a checkpoint of timm_astro.training (no {", ".join(missing)}); it cannot be '
                        f'resumed (a train.py checkpoint resumes with train.py --resume)')
    return dict(checkpoint)


def _comparable(value: Any) -> Any:
    return [_comparable(v) for v in value] if isinstance(value, (list, tuple)) else value


def check_own_loss_args(args: argparse.Namespace) -> None:
    """Refuse the options that act on class labels, for a run with its own ``loss_fn`` and targets."""
    if mixes(vars(args)):
        raise UserError(f'mixup/cutmix must be 0 with this loss (got mixup={args.mixup}, cutmix={args.cutmix}): '
                        f'Mixup blends class labels, and this task\'s targets are not class labels')
    if args.smoothing:
        raise UserError(f'smoothing must be 0 with this loss (label smoothing acts on class labels), got '
                        f'{args.smoothing}')


def check_resumable(state: Mapping[str, Any], args: argparse.Namespace, source: PathLike) -> None:
    """Refuse to resume ``state`` (``read_checkpoint``) with other ``args`` than it was trained with: the rest of
    the run would not be the run that was started (another schedule, another learning rate, ...)."""
    stored, current = state['args'], vars(args)
    changed = sorted(k for k in set(stored) | set(current) if _comparable(stored.get(k)) != _comparable(current.get(k)))
    if changed:
        shown = ', '.join(f'{k}={stored.get(k)!r} (now {current.get(k)!r})' for k in changed[:4])
        raise UserError(f'{source}: was written by a run with other settings: {shown}; resume with the same recipe '
                        f'and options, or start a new run')


D4_MODULE = 'timm_astro.data.d4_augment'


@contextlib.contextmanager
def _recipe_modules(modules: List[str]) -> Iterator[None]:
    """Import a recipe's ``device_modules`` as train.py does; D4 training views are on inside the block iff the recipe
    lists ``timm_astro.data.d4_augment``, whatever an earlier run imported, and the process's training transforms
    are as before the recipe's imports after it (importing the module turns D4 on for the whole process: right for
    train.py, not for one in-process run among others)."""
    was_on = D4_MODULE in sys.modules and sys.modules[D4_MODULE].is_installed()
    for module in modules:
        importlib.import_module(module)
    d4 = sys.modules.get(D4_MODULE)
    if d4 is None:
        yield
        return
    d4.install() if D4_MODULE in modules else d4.uninstall()
    try:
        yield
    finally:
        d4.install() if was_on else d4.uninstall()


def train_classifier(
        model: nn.Module,
        dataset,
        args: argparse.Namespace,
        *,
        data_config: Mapping[str, Any],
        num_classes: int,
        device: torch.device = torch.device('cpu'),
        workers: int = 0,
        on_epoch_end: Optional[Callable[[int, nn.Module, Dict[str, float]], Optional[Dict[str, float]]]] = None,
        loss_fn: Optional[nn.Module] = None,
        checkpoint: Optional[PathLike] = None,
        resume: Optional[PathLike] = None,
        checkpoint_extra: Optional[Mapping[str, Any]] = None,
        steps: Optional[int] = None,
        log_every: Optional[int] = None,
        should_stop: Optional[Callable[[List[Dict[str, float]]], bool]] = None,
) -> TrainResult:
    """Train ``model`` on ``dataset`` (a timm ImageDataset, or any dataset of ``(image, target)`` with a
    ``transform`` attribute; its transform is set here) with ``args`` from ``train_args``, as train.py would, and
    return the trained model and the per-epoch history.

    Each history entry has the epoch, the optimizer steps so far (``step``), the mean train loss since the previous
    entry, the lr, and the training's CPU-seconds so far (``cpu_s``, before the interruption too when resumed;
    ``cpu_seconds`` likewise). The hooks' own time (``on_epoch_end``, e.g. a
    validation pass, ``should_stop`` and checkpoints) is not counted, in ``cpu_s`` nor in the result's seconds: a
    run's cost is the same whether it is watched or not.

    Args:
        data_config: ``input_size``, ``mean``, ``std`` (``timm.data.resolve_model_data_config`` gives them).
        on_epoch_end: Called as ``f(epoch, model_to_evaluate, stats)``; a dict it returns joins the history.
        loss_fn: ``loss_fn(outputs, targets)`` for another task's targets, instead of the classification loss
            train.py picks; Mixup (``mixup``/``cutmix``) and label smoothing are refused with it.
        checkpoint: Written after every epoch (and its ``on_epoch_end``), replacing the previous one atomically.
        resume: A checkpoint of this loop to continue from: weights, optimizer, scheduler, EMA, epoch, update count,
            history and random-number states. The run's ``args`` must be those it was written with.
        checkpoint_extra: More JSON-like entries for the checkpoint (the task, its tree, the model name).
        steps: Train for exactly this many optimizer steps instead of ``args.epochs`` epochs (the last epoch is cut
            short). The schedule then counts in steps, as train.py's ``sched_on_updates`` does, and is laid over
            these steps; its epoch-valued settings (warm-up, cooldown) are converted at the loader's steps per
            epoch, fractions allowed, so a warm-up of 10 steps is ``warmup_epochs = 10 / steps_per_epoch``.
        log_every: Write a history entry (and call ``on_epoch_end``, with a fractional epoch) every this many
            steps and at the end, instead of at the end of each epoch.
        should_stop: Called with the history after each entry; True ends training there (early stopping).
    """
    from timm.data import Mixup, create_loader
    from timm.loss import LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
    from timm.optim import create_optimizer_v2, optimizer_kwargs
    from timm.scheduler import create_scheduler_v2, scheduler_kwargs
    from timm.utils import ModelEmaV3, random_seed
    from timm_astro.outputs import atomic_file

    if loss_fn is not None:
        check_own_loss_args(args)
    state = read_checkpoint(resume) if resume is not None else None
    if state is not None:
        check_resumable(state, args, resume)

    random_seed(args.seed)
    model.to(device)
    with _recipe_modules(args.device_modules or []):
        loader = create_loader(
            dataset, input_size=tuple(data_config['input_size']), batch_size=args.batch_size, is_training=True,
            no_aug=args.no_aug, re_prob=args.reprob, re_mode=args.remode, re_count=args.recount, scale=args.scale,
            ratio=args.ratio, hflip=args.hflip, vflip=args.vflip, color_jitter=args.color_jitter,
            auto_augment=args.aa, interpolation=args.train_interpolation, mean=data_config['mean'],
            std=data_config['std'], num_workers=workers, use_prefetcher=False, device=device)
    updates_per_epoch = len(loader)
    if updates_per_epoch == 0:
        raise UserError(f'{len(dataset)} training images make no batch of {args.batch_size} (the last, incomplete '
                        f'batch is dropped, as in train.py): lower batch_size to at most {len(dataset)}')
    mixup = Mixup(mixup_alpha=args.mixup, cutmix_alpha=args.cutmix, cutmix_minmax=args.cutmix_minmax,
                  prob=args.mixup_prob, switch_prob=args.mixup_switch_prob, mode=args.mixup_mode,
                  label_smoothing=args.smoothing, num_classes=num_classes) if mixes(vars(args)) else None
    # the loss train.py picks: Mixup's targets carry the smoothing
    if loss_fn is not None:
        loss_fn = loss_fn.to(device)
    elif mixup is not None:
        loss_fn = SoftTargetCrossEntropy()
    elif args.smoothing:
        loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing)
    else:
        loss_fn = nn.CrossEntropyLoss()
    optimizer = create_optimizer_v2(model, **optimizer_kwargs(cfg=args))
    if steps is None:
        scheduler, num_epochs = create_scheduler_v2(optimizer, **scheduler_kwargs(args),
                                                    updates_per_epoch=updates_per_epoch)
    else:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise UserError(f'steps must be a whole number of at least 1, got {steps!r}')
        # timm multiplies every epoch-valued setting by updates_per_epoch: a schedule of steps / updates_per_epoch
        # epochs is one of exactly `steps` updates
        scheduler, _ = create_scheduler_v2(optimizer, **{**scheduler_kwargs(args), 'step_on_epochs': False,
                                                         'num_epochs': steps / updates_per_epoch},
                                           updates_per_epoch=updates_per_epoch)
        num_epochs = math.ceil(steps / updates_per_epoch)
    if log_every is not None and (isinstance(log_every, bool) or not isinstance(log_every, int) or log_every < 1):
        raise UserError(f'log_every must be a whole number of at least 1, got {log_every!r}')
    ema = ModelEmaV3(model, decay=args.model_ema_decay, use_warmup=args.model_ema_warmup) if args.model_ema else None

    history: List[Dict[str, float]] = []
    start_epoch, updates = 0, 0
    if state is not None:
        try:
            model.load_state_dict(state['state_dict'])
            optimizer.load_state_dict(state['optimizer'])
            scheduler.load_state_dict(state['scheduler'])
            if ema is not None:
                ema.module.load_state_dict(state['state_dict_ema'])
        except (RuntimeError, KeyError, ValueError) as e:
            raise UserError(f'{resume}: does not fit this model and recipe ({str(e).splitlines()[0]}); resume with '
                            f'the model it was trained as') from None
        start_epoch, updates, history = int(state['epoch']), int(state['updates']), list(state['history'])
        _set_rng_state(state['rng'])  # last: building the model and loader above drew random numbers

    arch = (getattr(model, 'pretrained_cfg', None) or {}).get('architecture')  # as train.py's checkpoints name it
    # a resumed run counts its CPU-seconds on from its last entry: cpu_s never goes back in one run's history
    cpu_start = time.process_time() - (history[-1]['cpu_s'] if history else 0.0)
    wall_start = time.perf_counter()
    hook_cpu, hook_wall = 0.0, 0.0  # time spent in the hooks and checkpoints, not counted as training
    loss_sum, seen = 0.0, 0

    def log(epoch: float) -> bool:
        """Append a history entry (calling the hooks); True when ``should_stop`` says to end here."""
        nonlocal loss_sum, seen, hook_cpu, hook_wall
        stats = {'epoch': epoch, 'step': updates, 'train_loss': loss_sum / max(seen, 1),
                 'lr': optimizer.param_groups[0]['lr'], 'cpu_s': time.process_time() - cpu_start - hook_cpu}
        loss_sum, seen = 0.0, 0
        hook_start = time.process_time(), time.perf_counter()
        if on_epoch_end is not None:
            stats.update(on_epoch_end(epoch, ema.module if ema is not None else model, stats) or {})
        history.append(stats)
        stop = should_stop is not None and bool(should_stop(history))
        model.train()  # a hook may have evaluated the model
        hook_cpu += time.process_time() - hook_start[0]
        hook_wall += time.perf_counter() - hook_start[1]
        return stop

    def save(epoch: int) -> None:
        nonlocal hook_cpu, hook_wall
        hook_start = time.process_time(), time.perf_counter()
        saved = {
            **(checkpoint_extra or {}), 'epoch': epoch, 'arch': arch, 'state_dict': model.state_dict(),
            'optimizer': optimizer.state_dict(), 'scheduler': scheduler.state_dict(), 'updates': updates,
            'history': history, 'args': vars(args), 'rng': _rng_state()}
        if ema is not None:
            saved['state_dict_ema'] = ema.module.state_dict()
        with atomic_file(Path(checkpoint), 'wb') as f:
            torch.save(saved, f)
        hook_cpu += time.process_time() - hook_start[0]
        hook_wall += time.perf_counter() - hook_start[1]

    stop = False
    for epoch in range(start_epoch, num_epochs):
        model.train()
        for images, targets in loader:
            images, targets = images.to(device), targets.to(device)
            if mixup is not None:
                images, targets = mixup(images, targets)
            loss = loss_fn(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            updates += 1
            if ema is not None:
                ema.update(model, step=updates)
            scheduler.step_update(num_updates=updates)
            loss_sum += loss.item() * images.shape[0]
            seen += images.shape[0]
            last = steps is not None and updates >= steps
            if log_every is not None and (updates % log_every == 0 or last):
                stop = log(updates / updates_per_epoch) or last
            if stop or last:
                break
        scheduler.step(epoch + 1)
        if log_every is None:
            stop = log(epoch + 1) or stop
        if checkpoint is not None:
            save(epoch + 1)
        if stop or (steps is not None and updates >= steps):
            break
    if log_every is not None and seen:  # steps after the last entry (the end of an epochs-long run)
        log(updates / updates_per_epoch)
    return TrainResult(model, history, updates, time.process_time() - cpu_start - hook_cpu,
                       time.perf_counter() - wall_start - hook_wall, ema=ema.module if ema is not None else None)
