"""Relative attention: the logits each kernel sees are q.(k + r)/sqrt(d) + W[i - j], W depends on i - j and the
parameters only, every kernel (explicit, SDPA, FlexAttention) agrees in values and gradients, one resize rule holds,
and the profiler shows which SDPA kernel runs."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import timm
from timm.layers import resize_rel_pos_bias_table
from timm.layers.pos_embed_rel import gen_relative_position_index
from timm.models.maxxvit import Attention2d
from timm_astro.layers import RelativeAttention2d, has_flex_attention

DIM, DIM_HEAD = 64, 16
HEADS = DIM // DIM_HEAD
FLASH = 'aten::_scaled_dot_product_flash_attention_for_cpu'
MATH = 'aten::_scaled_dot_product_attention_math'
FLASH_BACKWARD = 'aten::_scaled_dot_product_flash_attention_for_cpu_backward'


def _attention(rel_pos_type: str, window_size=(6, 6), key_context_kernel: int = 3, **kwargs) -> RelativeAttention2d:
    torch.manual_seed(0)
    attn = RelativeAttention2d(
        DIM, dim_head=DIM_HEAD, rel_pos_type=rel_pos_type, window_size=window_size,
        key_context_kernel=key_context_kernel, **kwargs).eval()
    with torch.no_grad():  # make the kernel large enough to matter in the comparisons
        for name, p in attn.named_parameters():
            if 'amplitudes' in name or 'table' in name:
                p.normal_(std=1.0)
    return attn


def _reference_bias(attn: RelativeAttention2d, height: int, width: int) -> torch.Tensor:
    """W[h, i, j] computed offset by offset from the parameters, independently of the module's code (the table at
    another size by timm's checkpoint resize rule, the rule the module must follow)."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing='ij')
    pos = torch.stack([ys.flatten(), xs.flatten()], -1).double()
    offsets = pos[:, None, :] - pos[None, :, :]  # [N, N, 2], i - j
    rel_pos = attn.rel_pos
    if rel_pos is None:
        return torch.zeros(HEADS, height * width, height * width)
    if hasattr(rel_pos, 'relative_position_frequencies'):
        freqs = rel_pos.relative_position_frequencies.detach().double()  # [heads, m, 2]
        amps = rel_pos.relative_position_amplitudes.detach().double()
        phase = torch.einsum('hmc,ijc->hijm', freqs, offsets)
        return (amps[:, None, None, :, 0] * phase.cos() + amps[:, None, None, :, 1] * phase.sin()).sum(-1).float()
    win_h, win_w = rel_pos.window_size
    table = rel_pos.relative_position_bias_table.detach()
    if (height, width) != (win_h, win_w):
        table = resize_rel_pos_bias_table(
            table, new_window_size=(height, width), new_bias_shape=((2 * height - 1) * (2 * width - 1), HEADS),
            old_window_size=(win_h, win_w))
    table = table.t().reshape(HEADS, 2 * height - 1, 2 * width - 1)
    dy = (offsets[..., 0] + height - 1).long()
    dx = (offsets[..., 1] + width - 1).long()
    return table[:, dy, dx]


def _reference_qkv(attn: RelativeAttention2d, x: torch.Tensor):
    """q, k + r, v from the raw conv weights, per head, [B, heads, N, d]."""
    B, C, H, W = x.shape
    qkv = F.conv2d(x, attn.qkv.weight, attn.qkv.bias).reshape(B, HEADS, 3, DIM_HEAD, H * W)
    r = F.conv2d(x, attn.key_context.weight, attn.key_context.bias, padding=1, groups=C).reshape(B, HEADS, DIM_HEAD, H * W)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1] + r, qkv[:, :, 2]
    return q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)


def _kernel_logits(attn: RelativeAttention2d, x: torch.Tensor) -> torch.Tensor:
    q, k, _, mask = attn.fused_inputs(x)
    return q @ k.transpose(-1, -2) * attn.scale + (0 if mask is None else mask)


@pytest.mark.parametrize('rel_pos_type', ['table', 'fourier', 'none'])
@pytest.mark.parametrize('size', [(6, 6), (5, 8), (9, 7)])
def test_kernel_logits_equal_definition(rel_pos_type, size):
    """What forward hands to F.scaled_dot_product_attention gives exactly q.(k + r)/sqrt(d) + W[i - j]."""
    attn = _attention(rel_pos_type)
    x = torch.randn(2, DIM, *size)
    with torch.no_grad():
        kernel_logits = _kernel_logits(attn, x)
        _, _, v, _ = attn.fused_inputs(x)
        q_ref, k_ref, v_ref = _reference_qkv(attn, x)
        expected = q_ref @ k_ref.transpose(-1, -2) / math.sqrt(DIM_HEAD) + _reference_bias(attn, *size)
    torch.testing.assert_close(kernel_logits, expected, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(v[..., :DIM_HEAD], v_ref)
    assert not v[..., DIM_HEAD:].any(), 'padding of v must be zero so it never reaches the output'


@pytest.mark.parametrize('rel_pos_type', ['table', 'fourier'])
def test_position_term_is_the_same_for_any_input(rel_pos_type):
    """Logits minus the content term q.(k + r)/sqrt(d) are one [heads, N, N] pattern for every input and batch item:
    W depends on the parameters only."""
    attn = _attention(rel_pos_type)
    terms = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        x = torch.randn(2, DIM, 5, 6) * seed
        with torch.no_grad():
            q_ref, k_ref, _ = _reference_qkv(attn, x)
            terms.append(_kernel_logits(attn, x) - q_ref @ k_ref.transpose(-1, -2) / math.sqrt(DIM_HEAD))
    for term in terms:
        torch.testing.assert_close(term, terms[0][:1].expand_as(term), atol=2e-4, rtol=1e-4)
    assert terms[0].abs().max() > 0.5, 'the position term vanished: the comparison would prove nothing'


def test_table_mask_is_the_bias_broadcast_over_batch():
    attn = _attention('table')
    _, _, _, mask = attn.fused_inputs(torch.randn(3, DIM, 6, 6))
    assert mask.shape == (1, HEADS, 36, 36)  # 4-D: stays on the fused kernel
    torch.testing.assert_close(mask[0], attn.relative_position_bias(6, 6), rtol=0, atol=0)


def test_fourier_runs_maskless_with_folded_channels():
    attn = _attention('fourier')
    q, k, v, mask = attn.fused_inputs(torch.randn(2, DIM, 6, 6))
    assert mask is None
    extra = 2 * attn.rel_pos.num_freqs
    assert q.shape[-1] == k.shape[-1] == v.shape[-1] == DIM_HEAD + extra


def test_none_has_no_kernel_and_the_plain_inputs():
    attn = _attention('none')
    assert attn.rel_pos is None and not any('relative_position' in n for n, _ in attn.named_parameters())
    q, k, v, mask = attn.fused_inputs(torch.randn(2, DIM, 6, 6))
    assert mask is None and q.shape[-1] == k.shape[-1] == v.shape[-1] == DIM_HEAD


@pytest.mark.parametrize('rel_pos_type', ['table', 'fourier'])
def test_bias_shape_and_offset_only(rel_pos_type):
    """relative_position_bias is [heads, HW, HW] and W[i, j] only depends on i - j: moving the query moves the
    pattern it sees over the keys by the same amount (at the build size and at another size)."""
    attn = _attention(rel_pos_type)
    for height, width in [(6, 6), (8, 10)]:
        bias = attn.relative_position_bias(height, width).detach()
        assert bias.shape == (HEADS, height * width, height * width)
        maps = bias.reshape(HEADS, height, width, height, width)
        query, shift = (1, 1), (2, 3)
        moved = (query[0] + shift[0], query[1] + shift[1])
        seen = maps[:, query[0], query[1]]  # [heads, H, W] over keys
        seen_moved = maps[:, moved[0], moved[1]]
        # keys shifted with the query see the same bias wherever both lie inside the map
        torch.testing.assert_close(
            seen_moved[:, shift[0]:, shift[1]:], seen[:, :height - shift[0], :width - shift[1]], atol=1e-5, rtol=1e-5)
        index = gen_relative_position_index((height, width))
        for offset in index.unique()[::7]:  # every pair with one offset has one value
            values = bias[:, index == offset]
            torch.testing.assert_close(values, values[:, :1].expand_as(values), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('rel_pos_type', ['table', 'fourier'])
@pytest.mark.parametrize('size', [(6, 6), (4, 7)])
def test_offset_kernel_is_the_bias_before_the_gather(rel_pos_type, size):
    """The (2H-1) x (2W-1) picture of W, gathered with timm's offset index, is relative_position_bias."""
    attn = _attention(rel_pos_type)
    with torch.no_grad():
        kernel = attn.rel_pos.offset_kernel(*size)
        assert kernel.shape == (HEADS, 2 * size[0] - 1, 2 * size[1] - 1)
        index = gen_relative_position_index(size)
        torch.testing.assert_close(kernel.flatten(1)[:, index], attn.relative_position_bias(*size), atol=1e-5, rtol=1e-5)


def _outputs_and_grads(attn: RelativeAttention2d, x: torch.Tensor):
    attn.train().zero_grad()
    out = attn(x)
    out.square().mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in attn.named_parameters()}


@pytest.mark.parametrize('rel_pos_type', ['table', 'fourier', 'none'])
def test_sdpa_and_explicit_paths_agree(rel_pos_type):
    """Same outputs and the same gradients for every parameter, including the kernel W (table: at a runtime size
    other than the build size, so the gradient flows through the resize)."""
    x = torch.randn(2, DIM, 5, 7)
    out_sdpa, grads_sdpa = _outputs_and_grads(_attention(rel_pos_type, attn_impl='sdpa'), x)
    out_explicit, grads_explicit = _outputs_and_grads(_attention(rel_pos_type, attn_impl='explicit'), x)
    torch.testing.assert_close(out_sdpa, out_explicit, atol=1e-5, rtol=1e-4)
    assert grads_sdpa.keys() == grads_explicit.keys()
    for name in grads_sdpa:
        assert grads_sdpa[name].abs().sum() > 0, f'no gradient reaches {name}'
        torch.testing.assert_close(grads_sdpa[name], grads_explicit[name], atol=1e-5, rtol=1e-3, msg=name)


def test_attn_impl_and_timms_fused_attn_switch():
    """'explicit' and timm's fused_attn=False (TIMM_FUSED_ATTN=0) are one switch; 'sdpa' / 'flex' set it on."""
    assert not _attention('table', attn_impl='explicit').fused_attn
    assert _attention('table', attn_impl='sdpa').fused_attn
    attn = _attention('table', attn_impl='auto')
    attn.fused_attn = False  # what timm's set_fused_attn(False) gives at construction
    x = torch.randn(1, DIM, 4, 4)
    with profile(activities=[ProfilerActivity.CPU]) as prof, torch.no_grad():
        attn(x)
    ops = {e.name for e in prof.events()}
    assert 'aten::softmax' in ops and not any('scaled_dot_product' in n for n in ops)


def _sdpa_kernels(module: torch.nn.Module, x: torch.Tensor, train: bool):
    module.train(train)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        if train:
            module(x).sum().backward()
        else:
            with torch.no_grad():
                module(x)
    return {e.name for e in prof.events() if 'scaled_dot_product' in e.name or 'softmax' in e.name}


@pytest.mark.parametrize('rel_pos_type', ['table', 'fourier', 'none'])
def test_inference_runs_the_cpu_flash_kernel(rel_pos_type):
    """Both W forms (and none) run SDPA's flash kernel in inference, never the N x N math path."""
    model = timm.create_model('astroformer_small', num_classes=5, rel_pos_type=rel_pos_type)
    kernels = _sdpa_kernels(model, torch.randn(2, 3, 16, 16), train=False)
    assert FLASH in kernels and MATH not in kernels, sorted(kernels)
    assert not {n for n in kernels if 'softmax' in n}, 'an explicit softmax ran'


@pytest.mark.parametrize('rel_pos_type', ['fourier', 'none'])
def test_training_runs_the_cpu_flash_kernel_forward_and_backward(rel_pos_type):
    model = timm.create_model('astroformer_small', num_classes=5, rel_pos_type=rel_pos_type)
    kernels = _sdpa_kernels(model, torch.randn(2, 3, 16, 16), train=True)
    assert FLASH in kernels and FLASH_BACKWARD in kernels, sorted(kernels)
    assert MATH not in kernels and not {n for n in kernels if 'softmax' in n}, sorted(kernels)


def test_paper_family_runs_the_cpu_flash_kernel_in_inference_and_math_in_training():
    """The paper family's S4 is the same module: flash in inference; its table trained on CPU takes the math path."""
    model = timm.create_model('astroformer_0', num_classes=5)
    x = torch.randn(1, 3, 64, 64)
    kernels = _sdpa_kernels(model, x, train=False)
    assert FLASH in kernels and MATH not in kernels, sorted(kernels)
    kernels = _sdpa_kernels(model, x, train=True)
    assert MATH in kernels and FLASH not in kernels, sorted(kernels)


def test_training_the_table_on_cpu_takes_the_math_path():
    """torch's CPU SDPA cannot give a mask its gradient, so a trained table falls back to the N x N math path (the
    fact the docs state; if torch learns it, this test fails and the docs must change)."""
    model = timm.create_model('astroformer_small', num_classes=5, rel_pos_type='table')
    kernels = _sdpa_kernels(model, torch.randn(2, 3, 16, 16), train=True)
    assert MATH in kernels and FLASH not in kernels, sorted(kernels)
    model.stages[-1].blocks[0].attn.rel_pos.relative_position_bias_table.requires_grad_(False)  # a frozen table
    assert FLASH in _sdpa_kernels(model, torch.randn(2, 3, 16, 16), train=True)


@pytest.mark.parametrize('size', [(7, 7), (8, 8), (8, 6), (5, 9)])
def test_one_resize_rule_runtime_equals_loading(size):
    """A module built for 7x7 run at another size gives the bias of the same weights loaded into a module built for
    that size (timm's resize_rel_pos_bias_table in both)."""
    built = _attention('table', window_size=(7, 7))
    loaded = RelativeAttention2d(DIM, dim_head=DIM_HEAD, rel_pos_type='table', window_size=size, key_context_kernel=3)
    loaded.load_state_dict(built.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(built.relative_position_bias(*size), loaded.relative_position_bias(*size),
                                   rtol=0, atol=1e-6)
        x = torch.randn(2, DIM, *size)
        torch.testing.assert_close(built(x), loaded.eval()(x), rtol=1e-5, atol=1e-6)


def test_table_resized_when_loading_another_size():
    """A table learned for a 9x9 map loads into a module built for 7x7 (resized, as timm does for checkpoints)."""
    source = RelativeAttention2d(DIM, dim_head=DIM_HEAD, rel_pos_type='table', window_size=(9, 9))
    target = RelativeAttention2d(DIM, dim_head=DIM_HEAD, rel_pos_type='table', window_size=(7, 7))
    target.load_state_dict(source.state_dict())
    assert target.rel_pos.relative_position_bias_table.shape == (13 * 13, HEADS)
    # the centre (zero offset) value survives the resize
    centre_src = source.rel_pos.relative_position_bias_table.detach()[(17 * 17) // 2]
    centre_dst = target.rel_pos.relative_position_bias_table.detach()[(13 * 13) // 2]
    torch.testing.assert_close(centre_dst, centre_src, atol=1e-5, rtol=1e-4)


def test_non_square_table_of_another_size_names_the_problem():
    source = RelativeAttention2d(DIM, dim_head=DIM_HEAD, rel_pos_type='table', window_size=(8, 6))
    target = RelativeAttention2d(DIM, dim_head=DIM_HEAD, rel_pos_type='table', window_size=(7, 7))
    with pytest.raises(ValueError, match=r'table of 165 offsets is not square.*model built for that size'):
        target.load_state_dict(source.state_dict())


def test_from_attention2d_keeps_timms_values():
    torch.manual_seed(0)
    timm_attn = Attention2d(DIM, DIM, dim_head=DIM_HEAD).eval()
    ours = RelativeAttention2d.from_attention2d(timm_attn, rel_pos_type='none').eval()
    x = torch.randn(2, DIM, 4, 5)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), timm_attn(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match='head-first'):
        RelativeAttention2d.from_attention2d(torch.nn.Conv2d(1, 1, 1))


# --- FlexAttention ------------------------------------------------------------------------------------------------
# one shape (astroformer_small's S4 at 5x7) so the CPU compile (about 20 s) is shared by the tests below

FLEX_SHAPE = (2, 256, 5, 7)
needs_flex = pytest.mark.skipif(not has_flex_attention(), reason=f'torch {torch.__version__} has no FlexAttention')


def _small_s4(attn_impl: str) -> RelativeAttention2d:
    torch.manual_seed(0)
    attn = RelativeAttention2d(256, dim_head=32, rel_pos_type='table', window_size=(32, 32), key_context_kernel=3,
                               attn_impl=attn_impl).eval()
    with torch.no_grad():
        attn.rel_pos.relative_position_bias_table.normal_()
    return attn


@needs_flex
def test_flex_forward_equals_explicit_and_sdpa_on_cpu():
    """Compiled FlexAttention inference with the table resized for the runtime size (32x32 build, 5x7 map)."""
    x = torch.randn(*FLEX_SHAPE)
    with torch.no_grad():
        outs = {impl: _small_s4(impl)(x) for impl in ('flex', 'sdpa', 'explicit')}
    assert (outs['flex'] - outs['explicit']).abs().max() <= 1e-5
    assert (outs['flex'] - outs['sdpa']).abs().max() <= 1e-5


@needs_flex
def test_flex_training_on_cpu_is_refused_with_the_reason():
    attn = _small_s4('flex').train()
    with pytest.raises(NotImplementedError, match="attn_impl='flex' cannot train on CPU.*'auto' or 'sdpa'"):
        attn(torch.randn(*FLEX_SHAPE))


class _FakeInput:
    """What ``_use_flex`` reads of its input: the device and whether it requires grad."""

    def __init__(self, device: str, requires_grad: bool = False):
        self.is_cuda, self.device, self.requires_grad = device == 'cuda', torch.device(device), requires_grad


@pytest.mark.parametrize('case, device, grad, frozen, attn_drop, expected', [
    ('table trained on CUDA', 'cuda', True, False, 0.0, True),
    ('CUDA inference', 'cuda', False, False, 0.0, False),
    ('CUDA, frozen table, input needs no grad', 'cuda', True, True, 0.0, False),
    ('CUDA with attention dropout', 'cuda', True, False, 0.1, False),
    ('table trained on CPU', 'cpu', True, False, 0.0, False),
])
def test_auto_chooses_flex_only_to_train_the_table_on_cuda(monkeypatch, case, device, grad, frozen, attn_drop,
                                                             expected):
    """attn_impl='auto': FlexAttention exactly when the table is trained on CUDA (torch >= 2.6, no attention
    dropout: flex has none); SDPA otherwise. The decision alone, faked devices, so it is checked without a GPU."""
    import timm_astro.layers.relative_attention as ra
    monkeypatch.setattr(ra, '_FLEX_TRAINS_TABLE', True)
    attn = _attention('table', attn_drop=attn_drop)
    attn.rel_pos.relative_position_bias_table.requires_grad_(not frozen)
    with torch.set_grad_enabled(grad):
        assert attn._use_flex(_FakeInput(device)) is expected, case
    attn.attn_impl = 'sdpa'
    with torch.set_grad_enabled(grad):
        assert attn._use_flex(_FakeInput(device)) is False, 'sdpa never runs flex'


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA: FlexAttention has no backward on CPU')
@pytest.mark.skipif(not has_flex_attention(training=True), reason='FlexAttention table gradients need torch >= 2.6')
def test_flex_training_on_cuda_equals_explicit(monkeypatch):
    x = torch.randn(*FLEX_SHAPE, device='cuda')
    results = {}
    import timm_astro.layers.relative_attention as ra
    flex_calls = []
    run_flex = ra._run_flex_attention
    monkeypatch.setattr(ra, '_run_flex_attention', lambda *a, **kw: flex_calls.append(1) or run_flex(*a, **kw))
    for impl in ('auto', 'explicit'):
        attn = _small_s4(impl).cuda()
        results[impl] = _outputs_and_grads(attn, x)
    assert flex_calls, "'auto' did not train the table through FlexAttention on CUDA"
    (out_flex, grads_flex), (out_ref, grads_ref) = results['auto'], results['explicit']
    torch.testing.assert_close(out_flex, out_ref, atol=1e-4, rtol=1e-4)
    for name in grads_ref:
        torch.testing.assert_close(grads_flex[name], grads_ref[name], atol=1e-4, rtol=1e-3, msg=name)


def test_bad_configuration_messages():
    with pytest.raises(ValueError, match='multiple of dim_head'):
        RelativeAttention2d(60, dim_head=16)
    with pytest.raises(ValueError, match=r"rel_pos_type must be one of \('fourier', 'table', 'none'\), got 'mlp'"):
        RelativeAttention2d(64, dim_head=16, rel_pos_type='mlp')
    with pytest.raises(ValueError, match=r"attn_impl must be one of \('auto', 'flex', 'sdpa', 'explicit'\)"):
        RelativeAttention2d(64, dim_head=16, attn_impl='fast')
    with pytest.raises(ValueError, match="attn_impl='flex' .* needs rel_pos_type='table', got 'fourier'"):
        RelativeAttention2d(64, dim_head=16, rel_pos_type='fourier', attn_impl='flex')
    with pytest.raises(ValueError, match='shared_rel_pos must be None'):
        RelativeAttention2d(64, dim_head=16)(torch.randn(1, 64, 2, 2), shared_rel_pos=torch.zeros(1))
