"""End to end with timm's real train.py (and validate.py beside it), on CPU, when TIMM_TRAIN_SCRIPT points to one.

timm's scripts are not in the timm wheel, so these tests are opt-in::

    git clone --branch v$(python -c "import timm; print(timm.__version__)") \
        https://github.com/huggingface/pytorch-image-models
    TIMM_TRAIN_SCRIPT=pytorch-image-models/train.py python -m pytest tests/test_train_script.py

Each run is one epoch on a few tiny images (a minute or two on a laptop CPU). The recipes enable AMP, which on CPU
is slower than float32 and cannot be switched off from the command line (``--amp`` is a store_true flag), so the
config runs use a copy of the recipe with ``amp: false``.
"""
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import List

import numpy as np
import pytest
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = os.environ.get('TIMM_TRAIN_SCRIPT', '')
TIMEOUT_S = 900

pytestmark = pytest.mark.skipif(
    not TRAIN_SCRIPT or not os.path.isfile(TRAIN_SCRIPT),
    reason=('TIMM_TRAIN_SCRIPT not set: set it to pytorch-image-models/train.py to run train.py end to end'
            if not TRAIN_SCRIPT else f'TIMM_TRAIN_SCRIPT={TRAIN_SCRIPT!r} is not a file'))


def _random_folder(root: Path, classes: List[str], size: int, n_train: int = 1, n_val: int = 1) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (('train', n_train), ('validation', n_val)):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                pixels = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f'{i}.png')
    return root


def _run(args: List[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable] + args, cwd=str(cwd), capture_output=True, text=True, timeout=TIMEOUT_S)


def _cpu_config(name: str, tmp_path: Path, **overrides) -> Path:
    """A copy of train_configs/NAME.yaml with AMP off (CPU) and the given keys replaced."""
    cfg = yaml.safe_load((ROOT / 'train_configs' / f'{name}.yaml').read_text())
    cfg.update(amp=False, **overrides)
    path = tmp_path / f'{name}_cpu.yaml'
    path.write_text(yaml.safe_dump(cfg))
    return path


TINY = ['--device', 'cpu', '--epochs', '1', '--warmup-epochs', '0', '--workers', '0', '--checkpoint-hist', '1']


def test_options_data_matches_this_train_py():
    """Every key our recipes use is an option of this train.py (tests/data/train_py_options.txt may be older)."""
    namespace = runpy.run_path(TRAIN_SCRIPT, run_name='__timm_astro_test__')
    dests = {a.dest for a in namespace['parser']._actions}
    from timm_astro.commands.run import EXTRA_CONFIG_KEYS
    for path in sorted((ROOT / 'train_configs').glob('*.yaml')):
        unknown = set(yaml.safe_load(path.read_text())) - dests - EXTRA_CONFIG_KEYS
        assert not unknown, f'{path.name}: {TRAIN_SCRIPT} has no option {sorted(unknown)}'
    listed = {line.strip() for line in (ROOT / 'tests/data/train_py_options.txt').read_text().splitlines()
              if line.strip() and not line.startswith('#')}
    missing = listed - dests
    assert not missing, f'options listed in train_py_options.txt but gone from this train.py: {sorted(missing)}'


def test_astroformer_base_mixup_no_cutmix_then_validate(tmp_path: Path):
    """Unchanged train.py with --device-modules, the paper's mixup-without-CutMix, then validate.py on the result."""
    from timm_astro.data.synthetic_galaxies import write_image_folder
    data = tmp_path / 'galaxies'
    write_image_folder(data, 4, num_val_per_class=2, image_size=32)
    num_classes = len([d for d in (data / 'train').iterdir() if d.is_dir()])
    proc = _run([TRAIN_SCRIPT, str(data), '--device-modules', 'timm_astro', '--model', 'astroformer_base',
                 '--mixup', '0.8', '--cutmix', '0', '--num-classes', str(num_classes), '--batch-size', '8',
                 '--output', str(tmp_path / 'out'), '--experiment', 'base'] + TINY, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Model astroformer_base created' in proc.stderr + proc.stdout
    run_dir = tmp_path / 'out' / 'base'
    assert (run_dir / 'last.pth.tar').is_file() and (run_dir / 'summary.csv').is_file()
    args = yaml.safe_load((run_dir / 'args.yaml').read_text())
    assert (args['mixup'], args['cutmix'], args['model']) == (0.8, 0.0, 'astroformer_base')

    validate = Path(TRAIN_SCRIPT).with_name('validate.py')
    if not validate.is_file():
        pytest.skip(f'no validate.py beside {TRAIN_SCRIPT}')
    proc = _run(['-m', 'timm_astro', 'run', str(validate), str(data), '--split', 'validation', '--model',
                 'astroformer_base', '--num-classes', str(num_classes), '--checkpoint',
                 str(run_dir / 'last.pth.tar'), '--device', 'cpu', '--workers', '0', '--batch-size', '8'], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"top1"' in proc.stdout


def test_galaxy_config_through_timm_astro_run(tmp_path: Path):
    """A galaxy10 recipe (at 64 px, AMP off) through `python -m timm_astro run`; label_names reach args.yaml."""
    cfg = yaml.safe_load((ROOT / 'train_configs' / 'galaxy10_astroformer_3.yaml').read_text())
    data = _random_folder(tmp_path / 'g10', [f'{i}_class' for i in range(cfg['num_classes'])], 64)
    config = _cpu_config('galaxy10_astroformer_3', tmp_path)
    proc = _run(['-m', 'timm_astro', 'run', TRAIN_SCRIPT, str(data), '--config', str(config), '--img-size', '64',
                 '--input-size', '3', '64', '64', '--batch-size', '2', '--output', str(tmp_path / 'out'),
                 '--experiment', 'g10'] + TINY, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stderr + proc.stdout
    assert 'Model astroformer_3 created' in out and 'Best metric' in out
    args = yaml.safe_load((tmp_path / 'out' / 'g10' / 'args.yaml').read_text())
    assert args['label_names'] == cfg['label_names']  # train.py keeps config-only keys for `timm-astro export`
    assert args['device_modules'] == ['timm_astro']
    assert (args['mixup'], args['cutmix'], args['reprob'], args['drop_block']) == (0.8, 0.0, 0.0, None)


def test_small_config(tmp_path: Path):
    """The small-family CIFAR recipe at its native 32 px, read from an ImageFolder instead of torchvision."""
    data = _random_folder(tmp_path / 'c10', [f'{i}_class' for i in range(10)], 32, n_train=2)
    config = _cpu_config('cifar10_astroformer_small', tmp_path, dataset='', dataset_download=False)
    proc = _run([TRAIN_SCRIPT, str(data), '--config', str(config), '--batch-size', '4',
                 '--output', str(tmp_path / 'out'), '--experiment', 'c10'] + TINY, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'Model astroformer_small created' in proc.stderr + proc.stdout


def test_bad_input_is_stopped_with_a_message(tmp_path: Path):
    """timm-astro run checks the real train.py's own parse and stops before training on the common mistakes."""
    data = _random_folder(tmp_path / 'd', ['a', 'b'], 32)
    bad_model = tmp_path / 'bad_model.yaml'
    bad_model.write_text('device_modules: [timm_astro]\nmodel: astroformer_six\nnum_classes: 2\n')
    proc = _run(['-m', 'timm_astro', 'run', TRAIN_SCRIPT, str(data), '--config', str(bad_model)] + TINY, tmp_path)
    assert proc.returncode == 2 and "unknown model 'astroformer_six'" in proc.stderr

    proc = _run(['-m', 'timm_astro', 'run', TRAIN_SCRIPT, str(data), '--model', 'astroformer_small',
                 '--num-classes', '10'] + TINY, tmp_path)
    assert proc.returncode == 2 and 'num_classes is 10' in proc.stderr and '2 class folders' in proc.stderr

    flat = tmp_path / 'flat' / 'train'
    flat.mkdir(parents=True)
    Image.new('RGB', (32, 32)).save(flat / 'x.png')
    proc = _run(['-m', 'timm_astro', 'run', TRAIN_SCRIPT, str(flat.parent), '--model', 'astroformer_small'] + TINY,
                tmp_path)
    assert proc.returncode == 2 and 'holds images directly' in proc.stderr


def test_in_process_trainer_defaults_are_this_train_py_defaults():
    """timm_astro.training.TRAIN_DEFAULTS is a copy of train.py's defaults (train.py is not importable from the
    wheel): every value must equal what this train.py's parser gives when the option is not passed."""
    from timm_astro.training import TRAIN_DEFAULTS
    parser = runpy.run_path(TRAIN_SCRIPT, run_name='timm_astro_test')['parser']
    defaults = {action.dest: action.default for action in parser._actions}
    differ = {k: (v, defaults.get(k, '<no such option>')) for k, v in TRAIN_DEFAULTS.items() if defaults.get(k) != v}
    assert not differ, f'TRAIN_DEFAULTS (ours, train.py): {differ}'
