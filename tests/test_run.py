"""timm-astro run (timm_astro.commands.run): runs a timm script once, as __main__, with the models registered,
checking the arguments its own parser returns before the script goes on.

The scripts here are small stand-ins written by the tests, shaped like timm's (for train.py a ``config_parser`` whose
YAML goes to ``parser.set_defaults`` and a ``--device-modules`` option), so these tests need no pytorch-image-models
checkout. tests/test_train_script.py runs the real train.py.
"""
import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import numpy as np
import pytest
import yaml
from PIL import Image

from timm_astro.commands import run
from timm_astro.cli import main as cli_main

ROOT = Path(__file__).resolve().parents[1]

# Shaped like timm's train.py: the parts timm-astro run relies on (parser, config_parser, device_modules).
TRAIN_LIKE = '''
import argparse, importlib, json, os, sys
import yaml

config_parser = parser = argparse.ArgumentParser(add_help=False)
parser.add_argument('-c', '--config', default='', type=str)
parser = argparse.ArgumentParser()
parser.add_argument('data', nargs='?', metavar='DIR', const=None)
parser.add_argument('--data-dir', metavar='DIR')
parser.add_argument('--dataset', default='')
parser.add_argument('--train-split', default='train')
parser.add_argument('--val-split', default='validation')
parser.add_argument('--class-map', default='')
parser.add_argument('--model', default='resnet50')
parser.add_argument('--num-classes', type=int, default=None)
parser.add_argument('--batch-size', type=int, default=128)
parser.add_argument('--device-modules', default=None, type=str, nargs='+')
parser.add_argument('--out', default='')


def main():
    with open(os.environ['RUNS_LOG'], 'a') as log:  # one line per run of the script
        print('run', file=log)
    args_config, remaining = config_parser.parse_known_args()
    if args_config.config:
        with open(args_config.config) as f:
            parser.set_defaults(**yaml.safe_load(f))
    args = parser.parse_args(remaining)
    for module in args.device_modules or []:
        importlib.import_module(module)
    import timm
    result = dict(
        argv=sys.argv, name=__name__, path0=sys.path[0], model=args.model, batch_size=args.batch_size,
        registered=timm.is_model(args.model), label_names=getattr(args, 'label_names', None),
    )
    with open(args.out, 'w') as f:
        json.dump(result, f)
    sys.exit(int(os.environ.get('FAKE_EXIT', '0')))


if __name__ == '__main__':
    main()
'''

# Shaped like validate.py: no --config, no --device-modules, positional data wins over --data-dir.
VALIDATE_LIKE = '''
import argparse, json, sys
parser = argparse.ArgumentParser()
parser.add_argument('data', nargs='?', metavar='DIR', const=None)
parser.add_argument('--data-dir', metavar='DIR')
parser.add_argument('--dataset', default='')
parser.add_argument('--split', default='validation')
parser.add_argument('--class-map', default='')
parser.add_argument('--model', '-m', default='dpn92')
parser.add_argument('--num-classes', type=int, default=None)
parser.add_argument('--out', default='')


def main():
    args = parser.parse_args()
    import timm
    with open(args.out, 'w') as f:
        json.dump(dict(registered=timm.is_model(args.model)), f)


if __name__ == '__main__':
    main()
'''


def _write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def _image_folder(root: Path, splits=('train', 'validation'), classes=('0_round', '1_spiral'), n: int = 2) -> Path:
    rng = np.random.default_rng(0)
    for split in splits:
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / split / c / f'{i}.png')
    return root


@pytest.fixture
def train_like(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv('RUNS_LOG', str(tmp_path / 'runs.log'))
    return _write(tmp_path / 'train.py', TRAIN_LIKE)


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return _image_folder(tmp_path / 'data')


def _run(argv: List[str], capsys) -> (int, str):
    code = run.main(argv)
    return code, capsys.readouterr().err


def test_usage(capsys):
    assert run.main([]) == 2
    assert 'usage: timm-astro run' in capsys.readouterr().out
    assert run.main(['--help']) == 0


def test_missing_script_says_where_to_get_it(tmp_path: Path, capsys):
    import timm
    code, err = _run([str(tmp_path / 'train.py'), 'data'], capsys)
    assert code == 2
    assert 'not found' in err and 'not part of the timm wheel' in err and f'v{timm.__version__}' in err
    _write(tmp_path / 'train.py', '')
    code, err = _run([str(tmp_path), 'data'], capsys)  # the checkout instead of its script
    assert code == 2 and f'{tmp_path}: is a folder, not a script (did you mean {tmp_path / "train.py"}?)' in err


def test_runs_script_as_main_with_models_registered(train_like: Path, data: Path, tmp_path: Path, capsys):
    out = tmp_path / 'out.json'
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    code, err = _run([str(train_like), str(data), '--model', 'astroformer_small', '--num-classes', '2',
                      '--out', str(out)], capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result['name'] == '__main__'
    assert result['argv'] == [str(train_like), str(data), '--model', 'astroformer_small', '--num-classes', '2',
                              '--out', str(out)]
    assert result['path0'] == str(tmp_path)  # like `python train.py`: the script's folder first on sys.path
    assert result['registered'] is True  # no --device-modules needed: run imported timm_astro
    assert sys.argv == saved_argv and sys.path == saved_path
    assert (tmp_path / 'runs.log').read_text() == 'run\n', 'the checks must not run the script a second time'


def test_exit_code_is_passed_on(train_like: Path, data: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv('FAKE_EXIT', '3')
    code, _ = _run([str(train_like), str(data), '--model', 'astroformer_small', '--out', str(tmp_path / 'o.json')],
                   capsys)
    assert code == 3


def test_config_with_device_modules_and_cli_override(train_like: Path, data: Path, tmp_path: Path, capsys):
    config = tmp_path / 'cfg.yaml'
    config.write_text(yaml.safe_dump(dict(
        device_modules=['timm_astro'], model='astroformer_base', num_classes=2, batch_size=64,
        label_names=['round', 'spiral'])))
    out = tmp_path / 'out.json'
    code, err = _run([str(train_like), str(data), '--config', str(config), '--batch-size', '8', '--out', str(out)],
                     capsys)
    assert code == 0, err
    result = json.loads(out.read_text())
    assert result['model'] == 'astroformer_base' and result['registered'] is True
    assert result['batch_size'] == 8  # the command line wins over the YAML
    assert result['label_names'] == ['round', 'spiral']
    assert 'warning' not in err  # label_names is a documented extra key


def test_real_config_passes_checks(train_like: Path, tmp_path: Path, capsys):
    classes = [f'{i}_class' for i in range(10)]
    data = _image_folder(tmp_path / 'galaxy10', classes=classes, n=1)
    out = tmp_path / 'out.json'
    config = ROOT / 'train_configs' / 'galaxy10_astroformer_3.yaml'
    code, err = _run([str(train_like), str(data), '--config', str(config), '--out', str(out)], capsys)
    assert code == 0, err
    assert json.loads(out.read_text())['model'] == 'astroformer_3'


def test_unknown_config_key_warns_with_suggestion(train_like: Path, data: Path, tmp_path: Path, capsys):
    config = tmp_path / 'cfg.yaml'
    config.write_text('model: astroformer_small\nbatch_sise: 16\n')
    code, err = _run([str(train_like), str(data), '--config', str(config), '--out', str(tmp_path / 'o.json')],
                     capsys)
    assert code == 0
    assert "config key 'batch_sise' is not an option" in err and "did you mean 'batch_size'" in err


@pytest.mark.parametrize('text, expected', [
    (None, 'cannot read config file'), ('model: [astroformer_small\n', 'is not valid YAML'),
    ('- model\n', 'must be a mapping of option names to values')])
def test_unreadable_config_is_an_error(text, expected, train_like: Path, data: Path, tmp_path: Path, capsys):
    config = tmp_path / 'cfg.yaml'
    if text is not None:
        config.write_text(text)
    code, err = _run([str(train_like), str(data), '--config', str(config)], capsys)
    assert code == 2 and expected in err and 'Traceback' not in err
    # only the error and the line that says the script was not started: no warning that train.py looks changed
    assert 'no longer looks like' not in err and 'warning' not in err, err
    assert err.count('\n') == 2 and 'not starting train.py' in err, err


@pytest.mark.parametrize('content, expected', [
    (b'\x7fELF\x02\x01\x01\x00' + bytes(range(256)), 'is a binary file, not a Python script'),
    ('print("unclosed\n'.encode(), 'is not valid Python (unterminated string literal'),
    (b'\xff\xfe not utf-8 text', 'is not valid Python'),
])
def test_a_file_that_is_not_a_python_script_is_one_line(content, expected, tmp_path: Path, data: Path, capsys):
    script = tmp_path / 'train.py'
    script.write_bytes(content)
    code, err = _run([str(script), str(data)], capsys)
    assert code == 2 and f'{script}: {expected}' in err and err.count('\n') == 1 and 'Traceback' not in err, err


def test_unknown_model(train_like: Path, data: Path, tmp_path: Path, capsys):
    config = tmp_path / 'cfg.yaml'
    config.write_text('model: astroformer_6\nnum_classes: 2\n')
    code, err = _run([str(train_like), str(data), '--config', str(config)], capsys)
    assert code == 2
    assert "unknown model 'astroformer_6'" in err and 'astroformer_small' in err and 'Did you mean' in err
    assert 'not starting train.py' in err


def test_data_without_class_folders(train_like: Path, tmp_path: Path, capsys):
    flat = tmp_path / 'flat'
    for split in ('train', 'validation'):
        (flat / split).mkdir(parents=True)
        Image.new('RGB', (8, 8)).save(flat / split / 'a.png')
    code, err = _run([str(train_like), str(flat), '--model', 'astroformer_small'], capsys)
    assert code == 2
    assert 'holds images directly' in err and '<class name>' in err


def test_data_missing_or_empty(train_like: Path, tmp_path: Path, capsys):
    code, err = _run([str(train_like), str(tmp_path / 'nowhere'), '--model', 'astroformer_small'], capsys)
    assert code == 2 and 'does not exist' in err
    (tmp_path / 'empty' / 'train').mkdir(parents=True)
    code, err = _run([str(train_like), str(tmp_path / 'empty'), '--model', 'astroformer_small'], capsys)
    assert code == 2 and 'no images found' in err
    code, err = _run([str(train_like), '--model', 'astroformer_small'], capsys)
    assert code == 2 and 'no data folder given' in err


def test_num_classes_mismatch(train_like: Path, data: Path, capsys):
    code, err = _run([str(train_like), str(data), '--model', 'astroformer_small', '--num-classes', '10'], capsys)
    assert code == 2
    assert 'num_classes is 10' in err and 'has 2 class folders' in err and '--num-classes 2' in err


def test_splits_disagree(train_like: Path, tmp_path: Path, capsys):
    data = _image_folder(tmp_path / 'd', splits=('train',), classes=('a', 'b', 'c'))
    _image_folder(tmp_path / 'd', splits=('validation',), classes=('a', 'b'))
    code, err = _run([str(train_like), str(data), '--model', 'astroformer_small'], capsys)
    assert code == 2 and 'would not line up' in err


def test_missing_val_split_falls_back_with_warning(train_like: Path, tmp_path: Path, capsys):
    data = _image_folder(tmp_path / 'd', splits=('train',))
    out = tmp_path / 'o.json'
    code, err = _run([str(train_like), str(data / 'train'), '--model', 'astroformer_small', '--num-classes', '2',
                      '--out', str(out)], capsys)
    assert code == 0
    assert "splits 'train' and 'validation' both read" in err
    code, err = _run([str(train_like), str(data), '--model', 'astroformer_small', '--num-classes', '2',
                      '--out', str(out)], capsys)
    assert code == 0 and "there is no 'validation' sub-folder" in err and "'train' images included" in err


def test_class_map_sets_the_classes_and_downloads_are_not_inspected(train_like: Path, data: Path, tmp_path: Path,
                                                                    capsys):
    out = str(tmp_path / 'o.json')
    class_map = tmp_path / 'map.txt'  # timm's class map: one class name per line, in label order
    class_map.write_text('\n'.join(['0_round', '1_spiral', 'bar', 'merger', 'edge_on']) + '\n')
    assert run.main([str(train_like), str(data), '--model', 'astroformer_small', '--num-classes', '5',
                     '--class-map', str(class_map), '--out', out]) == 0
    code, err = _run([str(train_like), str(data), '--model', 'astroformer_small', '--num-classes', '2',
                      '--class-map', str(class_map), '--out', out], capsys)
    assert code == 2 and f'num_classes is 2 but the class map {class_map}' in err
    assert run.main([str(train_like), str(tmp_path / 'dl'), '--dataset', 'torch/cifar10', '--model',
                     'astroformer_small', '--out', out]) == 0


def test_no_check_skips_checks(train_like: Path, data: Path, tmp_path: Path, capsys):
    out = tmp_path / 'o.json'
    code, err = _run(['--no-check', str(train_like), str(data), '--model', 'astroformer_small', '--num-classes', '9',
                      '--out', str(out)], capsys)
    assert code == 0 and out.exists() and 'error' not in err


def test_validate_like_script(data: Path, tmp_path: Path, capsys):
    script = _write(tmp_path / 'validate.py', VALIDATE_LIKE)
    out = tmp_path / 'o.json'
    code, err = _run([str(script), str(data), '--model', 'astroformer_3', '--num-classes', '2', '--out', str(out)],
                     capsys)
    assert code == 0, err
    assert json.loads(out.read_text())['registered'] is True  # validate.py has no --device-modules
    code, err = _run([str(script), str(data), '--model', 'astroformer_3', '--num-classes', '3'], capsys)
    assert code == 2 and 'num_classes is 3' in err


def test_script_without_parser_runs_unchecked(tmp_path: Path, capsys):
    script = _write(tmp_path / 'hello.py', '''
        import sys, timm
        assert timm.is_model('astroformer_0')
        sys.exit(7 if sys.argv[1:] == ['x'] else 1)
    ''')
    assert run.main([str(script), 'x']) == 7


def test_classes_are_what_timm_reads(train_like: Path, tmp_path: Path, capsys):
    # timm names a class by the folder an image sits in, at any depth: Tiny ImageNet's train/<wnid>/images/ is one
    # class, 'images', and the check says so because it asks timm's own dataset factory
    for wnid in ('n01', 'n02'):
        (tmp_path / 'tiny' / 'train' / wnid / 'images').mkdir(parents=True)
        Image.new('RGB', (4, 4)).save(tmp_path / 'tiny' / 'train' / wnid / 'images' / 'a.JPEG')
    code, err = _run([str(train_like), str(tmp_path / 'tiny'), '--model', 'astroformer_small', '--num-classes', '2',
                      '--val-split', ''], capsys)
    assert code == 2 and "has a single class folder ('images')" in err and 'num_classes is 2' in err


def test_changed_timm_script_fails_loudly(tmp_path: Path, data: Path, capsys, monkeypatch):
    """A train.py whose options the checks rely on are gone is stopped, not run unchecked."""
    monkeypatch.setenv('RUNS_LOG', str(tmp_path / 'runs.log'))
    script = _write(tmp_path / 'train.py', TRAIN_LIKE.replace("'--train-split'", "'--train-splits'"))
    code, err = _run([str(script), str(data), '--model', 'astroformer_small'], capsys)
    assert code == 2 and 'has no argument train_split' in err and 'no longer fit' in err
    never = _write(tmp_path / 'validate.py', 'import sys\nsys.exit(0)\n')  # never parses its arguments
    code, err = _run([str(never), str(data)], capsys)
    assert code == 0 and 'never parsed a --model argument' in err


def test_cli_dispatch(train_like: Path, data: Path, tmp_path: Path):
    out = tmp_path / 'o.json'
    assert cli_main(['run', str(train_like), str(data), '--model', 'astroformer_small', '--out', str(out)]) == 0
    assert json.loads(out.read_text())['registered'] is True


def test_python_dash_m(train_like: Path, data: Path, tmp_path: Path):
    # one subprocess (a fresh interpreter imports torch: seconds); the checks themselves are tested in-process
    out = tmp_path / 'o.json'
    proc = subprocess.run(
        [sys.executable, '-m', 'timm_astro', 'run', str(train_like), str(data), '--model', 'astroformer_small',
         '--out', str(out)],
        capture_output=True, text=True, timeout=120, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())['registered'] is True


def test_tar_data_root_is_read_as_timm_reads_it(train_like: Path, tmp_path: Path, capsys):
    """A .tar of class folders (timm's ReaderImageInTar, which names its index class_name_to_idx) is checked too."""
    import tarfile
    folder = _image_folder(tmp_path / 'd', splits=('train',))
    with tarfile.open(tmp_path / 'train.tar', 'w') as tar:
        tar.add(folder / 'train', arcname='.')
    code, err = _run([str(train_like), str(tmp_path / 'train.tar'), '--model', 'astroformer_small',
                      '--num-classes', '10'], capsys)
    assert code == 2 and 'num_classes is 10' in err and '2 class folders' in err


def test_pretrained_path_without_pretrained_is_an_error(data: Path):
    """train.py passes pretrained=args.pretrained to create_model, so --pretrained-path alone trains from scratch
    without a word: the check stops it; with --pretrained it passes."""
    from timm_astro.commands.run import check_args
    args = argparse.Namespace(model='astroformer_small', data=str(data), data_dir=None, dataset='',
                              train_split='train', val_split='validation', class_map='', num_classes=None,
                              pretrained=False, pretrained_path='gz2/model_best.pth.tar')
    errors, _ = check_args(args)
    assert errors == ['--pretrained-path gz2/model_best.pth.tar is read only with --pretrained (pretrained: true in '
                      'a config); without it the script trains from scratch.']
    args.pretrained = True
    assert check_args(args)[0] == []

