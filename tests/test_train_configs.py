"""The train_configs/*.yaml recipes: every key is a real train.py option, and the recipes say what the paper says.

train.py hands a --config YAML to ``parser.set_defaults``, which accepts any key and skips argparse's type
conversion, so a misspelt key or a string where a number belongs is silently ignored or passed on. These tests
are the only guard: keys are checked against tests/data/train_py_options.txt, the dest names read once from the
real train.py.
"""
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import yaml

import timm
import timm_astro  # noqa: F401  (registers the models)
from timm.data.auto_augment import rand_augment_transform
from timm_astro.commands.run import EXTRA_CONFIG_KEYS

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / 'train_configs'
OPTIONS_FILE = Path(__file__).resolve().parent / 'data' / 'train_py_options.txt'
CONFIGS = sorted(CONFIG_DIR.glob('*.yaml'))
GALAXY_CONFIGS = [p for p in CONFIGS if p.name.startswith('galaxy10_')]
PAPER_FAMILY = {f'astroformer_{i}' for i in range(6)}
SMALL_FAMILY = {'astroformer_small', 'astroformer_base', 'astroformer_large'}
DECALS_LABELS = [
    'Disturbed Galaxies', 'Merging Galaxies', 'Round Smooth Galaxies', 'In-between Round Smooth Galaxies',
    'Cigar Shaped Smooth Galaxies', 'Barred Spiral Galaxies', 'Unbarred Tight Spiral Galaxies',
    'Unbarred Loose Spiral Galaxies', 'Edge-on Galaxies without Bulge', 'Edge-on Galaxies with Bulge',
]


def _options() -> List[str]:
    lines = OPTIONS_FILE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith('#')]


def _load(path: Path) -> Dict[str, Any]:
    with open(path) as f:
        cfg = yaml.safe_load(f)
    assert isinstance(cfg, dict), f'{path.name} is not a mapping'
    return cfg


def _ids(paths: List[Path]) -> List[str]:
    return [p.stem for p in paths]


def test_option_list_is_sane():
    options = _options()
    assert len(options) == len(set(options)), 'duplicate option names in train_py_options.txt'
    header = '\n'.join(line for line in OPTIONS_FILE.read_text().splitlines() if line.startswith('#'))
    assert 'train.py' in header and re.search(r'\b[0-9a-f]{40}\b', header), 'say which train.py it came from'
    # a few options the recipes rely on, and names that are NOT options (the CLI spelling, an option train.py dropped)
    for name in ('model', 'device_modules', 'drop_path', 'cutmix_minmax', 'model_ema_decay', 'aa', 'lr_base'):
        assert name in options
    for name in ('drop-path', 'amp_impl', 'config', 'help'):
        assert name not in options


def test_extra_keys_are_documented_set():
    # keys train.py ignores but timm_astro reads back from args.yaml; keep this set small and deliberate
    assert EXTRA_CONFIG_KEYS == {'label_names'}
    assert not EXTRA_CONFIG_KEYS & set(_options())


def test_expected_recipes_exist():
    names = {p.stem for p in CONFIGS}
    assert {f'galaxy10_astroformer_{i}' for i in (3, 4, 5)} <= names
    for prefix in ('cifar100_', 'cifar10_', 'tiny_imagenet_'):
        assert any(n.startswith(prefix) for n in names), f'no {prefix}* recipe'
    models = {_load(p)['model'] for p in CONFIGS}
    assert models & SMALL_FAMILY, 'no recipe for the small family'


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_keys_are_train_py_options(path: Path):
    allowed = set(_options()) | EXTRA_CONFIG_KEYS
    unknown = sorted(set(_load(path)) - allowed)
    assert not unknown, f'{path.name}: train.py would silently ignore {unknown}'


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_values_have_yaml_types(path: Path):
    # set_defaults skips argparse's type conversion: '2e-5' (YAML reads it as a string) would reach the optimizer
    for key, value in _load(path).items():
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, str):
                with pytest.raises(ValueError):
                    float(v)
    cfg = _load(path)
    for key in ('input_size', 'scale', 'ratio', 'mean', 'std', 'device_modules', 'label_names'):
        if key in cfg:
            assert isinstance(cfg[key], list), f'{path.name}: {key} must be a list (train.py uses nargs)'


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_every_value_has_provenance(path: Path):
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r'^[a-z_]+:', line):
            assert '#' in line or (i > 0 and lines[i - 1].startswith('#')), \
                f'{path.name} line {i + 1} has no provenance comment: {line!r}'


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_common_settings(path: Path):
    cfg = _load(path)
    assert cfg['device_modules'] == ['timm_astro'], 'an unchanged train.py must import the plugin'
    assert timm.is_model(cfg['model']), f"{cfg['model']} is not registered by timm_astro"
    assert cfg['amp'] is True and 'amp_dtype' not in cfg, 'native AMP (float16 on CUDA) expected'
    assert cfg['opt'] == 'adamw' and cfg['sched'] == 'cosine'
    assert 'drop_block' not in cfg, 'Astroformer models reject DropBlock'
    assert cfg['cutmix'] == 0 and 'cutmix_minmax' not in cfg
    assert cfg['reprob'] == 0
    assert cfg['mixup'] > 0 and cfg['smoothing'] > 0
    assert 'lr' not in cfg, 'lr_base is used so that timm rescales the rate for the global batch size'
    assert isinstance(cfg['num_classes'], int) and cfg['num_classes'] > 1

    size = cfg['input_size']
    assert size[0] == cfg.get('in_chans', 3) == 3
    assert size[1] == size[2] == cfg['img_size']
    if cfg['model'] in PAPER_FAMILY:
        assert size[1] >= 64 and size[1] % 32 == 0, 'the paper family needs a multiple of 32, >= 64'
    else:
        assert cfg['model'] in SMALL_FAMILY and size[1] == 32


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_randaugment_string(path: Path):
    aa = _load(path)['aa']
    assert isinstance(aa, str) and aa.startswith('rand-'), 'the paper uses RandAugment'
    # Pillow 13 + timm's increasing posterize ('inc1') crashes on ~1 image in 600
    assert 'inc1' not in aa.split('-')
    rand_augment_transform(aa, {'translate_const': 100, 'img_mean': (128, 128, 128)})  # timm parses it


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_model_builds_with_train_py_kwargs(path: Path):
    cfg = _load(path)
    # the kwargs train.py passes to create_model (img_size is never passed); meta device: no memory, no compute
    with torch.device('meta'):
        model = timm.create_model(
            cfg['model'],
            in_chans=cfg.get('in_chans', 3),
            num_classes=cfg['num_classes'],
            drop_rate=cfg.get('drop', 0.0),
            drop_path_rate=cfg.get('drop_path'),
            drop_block_rate=cfg.get('drop_block'),
            **cfg.get('model_kwargs', {}),
        )
    assert model.num_classes == cfg['num_classes']


@pytest.mark.parametrize('path', GALAXY_CONFIGS, ids=_ids(GALAXY_CONFIGS))
def test_galaxy_recipe_is_the_papers(path: Path):
    cfg = _load(path)
    assert cfg['cutmix'] == 0 and 'cutmix_minmax' not in cfg, 'CutMix is off in the paper'
    assert cfg['reprob'] == 0, 'random erasing (Cutout) is off in the paper'
    assert 'drop_block' not in cfg, 'DropBlock is off in the paper'
    assert cfg['mixup'] == 0.8
    assert cfg['smoothing'] == 0.1
    assert isinstance(cfg['aa'], str) and cfg['aa'].startswith('rand-')
    assert cfg['drop_path'] > 0, 'the paper uses stochastic depth'
    assert cfg['weight_decay'] > 0
    assert cfg['epochs'] == 300 and cfg['warmup_epochs'] == 5
    assert cfg['lr_base'] == 2e-5 and cfg['warmup_lr'] == 1e-5 and cfg['drop'] == 0.1  # the official command
    assert cfg['input_size'] == [3, 256, 256]
    assert cfg['model'] in {'astroformer_3', 'astroformer_4', 'astroformer_5'}
    assert cfg['num_classes'] == 10
    assert (cfg['train_split'], cfg['val_split']) == ('train', 'validation'), 'the galaxy10 prepare layout'
    assert cfg['label_names'] == DECALS_LABELS


def test_galaxy_recipes_differ_only_in_model_and_drop_path():
    cfgs = [_load(p) for p in GALAXY_CONFIGS]
    assert len(cfgs) == 3
    strip = [{k: v for k, v in c.items() if k not in ('model', 'drop_path')} for c in cfgs]
    assert strip[0] == strip[1] == strip[2]
