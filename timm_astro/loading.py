"""One way to load a model for evaluation from what a user has: ``load_model(spec, checkpoint=None, **kwargs)``.

``spec`` is a registered model name (with an optional checkpoint), a train.py checkpoint alone (the architecture,
num_classes, data config and label names come from the run's arguments), ``local-dir:PATH`` (a folder written by
``timm-astro export`` or timm's ``save_for_hf``) or ``hf-hub:ORG/NAME``. The model comes back in eval mode with its
``pretrained_cfg`` holding the preprocessing it was trained with and, when known, ``label_names`` and how its input
is read (``INPUT_KEYS``: the stretch that turns survey data into input, and the FITS hdu or bands; an export keeps
them at the top level of ``config.json``, since timm's ``PretrainedCfg`` refuses keys it does not know, and a
train.py run in its args, as ``label_names``).

Nothing is ever unpickled with code: torch checkpoints are zip archives whose CRC-32s are verified first (torch.load
does not check them, so damaged tensor data would load as silently different weights), then read with
``torch.load(weights_only=True)`` (train.py's ``argparse.Namespace`` allowed); timm's own ``load_state_dict`` picks
the weights (EMA first) and cleans their keys. Weights that are not finite are refused. Every failure is a
``UserError`` that names the file.
"""
import argparse
import json
import os
import pickle
import pickletools
import textwrap
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Dict, List, Mapping, Optional, Union

import torch
import torch.nn as nn
from safetensors import SafetensorError

import timm
from timm.data import resolve_data_config
from timm.models import get_pretrained_cfg_value, is_model_in_modules, load_state_dict

import timm_astro  # noqa: F401  (registers the models before any name is looked up)
from timm_astro.errors import UserError
from timm_astro.models.astroformer_fullres import kwargs_from_weights

__all__ = ['load_model', 'TrainCheckpoint', 'read_train_checkpoint', 'model_from_checkpoint', 'check_finite',
           'INPUT_KEYS', 'input_entries']

PathLike = Union[str, os.PathLike]
# how a model's input is read (timm_astro.data.images.reader_for_model): pretrained_cfg keys, and config.json's
INPUT_KEYS = ('stretch', 'fits_hdu', 'fits_bands')
CHECKPOINT = "a train.py checkpoint (model_best.pth.tar / last.pth.tar) or a state dict (.pth, .safetensors)"


def existing_file(path: PathLike, expected: str) -> Path:
    """``path`` as a Path if it is a file; otherwise a UserError saying what it is instead."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob('*.pth.tar'))
        hint = f" (it holds {', '.join(inside)}: pass one of them)" if inside else ''
        raise UserError(f'{path}: is a folder, not a file; expected {expected}{hint}')
    if not path.exists():
        raise UserError(f'{path}: not found; expected {expected}')
    return path


def _verify_crc32(path: Path) -> None:
    """Check every record of a torch zip checkpoint against its CRC-32 (legacy non-zip files have none).

    Records written with ``torch.serialization.set_crc32_options(False)`` carry 0 and cannot be checked.
    """
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            for record in archive.infolist():
                if record.CRC:
                    with archive.open(record) as f:  # zipfile raises BadZipFile at the end of a damaged record
                        while f.read(1 << 24):
                            pass
    except zipfile.BadZipFile as e:
        raise UserError(f'{path}: damaged ({e}): torch.load would not notice and the weights would silently '
                        f'differ; download or copy the file again') from None


_STRING_OPS = {'STRING', 'BINSTRING', 'SHORT_BINSTRING', 'UNICODE', 'BINUNICODE', 'SHORT_BINUNICODE', 'BINUNICODE8'}
_MEMO_OPS = {'MEMOIZE', 'PUT', 'BINPUT', 'LONG_BINPUT', 'FRAME', 'PROTO', 'MARK', 'STOP'}


def _pickle_globals(f: IO[bytes]) -> List[str]:
    """The classes and functions one pickle in ``f`` refers to (``module.name``), read with pickletools: nothing
    is imported or run. ``STACK_GLOBAL`` (protocol 4+) takes its two names from the strings pushed before it."""
    found: List[str] = []
    pushed: List[Optional[str]] = []  # what each op pushed: a string, or None for anything else
    memo: Dict[int, Optional[str]] = {}
    for op, arg, _ in pickletools.genops(f):
        if op.name in ('GLOBAL', 'INST'):
            found.append(arg.replace(' ', '.', 1))
        elif op.name == 'STACK_GLOBAL':
            names = pushed[-2:]
            found.append('.'.join(names) if len(names) == 2 and None not in names else '<a global named at run time>')
        if op.name == 'MEMOIZE':
            memo[len(memo)] = pushed[-1] if pushed else None
        elif op.name in ('PUT', 'BINPUT', 'LONG_BINPUT'):
            memo[arg] = pushed[-1] if pushed else None
        elif op.name in ('GET', 'BINGET', 'LONG_BINGET'):
            pushed.append(memo.get(arg))
        elif op.name in _STRING_OPS:
            pushed.append(arg if isinstance(arg, str) else arg.decode('latin-1') if isinstance(arg, bytes) else None)
        elif op.name not in _MEMO_OPS and op.stack_after:
            pushed.append(None)
    return found


def _unsafe_globals(path: Path) -> List[str]:
    """The globals in a checkpoint's pickle that ``torch.load(weights_only=True)`` refuses, found without
    unpickling: in ``data.pkl`` of a zip checkpoint, or in the leading pickles of a legacy (non-zip) one, which
    ``torch.serialization.get_unsafe_globals_in_checkpoint`` cannot read."""
    found: List[str] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for name in archive.namelist():
                    if name == 'data.pkl' or name.endswith('/data.pkl'):
                        with archive.open(name) as f:
                            found += _pickle_globals(f)
        else:  # magic number, protocol, system info, then the object (torch.serialization._legacy_load)
            with open(path, 'rb') as f:
                for _ in range(4):
                    found += _pickle_globals(f)
    except Exception:  # noqa: BLE001  (damaged or not a pickle: what was found so far still counts)
        pass
    try:  # torch's own list, as get_unsafe_globals_in_checkpoint uses
        from torch import _weights_only_unpickler as weights_only
        safe = {*weights_only._get_allowed_globals(), *weights_only._get_user_allowed_globals(), 'argparse.Namespace'}
    except (ImportError, AttributeError):  # a torch without it: no claim either way
        return []
    return sorted({g for g in found if g not in safe})


def _read_pickle(path: Path) -> Any:
    """The object in a torch checkpoint, read without running code (its CRC-32s checked first)."""
    _verify_crc32(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # train.py stores its args as one
            return torch.load(path, map_location='cpu', weights_only=True, mmap=zipfile.is_zipfile(path))
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, KeyError, IndexError, zipfile.BadZipFile) as e:
        unsafe = _unsafe_globals(path) if isinstance(e, pickle.UnpicklingError) else []
        if unsafe:
            raise UserError(
                f"{path}: refused for safety: it needs unsafe unpickling (it contains {', '.join(unsafe)}), which "
                f"can run arbitrary code; checkpoints are only read with torch.load(weights_only=True). If you "
                f"trust the file, re-save just its weights: torch.save(torch.load(path, weights_only=False)"
                f"['state_dict'], 'weights.pth')") from None
        detail = 'not a pickle torch can read' if isinstance(e, pickle.UnpicklingError) else (
            str(e).strip().splitlines() or [type(e).__name__])[0]
        raise UserError(f'{path}: not a readable PyTorch checkpoint (corrupt or truncated?): {detail}') from None


def check_finite(
        tensors: Mapping[str, torch.Tensor],
        source: Union[str, Path],
        allow_nan: bool = False,
        remedy: str = 'allow_nan (--allow-nan) accepts them',
) -> None:
    """Refuse weights holding NaN or infinity (a diverged run, or a damaged file), naming ``source``."""
    bad = [k for k, v in tensors.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad and not allow_nan:
        shown = ', '.join(bad[:3]) + (' ...' if len(bad) > 3 else '')
        raise UserError(f'{source}: {len(bad)} weight tensors hold NaN or infinite values ({shown}): the training '
                        f'diverged or the file is damaged; expected finite weights ({remedy})')


def read_args_yaml(path: PathLike) -> Dict[str, Any]:
    """train.py's ``args.yaml``: every argument, including config-only keys such as ``label_names``."""
    import yaml
    path = existing_file(path, "train.py's args.yaml")
    try:
        args = yaml.safe_load(path.read_text(encoding='utf-8'))
    except yaml.constructor.ConstructorError as e:
        raise UserError(f'{path}: refused: {e.problem} (line {e.problem_mark.line + 1}); safe loading builds no '
                        f'Python objects, and train.py writes plain values only') from None
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        where = getattr(e, 'problem_mark', None)
        line = f' at line {where.line + 1}' if where is not None else ''
        raise UserError(f'{path}: not valid YAML ({getattr(e, "problem", None) or e}{line}); expected the '
                        f'args.yaml train.py writes') from None
    if not isinstance(args, dict):
        raise UserError(f'{path}: holds a {type(args).__name__}; expected a mapping of train.py arguments')
    return args


@dataclass
class TrainCheckpoint:
    """The weights of a checkpoint and what train.py stored with them."""
    path: Path
    state_dict: Dict[str, torch.Tensor]
    weights: str  # 'EMA weights', 'non-EMA weights' or 'state dict'
    args: Dict[str, Any] = field(default_factory=dict)  # the run's arguments (args.yaml over the stored ones)
    args_source: Optional[Path] = None
    epoch: Optional[int] = None
    arch: Optional[str] = None


def read_train_checkpoint(
        path: PathLike,
        use_ema: bool = True,
        args_yaml: Optional[PathLike] = None,
        allow_nan: bool = False,
) -> TrainCheckpoint:
    """Read a checkpoint safely; ``args.yaml`` defaults to the one train.py writes next to it."""
    path = existing_file(path, CHECKPOINT)
    obj = {} if path.suffix == '.safetensors' else _read_pickle(path)
    if not isinstance(obj, Mapping):
        raise UserError(f'{path}: holds a {type(obj).__name__}; expected {CHECKPOINT}')
    try:  # timm picks the weights (EMA first) and strips DDP / torch.compile prefixes
        state_dict = load_state_dict(str(path), use_ema=use_ema, weights_only=True)
    except SafetensorError as e:
        raise UserError(f'{path}: not a readable safetensors file (corrupt or truncated?): {e}') from None
    if not state_dict or not all(isinstance(v, torch.Tensor) for v in state_dict.values()):
        raise UserError(f"{path}: no weights found (keys: {', '.join(map(str, state_dict))}); expected {CHECKPOINT}")
    check_finite(state_dict, path, allow_nan)
    is_plain = all(isinstance(v, torch.Tensor) for v in obj.values())  # a bare state dict: no run to read
    meta = {} if is_plain else {k: v for k, v in obj.items() if not isinstance(v, (Mapping, torch.Tensor))}
    if is_plain:
        weights = 'state dict'
    elif use_ema and any(obj.get(k) is not None for k in ('state_dict_ema', 'model_ema')):
        weights = 'EMA weights'
    else:
        weights = 'non-EMA weights' + (' (it also holds EMA weights)' if obj.get('state_dict_ema') else '')

    stored = meta.get('args')
    args = dict(vars(stored) if isinstance(stored, argparse.Namespace) else stored or {})
    args_source = Path(args_yaml) if args_yaml else None
    if args_source is None and not is_plain and (path.parent / 'args.yaml').is_file():
        args_source = path.parent / 'args.yaml'
    if args_source is not None:
        args.update(read_args_yaml(args_source))
    epoch = meta.get('epoch')
    return TrainCheckpoint(path, state_dict, weights, args, args_source or (path if stored else None),
                           epoch if isinstance(epoch, int) else None, meta.get('arch'))


def weights_model_kwargs(name: str, state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """The architecture arguments (W form, width, S4 pooling) that the weights of a full-resolution model ``name``
    were trained with (``kwargs_from_weights``); {} for other models."""
    return kwargs_from_weights(state_dict) if is_model_in_modules(name, ['astroformer_fullres']) else {}


def _model_name(name: Any, source: str) -> str:
    if not isinstance(name, str) or not timm.is_model(name):
        known = ', '.join(timm.list_models('astroformer*'))
        raise UserError(f'unknown model {name!r} ({source}); Astroformer models: {known} (or any timm model name)')
    return name


def _factory_kwargs(args: Mapping[str, Any], source: Any) -> Dict[str, Any]:
    """The architecture arguments of train.py's own ``create_model`` call (dropout rates do not matter at eval)."""
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
        raise UserError(f'{source}: model_kwargs is {model_kwargs!r}; expected a mapping')
    return {**kwargs, **model_kwargs}


def model_from_checkpoint(ckpt: TrainCheckpoint, model_name: Optional[str] = None, **kwargs: Any) -> nn.Module:
    """Rebuild the model a checkpoint was trained as (train.py's ``create_model`` arguments) and load it strictly.

    The architecture is ``model_name``, else the run's ``model`` argument, else the checkpoint's ``arch``;
    ``kwargs`` override the run's. ``pretrained_cfg`` gets the run's data config and ``label_names``.
    """
    args, source = ckpt.args, ckpt.args_source or ckpt.path
    if model_name:
        name = _model_name(model_name, 'from --model')
    elif args.get('model'):
        name = _model_name(args['model'], f"the run's model argument, {source}")
    elif ckpt.arch:
        name = _model_name(ckpt.arch, f"the arch of {ckpt.path}; give the model name with --model NAME")
    else:
        raise UserError(f'{ckpt.path} names no architecture (no arch or args in it): give the model name, '
                        f'`timm-astro export CHECKPOINT OUT_DIR --model NAME`')
    classifier = get_pretrained_cfg_value(name, 'classifier')
    classifier = classifier if isinstance(classifier, str) else (list(classifier or ()) or [None])[0]
    weight = ckpt.state_dict.get(f'{classifier}.weight')
    rows = int(weight.shape[0]) if weight is not None and weight.ndim >= 1 else None
    num_classes = args.get('num_classes')
    if num_classes is not None and rows is not None and int(num_classes) != rows:
        raise UserError(f'{source}: num_classes={num_classes} (from the train args) but the weights have {rows} '
                        f'outputs ({classifier}.weight)')
    kwargs = {**weights_model_kwargs(name, ckpt.state_dict), **_factory_kwargs(args, source), **kwargs}
    if kwargs.get('num_classes') is None and (num_classes is not None or rows is not None):
        kwargs['num_classes'] = int(num_classes) if num_classes is not None else rows
    what = f"{name}({', '.join(f'{k}={v!r}' for k, v in kwargs.items())})"
    try:
        model = timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f'cannot build {what} ({source}): {e}') from None
    try:
        model.load_state_dict(ckpt.state_dict, strict=True)
    except RuntimeError as e:  # torch lists every key: keep the start of its message
        detail = textwrap.shorten(str(e).replace('Error(s) in loading state_dict for ', ''), 400)
        raise UserError(f'{ckpt.path}: the weights do not fit {what}: {detail}') from None
    label_names = args.get('label_names')
    count = len(label_names) if isinstance(label_names, (list, tuple)) else 'no'
    if label_names is not None and count != model.num_classes:
        raise UserError(f'{source}: label_names in the train args has {count} entries for a model with '
                        f'num_classes={model.num_classes}')
    if args:
        try:  # what train.py resolved from the same arguments
            model.pretrained_cfg.update(resolve_data_config(args, model=model))
        except (AssertionError, TypeError, ValueError) as e:
            raise UserError(f'{source}: the input_size / img_size / mean / std arguments are malformed ({e})') from None
    model.pretrained_cfg['num_classes'] = model.num_classes
    if label_names is not None:
        model.pretrained_cfg['label_names'] = [str(n) for n in label_names]
    model.pretrained_cfg.update(input_entries(args, source))  # a stretch given as a train.py --config key
    return model.eval()


def input_entries(found: Mapping[str, Any], source: Any) -> Dict[str, Any]:
    """The ``INPUT_KEYS`` of ``found`` (config.json, a run's args), checked: an impossible stretch, or an hdu or
    bands of the wrong type, is a UserError naming ``source``."""
    from timm_astro.data.stretch import Stretch
    entries: Dict[str, Any] = {}
    if found.get('stretch') is not None:
        try:
            entries['stretch'] = Stretch.from_config(found['stretch']).to_config()
        except UserError as e:
            raise UserError(f'{source}: {e}') from None
    hdu, bands = found.get('fits_hdu'), found.get('fits_bands')
    if hdu is not None:
        if isinstance(hdu, bool) or not isinstance(hdu, (int, str)):
            raise UserError(f'{source}: fits_hdu is {hdu!r}; expected an HDU index or EXTNAME')
        entries['fits_hdu'] = hdu
    if bands is not None:
        if not isinstance(bands, (list, tuple)) or not bands or \
                not all(isinstance(b, (int, str)) and not isinstance(b, bool) for b in bands):
            raise UserError(f'{source}: fits_bands is {bands!r}; expected a list of HDU indices or EXTNAMEs')
        entries['fits_bands'] = list(bands)
    return entries


def _hub_file(spec: str, filename: str) -> str:
    """Where a ``local-dir:`` / ``hf-hub:`` file lives (the cached copy for the Hub), for messages."""
    source, _, where = spec.partition(':')
    if source == 'local-dir':
        return str(Path(where) / filename)
    from huggingface_hub import try_to_load_from_cache
    repo, _, revision = where.partition('@')
    cached = try_to_load_from_cache(repo, filename, revision=revision or None)
    return cached if isinstance(cached, str) else f'{spec} {filename}'


def _load_export(spec: str, allow_nan: bool = False, **kwargs: Any) -> nn.Module:
    """``create_model(spec, pretrained=True)`` with its failures named by file."""
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled
    source, _, where = spec.partition(':')
    if source == 'local-dir':  # the checks timm's loader would fail on without naming the file
        if not Path(where).is_dir():
            state = 'is a file' if Path(where).exists() else 'no such folder'
            raise UserError(f'{where}: {state}; expected an exported folder (config.json, model.safetensors)')
        config = existing_file(Path(where) / 'config.json', 'the config.json of an export (`timm-astro export`)')
        try:
            cfg = json.loads(config.read_text(encoding='utf-8'))
        except (ValueError, UnicodeDecodeError) as e:
            raise UserError(f'{config}: not valid JSON ({e}); expected the config.json of an export') from None
        if not isinstance(cfg, dict):
            raise UserError(f'{config}: holds a {type(cfg).__name__}; expected a JSON object with an architecture')
        _model_name(cfg.get('architecture'), f'the architecture in {config}')
    try:
        model = timm.create_model(spec, pretrained=True, **kwargs)
    except json.JSONDecodeError as e:
        raise UserError(f"{_hub_file(spec, 'config.json')}: not valid JSON ({e.msg} at line {e.lineno}); "
                        f"expected the config.json of an export") from None
    except SafetensorError as e:
        raise UserError(f"{_hub_file(spec, 'model.safetensors')}: not a readable safetensors file (corrupt or "
                        f"truncated?): {e}; export or download it again") from None
    except (HfHubHTTPError, EntryNotFoundError, OfflineModeIsEnabled) as e:
        raise UserError(f"{spec}: {(str(e).strip().splitlines() or [type(e).__name__])[0]}") from None
    except (FileNotFoundError, RuntimeError, KeyError, TypeError, ValueError) as e:
        detail = textwrap.shorten(str(e), 400) or type(e).__name__
        raise UserError(f'{spec}: does not load with timm ({type(e).__name__}: {detail}); expected an export: '
                        f'config.json naming a registered architecture, and weights that fit it') from None
    check_finite(model.state_dict(), _hub_file(spec, 'model.safetensors'), allow_nan, 'export or download it again')
    config_file = _hub_file(spec, 'config.json')
    try:
        found = json.loads(Path(config_file).read_text(encoding='utf-8')) if Path(config_file).is_file() else {}
    except (OSError, ValueError):
        found = {}  # timm read it a moment ago
    if isinstance(found, dict):
        model.pretrained_cfg = {**model.pretrained_cfg, **input_entries(found, config_file)}
    return model.eval()


def load_model(
        spec: str,
        checkpoint: Optional[PathLike] = None,
        *,
        use_ema: bool = True,
        allow_nan: bool = False,
        args_yaml: Optional[PathLike] = None,
        **kwargs: Any,
) -> nn.Module:
    """The eval-mode model ``spec`` names, its ``pretrained_cfg`` holding its data config and label names.

    Args:
        spec: A registered model name, a train.py checkpoint (or state dict) path, ``local-dir:PATH`` or
            ``hf-hub:ORG/NAME[@REVISION]``.
        checkpoint: Weights for a model name: a train.py checkpoint or a state dict, read safely.
        use_ema: Take a checkpoint's EMA weights when it has them.
        allow_nan: Accept weights that hold NaN or infinity (refused by default).
        args_yaml: The run's args.yaml, if not the one next to the checkpoint.
        **kwargs: For ``timm.create_model`` (``num_classes``, ``img_size``, ...), over the run's arguments.
    """
    if not isinstance(spec, str) or not spec:
        raise UserError(f'model {spec!r}: expected a model name, a checkpoint path, local-dir:PATH or hf-hub:ORG/NAME')
    if checkpoint is None and timm.is_model(spec):
        return timm.create_model(spec, **kwargs).eval()  # no weights: num_classes builds the head
    # with weights, the head is theirs: a num_classes that differs would silently replace it with a random one
    num_classes = kwargs.pop('num_classes', None)
    if spec.startswith(('local-dir:', 'hf-hub:')):
        if checkpoint is not None:
            raise UserError(f'{spec}: a checkpoint ({checkpoint}) goes with a model name, not with an export')
        return _same_head(_load_export(spec, allow_nan, **kwargs), num_classes, spec)
    if checkpoint is None:
        if (Path(spec) / 'config.json').is_file():
            raise UserError(f'{spec}: is an exported folder, not a checkpoint; load it as local-dir:{spec}')
        if os.sep in spec or Path(spec).exists() or spec.endswith(('.pth', '.tar', '.pt', '.safetensors', '.bin')):
            ckpt = read_train_checkpoint(spec, use_ema, args_yaml, allow_nan)
            if ckpt.weights == 'state dict' and not ckpt.arch and not ckpt.args:
                raise UserError(f'{spec}: is a bare state dict (weights only): it does not say which model they '
                                f'belong to; pass the model name with --checkpoint {spec}, or give a train.py '
                                f'checkpoint or an exported folder (local-dir:PATH)')
            return _same_head(model_from_checkpoint(ckpt, **kwargs), num_classes, spec)
        _model_name(spec, 'neither a registered model nor a checkpoint file, local-dir:PATH or hf-hub:ORG/NAME')
    name = _model_name(spec, 'the model name given')
    ckpt = read_train_checkpoint(checkpoint, use_ema, args_yaml, allow_nan)
    return _same_head(model_from_checkpoint(ckpt, name, **kwargs), num_classes, checkpoint)


def _same_head(model: nn.Module, num_classes: Optional[int], source: Any) -> nn.Module:
    """``model`` if ``num_classes`` (asked for) is None or what its trained head predicts; a UserError otherwise."""
    if num_classes is not None and int(num_classes) != model.num_classes:
        raise UserError(f'num_classes {num_classes} was asked for, but the weights of {source} predict '
                        f'{model.num_classes} classes; leave it out (the weights decide), or load another model')
    return model
