"""Run one of timm's scripts (train.py, validate.py, benchmark.py, inference.py) with the Astroformer models registered.

timm's scripts live in the pytorch-image-models repository, not in the timm wheel. train.py can import a plugin
itself (``--device-modules timm_astro``, or ``device_modules: [timm_astro]`` in a ``--config`` YAML), but
validate.py, benchmark.py and inference.py have no such option. This runner imports timm_astro, checks the few
arguments that otherwise fail late or silently (model name, ImageFolder layout, num_classes, unknown config keys),
then runs the unchanged script as ``__main__``::

    python -m timm_astro run pytorch-image-models/train.py DATA_DIR --config train_configs/galaxy10_astroformer_3.yaml
    timm-astro run pytorch-image-models/validate.py DATA_DIR --split validation --model astroformer_3 --checkpoint ...
    torchrun --nproc_per_node 8 -m timm_astro run pytorch-image-models/train.py DATA_DIR --config ...

The checks read the arguments with the script's own parser (and, for train.py, its --config handling), so they see
exactly what the script will see. ``--no-check`` skips them.
"""
import argparse
import contextlib
import difflib
import io
import os
import runpy
import sys
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import yaml

__all__ = ['main', 'check_args', 'count_classes', 'EXTRA_CONFIG_KEYS']

# Config keys train.py does not know but timm_astro reads back from the run's args.yaml (train.py saves every
# config key there): the export tool takes the human-readable class names from ``label_names``.
EXTRA_CONFIG_KEYS: Set[str] = {'label_names'}

_PROG = 'timm-astro run'
_USAGE = f"""usage: {_PROG} [--no-check] SCRIPT.py [SCRIPT ARGS...]
       python -m timm_astro run [--no-check] SCRIPT.py [SCRIPT ARGS...]

Runs a pytorch-image-models script (train.py, validate.py, benchmark.py, inference.py) with the Astroformer models
registered. Before it starts, the model name, the ImageFolder layout of the data folder, num_classes and the keys
of a --config YAML are checked; --no-check skips that.

timm's scripts are not in the timm wheel: check out https://github.com/huggingface/pytorch-image-models at the tag
matching the installed timm (git clone --branch v<TIMM_VERSION> ...) and pass the path of its script."""


def _error(msg: str) -> None:
    print(f'{_PROG}: error: {msg}', file=sys.stderr)


def _is_primary() -> bool:
    """Only rank 0 prints warnings when launched by torchrun (errors are printed by every process)."""
    return os.environ.get('RANK', '0') == '0'


def _image_extensions() -> Set[str]:
    from timm.data.readers.img_extensions import get_img_extensions
    return set(get_img_extensions(as_set=True))


def count_classes(folder: str) -> Tuple[List[str], bool]:
    """The class names timm's ImageFolder reader would find in ``folder``, and whether images sit in it directly.

    timm labels an image by the name of the folder holding it (the leaf folder, at any depth), so this walks the
    tree like the reader does, but stops looking at a folder's files at its first image.
    """
    extensions = _image_extensions()
    classes: Set[str] = set()
    loose_images = False
    for root, _, files in os.walk(folder, followlinks=True):
        if any(os.path.splitext(f)[1].lower() in extensions for f in files):
            if os.path.samefile(root, folder):
                loose_images = True
            else:
                classes.add(os.path.basename(root))
    return sorted(classes), loose_images


# Split names timm's create_dataset treats as the same folder (it tries the exact name first, then these).
_SPLIT_SYNONYMS = (('train', 'training'), ('val', 'valid', 'validation', 'eval', 'evaluation'))


def _search_split(root: str, split: str) -> str:
    """The folder timm's create_dataset reads for ``split`` under ``root`` (root itself when none matches)."""
    name = split.split('[')[0]
    candidates = [name]
    for synonyms in _SPLIT_SYNONYMS:
        if name in synonyms:
            candidates += list(synonyms)
    for candidate in candidates:
        if os.path.exists(os.path.join(root, candidate)):
            return os.path.join(root, candidate)
    return root


def _check_model(name: Any, args: argparse.Namespace) -> List[str]:
    """timm only says "Unknown model"; name near matches and the registered Astroformer models as well."""
    import timm
    if not isinstance(name, str) or not name or getattr(args, 'model_list', None):
        return []
    if ':' in name or name == 'all' or any(c in name for c in '*?[') or os.path.isfile(name):
        return []  # hub / local-dir names, wildcards and model-list files are the script's business
    if timm.is_model(name):
        return []
    known = timm.list_models()
    close = difflib.get_close_matches(name.split('.')[0], known, n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ''
    ours = ', '.join(timm.list_models('astroformer*')) or 'none (the models failed to register)'
    return [f'unknown model {name!r}: timm has no model of that name.{hint} Astroformer models: {ours}.']


def _check_data(args: argparse.Namespace, label_names: Optional[Sequence[str]]) -> Tuple[List[str], List[str]]:
    """Check the ImageFolder layout of the data folder and num_classes; returns (errors, warnings)."""
    errors: List[str] = []
    warnings: List[str] = []
    dataset = getattr(args, 'dataset', '') or ''
    if '/' in dataset:
        return errors, warnings  # torch/, hfds/, tfds/, wds/ datasets: not a folder to inspect
    if hasattr(args, 'train_split'):  # train.py: --data-dir wins over the positional DIR
        root = getattr(args, 'data_dir', None) or getattr(args, 'data', None)
        splits = [args.train_split] + ([args.val_split] if getattr(args, 'val_split', '') else [])
    else:  # validate.py, inference.py: the positional DIR wins
        root = getattr(args, 'data', None) or getattr(args, 'data_dir', None)
        splits = [getattr(args, 'split', 'validation')]
    if not root:
        return ['no data folder given: pass it as the first positional argument or with --data-dir.'], warnings
    if not os.path.exists(root):
        return [f'data folder {root!r} does not exist.'], warnings
    if not os.path.isdir(root):
        return errors, warnings  # a tar file: timm reads it directly

    class_map = getattr(args, 'class_map', '')
    num_classes = getattr(args, 'num_classes', None)
    folders: Dict[str, str] = {}
    found: Dict[str, List[str]] = {}
    for split in splits:
        folder = _search_split(root, split)
        if folder in folders.values():
            other = next(s for s, f in folders.items() if f == folder)
            why = f': there is no {split!r} sub-folder in {root}, so timm falls back to it' if folder == root else ''
            warnings.append(f'splits {other!r} and {split!r} both read {folder}{why}.')
            continue
        folders[split] = folder
        classes, loose = count_classes(folder)
        if loose:
            errors.append(
                f'{folder} holds images directly: timm ImageFolder datasets take the class of an image from the '
                f'folder it sits in, so put them in {os.path.join(folder, "<class name>")}/ (one folder per class).')
            continue
        if not classes:
            errors.append(f'no images found under {folder} (expected {os.path.join(folder, "<class name>")}/*.png).')
            continue
        found[split] = classes
        if len(classes) == 1:
            warnings.append(f'{folder} has a single class folder ({classes[0]!r}); timm uses the leaf folder name '
                            f'as the class, so every image gets the same label.')
        if num_classes is not None and not class_map and len(classes) != num_classes:
            shown = ', '.join(classes[:5]) + (', ...' if len(classes) > 5 else '')
            errors.append(
                f'num_classes is {num_classes} but {folder} has {len(classes)} class folders ({shown}): '
                f'pass --num-classes {len(classes)} or fix the folder.')
    if len(found) == 2 and not class_map:
        (split_a, classes_a), (split_b, classes_b) = found.items()
        if len(classes_a) != len(classes_b):
            if num_classes is None:  # otherwise already reported against num_classes
                errors.append(f'{split_a!r} has {len(classes_a)} class folders but {split_b!r} has '
                              f'{len(classes_b)}: timm numbers classes by sorted folder name, so labels would not '
                              f'line up.')
        elif classes_a != classes_b:
            errors.append(f'the {split_a!r} and {split_b!r} class folders have different names, so their labels '
                          f'would not line up: {sorted(set(classes_a) ^ set(classes_b))[:6]}.')
    if label_names is not None and num_classes is not None and len(label_names) != num_classes:
        errors.append(f'label_names has {len(label_names)} names but num_classes is {num_classes}.')
    return errors, warnings


def check_args(
        args: argparse.Namespace,
        config: Optional[Dict[str, Any]] = None,
        option_names: Optional[Set[str]] = None,
) -> Tuple[List[str], List[str]]:
    """Check parsed script arguments; returns (errors, warnings) as readable sentences.

    Args:
        args: the script's arguments, parsed by its own parser (config file applied).
        config: the --config YAML mapping, if one was given.
        option_names: dest names of the script's options, to flag config keys it would silently ignore.
    """
    errors: List[str] = []
    warnings: List[str] = []
    config = config or {}
    if option_names is not None:
        for key in config:
            if key not in option_names and key not in EXTRA_CONFIG_KEYS:
                close = difflib.get_close_matches(key, sorted(option_names), n=1, cutoff=0.6)
                hint = f' (did you mean {close[0]!r}?)' if close else ''
                warnings.append(f'config key {key!r} is not an option of the script and will be ignored{hint}.')
    if hasattr(args, 'model'):
        errors += _check_model(args.model, args)
    if hasattr(args, 'data') or hasattr(args, 'data_dir'):
        data_errors, data_warnings = _check_data(args, config.get('label_names'))
        errors += data_errors
        warnings += data_warnings
    return errors, warnings


def _parse_script_args(
        script: str,
        script_argv: List[str],
) -> Tuple[Optional[argparse.Namespace], Dict[str, Any], Optional[Set[str]]]:
    """Parse ``script_argv`` with the script's module-level ``parser``, applying ``--config`` the way train.py does.

    The script is loaded without running its main(). Returns (None, {}, None) when it has no parser to borrow or
    cannot be loaded; the script itself then reports its own problems. Raises ValueError for an unreadable config.
    """
    try:
        with _as_script(script, script_argv), \
                contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            namespace = runpy.run_path(script, run_name='__timm_astro_check__')
    except (Exception, SystemExit):
        return None, {}, None
    parser = namespace.get('parser')
    if not isinstance(parser, argparse.ArgumentParser):
        return None, {}, None

    config: Dict[str, Any] = {}
    option_names: Optional[Set[str]] = None
    if isinstance(namespace.get('config_parser'), argparse.ArgumentParser):
        config_args, script_argv = namespace['config_parser'].parse_known_args(script_argv)
        if config_args.config:
            try:
                with open(config_args.config) as f:
                    config = yaml.safe_load(f) or {}
            except OSError as e:
                raise ValueError(f'cannot read config file {config_args.config!r}: {e.strerror}.')
            except yaml.YAMLError as e:
                raise ValueError(f'config file {config_args.config!r} is not valid YAML: {e}')
            if not isinstance(config, dict):
                raise ValueError(f'config file {config_args.config!r} must be a mapping of option names to values.')
            parser.set_defaults(**config)
        option_names = {a.dest for a in parser._actions if a.dest != 'help'}
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            args, _ = parser.parse_known_args(script_argv)
    except SystemExit:  # bad arguments or --help: the script prints its own message
        return None, config, option_names
    return args, config, option_names


@contextlib.contextmanager
def _as_script(script: str, script_argv: List[str]):
    """Set ``sys.argv`` and ``sys.path[0]`` as ``python SCRIPT ARGS`` would (restored on exit)."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [script] + list(script_argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        yield
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path


def run_script(script: str, script_argv: List[str]) -> int:
    """Run ``script`` as ``__main__``, like ``python SCRIPT ARGS``; returns its exit code."""
    try:
        with _as_script(script, script_argv):
            runpy.run_path(script, run_name='__main__')
    except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        print(e.code, file=sys.stderr)
        return 1
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """``timm-astro run [--no-check] SCRIPT.py [ARGS...]``: check the arguments, then run the script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    check = True
    if argv and argv[0] == '--no-check':
        check, argv = False, argv[1:]
    if not argv or argv[0] in ('-h', '--help'):
        print(_USAGE)
        return 0 if argv else 2
    script, script_argv = argv[0], argv[1:]
    if not os.path.isfile(script):
        import timm
        _error(f'script {script!r} not found. timm\'s scripts are not part of the timm wheel: check out '
               f'https://github.com/huggingface/pytorch-image-models at tag v{timm.__version__} and pass the path '
               f'to its {os.path.basename(script) or "train.py"}.')
        return 2

    import timm_astro  # noqa: F401  (registers the models before the script builds one)

    if check:
        try:
            args, config, option_names = _parse_script_args(script, script_argv)
        except ValueError as e:
            _error(str(e))
            return 2
        if args is not None:
            errors, warnings = check_args(args, config, option_names)
            if _is_primary():
                for msg in warnings:
                    print(f'{_PROG}: warning: {msg}', file=sys.stderr)
            for msg in errors:
                _error(msg)
            if errors:
                print(f'{_PROG}: not starting {os.path.basename(script)}; --no-check skips these checks.',
                      file=sys.stderr)
                return 2
    return run_script(script, script_argv)


if __name__ == '__main__':
    sys.exit(main())
