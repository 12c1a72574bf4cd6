"""`timm-astro demo` end to end at a tiny size: outputs, the reload check, refusing to overwrite."""
import importlib.util
import json

import pytest
from PIL import Image

from timm_astro.data.synthetic_galaxies import LABEL_NAMES
from timm_astro.commands.demo import main

TINY = ['--epochs', '2', '--images-per-class', '4', '--val-per-class', '2', '--batch-size', '8', '--image-size', '16']
HAS_MATPLOTLIB = importlib.util.find_spec('matplotlib') is not None


@pytest.fixture(scope='module')
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('demo') / 'run'
    assert main(['--output', str(out)] + TINY) == 0
    return out


def test_writes_everything_and_reloads_identically(demo_dir):
    for name in ('contact_sheet.png', 'summary.json', 'model/config.json', 'model/model.safetensors', 'model/README.md'):
        assert (demo_dir / name).is_file(), name
    assert (demo_dir / 'training_curves.png').is_file() == HAS_MATPLOTLIB
    for split, count in (('train', 4), ('validation', 2)):
        assert len(list((demo_dir / 'data' / split).glob('*/*.png'))) == 6 * count
    summary = json.loads((demo_dir / 'summary.json').read_text())
    assert summary['reload_identical'] is True
    assert len(summary['history']) == 2 and summary['train_images'] == 24 and summary['val_images'] == 12
    assert 0.0 <= summary['validation_top1'] <= 100.0 and summary['chance'] == pytest.approx(100 / 6)
    config = json.loads((demo_dir / 'model/config.json').read_text())
    assert config['architecture'] == 'astroformer_small' and config['num_classes'] == 6
    assert config['label_names'] == list(LABEL_NAMES) and config['pretrained_cfg']['input_size'] == [3, 16, 16]


def test_contact_sheet_shows_every_class(demo_dir):
    with Image.open(demo_dir / 'contact_sheet.png') as sheet:
        assert sheet.format == 'PNG' and sheet.mode == 'RGB'
        assert sheet.height >= 6 * 16 and sheet.width > sheet.height  # one row per class, labels on the left


def test_refuses_a_non_empty_output_unless_told(demo_dir, capsys):
    before = (demo_dir / 'model/model.safetensors').read_bytes()
    assert main(['--output', str(demo_dir)] + TINY) == 2
    assert 'is not empty; pass --overwrite' in capsys.readouterr().err
    assert (demo_dir / 'model/model.safetensors').read_bytes() == before  # nothing was touched


def test_overwrite_replaces_only_the_demo_outputs(tmp_path):
    out = tmp_path / 'run'
    (out / 'model').mkdir(parents=True)
    (out / 'model' / 'stale.bin').write_bytes(b'old')
    (out / 'contact_sheet.png').write_bytes(b'not a png')
    (out / 'my_notes.txt').write_text('keep me')
    assert main(['--output', str(out), '--overwrite'] + TINY) == 0
    assert not (out / 'model' / 'stale.bin').exists() and (out / 'model' / 'config.json').is_file()
    assert Image.open(out / 'contact_sheet.png').format == 'PNG'
    assert (out / 'my_notes.txt').read_text() == 'keep me'


@pytest.mark.parametrize('args, message', [
    (['--model', 'astroformer_tiny'], "unknown model 'astroformer_tiny'"),
    (['--epochs', '0'], '--epochs must be at least 1'),
    (['--images-per-class', '0'], '--images-per-class must be at least 1'),
    (['--image-size', '8'], '--image-size must be in [16, 512]'),
])
def test_bad_options(tmp_path, capsys, args, message):
    assert main(['--output', str(tmp_path / 'x')] + args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / 'x').exists()


def test_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / 'file').write_text('x')
    assert main(['--output', str(tmp_path / 'file')] + TINY) == 2
    assert 'exists and is not a directory' in capsys.readouterr().err
