"""The train_configs/*.yaml recipes do what they claim when train.py runs them, checked through timm itself.

train.py hands a --config YAML to ``parser.set_defaults``, which accepts any key and skips argparse's type
conversion, so a misspelt key or a string where a number belongs is silently ignored or passed on. Keys are checked
against tests/data/train_py_options.txt (the dest names of the real train.py); the rest builds what train.py builds
from the recipe (the model, timm's Mixup, timm's training transform, the learning rate) and checks its behaviour,
rather than restating the values.
"""
import importlib
import math
import re
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
import yaml

import timm
import timm_astro  # noqa: F401  (registers the models)
from timm.data import Mixup, create_transform
from timm.data.auto_augment import rand_augment_transform
from timm.data.random_erasing import RandomErasing
from timm_astro.commands.run import EXTRA_CONFIG_KEYS
from timm_astro.data.galaxy10 import GALAXY10_DECALS_CLASSES
from timm_astro.data.splits import SPLITS

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / 'train_configs'
OPTIONS_FILE = Path(__file__).resolve().parent / 'data' / 'train_py_options.txt'
CONFIGS = sorted(CONFIG_DIR.glob('*.yaml'))
GALAXY_CONFIGS = [p for p in CONFIGS if p.name.startswith('galaxy10_')]
# train.py's defaults for the keys below, where a recipe leaves them out
TRAIN_PY_DEFAULTS = dict(mixup=0.0, cutmix=0.0, cutmix_minmax=None, mixup_prob=1.0, mixup_switch_prob=0.5,
                         mixup_mode='batch', smoothing=0.1, reprob=0.0, remode='pixel', recount=1,
                         grad_accum_steps=1, lr_base_size=256, lr_base_scale='', in_chans=None, drop=0.0)


def _options() -> List[str]:
    lines = OPTIONS_FILE.read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith('#')]


def _load(path: Path) -> Dict[str, Any]:
    with open(path) as f:
        cfg = yaml.safe_load(f)
    assert isinstance(cfg, dict), f'{path.name} is not a mapping'
    return {**TRAIN_PY_DEFAULTS, **cfg}


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
    assert set(TRAIN_PY_DEFAULTS) <= set(options)


def test_extra_keys_are_documented_set():
    # keys train.py ignores but timm_astro reads back from args.yaml; keep this set small and deliberate
    assert EXTRA_CONFIG_KEYS == {'label_names'}
    assert not EXTRA_CONFIG_KEYS & set(_options())


def test_expected_recipes_exist():
    names = {p.stem for p in CONFIGS}
    assert {f'galaxy10_astroformer_{i}' for i in (3, 4, 5)} <= names
    for prefix in ('cifar100_', 'cifar10_', 'tiny_imagenet_'):
        assert any(n.startswith(prefix) for n in names), f'no {prefix}* recipe'
    assert any(_load(p)['model'] in ('astroformer_small', 'astroformer_base', 'astroformer_large') for p in CONFIGS)


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_a_pretrained_path_is_loaded(path: Path):
    """train.py passes pretrained=args.pretrained to create_model: a pretrained_path without pretrained: true is
    ignored, and the run silently trains from scratch."""
    cfg = yaml.safe_load(path.read_text())
    if cfg.get('pretrained_path'):
        assert cfg.get('pretrained') is True, f'{path.name}: pretrained_path needs pretrained: true'


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_keys_are_train_py_options(path: Path):
    allowed = set(_options()) | EXTRA_CONFIG_KEYS
    unknown = sorted(set(yaml.safe_load(path.read_text())) - allowed)
    assert not unknown, f'{path.name}: train.py would silently ignore {unknown}'


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_values_have_yaml_types(path: Path):
    # set_defaults skips argparse's type conversion: '2e-5' (YAML reads it as a string) would reach the optimizer
    cfg = yaml.safe_load(path.read_text())
    for key, value in cfg.items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str):
                with pytest.raises(ValueError):
                    float(v)
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
def test_unchanged_train_py_builds_the_model_and_runs_it_at_the_recipe_size(path: Path):
    cfg = _load(path)
    for module in cfg['device_modules']:  # what train.py imports right after parsing its arguments
        importlib.import_module(module)
    assert timm.is_model(cfg['model']), f"{cfg['device_modules']} does not register {cfg['model']}"
    size = cfg['input_size']
    assert size[1] == size[2] == cfg['img_size'] and size[0] == (cfg['in_chans'] or 3)
    # the kwargs train.py passes to create_model (img_size is never passed; DropBlock is refused by the models)
    with torch.device('meta'):
        model = timm.create_model(
            cfg['model'], in_chans=size[0], num_classes=cfg['num_classes'], drop_rate=cfg['drop'],
            drop_path_rate=cfg.get('drop_path'), drop_block_rate=cfg.get('drop_block'), **cfg.get('model_kwargs', {}))
        logits = model(torch.empty(2, *size))
    assert logits.shape == (2, cfg['num_classes'])


def _tuned_off(path: Path, key: str) -> bool:
    """The recipe turns ``key`` off and says the validation search chose that (a ``[tuned]`` comment)."""
    line = next(line for line in path.read_text().splitlines() if line.startswith(f'{key}:'))
    return '[tuned]' in line


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_randaugment_string(path: Path):
    aa = _load(path)['aa']
    if aa is None:
        assert _tuned_off(path, 'aa'), f'{path.name}: the paper uses RandAugment; turning it off needs a [tuned] reason'
        return
    assert isinstance(aa, str) and aa.startswith('rand-'), 'the paper uses RandAugment'
    # Pillow 13 + timm's increasing posterize ('inc1') crashes on ~1 image in 600
    assert 'inc1' not in aa.split('-')
    rand_augment_transform(aa, {'translate_const': 100, 'img_mean': (128, 128, 128)})  # timm parses it


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_mixup_never_pastes_a_patch(path: Path):
    """timm's Mixup as train.py builds it from the recipe blends whole images: no CutMix box, ever."""
    cfg = _load(path)
    mixup = Mixup(mixup_alpha=cfg['mixup'], cutmix_alpha=cfg['cutmix'], cutmix_minmax=cfg['cutmix_minmax'],
                  prob=cfg['mixup_prob'], switch_prob=cfg['mixup_switch_prob'], mode=cfg['mixup_mode'],
                  label_smoothing=cfg['smoothing'], num_classes=cfg['num_classes'])
    if cfg['mixup'] == 0:
        assert cfg['cutmix'] == 0 and cfg['cutmix_minmax'] is None
        assert _tuned_off(path, 'mixup'), f'{path.name}: the paper uses Mixup; turning it off needs a [tuned] reason'
        return
    assert mixup.mixup_enabled, f'{path.name}: Mixup is off'
    torch.manual_seed(0)
    for _ in range(40):
        x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 3, 16, 16).clone()
        mixed, _ = mixup(x, torch.arange(4) % cfg['num_classes'])
        spread = mixed.flatten(1).max(dim=1).values - mixed.flatten(1).min(dim=1).values
        assert torch.all(spread < 1e-5), f'{path.name}: a mixed image is not uniform: CutMix pasted a patch'


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_training_transform_has_no_random_erasing(path: Path):
    cfg = _load(path)
    transform = create_transform(cfg['input_size'], is_training=True, auto_augment=cfg['aa'], re_prob=cfg['reprob'],
                                 re_mode=cfg['remode'], re_count=cfg['recount'])
    assert not any(isinstance(t, RandomErasing) for t in transform.transforms), \
        f'{path.name}: random erasing (Cutout) occludes the object, which can change its label'


def _lr_claims(path: Path) -> List[tuple]:
    """The learning rates a recipe's comments quote: (value, GPUs, per-GPU batch or None for the recipe's)."""
    claims = []
    pattern = r'(\d\.\de-\d+) on (?:the official (\d+) GPUs x (\d+)|one GPU)'
    for lr, gpus, batch in re.findall(pattern, path.read_text()):
        claims.append((float(lr), int(gpus or 1), int(batch) if batch else None))
    return claims


@pytest.mark.parametrize('path', CONFIGS, ids=_ids(CONFIGS))
def test_quoted_learning_rate_is_what_train_py_computes(path: Path):
    """train.py derives lr from lr_base: x global_batch / lr_base_size, square-rooted for Ada*/LAMB optimizers."""
    cfg = _load(path)
    assert 'lr' not in yaml.safe_load(path.read_text()), 'lr_base is used so that timm rescales the rate'
    claims = _lr_claims(path)
    assert claims, f'{path.name}: say which learning rate train.py derives from lr_base'
    scale = cfg['lr_base_scale'] or ('sqrt' if any(o in cfg['opt'].lower() for o in ('ada', 'lamb')) else 'linear')
    for quoted, gpus, batch in claims:
        assert batch in (None, cfg['batch_size']), f'{path.name}: quotes a batch of {batch}, not the recipe\'s'
        ratio = gpus * (batch or cfg['batch_size']) * cfg['grad_accum_steps'] / cfg['lr_base_size']
        lr = cfg['lr_base'] * (math.sqrt(ratio) if scale == 'sqrt' else ratio)
        assert f'{lr:.1e}' == f'{quoted:.1e}', f'{path.name}: quotes {quoted:g} on {gpus} GPU(s), train.py: {lr:.2g}'


@pytest.mark.parametrize('path', GALAXY_CONFIGS, ids=_ids(GALAXY_CONFIGS))
def test_galaxy_recipe_matches_the_prepared_dataset(path: Path):
    cfg = _load(path)
    assert cfg['label_names'] == list(GALAXY10_DECALS_CLASSES), \
        f'{path.name}: label_names must be timm_astro.data.galaxy10.GALAXY10_DECALS_CLASSES, in label order'
    assert cfg['num_classes'] == len(GALAXY10_DECALS_CLASSES)
    assert {cfg['train_split'], cfg['val_split']} <= set(SPLITS), 'splits that `galaxy10 prepare` writes'
    assert cfg['drop_path'] > 0, 'the paper uses stochastic depth'


def test_galaxy_recipes_differ_only_in_model_and_drop_path():
    cfgs = [_load(p) for p in GALAXY_CONFIGS]
    assert len(cfgs) == 3
    strip = [{k: v for k, v in c.items() if k not in ('model', 'drop_path')} for c in cfgs]
    assert strip[0] == strip[1] == strip[2]
    assert [c['drop_path'] for c in cfgs] == sorted(c['drop_path'] for c in cfgs), 'larger models, more drop path'


def test_lowdata_recipe_is_the_one_the_benchmarks_train_with():
    """timm_astro.recipes.LOWDATA_GALAXY_RECIPE (the demo, benchmarks/lowdata.py) == its train_configs/ file."""
    from timm_astro.recipes import LOWDATA_GALAXY_CONFIG, LOWDATA_GALAXY_RECIPE
    path = CONFIG_DIR / LOWDATA_GALAXY_CONFIG
    cfg = _load(path)
    ratio = cfg['batch_size'] / cfg['lr_base_size']
    derived_lr = cfg['lr_base'] * (math.sqrt(ratio) if 'ada' in cfg['opt'] else ratio)
    for key, value in LOWDATA_GALAXY_RECIPE.items():
        if key == 'lr':
            assert f'{derived_lr:.2e}' == f'{value:.2e}', f'train.py derives lr {derived_lr:.3g}, the recipe uses {value}'
        else:
            assert cfg[key] == value, f'{path.name}: {key} is {cfg[key]!r}, LOWDATA_GALAXY_RECIPE has {value!r}'
