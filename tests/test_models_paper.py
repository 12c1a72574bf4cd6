"""astroformer_0 ... astroformer_5: the official sizes, official-checkpoint compatibility and any input size.

The reference for "official" is timm's own MaxxVit built with the official configuration: it has the official
implementation's state-dict keys and gives bit-identical outputs from its weights, so no copy of the official
repository is needed here.
"""
import argparse

import pytest
import torch

import timm
from timm.models.maxxvit import MaxxVit, MbConvBlock, TransformerBlock2d
from timm_astro.layers import RelativeAttention2d
from timm_astro.models.astroformer import model_cfgs

OFFICIAL_PARAMS = {
    'astroformer_0': 23_533_592,
    'astroformer_1': 38_149_448,
    'astroformer_2': 67_381_864,
    'astroformer_3': 150_408_616,
    'astroformer_4': 242_604_904,
    'astroformer_5': 595_579_688,
}
NUM_CLASSES = 10


@pytest.mark.parametrize('name', list(OFFICIAL_PARAMS))
def test_parameter_counts_equal_official(name):
    model = timm.create_model(name, device='meta')
    assert sum(p.numel() for p in model.parameters()) == OFFICIAL_PARAMS[name]


@pytest.mark.parametrize('name', list(OFFICIAL_PARAMS))
def test_c_c_c_t_layout(name):
    model = timm.create_model(name, device='meta')
    for stage in model.stages[:3]:
        assert all(isinstance(b, MbConvBlock) for b in stage.blocks)
    assert all(isinstance(b, TransformerBlock2d) and isinstance(b.attn, RelativeAttention2d) for b in model.stages[3].blocks)


@pytest.fixture(scope='module')
def official():
    """An official-layout model (timm's MaxxVit) with non-trivial weights, and an input batch."""
    torch.manual_seed(0)
    ref = MaxxVit(model_cfgs['astroformer_0'], num_classes=NUM_CLASSES).eval()
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if 'relative_position_bias_table' in name:
                p.normal_()
    return ref, torch.randn(2, 3, 224, 224)


def _max_diff(model, ref, x):
    with torch.no_grad():
        return (model(x) - ref(x)).abs().max().item()


def test_official_state_dict_loads_strictly_with_equal_outputs(official):
    ref, x = official
    model = timm.create_model('astroformer_0', num_classes=NUM_CLASSES).eval()
    result = model.load_state_dict(ref.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert _max_diff(model, ref, x) < 1e-5


@pytest.fixture(scope='module')
def train_py_checkpoint(official, tmp_path_factory):
    """A checkpoint as timm's train.py writes it: DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes, EMA
    weights, args."""
    ref, _ = official
    ema = MaxxVit(model_cfgs['astroformer_0'], num_classes=NUM_CLASSES).eval()
    ema.load_state_dict(ref.state_dict())
    with torch.no_grad():
        for p in ema.parameters():
            p.mul_(0.9)
    path = tmp_path_factory.mktemp('ckpt') / 'model_best.pth.tar'
    torch.save({
        'epoch': 3,
        'arch': 'astroformer_0',
        'state_dict': {'module.' + k: v for k, v in ref.state_dict().items()},
        'state_dict_ema': {'_orig_mod.module.' + k: v for k, v in ema.state_dict().items()},
        'args': argparse.Namespace(model='astroformer_0', num_classes=NUM_CLASSES),
        'metric': 90.0,
    }, path)
    return path, ema


def test_train_py_checkpoint_via_checkpoint_path(official, train_py_checkpoint):
    """checkpoint_path loads the EMA weights (timm's default) with no missing or unexpected keys."""
    _, x = official
    path, ema = train_py_checkpoint
    model = timm.create_model('astroformer_0', num_classes=NUM_CLASSES, checkpoint_path=str(path)).eval()
    assert _max_diff(model, ema, x) < 1e-5


def test_train_py_checkpoint_via_pretrained_file(official, train_py_checkpoint):
    _, x = official
    path, ema = train_py_checkpoint
    model = timm.create_model(
        'astroformer_0', pretrained=True, num_classes=NUM_CLASSES,
        pretrained_cfg_overlay=dict(file=str(path), num_classes=NUM_CLASSES)).eval()
    assert _max_diff(model, ema, x) < 1e-5


@pytest.mark.parametrize('size', [(64, 64), (128, 128), (256, 256), (256, 192)])
def test_any_multiple_of_32_runs_without_rebuilding(official, size):
    ref, _ = official
    model = timm.create_model('astroformer_0', num_classes=NUM_CLASSES).eval()
    model.load_state_dict(ref.state_dict())
    with torch.no_grad():
        assert model(torch.randn(1, 3, *size)).shape == (1, NUM_CLASSES)
        feats = model.forward_features(torch.randn(1, 3, *size))
    assert feats.shape[-2:] == (size[0] // 32, size[1] // 32)


def test_runtime_bias_at_build_size_is_timms(official):
    """At the size a model is built for, the bias is exactly timm's; elsewhere it comes from the same table."""
    ref, _ = official
    model = timm.create_model('astroformer_0', num_classes=NUM_CLASSES)
    model.load_state_dict(ref.state_dict())
    ours, theirs = model.stages[3].blocks[0].attn, ref.stages[3].blocks[0].attn
    torch.testing.assert_close(ours.relative_position_bias(7, 7), theirs.rel_pos.get_bias()[0], rtol=0, atol=0)
    assert ours.relative_position_bias(8, 8).shape == (ours.num_heads, 64, 64)


def test_weights_learned_at_one_size_load_at_another(official):
    """A model built for 256 px (8x8 tables) loads into one built for 224 (7x7) and vice versa, tables resized."""
    big = timm.create_model('astroformer_0', num_classes=NUM_CLASSES, img_size=256)
    assert big.stages[3].blocks[0].attn.rel_pos.relative_position_bias_table.shape[0] == 15 * 15
    small = timm.create_model('astroformer_0', num_classes=NUM_CLASSES)
    result = small.load_state_dict(big.state_dict())
    assert not result.missing_keys and not result.unexpected_keys
    assert small.stages[3].blocks[0].attn.rel_pos.relative_position_bias_table.shape[0] == 13 * 13
    big.load_state_dict(small.state_dict())
    with torch.no_grad():
        assert big.eval()(torch.randn(1, 3, 96, 96)).shape == (1, NUM_CLASSES)


@pytest.mark.parametrize('size', [(100, 100), (224, 200), (32, 32)])
def test_unsupported_sizes_say_which_sizes_work(size):
    model = timm.create_model('astroformer_0', device='meta')
    with pytest.raises(ValueError, match=r'astroformer_0 runs on inputs with height and width multiples of 32 and at least 64'):
        model(torch.empty(1, 3, *size, device='meta'))


def test_drop_block_and_unknown_kwargs():
    with pytest.raises(ValueError, match='DropBlock is deliberately unsupported'):
        timm.create_model('astroformer_0', drop_block_rate=0.05, device='meta')
    with pytest.raises(TypeError):
        timm.create_model('astroformer_0', not_an_arg=1, device='meta')


def test_pretrained_cfgs():
    for i in range(6):
        cfg = timm.models.get_pretrained_cfg(f'astroformer_{i}')
        assert cfg.paper_ids == 'arXiv:2304.05350' and cfg.license == 'apache-2.0'
        assert cfg.input_size == (3, 224, 224) and not cfg.fixed_input_size
        assert cfg.first_conv == 'stem.conv1' and cfg.classifier == 'head.fc'
        assert not cfg.has_weights  # no weights exist: nothing may claim otherwise


def test_torch_compile_fullgraph_has_no_graph_breaks():
    model = timm.create_model('astroformer_0', num_classes=NUM_CLASSES).eval()
    compiled = torch.compile(model, fullgraph=True, backend='eager')
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


def test_empty_batch_gives_empty_outputs(official):
    ref, _ = official
    model = timm.create_model('astroformer_0', num_classes=NUM_CLASSES).eval()
    x = torch.randn(0, 3, 64, 64)
    with torch.no_grad():
        assert model(x).shape == (0, NUM_CLASSES)
        assert model.forward_features(x).shape == (0, 768, 2, 2)
    features = timm.create_model('astroformer_0', features_only=True, out_indices=(0, 4)).eval()
    with torch.no_grad():
        assert [tuple(f.shape) for f in features(x)] == [(0, 64, 32, 32), (0, 768, 2, 2)]


def test_in_chans_zero_is_refused_at_construction():
    with pytest.raises(ValueError, match='astroformer_0: in_chans must be a positive number of input channels, got 0'):
        timm.create_model('astroformer_0', in_chans=0, device='meta')


@pytest.mark.parametrize('img_size', [17, 100, (224, 200), 32])
def test_img_size_it_cannot_run_is_refused_at_construction(img_size):
    with pytest.raises(ValueError, match=r'astroformer_0: img_size=.* is not a size it runs at; it runs on inputs '
                                         r'with height and width multiples of 32 and at least 64'):
        timm.create_model('astroformer_0', img_size=img_size, device='meta')


def test_features_only_out_of_range_names_the_valid_indices():
    with pytest.raises(ValueError, match=r'astroformer_0: out_indices=\(7,\) .* it has 5 levels: indices 0\.\.4'):
        timm.create_model('astroformer_0', features_only=True, out_indices=(7,), device='meta')


@pytest.mark.parametrize('size', [(256, 256), (256, 192)])
def test_run_at_another_size_equals_the_model_built_there(official, size):
    """Built for 224 (7x7 tables) and run at another size = the same weights loaded into a model built there
    (one resize rule: timm's, at runtime and on load)."""
    ref, _ = official
    built = timm.create_model('astroformer_0', num_classes=NUM_CLASSES).eval()
    built.load_state_dict(ref.state_dict())
    there = timm.create_model('astroformer_0', num_classes=NUM_CLASSES, img_size=size).eval()
    there.load_state_dict(ref.state_dict())
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(built(x), there(x), atol=1e-5, rtol=1e-5)
