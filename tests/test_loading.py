"""timm_astro.loading.load_model: every source a user has, and a UserError naming the file for every bad one."""
import argparse
import json
import struct
from pathlib import Path

import pytest
import torch
import yaml

import timm
from timm_astro.errors import UserError
from timm_astro.hub import export_model
from timm_astro.loading import load_model

LABELS = ['round', 'cigar', 'spiral']


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.fixture(scope='module')
def src(tmp_path_factory):
    """A train.py-like run (checkpoint with argparse args, args.yaml beside it), a plain state dict and an export."""
    root = tmp_path_factory.mktemp('load')
    torch.manual_seed(0)
    model = timm.create_model('astroformer_small', num_classes=3).eval()
    ema = timm.create_model('astroformer_small', num_classes=3).eval()
    args = dict(model='astroformer_small', num_classes=3, input_size=[3, 64, 64], mean=[0.1, 0.2, 0.3],
                std=[0.5, 0.5, 0.5], crop_pct=1.0, label_names=LABELS)
    run = root / 'run'
    run.mkdir()
    torch.save({'epoch': 2, 'arch': 'astroformer_small', 'state_dict': model.state_dict(),
                'state_dict_ema': ema.state_dict(), 'args': argparse.Namespace(**args)}, run / 'model_best.pth.tar')
    (run / 'args.yaml').write_text(yaml.safe_dump(args))
    torch.save(model.state_dict(), root / 'weights.pth')
    export = export_model(model, root / 'export', label_names=LABELS, data_config={'input_size': (3, 64, 64)})
    return argparse.Namespace(root=root, ckpt=run / 'model_best.pth.tar', weights=root / 'weights.pth',
                              export=export, model=model, ema=ema)


def test_every_source_gives_an_eval_model_with_its_config(src):
    from_run = load_model(str(src.ckpt))  # architecture, classes, data config and labels from the run's args
    assert not from_run.training and _same(from_run, src.ema)
    assert from_run.pretrained_cfg['label_names'] == LABELS
    config = timm.data.resolve_model_data_config(from_run)
    assert config['input_size'] == (3, 64, 64) and config['mean'] == (0.1, 0.2, 0.3) and config['crop_pct'] == 1.0
    assert _same(load_model(str(src.ckpt), use_ema=False), src.model)

    named = load_model('astroformer_small', src.weights)  # num_classes from the classifier's rows
    assert named.num_classes == 3 and _same(named, src.model) and not named.training

    exported = load_model(f'local-dir:{src.export}')
    assert _same(exported, src.model) and exported.pretrained_cfg['label_names'] == LABELS
    assert timm.data.resolve_model_data_config(exported)['input_size'] == (3, 64, 64)

    fresh = load_model('astroformer_small', num_classes=5)
    assert fresh.num_classes == 5 and not fresh.training


def _damaged_export(src, tmp_path: Path, name: str) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    for f in src.export.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    weights, config = folder / 'model.safetensors', folder / 'config.json'
    data = weights.read_bytes()
    if name == 'random safetensors':
        weights.write_bytes(torch.randint(0, 256, (len(data),), generator=torch.Generator().manual_seed(0),
                                          dtype=torch.uint8).numpy().tobytes())
    elif name == 'truncated safetensors':
        weights.write_bytes(data[:len(data) // 2])
    elif name == 'bit-flipped safetensors':  # one float32 turned into a NaN: loads without complaint
        start = 8 + struct.unpack('<Q', data[:8])[0]
        weights.write_bytes(data[:start + 64] + struct.pack('<I', 0x7FC00000) + data[start + 68:])
    elif name == 'invalid config':
        config.write_text('{"architecture": "astroformer_small",')
    elif name == 'unknown architecture':
        config.write_text(json.dumps({**json.loads(config.read_text()), 'architecture': 'astroformer_9'}))
    elif name == 'no config':
        config.unlink()
    return folder


EXPORT_CASES = {
    'random safetensors': 'model.safetensors: not a readable safetensors file',
    'truncated safetensors': 'model.safetensors: not a readable safetensors file',
    'bit-flipped safetensors': 'model.safetensors: 1 weight tensors hold NaN or infinite values',
    'invalid config': 'config.json: not valid JSON',
    'unknown architecture': "unknown model 'astroformer_9' (the architecture in",
    'no config': 'config.json: not found',
}


@pytest.mark.parametrize('case', list(EXPORT_CASES))
def test_damaged_export_names_the_file(case, src, tmp_path):
    folder = _damaged_export(src, tmp_path, case)
    with pytest.raises(UserError) as e:
        load_model(f'local-dir:{folder}')
    assert EXPORT_CASES[case] in str(e.value) and str(folder) in str(e.value), str(e.value)


@pytest.mark.parametrize('spec, checkpoint, expected', [
    ('astroformer_tiny', None, "unknown model 'astroformer_tiny'"),
    ('{root}', None, 'is a folder, not a file'),
    ('{root}/export', None, 'is an exported folder, not a checkpoint; load it as local-dir:'),
    ('{root}/missing.pth.tar', None, 'missing.pth.tar: not found'),
    ('local-dir:{root}/nowhere', None, 'nowhere: no such folder'),
    ('local-dir:{root}/export', '{root}/weights.pth', 'goes with a model name, not with an export'),
    ('astroformer_small', '{root}/export/config.json', 'config.json: not a readable PyTorch checkpoint'),
])
def test_bad_spec_is_a_user_error(spec, checkpoint, expected, src):
    spec, checkpoint = (s.format(root=src.root) if s else s for s in (spec, checkpoint))
    with pytest.raises(UserError, match=None) as e:
        load_model(spec, checkpoint)
    assert expected in str(e.value), str(e.value)


def test_hub_repo_missing_offline_is_a_user_error(tmp_path, monkeypatch):
    from huggingface_hub import constants
    monkeypatch.setattr(constants, 'HF_HUB_OFFLINE', True)
    with pytest.raises(UserError, match='hf-hub:nobody/nothing'):
        load_model('hf-hub:nobody/nothing', cache_dir=tmp_path)


def test_weights_decide_the_w_form_of_a_full_resolution_checkpoint(tmp_path):
    """A run trained with an earlier default W records no rel_pos_type: loading and export read the form (and the
    number of Fourier frequencies) from the weights, so it does not fail against today's default."""
    torch.manual_seed(0)
    fourier = timm.create_model('astroformer_small', num_classes=3, rel_pos_type='fourier', rel_pos_freqs=2).eval()
    run = tmp_path / 'run'
    run.mkdir()
    args = dict(model='astroformer_small', num_classes=3, input_size=[3, 32, 32])
    torch.save({'epoch': 1, 'arch': 'astroformer_small', 'state_dict': fourier.state_dict(),
                'args': argparse.Namespace(**args)}, run / 'checkpoint.pth.tar')
    loaded = load_model(str(run / 'checkpoint.pth.tar'))
    assert _same(loaded, fourier) and type(loaded.stages[3].blocks[0].attn.rel_pos).__name__ == 'RelPosBiasFourier'

    export = export_model(fourier, tmp_path / 'export')
    assert json.loads((export / 'config.json').read_text())['model_args']['rel_pos_type'] == 'fourier'
    assert _same(timm.create_model(f'local-dir:{export}', pretrained=True), fourier)

    table = timm.create_model('astroformer_small', num_classes=3, rel_pos_type='table')  # the default until 2026-12
    none = timm.create_model('astroformer_small', num_classes=3, rel_pos_type='none')
    for model, form in [(table, {'rel_pos_type': 'table'}), (none, {'rel_pos_type': 'none'})]:
        torch.save(model.state_dict(), tmp_path / 'weights.pth')
        assert _same(load_model('astroformer_small', tmp_path / 'weights.pth'), model)
        assert json.loads((export_model(model, tmp_path / f"export_{form['rel_pos_type']}").joinpath(
            'config.json')).read_text())['model_args']['rel_pos_type'] == form['rel_pos_type']


def test_width_and_s4_pooling_survive_a_checkpoint_and_an_export(tmp_path):
    """A run with --model-kwargs stem_width=16 transformer_stride=2 loads from its checkpoint and exports a folder
    that timm loads back with the same outputs: the weights say both, as they say the W form."""
    torch.manual_seed(0)
    model = timm.create_model('astroformer_small', num_classes=3, img_size=32, stem_width=16,
                              transformer_stride=2).eval()
    torch.save({'epoch': 1, 'arch': 'astroformer_small', 'state_dict': model.state_dict(),
                'args': argparse.Namespace(model='astroformer_small', num_classes=3, input_size=[3, 32, 32])},
               tmp_path / 'checkpoint.pth.tar')
    assert _same(load_model(str(tmp_path / 'checkpoint.pth.tar')), model)
    export = export_model(model, tmp_path / 'export')
    args = json.loads((export / 'config.json').read_text())['model_args']
    assert args['stem_width'] == 16 and args['transformer_stride'] == 2
    assert _same(timm.create_model(f'local-dir:{export}', pretrained=True), model)
    plain = export_model(timm.create_model('astroformer_small', num_classes=3), tmp_path / 'plain')
    assert not {'stem_width', 'transformer_stride'} & set(json.loads((plain / 'config.json').read_text())['model_args'])
