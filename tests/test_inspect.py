"""``timm-astro inspect`` and ``timm_astro.inspection``: the kernel and attention pictures, and what they show."""
import argparse
import json
import sys

import pytest
import torch
from PIL import Image

import timm
from timm_astro import cli
from timm_astro.errors import MissingDependency, UserError
from timm_astro.inspection import QUERY_POINTS, write_attention_pictures, write_kernel_pictures


def _png_size(path):
    with Image.open(path) as image:
        assert image.format == 'PNG'
        return image.size


@pytest.fixture()
def images(tmp_path):
    paths = []
    for i, colour in enumerate(['red', 'navy']):
        path = tmp_path / f'galaxy_{i}.png'
        Image.new('RGB', (40, 40), colour).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize('name, kwargs, modules', [
    ('astroformer_small', {}, ['stages.3.blocks.0.attn']),
    ('astroformer_small', dict(rel_pos_type='table'), ['stages.3.blocks.0.attn']),
    ('astroformer_0', {}, ['stages.3.blocks.0.attn', 'stages.3.blocks.1.attn']),
])
def test_kernel_pictures_one_per_attention_module(tmp_path, name, kwargs, modules):
    model = timm.create_model(name, num_classes=3, **kwargs)
    written = write_kernel_pictures(model, tmp_path / 'kernels')
    assert [p.name for p in written] == [f'kernel_{m}.png' for m in modules]
    assert all(_png_size(p)[0] > 200 for p in written)


def test_no_kernel_to_draw_is_said():
    model = timm.create_model('astroformer_small', rel_pos_type='none')
    with pytest.raises(UserError, match="no relative-position kernel to draw \\(rel_pos_type='none'\\)"):
        write_kernel_pictures(model, '/nonexistent/never-written')


def test_attention_probs_are_the_rows_the_forward_uses():
    """attention_probs for every query, applied to v and projected, is exactly the module's output."""
    torch.manual_seed(0)
    attn = timm.create_model('astroformer_small', rel_pos_type='table').stages[3].blocks[0].attn.eval()
    x = torch.randn(2, 256, 5, 6)
    with torch.no_grad():
        probs = attn.attention_probs(x, torch.arange(30))
        _, _, v = attn.qkv_heads(x)
        out = attn.proj((probs @ v).transpose(-1, -2).reshape(2, 256, 5, 6))
        torch.testing.assert_close(out, attn(x), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, attn.num_heads, 30))


def test_attention_pictures_one_per_image_and_module(tmp_path, images):
    model = timm.create_model('astroformer_small', num_classes=3)
    written = write_attention_pictures(model, images, tmp_path)
    assert [p.name for p in written] == [f'attention_{i:03d}_galaxy_{i}_stages.3.blocks.0.attn.png' for i in (0, 1)]
    width, height = _png_size(written[0])
    assert width > height > 100 and len(QUERY_POINTS) == 5  # 5 query rows, input + 8 head columns


def _state_dict_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model('astroformer_small', num_classes=4)
    path = tmp_path / 'weights.pth'
    torch.save(model.state_dict(), path)
    train_py = tmp_path / 'model_best.pth.tar'
    torch.save({'state_dict': model.state_dict(), 'epoch': 1, 'arch': 'astroformer_small',
                'args': argparse.Namespace(model='astroformer_small', num_classes=4)}, train_py)
    return path, train_py


def test_command_writes_pictures_and_a_listing(tmp_path, images, capsys):
    weights, train_py = _state_dict_checkpoint(tmp_path)
    out = tmp_path / 'inspect'
    argv = ['inspect', 'astroformer_small', *map(str, images), '--checkpoint', str(weights), '--output', str(out)]
    assert cli.main(argv) == 0
    listing = json.loads((out / 'inspect.json').read_text())
    assert listing['kernels'] == ['kernels/kernel_stages.3.blocks.0.attn.png']
    assert len(listing['attention']) == 2 and listing['feature_size'] == [32, 32]
    assert all((out / p).is_file() for p in listing['kernels'] + listing['attention'])
    assert f'wrote {out}' in capsys.readouterr().out
    # a second run needs --overwrite; a train.py checkpoint alone names its architecture
    assert cli.main(['inspect', str(train_py), '--output', str(out)]) == 2
    assert 'pass --overwrite' in capsys.readouterr().err
    assert cli.main(['inspect', str(train_py), '--output', str(out), '--overwrite']) == 0
    assert json.loads((out / 'inspect.json').read_text())['attention'] == []


@pytest.mark.parametrize('argv_tail, message', [
    (['astroformer_small', 'missing.png'], 'missing.png: not found; expected image files'),
    (['not_a_model'], 'not_a_model'),
])
def test_command_errors_are_one_line(tmp_path, capsys, argv_tail, message):
    assert cli.main(['inspect', *argv_tail, '--output', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert err.startswith('timm-astro inspect: error: ') and message in err and err.count('\n') == 1
    assert not (tmp_path / 'out').exists()


@pytest.mark.parametrize('output, message', [
    ('afile/sub', '{tmp}/afile/sub: cannot be created, {tmp}/afile is a file, not a folder'),
    ('full', '{tmp}/full: folder is not empty; pass --overwrite'),
])
@pytest.mark.parametrize('model', ['astroformer_small', 'not_a_model', 'hf-hub:astro/never-downloaded'])
def test_bad_output_is_said_before_the_model_is_loaded(tmp_path, capsys, monkeypatch, output, message, model):
    import timm_astro.loading

    def load_model(*args, **kwargs):
        raise AssertionError('the model was loaded (perhaps downloaded) before --output was checked')
    monkeypatch.setattr(timm_astro.loading, 'load_model', load_model)
    (tmp_path / 'afile').write_text('keep me')
    (tmp_path / 'full').mkdir()
    (tmp_path / 'full' / 'notes.txt').write_text('keep me')
    assert cli.main(['inspect', model, '--output', str(tmp_path / output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith('timm-astro inspect: error: ') and err.count('\n') == 1, err
    assert message.format(tmp=tmp_path) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['afile', 'full']


def test_unreadable_image_is_named(tmp_path, capsys):
    bad = tmp_path / 'not_an_image.png'
    bad.write_text('text')
    assert cli.main(['inspect', 'astroformer_small', str(bad), '--output', str(tmp_path / 'out')]) == 2
    assert f'{bad}: cannot be read as an image' in capsys.readouterr().err
    assert not (tmp_path / 'out').exists(), 'a failed run leaves nothing behind'


def test_missing_matplotlib_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, 'matplotlib', None)  # import matplotlib now raises ImportError
    with pytest.raises(MissingDependency, match=r"pip install 'timm-astro\[plot\]'"):
        write_kernel_pictures(timm.create_model('astroformer_small'), tmp_path)


def test_decompression_bomb_and_special_files_are_one_line_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import os
    import timm_astro.loading
    from image_files import fifo_unblocker, write_png_header, write_16bit_png

    def load_model(*args, **kwargs):
        raise AssertionError('the model was loaded before the images were checked')
    monkeypatch.setattr(timm_astro.loading, 'load_model', load_model)
    bomb = write_png_header(tmp_path / 'bomb.png', 20_000, 20_000)
    assert cli.main(['inspect', 'astroformer_small', str(bomb), '--output', str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and f'{bomb}: cannot be read as an image: 400,000,000 pixels' in err
    assert 'decompression bomb' in err and not (tmp_path / 'out').exists()
    if hasattr(os, 'mkfifo'):
        os.mkfifo(tmp_path / 'pipe.png')
        with fifo_unblocker(tmp_path / 'pipe.png'):
            assert cli.main(['inspect', 'astroformer_small', str(tmp_path / 'pipe.png'), '--output',
                             str(tmp_path / 'out')]) == 2
        assert 'pipe.png: cannot be read as an image: a named pipe (FIFO)' in capsys.readouterr().err
    deep = write_16bit_png(tmp_path / 'deep.png')
    Image.fromarray(__import__('numpy').ones((4, 4), dtype='float32')).save(tmp_path / 'flux.tif')
    assert cli.main(['inspect', 'astroformer_small', str(deep), str(tmp_path / 'flux.tif'), '--output',
                     str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert 'flux.tif: cannot be read as an image: float pixels' in err and 'deep.png' not in err


def test_attention_pictures_see_a_16bit_image_scaled_not_clipped(tmp_path):
    import numpy as np
    from timm_astro.inspection import _load_image
    from image_files import RAMP_16, expected_8bit, write_16bit_png
    model = timm.create_model('astroformer_small', num_classes=3)
    model.pretrained_cfg = {**model.pretrained_cfg, 'input_size': (3, 2, 6), 'crop_pct': 1.0, 'mean': (0, 0, 0),
                            'std': (1, 1, 1)}
    x, _ = _load_image(write_16bit_png(tmp_path / 'deep.png'), model)
    np.testing.assert_allclose(x[0].numpy() * 255, expected_8bit(RAMP_16), atol=1e-3)
