"""Run one of timm's scripts (train.py, validate.py, benchmark.py, inference.py) with the Astroformer models registered.

timm's scripts live in the pytorch-image-models repository, not in the timm wheel, and only train.py can import a
plugin itself (``--device-modules timm_astro``). This runner imports timm_astro and runs the unchanged script once, as
``__main__``::

    python -m timm_astro run pytorch-image-models/train.py DATA_DIR --config train_configs/galaxy10_astroformer_3.yaml
    timm-astro run pytorch-image-models/validate.py DATA_DIR --split validation --model astroformer_3 --checkpoint ...
    torchrun --nproc_per_node 8 -m timm_astro run pytorch-image-models/train.py DATA_DIR --config ...

The arguments the script's own parser returns (train.py's --config applied) are checked before the script goes on:
the model name, the data folder as timm's ``create_dataset`` reads it, num_classes against its classes, and config
keys the script would silently ignore (``--no-check`` skips this). One of timm's scripts that lacks an argument the
checks read stops the run: the checks no longer fit it.
"""
import argparse
import contextlib
import difflib
import os
import runpy
import sys
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple

import yaml

from timm_astro.commands import say_error

__all__ = ['main', 'check_args', 'EXTRA_CONFIG_KEYS']

# Config keys train.py does not know but timm_astro reads back from the run's args.yaml (train.py saves every
# config key there): the export tool takes the human-readable class names from ``label_names``.
EXTRA_CONFIG_KEYS: Set[str] = {'label_names'}

# What the checks read from the arguments of timm's own scripts; a script that lacks them has changed shape.
SCRIPT_ARGUMENTS: Dict[str, Set[str]] = {
    'train.py': {'model', 'data', 'data_dir', 'dataset', 'train_split', 'val_split', 'class_map', 'num_classes'},
    'validate.py': {'model', 'data', 'data_dir', 'dataset', 'split', 'class_map', 'num_classes'},
    'inference.py': {'model', 'data', 'data_dir', 'dataset', 'split', 'class_map', 'num_classes'},
    'benchmark.py': {'model'},
}

_PROG = 'timm-astro run'
_USAGE = f"""usage: {_PROG} [--no-check] SCRIPT.py [SCRIPT ARGS...]
       python -m timm_astro run [--no-check] SCRIPT.py [SCRIPT ARGS...]

Runs a pytorch-image-models script (train.py, validate.py, benchmark.py, inference.py) with the Astroformer models
registered. Before the script starts its work, the model name, the data folder, num_classes and the keys of a
--config YAML are checked; --no-check skips that.

timm's scripts are not in the timm wheel: check out https://github.com/huggingface/pytorch-image-models at the tag
matching the installed timm (git clone --branch v<TIMM_VERSION> ...) and pass the path of its script."""


def _is_primary() -> bool:
    """Only rank 0 prints warnings when launched by torchrun (errors are printed by every process)."""
    return os.environ.get('RANK', '0') == '0'


def _check_model(name: Any, args: argparse.Namespace) -> List[str]:
    """timm only says "Unknown model"; name near matches and the registered Astroformer models as well."""
    import timm
    if not isinstance(name, str) or not name or getattr(args, 'model_list', None):
        return []
    if ':' in name or name == 'all' or any(c in name for c in '*?[') or os.path.isfile(name):
        return []  # hub / local-dir names, wildcards and model-list files are the script's business
    if timm.is_model(name):
        return []
    close = difflib.get_close_matches(timm.models.get_arch_name(name), timm.list_models(), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ''
    ours = ', '.join(timm.list_models('astroformer*'))
    return [f'unknown model {name!r}: timm has no model of that name.{hint} Astroformer models: {ours}.']


def _read_split(dataset: str, root: str, split: str, class_map: str) -> Tuple[str, Dict[str, int]]:
    """The folder and class index timm's own ``create_dataset`` (as the scripts call it) gives for ``split``."""
    from timm.data import create_dataset
    try:
        reader = create_dataset(dataset, root=root, split=split, class_map=class_map).reader
    except (RuntimeError, OSError, ValueError, AssertionError) as e:
        folder = str(e).partition('Found 0 images in subfolders of ')[2].partition('. Supported')[0]
        if folder:
            raise ValueError(f'no images found under {folder} (expected {os.path.join(folder, "<class name>")}/*.png).')
        raise ValueError(f'timm cannot read {root!r} (split {split!r}): {e}') from None
    # a folder is read by timm's ReaderImageFolder, a .tar file by its ReaderImageInTar
    return reader.root, dict(getattr(reader, 'class_to_idx', None) or reader.class_name_to_idx)


def _check_data(args: argparse.Namespace, label_names: Optional[Sequence[str]]) -> Tuple[List[str], List[str]]:
    """Check the data folder through timm's dataset factory, and num_classes; returns (errors, warnings)."""
    errors: List[str] = []
    warnings: List[str] = []
    dataset = getattr(args, 'dataset', '') or ''
    if '/' in dataset:
        return errors, warnings  # torch/, hfds/, tfds/, wds/ datasets: downloads, not a folder to inspect
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

    class_map = getattr(args, 'class_map', '') or ''
    num_classes = getattr(args, 'num_classes', None)
    found: Dict[str, Tuple[str, List[str]]] = {}
    for split in splits:
        try:
            folder, class_to_idx = _read_split(dataset, root, split, class_map)
        except ValueError as e:
            errors.append(str(e))
            continue
        classes = sorted(class_to_idx, key=class_to_idx.get)
        same = [s for s, (f, _) in found.items() if f == folder]
        if same:
            why = f': there is no {split!r} sub-folder in {root}, so timm falls back to it' if folder == root else ''
            warnings.append(f'splits {same[0]!r} and {split!r} both read {folder}{why}.')
            continue
        inside = [s for s, (f, _) in found.items() if folder == root and os.path.dirname(f) == root.rstrip(os.sep)]
        if inside:
            warnings.append(f'there is no {split!r} sub-folder in {root}, so timm reads all of {root} for it, '
                            f'{inside[0]!r} images included.')
        found[split] = folder, classes
        if '' in class_to_idx and not class_map:
            errors.append(
                f'{folder} holds images directly: timm ImageFolder datasets take the class of an image from the '
                f'folder it sits in, so put them in {os.path.join(folder, "<class name>")}/ (one folder per class).')
            continue
        if len(classes) == 1:
            warnings.append(f'{folder} has a single class folder ({classes[0]!r}); timm uses the leaf folder name '
                            f'as the class, so every image gets the same label.')
        if num_classes is not None and len(classes) != num_classes:
            shown = ', '.join(classes[:5]) + (', ...' if len(classes) > 5 else '')
            where = f'the class map {class_map}' if class_map else f'{folder} has {len(classes)} class folders'
            errors.append(f'num_classes is {num_classes} but {where} ({shown}): pass --num-classes {len(classes)} or '
                          f'fix the {"class map" if class_map else "folder"}.')
    if len(found) == 2 and not class_map:
        (split_a, (_, classes_a)), (split_b, (_, classes_b)) = found.items()
        # a different count with num_classes given is already reported against num_classes
        if classes_a != classes_b and (num_classes is None or len(classes_a) == len(classes_b)):
            errors.append(f'the {split_a!r} and {split_b!r} class folders differ ({len(classes_a)} and '
                          f'{len(classes_b)} folders, not in both: {sorted(set(classes_a) ^ set(classes_b))[:6]}): '
                          f'timm numbers classes by sorted folder name, so their labels would not line up.')
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
    if getattr(args, 'pretrained_path', None) and not getattr(args, 'pretrained', True):
        # train.py builds the model with pretrained=args.pretrained: the path alone would be ignored
        errors.append(f'--pretrained-path {args.pretrained_path} is read only with --pretrained (pretrained: true in a '
                      f'config); without it the script trains from scratch.')
    if hasattr(args, 'data') or hasattr(args, 'data_dir'):
        data_errors, data_warnings = _check_data(args, config.get('label_names'))
        errors += data_errors
        warnings += data_warnings
    return errors, warnings


def _check_config(path: str) -> None:
    """A missing or broken --config file is said in one line (the script would end in a traceback)."""
    try:
        with open(path, encoding='utf-8') as f:
            config = yaml.safe_load(f) or {}
    except OSError as e:
        raise ValueError(f'cannot read config file {path!r}: {e.strerror}.') from None
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path!r} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(config, dict):
        raise ValueError(f'config file {path!r} must be a mapping of option names to values.')


def _stop(script: str, errors: Sequence[str]) -> None:
    for msg in errors:
        say_error(_PROG, msg)
    print(f'{_PROG}: not starting {os.path.basename(script)}; --no-check skips these checks.', file=sys.stderr)
    raise SystemExit(2)


@contextlib.contextmanager
def _checked_parsing(script: str) -> Iterator[Dict[str, Any]]:
    """While the script runs, check the arguments its parser returns before the script uses them.

    argparse is watched, not copied: a parser's ``--config`` value is read as train.py reads it, ``set_defaults``
    (train.py applying the YAML) shows the config and, just before, the options it may set; the first parse that
    yields ``model`` is the script's own, and is checked. Everything is restored on exit.
    """
    parser_cls = argparse.ArgumentParser
    real_parse, real_set_defaults = parser_cls.parse_known_args, parser_cls.set_defaults
    state: Dict[str, Any] = {'checked': False, 'stopped': False, 'config': {}, 'options': None}

    def set_defaults(parser: argparse.ArgumentParser, **kwargs: Any) -> None:
        if not state['checked'] and kwargs:
            with contextlib.suppress(SystemExit):  # a parser with required options: keys are then not checked
                state['options'] = set(vars(real_parse(parser, [])[0]))
            state['config'].update(kwargs)
        real_set_defaults(parser, **kwargs)

    def parse_known_args(parser: argparse.ArgumentParser, args: Optional[Sequence[str]] = None,
                         namespace: Optional[argparse.Namespace] = None) -> Tuple[argparse.Namespace, List[str]]:
        parsed, extras = real_parse(parser, args, namespace)
        if state['checked']:
            return parsed, extras
        if isinstance(getattr(parsed, 'config', None), str) and parsed.config and not hasattr(parsed, 'model'):
            try:
                _check_config(parsed.config)  # the script reads it next
            except ValueError as e:
                state['stopped'] = True  # said why; no warning that the script looks changed
                _stop(script, [str(e)])
        if hasattr(parsed, 'model'):
            state['checked'] = True
            missing = SCRIPT_ARGUMENTS.get(os.path.basename(script), set()) - set(vars(parsed))
            if missing:
                _stop(script, [f'{script} has no argument {", ".join(sorted(missing))}: its options changed, so the '
                               f'checks written for timm\'s {os.path.basename(script)} no longer fit it.'])
            errors, warnings = check_args(parsed, state['config'], state['options'])
            if _is_primary():
                for msg in warnings:
                    print(f'{_PROG}: warning: {msg}', file=sys.stderr)
            if errors:
                _stop(script, errors)
        return parsed, extras

    parser_cls.parse_known_args, parser_cls.set_defaults = parse_known_args, set_defaults
    try:
        yield state
    finally:
        parser_cls.parse_known_args, parser_cls.set_defaults = real_parse, real_set_defaults


def run_script(script: str, script_argv: List[str], check: bool = True) -> int:
    """Run ``script`` as ``__main__``, like ``python SCRIPT ARGS`` (its sys.argv and sys.path[0], restored after),
    checking its arguments; returns its exit code."""
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [script, *script_argv]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    with _checked_parsing(script) if check else contextlib.nullcontext({}) as state:
        try:
            runpy.run_path(script, run_name='__main__')
            code = 0
        except SystemExit as e:
            if e.code is not None and not isinstance(e.code, int):
                print(e.code, file=sys.stderr)
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            sys.argv, sys.path[:] = saved_argv, saved_path
    if check and not (state['checked'] or state['stopped']) and os.path.basename(script) in SCRIPT_ARGUMENTS \
            and _is_primary():
        print(f'{_PROG}: warning: {script} never parsed a --model argument with argparse, so nothing was checked: '
              f'it no longer looks like timm\'s {os.path.basename(script)}.', file=sys.stderr)
    return code


def main(argv: Optional[List[str]] = None) -> int:
    """``timm-astro run [--no-check] SCRIPT.py [ARGS...]``: run the script, checking its arguments first."""
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
        if os.path.isdir(script):
            inside = os.path.join(script, 'train.py')
            state = f'is a folder, not a script{f" (did you mean {inside}?)" if os.path.isfile(inside) else ""}'
        else:
            state = 'not found'
        return say_error(_PROG, f"{script}: {state}. timm's scripts are not part of the timm wheel: check out "
                                f'https://github.com/huggingface/pytorch-image-models at tag v{timm.__version__} and '
                                f'pass the path of its train.py, validate.py, benchmark.py or inference.py.')

    problem = _not_a_script(script)
    if problem:
        return say_error(_PROG, f'{script}: {problem}; expected a Python script of pytorch-image-models (train.py, '
                                f'validate.py, benchmark.py or inference.py)')
    import timm_astro  # noqa: F401  (registers the models before the script builds one)
    return run_script(script, script_argv, check)


def _not_a_script(path: str) -> Optional[str]:
    """Why ``path`` cannot be run as Python source (binary, not UTF-8, a syntax error), or None. Compiling is
    what runpy does first, so nothing runs here."""
    try:
        with open(path, 'rb') as f:
            source = f.read()
    except OSError as e:
        return f'cannot be read ({e.strerror})'
    if b'\0' in source:
        return 'is a binary file, not a Python script'
    try:
        compile(source, path, 'exec', dont_inherit=True)
    except SyntaxError as e:
        return f'is not valid Python ({e.msg}, line {e.lineno})'
    except ValueError as e:
        return f'is not Python source ({e})'
    return None
