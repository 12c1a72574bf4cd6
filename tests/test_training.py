"""The in-process trainer: train.py's defaults and lr rule, recipe keys it refuses, a tiny run that learns."""
import numpy as np
import pytest
import torch
from PIL import Image

import timm
from timm.data import create_dataset
from timm_astro.errors import UserError
from timm_astro.training import TRAIN_DEFAULTS, train_args, train_classifier


def test_defaults_are_train_py_defaults_and_lr_follows_its_rule():
    args = train_args()
    assert (args.opt, args.batch_size, args.epochs, args.weight_decay, args.smoothing) == ('sgd', 128, 300, 2e-5, 0.1)
    assert args.lr == pytest.approx(0.1 * 128 / 256), 'sgd: linear scaling of lr_base by batch / 256'
    adamw = train_args({'opt': 'adamw', 'lr_base': 2e-5, 'batch_size': 64})
    assert adamw.lr == pytest.approx(2e-5 * (64 / 256) ** 0.5), 'adaptive optimizers: sqrt scaling'
    assert train_args({'lr': 3e-3, 'lr_base': 1.0}).lr == 3e-3, 'an explicit lr wins'


def test_recipes_in_train_configs_are_accepted():
    import yaml
    from pathlib import Path
    for path in sorted((Path(__file__).parents[1] / 'train_configs').glob('*.yaml')):
        train_args(yaml.safe_load(path.read_text()))  # no key the trainer would silently ignore


@pytest.mark.parametrize('recipe, expected', [
    ({'jsd_loss': True}, 'not implemented by timm_astro.training: jsd_loss'),
    ({'grad_accum_steps': 4}, 'grad_accum_steps must be 1 here'),
    ({'lr': float('nan')}, 'lr must be a finite number above 0'),
    ({'lr': -1.0}, 'lr must be a finite number above 0'),
    ({'drop_path': 1.5}, r'drop_path must be in \[0, 1\)'),
    ({'batch_size': 0}, 'batch_size must be a whole number of at least 1'),
    ({'batch_size': 7, 'mixup': 0.8}, 'batch_size must be even when mixup'),
])
def test_bad_recipes_are_refused_with_the_key(recipe, expected):
    with pytest.raises(UserError, match=expected):
        train_args(recipe)


@pytest.fixture(scope='module')
def two_class_folder(tmp_path_factory):
    """Bright centres against dark centres: learnable in a few steps."""
    root = tmp_path_factory.mktemp('tiny')
    rng = np.random.default_rng(0)
    for label in (0, 1):
        folder = root / 'train' / f'{label}_class'
        folder.mkdir(parents=True)
        for i in range(16):
            pixels = rng.integers(0, 60, (16, 16, 3)).astype(np.uint8)
            if label:
                pixels[4:12, 4:12] = 230
            Image.fromarray(pixels).save(folder / f'{i}.png')
    return root


def test_a_tiny_run_learns_and_reports_its_history(two_class_folder):
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=2)
    dataset = create_dataset('', root=str(two_class_folder), split='train', is_training=True)
    args = train_args({'opt': 'adamw', 'lr': 3e-3, 'weight_decay': 0.0, 'epochs': 6, 'warmup_epochs': 0,
                       'batch_size': 8, 'mixup': 0.2, 'smoothing': 0.0, 'color_jitter': 0.0, 'scale': [0.8, 1.0],
                       'model_ema': True, 'model_ema_decay': 0.5, 'seed': 0})
    seen = []
    result = train_classifier(model, dataset, args, data_config={'input_size': (3, 16, 16), 'mean': (0.5,) * 3,
                                                                 'std': (0.5,) * 3},
                              num_classes=2, on_epoch_end=lambda e, m, s: seen.append(e) or {'checked': e})
    assert seen == list(range(1, 7)) and [h['checked'] for h in result.history] == seen
    assert result.steps == 6 * 4 and result.cpu_seconds > 0
    assert result.history[-1]['train_loss'] < result.history[0]['train_loss']
    assert result.final_model is result.ema and result.ema is not model
    assert result.history[-1]['lr'] < args.lr, 'the cosine schedule ran'


def test_too_few_images_for_one_batch_is_a_clear_error(two_class_folder):
    model = timm.create_model('resnet18', num_classes=2)
    dataset = create_dataset('', root=str(two_class_folder), split='train', is_training=True)
    with pytest.raises(UserError, match='32 training images make no batch of 64'):
        train_classifier(model, dataset, train_args({'batch_size': 64, 'epochs': 1}),
                         data_config={'input_size': (3, 16, 16), 'mean': (0.5,) * 3, 'std': (0.5,) * 3},
                         num_classes=2)


def test_every_default_key_is_a_train_py_option():
    from pathlib import Path
    options = set((Path(__file__).parent / 'data' / 'train_py_options.txt').read_text().split())
    assert set(TRAIN_DEFAULTS) <= options, sorted(set(TRAIN_DEFAULTS) - options)


def test_cpu_seconds_go_on_from_where_a_resumed_run_stopped(two_class_folder, tmp_path):
    """A run stopped after 2 epochs and resumed for its third: the history's cpu_s counts on, never restarts at 0."""
    def run(**kwargs):
        model = timm.create_model('test_resnet', num_classes=2)
        dataset = create_dataset('', root=str(two_class_folder), split='train', is_training=True)
        args = train_args({'opt': 'adamw', 'lr': 1e-3, 'epochs': 3, 'warmup_epochs': 0, 'batch_size': 16,
                           'smoothing': 0.0, 'seed': 0})
        return train_classifier(model, dataset, args, data_config={'input_size': (3, 16, 16), 'mean': (0.5,) * 3,
                                                                   'std': (0.5,) * 3},
                                num_classes=2, checkpoint=tmp_path / 'last.pth.tar', **kwargs)

    assert len(run(should_stop=lambda history: len(history) == 2).history) == 2
    history = run(resume=tmp_path / 'last.pth.tar').history
    assert [h['epoch'] for h in history] == [1, 2, 3]
    cpu = [h['cpu_s'] for h in history]
    assert cpu == sorted(cpu) and cpu[0] > 0, cpu
