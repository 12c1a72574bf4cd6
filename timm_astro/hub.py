"""Publish trained models on the Hugging Face Hub; loading them back is plain timm.

* ``export``: a train.py checkpoint (``model_best.pth.tar`` / ``last.pth.tar``) or a plain state dict becomes a
  Hub-ready folder: ``config.json`` (timm's), ``model.safetensors`` and a ``README.md`` model card.
* ``push``: that folder, or a checkpoint exported on the fly, goes to the Hub in one commit.
* pull: ``import timm_astro`` then ``timm.create_model('hf-hub:ORG/REPO', pretrained=True)``.

The folder is written by timm's ``save_for_hf`` and the card by timm's ``generate_readme``; this module only
recovers what they need from a train.py run (the exact ``create_model`` call, the data config and labels from its
args, metrics from ``summary.csv``). Uploads use huggingface_hub's ``create_repo`` + ``create_commit`` rather than
timm's ``push_to_hf_hub``, which re-serialises the model, adds a pickled ``pytorch_model.bin`` and keeps an old
README; ``upload_folder`` is not used either because it may split a folder into several commits.
"""
import argparse
import csv
import json
import math
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn

import timm
from timm.models import clean_state_dict, get_model_input_config, get_pretrained_cfg_value, save_for_hf
from timm.models._hub import generate_readme  # not re-exported by timm.models

import timm_astro  # noqa: F401  (registers the models, so exports and local checks see them)
from timm_astro.errors import UserError
from timm_astro.outputs import atomic_output_dir, check_output_location
from timm_astro.version import __version__

__all__ = ['HubError', 'export_model', 'export_checkpoint', 'check_export_dir', 'push']

PathLike = Union[str, os.PathLike]

EXPORT_FILES = ('config.json', 'model.safetensors', 'README.md')
CREATED_BY = 'timm-astro export'
REPO_PLACEHOLDER = 'ORG/REPO'  # the model card's usage snippet names the repo; push() fills it in
PICKLE_SUFFIXES = ('.bin', '.pth', '.pt', '.tar', '.pkl', '.ckpt')

ASTROFORMER_CITATION = """@article{dagli2023astroformer,
  title={Astroformer: More Data Might not be all you need for Classification},
  author={Dagli, Rishabh},
  journal={arXiv preprint arXiv:2304.05350},
  year={2023}
}"""

# train.py arguments worth showing in a model card, in this order (the card is not the place for all ~150)
RECIPE_KEYS = (
    'model', 'pretrained', 'initial_checkpoint', 'dataset', 'train_split', 'val_split', 'num_classes',
    'input_size', 'img_size', 'epochs', 'batch_size', 'grad_accum_steps', 'opt', 'opt_eps', 'opt_betas',
    'momentum', 'weight_decay', 'clip_grad', 'lr', 'lr_base', 'sched', 'min_lr', 'warmup_epochs', 'warmup_lr',
    'cooldown_epochs', 'aa', 'hflip', 'vflip', 'scale', 'ratio', 'color_jitter', 'reprob', 'mixup', 'cutmix',
    'mixup_prob', 'smoothing', 'drop', 'drop_path', 'model_ema', 'model_ema_decay', 'amp', 'amp_dtype', 'seed',
    'model_kwargs',
)


class HubError(UserError):
    """A bad input for export / push, with a message meant for the user (the CLI prints it as one line)."""


# ---------------------------------------------------------------------------------------------------------------
# reading a train.py run


def load_checkpoint_file(path: PathLike) -> Any:
    """Read a checkpoint without running pickled code: ``torch.load(weights_only=True)`` or safetensors.

    ``argparse.Namespace`` is allow-listed for the duration of the call only: train.py stores its arguments as
    one, and rebuilding it merely sets attributes from primitive values (no code runs, no callables are
    reachable). Anything else outside torch's weights-only set is refused with the global it asked for.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if path.suffix == '.safetensors':
        import safetensors.torch
        try:
            return safetensors.torch.load_file(str(path), device='cpu')
        except Exception as e:
            raise HubError(f'{path} is not a readable safetensors file (corrupt or truncated?): {e}') from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # a damaged file fails in many ways (zip, pickle opcodes, storage sizes)
        unsafe = re.search(r'Unsupported global: GLOBAL ([\w.]+)', str(e))
        if isinstance(e, pickle.UnpicklingError) and unsafe:
            raise HubError(
                f'{path} needs unsafe unpickling (it contains {unsafe.group(1)}); checkpoints are only read with '
                f'torch.load(weights_only=True). If you trust the file, re-save just its weights: '
                f"torch.save(torch.load(path, weights_only=False)['state_dict'], 'weights.pth')") from None
        if isinstance(e, pickle.UnpicklingError):
            detail = 'not a pickle torch can read'  # torch's own text here is about weights_only, not the damage
        else:
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise HubError(f'{path} is not a readable PyTorch checkpoint (corrupt or truncated?): {detail}') from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def split_checkpoint(ckpt: Any, use_ema: bool = True) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any], str]:
    """Pick the weights out of a checkpoint: ``(state_dict, checkpoint metadata, which weights)``."""
    if _is_state_dict(ckpt):
        return clean_state_dict(dict(ckpt)), {}, 'state dict'
    if not isinstance(ckpt, Mapping):
        raise HubError(f'expected a train.py checkpoint or a state dict, found a {type(ckpt).__name__}')
    meta = {k: v for k, v in ckpt.items() if not k.startswith('state_dict') and k not in ('optimizer', 'model')}
    if use_ema and _is_state_dict(ckpt.get('state_dict_ema')):
        return clean_state_dict(dict(ckpt['state_dict_ema'])), meta, 'EMA weights'
    for key in ('state_dict', 'model'):
        if _is_state_dict(ckpt.get(key)):
            return clean_state_dict(dict(ckpt[key])), meta, 'weights' if key == 'model' else 'non-EMA weights'
    raise HubError(f"no weights found in the checkpoint (keys: {', '.join(map(str, ckpt))})")


def read_args_yaml(path: PathLike) -> Dict[str, Any]:
    """train.py's ``args.yaml``: every argument, including unknown config keys such as ``label_names``."""
    import yaml
    with open(path, 'r', encoding='utf-8') as f:
        args = yaml.safe_load(f)
    if not isinstance(args, dict):
        raise HubError(f'{path} does not hold a mapping of train.py arguments')
    return args


def read_summary(path: PathLike, eval_metric: str = 'top1', epoch: Optional[int] = None) -> Dict[str, Any]:
    """Best validation metrics from train.py's ``summary.csv`` (and those of ``epoch``, the checkpoint's)."""
    with open(path, 'r', encoding='utf-8', newline='') as f:
        rows = [r for r in csv.DictReader(f) if r.get('epoch') not in (None, '')]

    def value(row, name):
        for key in (f'eval_{name}', name):
            try:
                v = float(row[key])
                return v if math.isfinite(v) else None
            except (KeyError, TypeError, ValueError):
                pass
        return None

    metric = eval_metric if any(value(r, eval_metric) is not None for r in rows) else 'top1'
    rows = [r for r in rows if value(r, metric) is not None]
    if not rows:
        return {}
    pick = min if 'loss' in metric else max
    best = pick(rows, key=lambda r: value(r, metric))
    out = {'epoch': int(float(best['epoch'])), 'epochs': len(rows), 'eval_metric': metric}
    for name in ('top1', 'top5', 'loss'):
        if value(best, name) is not None:
            out[name] = value(best, name)
    if epoch is not None and epoch != out['epoch']:
        for r in rows:
            if int(float(r['epoch'])) == epoch:
                out['checkpoint_epoch'] = epoch
                for name in ('top1', 'top5'):
                    if value(r, name) is not None:
                        out[f'checkpoint_{name}'] = value(r, name)
    return out


def _data_config_from_args(args: Mapping[str, Any]) -> Dict[str, Any]:
    """The preprocessing train.py resolved from these args (its ``resolve_data_config`` inputs)."""
    cfg = {}
    if args.get('input_size'):
        cfg['input_size'] = tuple(args['input_size'])
    elif args.get('img_size'):
        cfg['img_size'] = args['img_size']
    for key in ('mean', 'std', 'crop_pct', 'crop_mode', 'interpolation'):
        if args.get(key) not in (None, ''):
            cfg[key] = tuple(args[key]) if isinstance(args[key], list) else args[key]
    return cfg


def _model_factory_kwargs(args: Mapping[str, Any]) -> Dict[str, Any]:
    """The architecture arguments of train.py's ``create_model`` call (dropout rates do not matter at eval)."""
    kwargs = {}
    if args.get('in_chans') is not None:
        kwargs['in_chans'] = args['in_chans']
    elif args.get('input_size'):
        kwargs['in_chans'] = args['input_size'][0]
    for arg, key in (('gp', 'global_pool'), ('bn_momentum', 'bn_momentum'), ('bn_eps', 'bn_eps')):
        if args.get(arg) is not None:
            kwargs[key] = args[arg]
    model_kwargs = args.get('model_kwargs') or {}
    if not isinstance(model_kwargs, Mapping):
        raise HubError(f'model_kwargs in the train args must be a mapping, found {model_kwargs!r}')
    kwargs.update(model_kwargs)
    return kwargs


def _check_model_name(name: str, source: str) -> str:
    if not isinstance(name, str) or not timm.is_model(name):
        known = ', '.join(timm.list_models('astroformer*'))
        raise HubError(f'unknown model {name!r} ({source}); Astroformer models: {known} (or any timm model name)')
    return name


def _classifier_rows(model_name: str, state_dict: Mapping[str, torch.Tensor]) -> Tuple[Optional[str], Optional[int]]:
    """The classifier weight the pretrained cfg names, and its number of outputs, if the state dict has it."""
    classifier = get_pretrained_cfg_value(model_name, 'classifier')
    for name in ([classifier] if isinstance(classifier, str) else list(classifier or ())):
        weight = state_dict.get(f'{name}.weight')
        if weight is not None and weight.ndim >= 1:
            return f'{name}.weight', int(weight.shape[0])
    return None, None


def _load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists what does not fit."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    shapes = [f'{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}'
              for k in own if k in state_dict and state_dict[k].shape != own[k].shape]
    problems = []
    for label, items in (('missing', missing), ('unexpected', unexpected), ('shape mismatch (weights vs model)', shapes)):
        if items:
            problems.append(f"{label}: {', '.join(items[:3])}{' ...' if len(items) > 3 else ''} ({len(items)})")
    if problems:
        raise HubError(f"the weights do not fit {what}: {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)


def _sibling(path: Path, name: str) -> Optional[Path]:
    candidate = path.parent / name
    return candidate if candidate.is_file() else None


def _dataset_name(args: Mapping[str, Any]) -> Optional[str]:
    name = args.get('dataset') or None
    if isinstance(name, str):
        for prefix in ('torch/', 'tfds/', 'hfds/', 'hfids/', 'wds/'):
            if name.startswith(prefix):
                name = name[len(prefix):]
    return name or None


# ---------------------------------------------------------------------------------------------------------------
# export


def _pct(value: Any) -> str:
    return f'{value:.2f}' if isinstance(value, (int, float)) else str(value)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f'{value:g}'
    if isinstance(value, (list, tuple)):
        return '(' + ', '.join(_fmt(v) for v in value) + ')'
    return str(value)


def _model_card(
        model: nn.Module,
        config: Dict[str, Any],
        model_name: str,
        metrics: Optional[Mapping[str, Any]],
        train_args: Optional[Mapping[str, Any]],
        dataset: Optional[str],
        ema: Optional[str],
) -> str:
    """README.md text via timm's ``generate_readme``: details, metrics, recipe, usage, citation."""
    arch = config['architecture']
    pcfg = config['pretrained_cfg']
    is_astroformer = arch.startswith('astroformer')
    num_params = sum(p.numel() for p in model.parameters())
    _, height, width = pcfg['input_size']
    what = 'an Astroformer' if is_astroformer else f'a timm `{arch}`'
    description = (
        f'{what[0].upper() + what[1:]} image classifier'
        + (f' trained on {dataset}' if dataset else '')
        + f', exported with timm-astro {__version__}.'
    )
    if is_astroformer:
        description += (
            ' Astroformer (Dagli, ICLR 2023 workshop, arXiv:2304.05350) is a CoAtNet-style hybrid: convolutional'
            ' MBConv stages followed by relative self-attention, proposed for classification from little data.'
        )
    details: Dict[str, Any] = {
        'Model Type': 'Image classification',
        'Architecture': f'`{arch}`' + (f" (model args: {json.dumps(config['model_args'])})" if config.get('model_args') else ''),
        'Model Stats': {
            'Params (M)': f'{num_params / 1e6:.2f}',
            'Image size': f'{width} x {height}',
            'Classes': str(config['num_classes']),
        },
        'Preprocessing': {
            'Input size': _fmt(tuple(pcfg['input_size'])),
            'Interpolation': pcfg.get('interpolation', 'bicubic'),
            'Crop pct': _fmt(pcfg.get('crop_pct')),
            'Crop mode': pcfg.get('crop_mode', 'center'),
            'Mean': _fmt(pcfg.get('mean')),
            'Std': _fmt(pcfg.get('std')),
        },
    }
    if config.get('label_names'):
        names = [str(n) for n in (config['label_names'].values() if isinstance(config['label_names'], dict)
                                  else config['label_names'])]
        details['Labels'] = ', '.join(f'{i}: {n}' for i, n in enumerate(names))
    if dataset:
        details['Dataset'] = dataset
    if is_astroformer:
        details['Papers'] = {
            'Astroformer: More Data Might not be all you need for Classification': 'https://arxiv.org/abs/2304.05350',
        }
    if ema:
        details['Weights'] = ema
    if metrics:
        shown: Dict[str, str] = {}
        if 'epoch' in metrics:
            epoch = str(metrics['epoch'])
            if 'epochs' in metrics:
                epoch += f" (of {metrics['epochs']} epochs logged, numbered from 0; chosen by {metrics.get('eval_metric', 'top1')})"
            shown['Best epoch'] = epoch
        for key, label in (('top1', 'Top-1 (%)'), ('top5', 'Top-5 (%)')):
            if key in metrics:
                shown[label] = _pct(metrics[key])
        if 'checkpoint_epoch' in metrics:  # e.g. last.pth.tar: not the best epoch's weights
            shown['These weights are from epoch'] = str(metrics['checkpoint_epoch'])
            for key, label in (('checkpoint_top1', 'Top-1 at that epoch (%)'), ('checkpoint_top5', 'Top-5 at that epoch (%)')):
                if key in metrics:
                    shown[label] = _pct(metrics[key])
        for key, value in metrics.items():  # anything else a caller passed, as given
            if key not in ('top1', 'top5', 'epoch', 'epochs', 'eval_metric', 'loss') and not key.startswith('checkpoint_'):
                shown[str(key)] = _fmt(value)
        details['Validation results (train.py summary.csv)' if 'epochs' in metrics else 'Results'] = shown
    if train_args:
        shown_if = {'lr_base': not train_args.get('lr'), 'amp_dtype': train_args.get('amp'),
                    'mixup_prob': train_args.get('mixup') or train_args.get('cutmix'),
                    'model_ema_decay': train_args.get('model_ema'), 'warmup_lr': train_args.get('warmup_epochs')}
        recipe = {k: _fmt(train_args[k]) for k in RECIPE_KEYS
                  if train_args.get(k) not in (None, '', [], {}) and shown_if.get(k, True)}
        if recipe:
            details['Training recipe (timm train.py args)'] = recipe

    usage = f"""```shell
pip install timm-astro
```

```python
import torch
import timm
import timm_astro  # registers the Astroformer architectures with timm: import it before create_model
from PIL import Image

model = timm.create_model('hf-hub:{REPO_PLACEHOLDER}', pretrained=True).eval()
data_config = timm.data.resolve_model_data_config(model)  # the input size, mean/std and crop it was trained with
transform = timm.data.create_transform(**data_config, is_training=False)

img = Image.open('image.png').convert('RGB')
with torch.no_grad():
    probs = model(transform(img).unsqueeze(0)).softmax(dim=-1)
label_names = model.pretrained_cfg.get('label_names')
top = probs[0].topk(min(5, probs.shape[-1]))
print([(label_names[i] if label_names else int(i), float(p)) for p, i in zip(top.values, top.indices)])
```
"""
    card = {
        'tags': ['image-classification', 'timm', 'timm-astro'] + (['astroformer', 'astronomy'] if is_astroformer else []),
        'license': pcfg.get('license', 'apache-2.0'),
        'description': description,
        'details': details,
        'usage': usage,
    }
    if is_astroformer:
        card['citation'] = ASTROFORMER_CITATION
    return generate_readme(card, model_name)


def _is_earlier_export(folder: Path) -> bool:
    """An export written before exports carried timm-astro's output marker: only our three files."""
    names = {p.name for p in folder.iterdir()}
    return names <= set(EXPORT_FILES) and 'config.json' in names


def export_model(
        model: nn.Module,
        out_dir: PathLike,
        *,
        label_names: Optional[Sequence[str]] = None,
        data_config: Optional[Dict[str, Any]] = None,
        metrics: Optional[Mapping[str, Any]] = None,
        train_args: Optional[Union[Mapping[str, Any], argparse.Namespace]] = None,
        dataset: Optional[str] = None,
        overwrite: bool = False,
        weights_note: Optional[str] = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card for ``model`` into ``out_dir``.

    The folder is built next to ``out_dir`` and renamed into place, so ``out_dir`` either holds a complete export
    or is left as it was. ``data_config`` is the preprocessing the model was trained with (``input_size``,
    ``mean``, ``std``, ``crop_pct``, ``interpolation``, ...); the model's own defaults fill the rest.
    ``metrics`` (e.g. ``{'top1': 97.1, 'top5': 99.9, 'epoch': 41}``) and ``train_args`` go in the card.
    """
    out_dir = check_output_location(out_dir, overwrite=overwrite, created_by=CREATED_BY, is_own=_is_earlier_export)
    if isinstance(train_args, argparse.Namespace):
        train_args = vars(train_args)
    num_classes = getattr(model, 'num_classes', None)
    if label_names is not None:
        label_names = [str(n) for n in label_names]
        if num_classes is not None and len(label_names) != num_classes:
            raise HubError(f'{len(label_names)} label names for a model with num_classes={num_classes}')
    if not getattr(model, 'pretrained_cfg', None):
        raise HubError('export_model needs a timm model (created with timm.create_model: it has a pretrained_cfg)')
    # timm records the training size of a flexible model only if told: a model built with img_size=256 keeps
    # 256 as its data config, rather than falling back to the architecture's default size
    data_config = dict(data_config or {})
    if data_config.get('input_size') is None and data_config.get('img_size') is None:
        data_config['input_size'] = tuple(get_model_input_config(model)['input_size'])
    with atomic_output_dir(out_dir, CREATED_BY, overwrite=overwrite, is_own=_is_earlier_export) as tmp:
        os.chmod(tmp, 0o755)
        try:
            save_for_hf(
                model,
                str(tmp),
                model_config={'label_names': label_names} if label_names else None,
                data_config=data_config,
                safe_serialization=True,
            )
            for name in EXPORT_FILES[:2]:
                os.chmod(tmp / name, 0o644)  # safetensors writes 0600; a folder meant for publishing is readable
        except (ValueError, AssertionError) as e:
            raise HubError(f'cannot export this model: {e}') from None
        config = json.loads((tmp / 'config.json').read_text(encoding='utf-8'))
        readme = _model_card(model, config, out_dir.name, metrics, train_args, dataset, weights_note)
        (tmp / 'README.md').write_text(readme, encoding='utf-8')
    return out_dir


def export_checkpoint(
        checkpoint_path: PathLike,
        out_dir: PathLike,
        *,
        model_name: Optional[str] = None,
        use_ema: bool = True,
        summary_csv: Optional[PathLike] = None,
        args_yaml: Optional[PathLike] = None,
        overwrite: bool = False,
) -> Path:
    """Export a train.py checkpoint (or a plain state dict) with ``export_model``.

    The architecture is ``model_name``, else the run's ``model`` argument, else the checkpoint's ``arch``; the
    model is rebuilt with train.py's own ``create_model`` arguments (``num_classes``, ``in_chans``, ``gp``,
    ``bn_*``, ``model_kwargs``) and must take the weights strictly. ``args.yaml`` and ``summary.csv`` default to
    the files train.py writes next to the checkpoint; their values override the args stored in the checkpoint.
    """
    checkpoint_path = Path(checkpoint_path)
    ckpt = load_checkpoint_file(checkpoint_path)
    state_dict, meta, which = split_checkpoint(ckpt, use_ema=use_ema)

    args: Dict[str, Any] = {}
    stored = meta.get('args')
    if isinstance(stored, argparse.Namespace):
        args.update(vars(stored))
    elif isinstance(stored, Mapping):
        args.update(stored)
    args_yaml = Path(args_yaml) if args_yaml else (_sibling(checkpoint_path, 'args.yaml') if meta else None)
    if args_yaml is not None:
        args.update(read_args_yaml(args_yaml))

    if model_name:
        name = _check_model_name(model_name, 'from --model')
    elif args.get('model'):
        name = _check_model_name(args['model'], "the run's model argument")
    elif meta.get('arch'):
        name = _check_model_name(meta['arch'], "the checkpoint's arch; give the model name with --model NAME")
    else:
        raise HubError(f'{checkpoint_path} names no architecture (no arch or args in it): give the model name, '
                       f'`timm-astro export CHECKPOINT OUT_DIR --model NAME`')

    classifier, rows = _classifier_rows(name, state_dict)
    num_classes = args.get('num_classes')
    if num_classes is not None and rows is not None and int(num_classes) != rows:
        raise HubError(
            f'num_classes={num_classes} (from the train args) but the weights have {rows} outputs ({classifier})')
    num_classes = int(num_classes) if num_classes is not None else rows

    kwargs = _model_factory_kwargs(args)
    if num_classes is not None:
        kwargs['num_classes'] = num_classes
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise HubError(f'cannot build {name} with {kwargs}: {e}') from None
    _load_strict(model, state_dict, f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})")
    model.eval()

    label_names = args.get('label_names')
    if label_names is not None and (not isinstance(label_names, (list, tuple)) or len(label_names) != model.num_classes):
        raise HubError(
            f'label_names in the train args has {len(label_names) if isinstance(label_names, (list, tuple)) else "no"}'
            f' entries for a model with num_classes={model.num_classes}')

    summary_csv = Path(summary_csv) if summary_csv else (_sibling(checkpoint_path, 'summary.csv') if meta else None)
    metrics = None
    if summary_csv is not None:
        epoch = meta.get('epoch')
        metrics = read_summary(summary_csv, args.get('eval_metric') or 'top1', epoch if isinstance(epoch, int) else None)
    note = None
    if which == 'EMA weights':
        note = 'EMA weights (model_ema) from the train.py checkpoint'
    elif which == 'non-EMA weights':
        note = 'non-EMA weights from the train.py checkpoint' + (
            ' (it also holds EMA weights)' if 'state_dict_ema' in (ckpt or {}) else '')

    try:
        data_config = _data_config_from_args(args)
        return export_model(
            model,
            out_dir,
            label_names=label_names,
            data_config=data_config,
            metrics=metrics,
            train_args=args or None,
            dataset=_dataset_name(args),
            overwrite=overwrite,
            weights_note=note,
        )
    except ValueError as e:
        if isinstance(e, HubError):
            raise
        raise HubError(f'cannot export {name} with the train args: {e}') from None


# ---------------------------------------------------------------------------------------------------------------
# push


def check_export_dir(folder: PathLike) -> Dict[str, Any]:
    """Refuse anything but a complete, loadable export before a byte is uploaded; returns its config."""
    folder = Path(folder)
    missing = [f for f in EXPORT_FILES if not (folder / f).is_file()]
    if missing:
        pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        hint = f' ({", ".join(pickles)} are pickles and are never published)' if pickles else ''
        raise HubError(f"{folder} is not an export: missing {', '.join(missing)}{hint}; run `timm-astro export` first")
    try:
        config = json.loads((folder / 'config.json').read_text(encoding='utf-8'))
    except ValueError as e:
        raise HubError(f'{folder / "config.json"} is not valid JSON: {e}') from None
    arch = config.get('architecture') if isinstance(config, dict) else None
    if not arch:
        raise HubError(f'{folder / "config.json"} has no architecture')
    _check_model_name(arch, 'from config.json')
    try:  # exactly what a user's create_model('hf-hub:...') will do, from the local copy
        model = timm.create_model(f'local-dir:{folder.resolve()}', pretrained=True)
    except Exception as e:
        raise HubError(f'{folder} does not load with timm: {type(e).__name__}: {e}') from None
    labels = config.get('label_names')
    if labels is not None and len(labels) != model.num_classes:
        raise HubError(f'{folder / "config.json"}: {len(labels)} label names for num_classes={model.num_classes}')
    return config


def push(
        path: PathLike,
        repo_id: str,
        *,
        private: bool = False,
        revision: Optional[str] = None,
        commit_message: Optional[str] = None,
        token: Optional[str] = None,
) -> str:
    """Upload an exported folder (or a checkpoint, exported first) to ``repo_id`` in one commit; returns its URL.

    The token defaults to huggingface_hub's (``HF_TOKEN``, then ``hf auth login``'s) and the endpoint to
    ``HF_ENDPOINT``. Everything is checked locally before the first request; a branch named by ``revision`` is
    created from ``main`` if missing. Only the three export files are sent, never a pickle.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'not found: {path}')
    if not isinstance(repo_id, str) or not re.fullmatch(r'(?:[\w.-]+/)?[\w.-]+', repo_id):
        raise HubError(f'{repo_id!r} is not a repo id (expected NAME or ORG/NAME)')
    token = token or get_token()
    if not token:
        raise HubError('no Hugging Face token: set HF_TOKEN or run `hf auth login` (nothing was uploaded)')

    with tempfile.TemporaryDirectory(prefix='timm-astro-push-') as tmp:
        folder = path if path.is_dir() else export_checkpoint(path, Path(tmp) / repo_id.split('/')[-1])
        config = check_export_dir(folder)

        api = HfApi(token=token, library_name='timm-astro', library_version=__version__)
        repo_url = api.create_repo(repo_id, private=private, exist_ok=True)
        repo_id = repo_url.repo_id
        if revision and revision != 'main' and not revision.startswith('refs/'):
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        readme = (folder / 'README.md').read_text(encoding='utf-8')
        readme = readme.replace(f'hf-hub:{REPO_PLACEHOLDER}', f'hf-hub:{repo_id}')
        readme = re.sub(r'^# Model card for .*$', f"# Model card for {repo_id.split('/')[-1]}", readme, count=1, flags=re.M)
        operations = [
            CommitOperationAdd(path_in_repo='config.json', path_or_fileobj=str(folder / 'config.json')),
            CommitOperationAdd(path_in_repo='model.safetensors', path_or_fileobj=str(folder / 'model.safetensors')),
            CommitOperationAdd(path_in_repo='README.md', path_or_fileobj=readme.encode('utf-8')),
        ]
        api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or f"Upload {config['architecture']} (timm-astro {__version__})",
            revision=revision,
        )
    url = str(repo_url).rstrip('/')
    return f'{url}/tree/{revision}' if revision and revision != 'main' else url
