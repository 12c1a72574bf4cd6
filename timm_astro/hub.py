"""Publish trained models on the Hugging Face Hub; loading them back is plain timm (or ``load_model``).

* ``export``: a train.py checkpoint (``model_best.pth.tar`` / ``last.pth.tar``) or a plain state dict becomes a
  Hub-ready folder: ``config.json`` (timm's), ``model.safetensors`` and a ``README.md`` model card.
* ``push``: that folder, or a checkpoint exported on the fly, goes to the Hub in one commit.
* pull: ``import timm_astro`` then ``timm.create_model('hf-hub:ORG/REPO', pretrained=True)``.

Checkpoints are read and models rebuilt by ``timm_astro.loading`` (safely: no pickled code runs). The folder is
written by timm's ``save_for_hf`` and the card by timm's ``generate_readme``; this module adds what they lack: the
card's content from a train.py run (metrics from ``summary.csv``, the recipe from its args) and an upload in one
commit through huggingface_hub's ``create_repo`` + ``create_commit``. timm's ``push_to_hf_hub`` re-serialises the
model, adds a pickled ``pytorch_model.bin`` and keeps an old README; ``upload_folder`` may split a folder into
several commits.
"""
import argparse
import csv
import json
import math
import os
import re
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import torch.nn as nn
from safetensors import SafetensorError

from timm.data import resolve_model_data_config
from timm.models import get_model_input_config, save_for_hf
from timm.models._hub import generate_readme  # not re-exported by timm.models

from timm_astro.environment import hub_endpoint_problem
from timm_astro.errors import UserError
from timm_astro.losses import CONCENTRATION_MAP
from timm_astro.loading import (
    INPUT_KEYS, existing_file, input_entries, load_model, model_from_checkpoint, read_train_checkpoint,
    weights_model_kwargs)
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
    'model', 'pretrained', 'pretrained_path', 'initial_checkpoint', 'dataset', 'train_split', 'val_split',
    'num_classes', 'input_size', 'img_size', 'epochs', 'batch_size', 'grad_accum_steps', 'opt', 'opt_eps',
    'opt_betas', 'momentum', 'weight_decay', 'layer_decay', 'clip_grad', 'lr', 'lr_base', 'sched', 'min_lr',
    'warmup_epochs', 'warmup_lr', 'cooldown_epochs', 'aa', 'hflip', 'vflip', 'scale', 'ratio', 'color_jitter',
    'reprob', 'mixup', 'cutmix', 'mixup_prob', 'smoothing', 'drop', 'drop_path', 'model_ema', 'model_ema_decay', 'amp',
    'amp_dtype', 'seed', 'model_kwargs',
)


# the model card's names for read_summary's metrics (any other metric a caller passes is shown under its own name)
METRIC_LABELS = {'top1': 'Top-1 (%)', 'top5': 'Top-5 (%)', 'checkpoint_epoch': 'These weights are from epoch',
                 'checkpoint_top1': 'Top-1 at that epoch (%)', 'checkpoint_top5': 'Top-5 at that epoch (%)'}


class HubError(UserError):
    """A bad input for export / push, with a message meant for the user (the CLI prints it as one line)."""


def read_summary(path: PathLike, eval_metric: str = 'top1', epoch: Optional[int] = None) -> Dict[str, Any]:
    """Best validation metrics from train.py's ``summary.csv`` (and those of ``epoch``, the checkpoint's)."""
    path = existing_file(path, "train.py's summary.csv")
    rows: List[Dict[str, float]] = []
    try:
        with open(path, 'r', encoding='utf-8', newline='') as f:
            reader = csv.DictReader(f)
            if 'epoch' not in (reader.fieldnames or ()):  # anything else would give no metrics, without a word
                shown = ', '.join(map(repr, (reader.fieldnames or [])[:4])) or 'nothing'
                raise HubError(f"{path}: no epoch column (its first line holds {textwrap.shorten(shown, 80)}); "
                               f"expected train.py's summary.csv (epoch, train_loss, eval_top1, ...)")
            for line, row in enumerate(reader, start=2):
                values = {}
                for key, text in row.items():
                    if key is None:
                        raise HubError(f'{path}: line {line} has more values than the header has columns')
                    try:
                        values[key] = float(text) if text not in (None, '') else None
                    except ValueError:
                        raise HubError(f'{path}: line {line}: {key} is {text!r}; expected a number (train.py '
                                       f'writes numbers only)') from None
                if values.get('epoch') is not None:
                    rows.append(values)
    except (UnicodeDecodeError, csv.Error) as e:
        raise HubError(f"{path}: not a CSV file ({e}); expected train.py's summary.csv") from None

    def value(row: Mapping[str, Optional[float]], name: str) -> Optional[float]:
        v = row.get(f'eval_{name}')
        v = row.get(name) if v is None else v
        return v if v is not None and math.isfinite(v) else None

    metric = eval_metric if any(value(r, eval_metric) is not None for r in rows) else 'top1'
    rows = [r for r in rows if value(r, metric) is not None]
    if not rows:
        return {}
    best = (min if 'loss' in metric else max)(rows, key=lambda r: value(r, metric))
    out: Dict[str, Any] = {'epoch': int(best['epoch']), 'epochs': len(rows), 'eval_metric': metric}
    out.update({name: value(best, name) for name in ('top1', 'top5', 'loss') if value(best, name) is not None})
    at_epoch = [r for r in rows if epoch is not None and epoch != out['epoch'] and int(r['epoch']) == epoch]
    if at_epoch:  # e.g. last.pth.tar: not the best epoch's weights
        out['checkpoint_epoch'] = epoch
        out.update({f'checkpoint_{n}': value(at_epoch[0], n) for n in ('top1', 'top5')
                    if value(at_epoch[0], n) is not None})
    return out


def _dataset_name(args: Mapping[str, Any]) -> Optional[str]:
    """train.py's ``dataset`` without timm's reader prefix (``torch/``, ``hfds/``, ...)."""
    name = args.get('dataset')
    return (re.sub(r'^(?:torch|tfds|hfds|hfids|wds)/', '', name) or None) if isinstance(name, str) else None


def _imported_data(args: Mapping[str, Any]) -> Optional[Dict[str, Any]]:
    """The dataset.json of the run's image folder when ``timm-astro import`` wrote it (and it is still there)."""
    data_dir = args.get('data_dir') or args.get('data')
    if not isinstance(data_dir, str) or not data_dir:
        return None
    try:
        info = json.loads((Path(data_dir) / 'dataset.json').read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get('created_by') == 'timm-astro import' else None


def describe_training_data(info: Optional[Mapping[str, Any]], args: Mapping[str, Any]) -> Optional[str]:
    """What a train.py run (``args``) on a folder that ``timm-astro import`` wrote (its dataset.json, ``info``)
    trained on, for the model card: the source, the split and its class-labelled images (what train.py's
    ImageFolder reads), and what was held out (a pretraining's card must say which galaxies its weights have seen,
    so that nobody tests on them)."""
    if info is None:
        return None
    split = args.get('train_split') or 'train'
    classes = [c for c in info.get('classes') or [] if isinstance(c, dict)]
    counts = {k: v for k, v in (info.get('splits') or {}).items() if isinstance(v, int)}
    if classes:  # the images in class folders; a vote set also has unclassified ones, which train.py never reads
        counts = {k: sum(int(c.get(k) or 0) for c in classes) for k in counts}
    text = f"{info.get('title') or info.get('source')}: its `{split}` split"
    if split in counts:
        text += f' ({counts[split]:,} images' + (f', {len(classes)} classes' if classes else '') + ')'
    held = [f'`{k}` ({v:,})' for k, v in counts.items() if k != split]
    if held:
        text += '; ' + ' and '.join(held) + ' not trained on'
    if 'seed' in info:
        text += f" (`timm-astro import {info.get('source')}` split seed {info['seed']})"
    return text


def _imported_label_names(info: Optional[Mapping[str, Any]], args: Mapping[str, Any]) -> Optional[List[str]]:
    """The class names of an imported folder (its dataset.json, ``info``), in label order (what train.py's
    ImageFolder indices mean)."""
    classes = info.get('classes') if info else None
    if not isinstance(classes, list) or not all(isinstance(c, dict) and 'name' in c for c in classes):
        return None
    if args.get('num_classes') not in (None, len(classes)):
        return None  # a run that set its own number of classes: the folder's names may not be its classes
    return [str(c['name']) for c in sorted(classes, key=lambda c: c.get('label', 0))]


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
        training_data: Optional[str] = None,
) -> str:
    """README.md text via timm's ``generate_readme``: details, metrics, recipe, usage, citation. A model trained on
    Galaxy Zoo votes (``config['task'] == 'votes'``) gets a card that says what its outputs are and how to read them."""
    arch = config['architecture']
    pcfg = config['pretrained_cfg']
    is_astroformer = arch.startswith('astroformer')
    votes_tree = config.get('tree') if config.get('task') == 'votes' else None
    num_params = sum(p.numel() for p in model.parameters())
    _, height, width = pcfg['input_size']
    what = 'an Astroformer' if is_astroformer else f'a timm `{arch}`'
    description = (
        f'{what[0].upper() + what[1:]} image ' + ('model predicting Galaxy Zoo vote fractions' if votes_tree else
                                                   'classifier')
        + (f' trained on {dataset or training_data}' if dataset or training_data else '')
        + f', exported with timm-astro {__version__}.'
    )
    if votes_tree:
        description += (
            f" It has one output per answer of the {votes_tree['name']} decision tree: `{CONCENTRATION_MAP}` is"
            ' a Dirichlet concentration, and within each question the concentrations divided by their sum are the'
            " expected fractions of volunteers giving each answer (Walmsley et al. 2022's Dirichlet-multinomial"
            ' likelihood of the vote counts). A question asked only after an earlier answer (edge-on? after'
            ' "features or disk") is predicted as if it were asked: weigh it by the fraction reaching it.'
        )
    if is_astroformer:
        description += (
            ' Astroformer (Dagli, ICLR 2023 workshop, arXiv:2304.05350) is a CoAtNet-style hybrid: convolutional'
            ' MBConv stages followed by relative self-attention, proposed for classification from little data.'
        )
    details: Dict[str, Any] = {
        'Model Type': 'Galaxy Zoo vote fractions (one output per answer)' if votes_tree else 'Image classification',
        'Architecture': f'`{arch}`' + (
            f" (model args: {json.dumps(config['model_args'])})" if config.get('model_args') else ''),
        'Model Stats': {
            'Params (M)': f'{num_params / 1e6:.2f}',
            'Image size': f'{width} x {height}',
            ('Answers' if votes_tree else 'Classes'): str(config['num_classes']),
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
    if votes_tree:
        details['Decision tree'] = {
            f"{q['name']}" + (f" (after {q['parent']})" if q.get('parent') else ''):
                f"{q['text']} Answers: " + ', '.join(f"{a['name']} ({a['text']})" for a in q['answers'])
            for q in votes_tree['questions']}
    elif config.get('label_names'):  # export_model writes them as a list of strings
        details['Labels'] = ', '.join(f'{i}: {n}' for i, n in enumerate(config['label_names']))
    if config.get('stretch'):  # the model reads survey data (FITS, N bands) through it: timm_astro.data.images
        from timm_astro.data.stretch import Stretch
        details['Input stretch'] = (f"{Stretch.from_config(config['stretch'])} per band, to [0, 1] (config.json "
                                    f"'stretch'; timm-astro evaluate/predict apply it)")
        for key in ('fits_hdu', 'fits_bands'):
            if config.get(key) is not None:
                details['Input stretch'] += f'; FITS {key[5:]}: {_fmt(config[key])}'
    if dataset:  # a dataset id: timm's card also lists it in the metadata
        details['Dataset'] = dataset
    if training_data:  # a description: the card's text only
        details['Training data'] = training_data
    if is_astroformer:
        details['Papers'] = {
            'Astroformer: More Data Might not be all you need for Classification': 'https://arxiv.org/abs/2304.05350',
        }
    if ema:
        details['Weights'] = ema
    if metrics:
        shown: Dict[str, str] = {}
        if 'epoch' in metrics:
            shown['Best epoch'] = str(metrics['epoch']) + (
                f" (of {metrics['epochs']} epochs logged, numbered from 0; chosen by "
                f"{metrics.get('eval_metric', 'top1')})" if 'epochs' in metrics else '')
        for key, value in metrics.items():  # checkpoint_*: e.g. last.pth.tar, not the best epoch's weights
            if key in METRIC_LABELS:
                shown[METRIC_LABELS[key]] = str(value) if key == 'checkpoint_epoch' else _pct(value)
            elif key not in ('epoch', 'epochs', 'eval_metric', 'loss'):  # anything else a caller passed, as given
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
    if votes_tree:
        usage = _votes_usage()
    card = {
        'tags': ['image-classification', 'timm', 'timm-astro'] + (['galaxy-zoo'] if votes_tree else []) + (
            ['astroformer', 'astronomy'] if is_astroformer else []),
        'license': pcfg.get('license', 'apache-2.0'),
        'description': description,
        'details': details,
        'usage': usage,
    }
    if is_astroformer:
        card['citation'] = ASTROFORMER_CITATION
    return generate_readme(card, model_name)


def _votes_usage() -> str:
    """The usage part of a votes model's card: its fractions and their spread per answer, from Python and the CLI."""
    return f"""```shell
pip install timm-astro
```

```python
import torch
import timm
from PIL import Image
from timm_astro.votes_model import load_votes_model  # timm's create_model plus the task and tree in config.json
from timm_astro.evaluation.votes import expected_fractions, fraction_std, model_tree
from timm_astro.losses import to_concentrations

model = load_votes_model('hf-hub:{REPO_PLACEHOLDER}')
tree = model_tree(model)
transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model), is_training=False)

img = Image.open('galaxy.png').convert('RGB')
with torch.no_grad():
    alpha = to_concentrations(model(transform(img).unsqueeze(0)))  # Dirichlet concentrations, one per answer
fractions, spread = expected_fractions(alpha, tree)[0], fraction_std(alpha, tree)[0]
for answer, f, s in zip(tree.answers, fractions, spread):
    print(f'{{answer.name}}: {{float(f):.3f}} +- {{float(s):.3f}}')
```

A catalogue, streamed to a CSV (`fraction_<answer>` and `std_<answer>` per galaxy), and the scores on a vote set:

```shell
timm-astro predict hf-hub:{REPO_PLACEHOLDER} cutouts/ --out fractions.csv
timm-astro evaluate hf-hub:{REPO_PLACEHOLDER} gz2_votes/ --split test --output evaluation/
```
"""


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
        training_data: Optional[str] = None,
        extra_config: Optional[Mapping[str, Any]] = None,
        stretch: Optional[Any] = None,
        fits_hdu: Optional[Union[int, str]] = None,
        fits_bands: Optional[Sequence[Union[int, str]]] = None,
) -> Path:
    """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card for ``model`` into ``out_dir``.

    The folder is built next to ``out_dir`` and renamed into place, so ``out_dir`` either holds a complete export
    or is left as it was. ``data_config`` is the preprocessing the model was trained with (``input_size``,
    ``mean``, ``std``, ``crop_pct``, ``interpolation``, ...); the model's own defaults fill the rest.
    ``metrics`` (e.g. ``{'top1': 97.1, 'top5': 99.9, 'epoch': 41}``) and ``train_args`` go in the card.
    ``extra_config`` adds keys at the top level of ``config.json`` (timm's ``PretrainedCfg`` refuses unknown keys
    inside ``pretrained_cfg``; ``timm_astro.votes_model`` keeps a votes model's task and tree there).
    ``stretch`` (a ``timm_astro.data.stretch.Stretch`` or its config), ``fits_hdu`` and ``fits_bands`` say how the
    model's input was made from survey data; they default to the model's own (``pretrained_cfg``) and go to the top
    level of ``config.json`` (``timm_astro.loading.INPUT_KEYS``), where ``load_model`` reads them back and
    ``evaluate`` / ``predict`` apply them again.
    """
    out_dir = Path(out_dir)  # checked by atomic_output_dir
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
    own = model.pretrained_cfg
    given = {'stretch': stretch.to_config() if hasattr(stretch, 'to_config') else stretch, 'fits_hdu': fits_hdu,
             'fits_bands': list(fits_bands) if fits_bands is not None else None}
    inputs = input_entries({k: own.get(k) if given[k] is None else given[k] for k in INPUT_KEYS}, 'export_model')
    with atomic_output_dir(out_dir, CREATED_BY, overwrite=overwrite) as tmp:
        os.chmod(tmp, 0o755)
        model.pretrained_cfg = {k: v for k, v in own.items() if k not in INPUT_KEYS}  # PretrainedCfg refuses them
        try:
            save_for_hf(
                model,
                str(tmp),
                model_config={**({'label_names': label_names} if label_names else {}), **(extra_config or {})} or None,
                # config.json names the W form, so a later change of the family's default cannot misread it
                model_args=weights_model_kwargs(model.pretrained_cfg['architecture'], model.state_dict()) or None,
                data_config=data_config,
                safe_serialization=True,
            )
            for name in EXPORT_FILES[:2]:
                os.chmod(tmp / name, 0o644)  # safetensors writes 0600; a folder meant for publishing is readable
        except (ValueError, AssertionError) as e:
            raise HubError(f'cannot export this model: {e}') from None
        except SafetensorError as e:  # its I/O errors (a full disk) carry the OS error code in the text only
            code = re.search(r'(?:os error|code:) (\d+)', str(e))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(tmp / EXPORT_FILES[1])) from None
        finally:
            model.pretrained_cfg = own
        config = json.loads((tmp / 'config.json').read_text(encoding='utf-8'))
        if inputs:
            config.update(inputs)
            (tmp / 'config.json').write_text(json.dumps(config, indent=2) + '\n', encoding='utf-8')
        readme = _model_card(model, config, out_dir.name, metrics, train_args, dataset, weights_note, training_data)
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
        allow_nan: bool = False,
        training_data: Optional[str] = None,
) -> Path:
    """Export a train.py checkpoint (or a plain state dict) with ``export_model``.

    ``training_data``: what the model was trained on, in words, for the card; by default, for a folder
    ``timm-astro import`` wrote, its source and the split trained on (``describe_training_data``). timm's dataset
    name from the run's args goes in the card's metadata as before.

    The model is rebuilt as train.py built it (``timm_astro.loading.model_from_checkpoint``): the architecture is
    ``model_name``, else the run's ``model`` argument, else the checkpoint's ``arch``. ``args.yaml`` and
    ``summary.csv`` default to the files train.py writes next to the checkpoint. ``out_dir`` is checked first.
    """
    out_dir = check_output_location(out_dir, overwrite=overwrite, created_by=CREATED_BY)
    ckpt = read_train_checkpoint(checkpoint_path, use_ema=use_ema, args_yaml=args_yaml, allow_nan=allow_nan)
    if summary_csv is None and ckpt.weights != 'state dict' and (ckpt.path.parent / 'summary.csv').is_file():
        summary_csv = ckpt.path.parent / 'summary.csv'
    metrics = read_summary(summary_csv, ckpt.args.get('eval_metric') or 'top1', ckpt.epoch) if summary_csv else None
    model = model_from_checkpoint(ckpt, model_name)
    imported = _imported_data(ckpt.args)
    return export_model(
        model,
        out_dir,
        label_names=ckpt.args.get('label_names') or _imported_label_names(imported, ckpt.args),
        data_config=resolve_model_data_config(model) if ckpt.args else None,
        metrics=metrics,
        train_args=ckpt.args or None,
        dataset=_dataset_name(ckpt.args),
        training_data=training_data or describe_training_data(imported, ckpt.args),
        overwrite=overwrite,
        weights_note=None if ckpt.weights == 'state dict' else f'{ckpt.weights} from the train.py checkpoint',
    )


# ---------------------------------------------------------------------------------------------------------------
# push


def check_export_dir(folder: PathLike) -> nn.Module:
    """Refuse anything but a complete export that loads with timm, before a byte is uploaded; returns the model."""
    folder = Path(folder)
    missing = [f for f in EXPORT_FILES if not (folder / f).is_file()]
    if missing:
        pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
        hint = f' ({", ".join(pickles)} are pickles and are never published)' if pickles else ''
        raise HubError(f"{folder} is not an export: missing {', '.join(missing)}{hint}; run `timm-astro export` first")
    model = load_model(f'local-dir:{folder.resolve()}')  # exactly what a user's create_model('hf-hub:...') does
    labels = model.pretrained_cfg.get('label_names')
    if labels is not None and len(labels) != model.num_classes:
        raise HubError(f'{folder / "config.json"}: {len(labels)} label names for num_classes={model.num_classes}')
    return model


def _check_token(token: str) -> None:
    """HTTP headers are ASCII: a stray pasted character would fail deep in the HTTP client (never shown here)."""
    bad = next((i for i, c in enumerate(token) if not (c.isascii() and c.isprintable()) or c.isspace()), None)
    if bad is not None:
        raise HubError(f'the Hugging Face token (HF_TOKEN, or the one `hf auth login` stored) has a character that '
                       f'cannot be sent, U+{ord(token[bad]):04X} at position {bad + 1} of {len(token)}; tokens are '
                       f'printable ASCII: set it again')


def _network_cause(e: BaseException) -> Optional[OSError]:
    """The OS-level cause of a failed request (timed out, refused, no such host), if that is what failed."""
    while e is not None:
        if isinstance(e, OSError):
            return e
        e = e.__cause__ or e.__context__
    return None


def _request(func: Callable[..., Any], *args: Any, attempts: int, timeout: float, endpoint: str, stage: str,
             **kwargs: Any) -> Any:
    """One Hub call, repeated on network failures up to ``attempts`` times; failures become one HubError."""
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError
    for attempt in range(1, attempts + 1):
        try:
            return func(*args, **kwargs)
        except HFValidationError as e:
            raise HubError(str(e)) from None
        except HfHubHTTPError as e:
            status = e.response.status_code  # huggingface_hub's HTTP errors always carry the response
            detail = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if status in (401, 403):
                raise HubError(f'the Hub refused the token (HTTP {status}): check HF_TOKEN or `hf auth login`; '
                               f'{detail}') from None
            raise HubError(f'the Hub answered with an error, nothing was committed: {detail}') from None
        except Exception as e:  # noqa: BLE001  (anything but a network failure is re-raised as it is)
            cause = _network_cause(e)
            if cause is None:
                raise
            if attempt < attempts:
                time.sleep(min(2.0 ** (attempt - 1), 10.0))
                continue
            reason = f'no answer within {timeout:g} s' if isinstance(cause, TimeoutError) else \
                f'cannot connect ({cause.strerror or cause})'
            tries = f'{attempts} attempts' if attempts > 1 else '1 attempt'
            raise HubError(f'{endpoint}: {reason} ({tries}, {stage}); check HF_ENDPOINT and the network, or '
                           f'raise --timeout') from None


def push(
        path: PathLike,
        repo_id: str,
        *,
        private: bool = False,
        revision: Optional[str] = None,
        commit_message: Optional[str] = None,
        token: Optional[str] = None,
        timeout: float = 60.0,
        retries: int = 2,
) -> str:
    """Upload an exported folder (or a checkpoint, exported first) to ``repo_id`` in one commit; returns its URL.

    The token defaults to huggingface_hub's (``HF_TOKEN``, then ``hf auth login``'s) and the endpoint to
    ``HF_ENDPOINT``. Everything is checked locally before the first request; a branch named by ``revision`` is
    created from ``main`` if missing. Only the three export files are sent, never a pickle. Every request waits at
    most ``timeout`` seconds for the server; the requests that are safe to repeat (all but the commit) are retried
    ``retries`` times on network failures.
    """
    from huggingface_hub import CommitOperationAdd, HfApi, constants, get_session, get_token

    path = Path(path)
    if not path.exists():
        raise HubError(f'{path}: not found; expected an exported folder or a train.py checkpoint')
    if not isinstance(repo_id, str) or not re.fullmatch(r'(?:[\w.-]+/)?[\w.-]+', repo_id):
        raise HubError(f'{repo_id!r} is not a repo id (expected NAME or ORG/NAME)')
    if not (timeout > 0 and retries >= 0):
        raise HubError(f'timeout must be > 0 and retries >= 0, got {timeout} and {retries}')
    if constants.HF_HUB_OFFLINE:
        raise HubError('HF_HUB_OFFLINE is set: pushing needs the network; unset it (nothing was uploaded)')
    problem = hub_endpoint_problem(constants.ENDPOINT)
    if problem:
        raise HubError(problem)
    token = token or get_token()
    if not token:
        raise HubError('no Hugging Face token: set HF_TOKEN or run `hf auth login` (nothing was uploaded)')
    _check_token(token)

    session = get_session()  # huggingface_hub's shared client waits forever by default
    saved_timeout, session.timeout = session.timeout, timeout
    call = dict(timeout=timeout, endpoint=constants.ENDPOINT)
    try:
        with tempfile.TemporaryDirectory(prefix='timm-astro-push-') as tmp:
            folder = path if path.is_dir() else export_checkpoint(path, Path(tmp) / repo_id.split('/')[-1])
            architecture = check_export_dir(folder).pretrained_cfg['architecture']

            api = HfApi(token=token, library_name='timm-astro', library_version=__version__)
            nothing = 'nothing was uploaded'
            repo_url = _request(api.create_repo, repo_id, private=private, exist_ok=True, attempts=retries + 1,
                                stage=f'creating the repo; {nothing}', **call)
            repo_id = repo_url.repo_id
            if revision and revision != 'main' and not revision.startswith('refs/'):
                _request(api.create_branch, repo_id, branch=revision, exist_ok=True, attempts=retries + 1,
                         stage=f'creating branch {revision}; {nothing}', **call)
            readme = (folder / 'README.md').read_text(encoding='utf-8')
            readme = readme.replace(f'hf-hub:{REPO_PLACEHOLDER}', f'hf-hub:{repo_id}')
            readme = re.sub(r'^# Model card for .*$', f"# Model card for {repo_id.split('/')[-1]}", readme, count=1,
                            flags=re.M)
            operations = [CommitOperationAdd(path_in_repo=n, path_or_fileobj=str(folder / n)) for n in EXPORT_FILES[:2]]
            operations.append(CommitOperationAdd(path_in_repo='README.md', path_or_fileobj=readme.encode('utf-8')))
            _request(api.create_commit, repo_id, operations, attempts=1, revision=revision,
                     commit_message=commit_message or f'Upload {architecture} (timm-astro {__version__})',
                     stage=f'committing; look at {repo_url} before pushing again', **call)
    finally:
        session.timeout = saved_timeout
    url = str(repo_url).rstrip('/')
    return f'{url}/tree/{revision}' if revision and revision != 'main' else url
