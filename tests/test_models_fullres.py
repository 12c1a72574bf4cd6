"""astroformer_small / base / large: the design's shapes, configurations and timm features beyond timm's suite."""
import argparse

import pytest
import torch

import timm
import timm.optim
import timm.utils
from timm_astro.layers import has_flex_attention
from timm_astro.models.astroformer_fullres import AstroformerFullRes, StageBlock

CHANNELS = {
    'astroformer_small': [32, 64, 128, 256, 256],
    'astroformer_base': [32, 64, 128, 256, 256],
    'astroformer_large': [32, 96, 288, 864, 864],
}
DEPTHS = {'astroformer_small': (1, 1, 1), 'astroformer_base': (2, 2, 2), 'astroformer_large': (2, 3, 3)}


@pytest.fixture(scope='module')
def small():
    torch.manual_seed(0)
    return timm.create_model('astroformer_small', num_classes=10).eval()


@pytest.mark.parametrize('name', list(CHANNELS))
def test_stage_shapes_and_feature_info(name):
    """Every stage keeps the input resolution; channels grow by the expansion; feature_info says so."""
    model = timm.create_model(name, num_classes=10, device='meta')
    assert [f['num_chs'] for f in model.feature_info] == CHANNELS[name]
    assert [f['reduction'] for f in model.feature_info] == [1] * 5
    assert [f['module'] for f in model.feature_info] == ['stem', 'stages.0', 'stages.1', 'stages.2', 'stages.3']
    blocks = [sum(isinstance(m, StageBlock) for m in stage.modules()) for stage in model.stages[:3]]
    assert tuple(blocks) == DEPTHS[name]
    x = torch.empty(2, 3, 32, 32, device='meta')
    final, feats = model.forward_intermediates(x)
    assert [tuple(f.shape) for f in feats] == [(2, c, 32, 32) for c in CHANNELS[name]]
    assert final.shape == (2, CHANNELS[name][-1], 32, 32)
    assert model(x).shape == (2, 10)


@pytest.mark.parametrize('rel_pos_type, size', [('fourier', 32), ('table', 33)])
def test_transformer_stride_pools_before_s4_only(rel_pos_type, size):
    """transformer_stride=2: the convolutions keep the input size, S4 attends over the 2x2-pooled positions (its W
    built for that grid), feature_info says so, and the pooling adds no weights (timm's strided block renames S4's
    first norm, so the keys differ)."""
    model = timm.create_model('astroformer_small', img_size=size, num_classes=6, transformer_stride=2,
                              rel_pos_type=rel_pos_type)
    plain = timm.create_model('astroformer_small', img_size=size // 2, num_classes=6, rel_pos_type=rel_pos_type)
    assert [f['reduction'] for f in model.feature_info] == [1, 1, 1, 1, 2]
    assert model.stages[3].blocks[0].attn.rel_pos is not None
    feats = model.forward_intermediates(torch.randn(2, 3, size, size), intermediates_only=True)
    assert [f.shape[-1] for f in feats] == [size] * 4 + [size // 2]
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in plain.parameters())


def test_transformer_stride_other_than_1_or_2_is_refused():
    with pytest.raises(ValueError, match=r'transformer_stride=3; expected 1 .* or 2'):
        timm.create_model('astroformer_small', transformer_stride=3)


def test_stage_adjustments_follow_the_design(small):
    """S1 and S2 add a 1x1 projection of their input (S0's, S1's output); S3 does not."""
    skips = [stage.stage_skip for stage in small.stages[:3]]
    assert [s is not None for s in skips] == [True, True, False]
    assert [(s.in_channels, s.out_channels, s.kernel_size) for s in skips[:2]] == [(32, 64, (1, 1)), (64, 128, (1, 1))]


@pytest.mark.parametrize('size', [(24, 24), (48, 48), (20, 36)])
def test_runs_at_other_sizes_without_rebuilding(small, size):
    with torch.no_grad():
        feats = small.forward_features(torch.randn(1, 3, *size))
        out = small(torch.randn(1, 3, *size))
    assert feats.shape == (1, 256, *size)
    assert out.shape == (1, 10)


@pytest.mark.parametrize('bad_shape, message', [
    ((3, 32, 32), r'astroformer_small expects an image batch of shape \[B, 3, H, W\], got a 3-D tensor of shape \[3, 32, 32\]'),
    ((2, 1, 32, 32), r'astroformer_small expects 3 input channels, shape \[B, 3, H, W\], got shape \[2, 1, 32, 32\]'),
    ((2, 3, 0, 32), r'astroformer_small runs on inputs with height and width of at least 1, got shape \[2, 3, 0, 32\]'),
])
def test_bad_input_names_model_and_shapes(small, bad_shape, message):
    with pytest.raises(ValueError, match=message):
        small(torch.randn(*bad_shape))


def test_drop_block_is_refused_with_the_reason():
    with pytest.raises(ValueError, match='DropBlock is deliberately unsupported.*morphology'):
        timm.create_model('astroformer_small', drop_block_rate=0.1)


def test_unknown_kwargs_raise_type_error():
    with pytest.raises(TypeError):
        timm.create_model('astroformer_small', not_an_arg=1)


def test_drop_rate_and_stochastic_depth_are_wired():
    model = timm.create_model('astroformer_base', drop_rate=0.3, drop_path_rate=0.2)
    assert model.head.drop.p == 0.3
    rates = [m.drop_prob for m in model.modules() if isinstance(m, timm.layers.DropPath)]
    assert rates == sorted(rates) and rates[-1] == pytest.approx(0.2) and len(rates) >= 6
    model.train()
    x = torch.randn(2, 3, 16, 16)
    assert not torch.equal(model(x), model(x)), 'dropout / drop path inactive in training'


def test_no_weight_decay_names_relative_position_kernels():
    for kwargs, expected in [({}, 'relative_position_frequencies'),
                             (dict(rel_pos_type='table'), 'relative_position_bias_table')]:
        model = timm.create_model('astroformer_small', **kwargs)
        names = model.no_weight_decay()
        assert names and all('relative_position' in n for n in names)
        assert any(n.endswith(expected) for n in names)
        assert names <= {n for n, _ in model.named_parameters()}


def test_pretrained_cfg_describes_the_model(small):
    cfg = small.pretrained_cfg
    assert cfg['input_size'] == (3, 32, 32) and cfg['fixed_input_size'] is False
    assert cfg['paper_ids'] == 'arXiv:2304.05350' and cfg['license'] == 'apache-2.0'
    assert cfg['first_conv'] + '.weight' in small.state_dict() and cfg['classifier'] + '.weight' in small.state_dict()
    data = timm.data.resolve_model_data_config(small)  # what timm's scripts and transforms will use
    assert data['mean'] == data['std'] == (0.5, 0.5, 0.5)
    assert data['crop_pct'] == 1.0 and data['interpolation'] == 'bicubic' and data['input_size'] == (3, 32, 32)


def test_grad_checkpointing_leaves_outputs_and_grads_unchanged():
    torch.manual_seed(0)
    model = timm.create_model('astroformer_small', num_classes=4).train()
    x = torch.randn(2, 3, 16, 16)
    grads = []
    for enable in (False, True):
        model.set_grad_checkpointing(enable)
        model.zero_grad()
        torch.manual_seed(1)
        out = model(x)
        out.sum().backward()
        grads.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    for a, b in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_channels_last_and_bf16_autocast(small):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = small(x)
        cl = small.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
        small.to(memory_format=torch.contiguous_format)
        with torch.autocast('cpu', dtype=torch.bfloat16):
            bf16 = small(x)
    torch.testing.assert_close(cl, ref, atol=1e-4, rtol=1e-4)
    assert not bf16.isnan().any() and (bf16.float() - ref).abs().max() < 0.1 * ref.abs().max() + 0.05


def test_torch_compile_fullgraph_has_no_graph_breaks(small):
    """fullgraph=True makes dynamo raise on any graph break; the eager backend keeps the test fast on CPU."""
    compiled = torch.compile(small, fullgraph=True, backend='eager')
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), small(x))


def test_features_only_gives_all_five_levels():
    model = timm.create_model('astroformer_small', features_only=True).eval()
    feats = model(torch.randn(1, 3, 20, 20))
    assert [f.shape[1] for f in feats] == CHANNELS['astroformer_small']
    assert all(f.shape[-2:] == (20, 20) for f in feats)


def test_layer_decay_groups_cover_all_parameters():
    model = timm.create_model('astroformer_base')
    opt = timm.optim.create_optimizer_v2(model, 'adamw', lr=1e-3, weight_decay=0.05, layer_decay=0.8)
    scales = {g['lr_scale'] for g in opt.param_groups}
    assert len(scales) > 2  # stem, stages and head get different learning rates
    assert sum(len(g['params']) for g in opt.param_groups) == len(list(model.parameters()))


def test_model_ema_tracks_the_model():
    model = timm.create_model('astroformer_small', num_classes=3)
    ema = timm.utils.ModelEmaV3(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    name, param = next(iter(model.named_parameters()))
    torch.testing.assert_close(dict(ema.module.named_parameters())[name], param - 0.5)


def test_class_is_exported():
    assert isinstance(timm.create_model('astroformer_small', device='meta'), AstroformerFullRes)


@pytest.mark.parametrize('rel_pos_type', ['fourier', 'table', 'none'])
def test_empty_batch_gives_empty_outputs(rel_pos_type):
    """Zero images in, zero rows out (as timm's own models), for logits, features and features_only."""
    model = timm.create_model('astroformer_small', num_classes=7, rel_pos_type=rel_pos_type).eval()
    x = torch.randn(0, 3, 32, 32)
    with torch.no_grad():
        assert model(x).shape == (0, 7)
        assert model.forward_features(x).shape == (0, 256, 32, 32)
    features = timm.create_model('astroformer_small', features_only=True).eval()
    with torch.no_grad():
        assert [tuple(f.shape) for f in features(x)] == [(0, c, 32, 32) for c in CHANNELS['astroformer_small']]


def test_in_chans_zero_is_refused_at_construction():
    with pytest.raises(ValueError, match='astroformer_small: in_chans must be a positive number of input channels, got 0'):
        timm.create_model('astroformer_small', in_chans=0)


@pytest.mark.parametrize('out_indices', [(7,), (0, 5), 6, 0])
def test_features_only_out_of_range_names_the_valid_indices(out_indices):
    with pytest.raises(ValueError, match=r'astroformer_small: out_indices=.* it has 5 levels: indices 0\.\.4'):
        timm.create_model('astroformer_small', features_only=True, out_indices=out_indices)
    in_range = timm.create_model('astroformer_small', features_only=True, out_indices=(-1, 1))
    assert sorted(in_range.feature_info.channels()) == [64, 256]  # negative indices count from the end


def test_rel_pos_types_and_the_default():
    """The 16-frequency Fourier form is the default (chosen by the low-data study); 'table' (the paper's W) and
    'none' are selectable."""
    kinds = {}
    for kwargs in ({}, dict(rel_pos_type='table'), dict(rel_pos_type='none')):
        attn = timm.create_model('astroformer_small', device='meta', **kwargs).stages[3].blocks[0].attn
        kinds[kwargs.get('rel_pos_type', 'default')] = type(attn.rel_pos).__name__
    assert kinds == {'default': 'RelPosBiasFourier', 'table': 'RelPosBiasTable', 'none': 'NoneType'}
    default = timm.create_model('astroformer_small', device='meta').stages[3].blocks[0].attn.rel_pos
    assert default.relative_position_frequencies.shape[1] == 16
    with pytest.raises(ValueError, match='rel_pos_type must be one of'):
        timm.create_model('astroformer_small', rel_pos_type='bias')


@pytest.mark.skipif(not has_flex_attention(), reason=f'torch {torch.__version__} has no FlexAttention')
def test_flex_model_builds_and_runs_inference_on_cpu():
    """create_model(..., rel_pos_type='table', attn_impl='flex') works; on CPU its forward is compiled FlexAttention
    (input 5x7: the shape of test_relative_attention's flex tests, so the compile is shared)."""
    torch.manual_seed(0)
    flex = timm.create_model('astroformer_small', rel_pos_type='table', attn_impl='flex', num_classes=3).eval()
    sdpa = timm.create_model('astroformer_small', rel_pos_type='table', attn_impl='sdpa', num_classes=3).eval()
    sdpa.load_state_dict(flex.state_dict())
    x = torch.randn(2, 3, 5, 7)
    with torch.no_grad():
        torch.testing.assert_close(flex(x), sdpa(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(NotImplementedError, match='cannot train on CPU'):
        flex.train()(x)


@pytest.mark.parametrize('size', [(24, 40), (48, 48)])
def test_table_model_run_at_another_size_equals_one_built_there(size):
    """Built for 32x32 and run at another size = the same weights loaded into a model built for that size."""
    torch.manual_seed(0)
    built = timm.create_model('astroformer_small', rel_pos_type='table', num_classes=4).eval()
    with torch.no_grad():
        built.stages[3].blocks[0].attn.rel_pos.relative_position_bias_table.normal_()
    there = timm.create_model('astroformer_small', rel_pos_type='table', num_classes=4, img_size=size).eval()
    there.load_state_dict(built.state_dict())
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        torch.testing.assert_close(built(x), there(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('rel_pos_type', ['fourier', 'table'])
def test_train_py_checkpoint_loads_through_timm(tmp_path, rel_pos_type):
    """EMA weights first, ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes removed, by timm's own
    loading: checkpoint_path and pretrained file alike."""
    torch.manual_seed(0)
    trained = timm.create_model('astroformer_small', num_classes=3, rel_pos_type=rel_pos_type).eval()
    ema = timm.create_model('astroformer_small', num_classes=3, rel_pos_type=rel_pos_type).eval()
    path = tmp_path / 'model_best.pth.tar'
    torch.save({
        'epoch': 1, 'arch': 'astroformer_small', 'args': argparse.Namespace(model='astroformer_small'),
        'state_dict': {'module.' + k: v for k, v in trained.state_dict().items()},
        'state_dict_ema': {'_orig_mod.module.' + k: v for k, v in ema.state_dict().items()},
    }, path)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = ema(x)
        for kwargs in (dict(checkpoint_path=str(path)),
                       dict(pretrained=True, pretrained_cfg_overlay=dict(file=str(path), num_classes=3))):
            model = timm.create_model('astroformer_small', num_classes=3, rel_pos_type=rel_pos_type, **kwargs).eval()
            torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
