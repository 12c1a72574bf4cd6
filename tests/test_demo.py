"""`timm-astro demo` end to end at a tiny size: outputs, the reload check, refusing to overwrite."""
import importlib.util
import json

import pytest
from PIL import Image

from timm_astro.data.synthetic_galaxies import LABEL_NAMES
import timm_astro.commands.demo as demo
from timm_astro.commands.demo import main
from timm_astro.recipes import LOWDATA_GALAXY_RECIPE

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
    # the evaluation timm-astro evaluate would write, on the validation split, plain and with D4
    report = json.loads((demo_dir / 'evaluation/metrics.json').read_text())
    assert set(report['metrics']) == {'plain', 'tta_d4'} and report['num_images'] == 12
    assert report['label_names'] == list(LABEL_NAMES)
    assert report['metrics']['plain']['top1'] == pytest.approx(summary['validation_top1'])
    assert report['metrics']['tta_d4']['top1'] == pytest.approx(summary['validation_top1_d4'])
    for name in ('confusion_matrix.png', 'reliability.png'):
        assert (demo_dir / 'evaluation' / name).is_file() == HAS_MATPLOTLIB
    assert summary['recipe']['mixup'] == LOWDATA_GALAXY_RECIPE['mixup'] and summary['recipe']['cutmix'] == 0.0
    kernels = sorted((demo_dir / 'kernel').glob('*.png')) if HAS_MATPLOTLIB else []
    assert len(kernels) == (1 if HAS_MATPLOTLIB else 0)  # astroformer_small has one relative attention module


def test_contact_sheet_shows_every_class(demo_dir):
    with Image.open(demo_dir / 'contact_sheet.png') as sheet:
        assert sheet.format == 'PNG' and sheet.mode == 'RGB'
        assert sheet.height >= 6 * 16 and sheet.width > sheet.height  # one row per class, labels on the left


def test_refuses_a_non_empty_output_unless_told(demo_dir, capsys):
    before = (demo_dir / 'model/model.safetensors').read_bytes()
    assert main(['--output', str(demo_dir)] + TINY) == 2
    assert 'is not empty; pass --overwrite' in capsys.readouterr().err
    assert (demo_dir / 'model/model.safetensors').read_bytes() == before  # nothing was touched


def test_overwrite_replaces_an_earlier_demo_but_never_a_folder_that_is_not_ours(tmp_path, capsys):
    out = tmp_path / 'run'
    out.mkdir()
    (out / 'my_notes.txt').write_text('keep me')
    assert main(['--output', str(out), '--overwrite'] + TINY) == 2
    assert 'not an earlier output' in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ['my_notes.txt'], 'nothing of ours was written into it'
    fresh = tmp_path / 'fresh'
    assert main(['--output', str(fresh)] + TINY) == 0
    (fresh / 'model' / 'stale.bin').write_bytes(b'old')
    assert main(['--output', str(fresh), '--overwrite'] + TINY) == 0
    assert not (fresh / 'model' / 'stale.bin').exists() and (fresh / 'model' / 'config.json').is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith('.')], 'no partial or old copy left behind'


@pytest.mark.parametrize('args, message', [
    (['--model', 'astroformer_tiny'], "unknown model 'astroformer_tiny'"),
    (['--epochs', '0'], '--epochs must be at least 1'),
    (['--images-per-class', '0'], '--images-per-class must be at least 1'),
    (['--image-size', '8'], '--image-size must be in [16, 512]'),
    (['--lr', 'nan'], '--lr must be a finite number above 0, got nan'),
    (['--lr', '-1'], '--lr must be a finite number above 0, got -1.0'),
    (['--drop-path', '1.5'], '--drop-path must be in [0, 1), got 1.5'),
    (['--workers', '-1'], '--workers must be at least 0, got -1'),
    (['--threads', '0'], '--threads must be at least 1, got 0'),
    (['--images-per-class', '5'], '--batch-size 32 is more than the 30 training images'),
    (['--model', 'astroformer_0'], '--model astroformer_0 cannot run at --image-size 16: astroformer_0 runs on inputs'),
])
def test_bad_options(tmp_path, capsys, args, message):
    assert main(['--output', str(tmp_path / 'x')] + args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1, err  # one line, naming the option and its value
    assert list(tmp_path.iterdir()) == [], 'checked before any work: nothing written'


@pytest.mark.parametrize('args, message', [
    (['--batch-size', '1', '--images-per-class', '2'], '--batch-size must be even, got 1: the demo trains with Mixup'),
    (['--batch-size', '7'], '--batch-size must be even, got 7'),
])
def test_odd_batch_is_refused_when_the_recipe_mixes(tmp_path, capsys, monkeypatch, args, message):
    """Mixup pairs images: with it on, an odd batch is one line before any work; with it off (the tuned low-data
    recipe), an odd batch passes the checks."""
    monkeypatch.setattr(demo, 'LOWDATA_GALAXY_RECIPE', {**LOWDATA_GALAXY_RECIPE, 'mixup': 0.8})
    assert main(['--output', str(tmp_path / 'x')] + args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count('\n') == 1, err
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(demo, 'LOWDATA_GALAXY_RECIPE', {**LOWDATA_GALAXY_RECIPE, 'mixup': 0.0})
    recipe = demo._check(demo._parse(['--output', str(tmp_path / 'x')] + args))
    assert recipe['batch_size'] % 2 == 1


@pytest.mark.parametrize('where', ['parent is a file', 'unwritable'])
def test_output_that_cannot_be_created(tmp_path, capsys, monkeypatch, where):
    if where == 'parent is a file':
        (tmp_path / 'afile').write_text('x')
        out, expected = tmp_path / 'afile' / 'sub', 'is a file, not a folder'
    else:
        import os
        real_access = os.access
        monkeypatch.setattr(os, 'access', lambda p, mode, **k: False if str(p) == str(tmp_path) else
                            real_access(p, mode, **k))
        out, expected = tmp_path / 'demo', 'permission denied'
    assert main(['--output', str(out)] + TINY) == 2
    err = capsys.readouterr().err
    assert expected in err and 'Traceback' not in err


def test_output_that_is_a_file(tmp_path, capsys):
    (tmp_path / 'file').write_text('x')
    assert main(['--output', str(tmp_path / 'file')] + TINY) == 2
    assert 'exists and is a file, not a folder' in capsys.readouterr().err


def test_same_seed_same_figures_and_weights(demo_dir, tmp_path):
    """Issue 29: two runs with the same --seed in one process (so the global RNG state differs between them) print the
    same figures and train the same weights: data, model init, batch order and dropout all follow --seed."""
    import torch
    torch.manual_seed(12345)  # whatever ran before must not matter
    again = tmp_path / 'again'
    assert main(['--output', str(again)] + TINY) == 0
    first, second = (json.loads((d / 'summary.json').read_text()) for d in (demo_dir, again))
    for key in ('validation_top1', 'validation_top1_d4', 'history'):
        assert _without_times(first[key]) == _without_times(second[key]), key
    assert (demo_dir / 'model/model.safetensors').read_bytes() == (again / 'model/model.safetensors').read_bytes()


def _without_times(value):
    """The figures of a history (losses, accuracy), not its clock readings."""
    figures = ('epoch', 'train_loss', 'lr', 'val_loss', 'val_top1')
    return [{k: h.get(k) for k in figures} for h in value] if isinstance(value, list) else value
