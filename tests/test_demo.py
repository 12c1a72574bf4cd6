"""`timm-astro demo` end to end at a tiny size: outputs, the reload check, refusing to overwrite."""
import json

import pytest

from timm_astro.demo import main

TINY = ['--epochs', '2', '--images-per-class', '4', '--val-per-class', '2', '--batch-size', '8', '--image-size', '16']


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo') / 'run'
    assert main(['--output', str(out)] + TINY) == 0
    return out


def test_writes_everything_and_reloads_identically(demo_dir):
    for name in ('contact_sheet.png', 'training_curves.png', 'summary.json', 'model/config.json',
                 'model/model.safetensors', 'model/README.md'):
        assert (demo_dir / name).is_file(), name
    summary = json.loads((demo_dir / 'summary.json').read_text())
    assert summary['reload_identical'] is True
    assert len(summary['history']) == 2 and summary['train_images'] == 24 and summary['val_images'] == 12
    config = json.loads((demo_dir / 'model/config.json').read_text())
    assert config['architecture'] == 'astroformer_small' and config['num_classes'] == 6
    assert len(config['label_names']) == 6 and config['pretrained_cfg']['input_size'] == [3, 16, 16]


def test_refuses_a_non_empty_output_unless_told(demo_dir, capsys):
    assert main(['--output', str(demo_dir)] + TINY) == 2
    assert 'is not empty; pass --overwrite' in capsys.readouterr().err
    assert (demo_dir / 'model/config.json').is_file()  # nothing was touched


@pytest.mark.parametrize('args, message', [
    (['--model', 'astroformer_tiny'], "unknown model 'astroformer_tiny'"),
    (['--epochs', '0'], '--epochs must be at least 1'),
])
def test_bad_options(tmp_path, capsys, args, message):
    assert main(['--output', str(tmp_path / 'x')] + args) == 2
    assert message in capsys.readouterr().err
