"""Relative attention: the logits the fused kernel sees are q.(k + r)/sqrt(d) + W[i - j], W depends on i - j only,
fused and explicit paths agree (values and gradients), and training runs in the fused kernel."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import timm
from timm_astro.layers import RelativeAttention2d, relative_offset_index

DIM, DIM_HEAD = 64, 16
HEADS = DIM // DIM_HEAD


def _attention(rel_pos_type: str, window_size=(6, 6), key_context_kernel: int = 3) -> RelativeAttention2d:
    torch.manual_seed(0)
    attn = RelativeAttention2d(
        DIM, dim_head=DIM_HEAD, rel_pos_type=rel_pos_type, window_size=window_size,
        key_context_kernel=key_context_kernel).eval()
    with torch.no_grad():  # make the kernel large enough to matter in the comparisons
        for name, p in attn.rel_pos.named_parameters():
            if 'amplitudes' in name or 'table' in name:
                p.normal_(std=1.0)
    return attn


def _reference_bias(attn: RelativeAttention2d, height: int, width: int) -> torch.Tensor:
    """W[h, i, j] computed offset by offset from the parameters, independently of the module's code."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing='ij')
    pos = torch.stack([ys.flatten(), xs.flatten()], -1).double()
    offsets = pos[:, None, :] - pos[None, :, :]  # [N, N, 2], i - j
    rel_pos = attn.rel_pos
    if hasattr(rel_pos, 'relative_position_frequencies'):
        freqs = rel_pos.relative_position_frequencies.detach().double()  # [heads, m, 2]
        amps = rel_pos.relative_position_amplitudes.detach().double()
        phase = torch.einsum('hmc,ijc->hijm', freqs, offsets)
        return (amps[:, None, None, :, 0] * phase.cos() + amps[:, None, None, :, 1] * phase.sin()).sum(-1).float()
    win_h, win_w = rel_pos.window_size
    table = rel_pos.relative_position_bias_table.detach().t().reshape(1, HEADS, 2 * win_h - 1, 2 * win_w - 1)
    if (height, width) != (win_h, win_w):
        table = F.interpolate(table, size=(2 * height - 1, 2 * width - 1), mode='bicubic', align_corners=True)
    dy = (offsets[..., 0] + height - 1).long()
    dx = (offsets[..., 1] + width - 1).long()
    return table[0][:, dy, dx]


def _reference_qkv(attn: RelativeAttention2d, x: torch.Tensor):
    """q, k + r, v from the raw conv weights, per head, [B, heads, N, d]."""
    B, C, H, W = x.shape
    qkv = F.conv2d(x, attn.qkv.weight, attn.qkv.bias).reshape(B, HEADS, 3, DIM_HEAD, H * W)
    r = F.conv2d(x, attn.key_context.weight, attn.key_context.bias, padding=1, groups=C).reshape(B, HEADS, DIM_HEAD, H * W)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1] + r, qkv[:, :, 2]
    return q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)


@pytest.mark.parametrize('rel_pos_type', ['table', 'fourier'])
@pytest.mark.parametrize('size', [(6, 6), (5, 8), (9, 7)])
def test_kernel_logits_equal_definition(rel_pos_type, size):
    """What forward hands to F.scaled_dot_product_attention gives exactly q.(k + r)/sqrt(d) + W[i - j]."""
    attn = _attention(rel_pos_type)
    x = torch.randn(2, DIM, *size)
    with torch.no_grad():
        q, k, v, mask = attn.fused_inputs(x)
        kernel_logits = q @ k.transpose(-1, -2) * attn.scale + (0 if mask is None else mask)
        q_ref, k_ref, v_ref = _reference_qkv(attn, x)
        expected = q_ref @ k_ref.transpose(-1, -2) / math.sqrt(DIM_HEAD) + _reference_bias(attn, *size)
    torch.testing.assert_close(kernel_logits, expected, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(v[..., :DIM_HEAD], v_ref)
    assert not v[..., DIM_HEAD:].any(), 'padding of v must be zero so it never reaches the output'


def test_table_mask_is_the_bias_broadcast_over_batch():
    attn = _attention('table')
    x = torch.randn(3, DIM, 6, 6)
    _, _, _, mask = attn.fused_inputs(x)
    assert mask.shape == (1, HEADS, 36, 36)  # 4-D: stays on the fused kernel
    torch.testing.assert_close(mask[0], attn.relative_position_bias(6, 6), rtol=0, atol=0)


def test_fourier_runs_maskless_with_folded_channels():
    attn = _attention('fourier')
    q, k, v, mask = attn.fused_inputs(torch.randn(2, DIM, 6, 6))
    assert mask is None
    extra = 2 * attn.rel_pos.num_freqs
    assert q.shape[-1] == k.shape[-1] == v.shape[-1] == DIM_HEAD + extra


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
        index = relative_offset_index(height, width)
        for offset in index.unique()[::7]:  # every pair with one offset has one value
            values = bias[:, index == offset]
            torch.testing.assert_close(values, values[:, :1].expand_as(values), atol=1e-5, rtol=1e-5)


def test_bias_is_input_independent():
    attn = _attention('fourier')
    before = attn.relative_position_bias(6, 6).clone()
    attn(torch.randn(2, DIM, 6, 6))
    torch.testing.assert_close(attn.relative_position_bias(6, 6), before, rtol=0, atol=0)


@pytest.mark.parametrize('rel_pos_type', ['table', 'fourier'])
def test_fused_and_explicit_paths_agree(rel_pos_type):
    """Same outputs and the same gradients for every parameter, including the kernel W."""
    x = torch.randn(2, DIM, 5, 7)
    results = []
    for fused in (True, False):
        attn = _attention(rel_pos_type).train()
        attn.fused_attn = fused
        out = attn(x)
        out.square().mean().backward()
        results.append((out.detach(), {n: p.grad.clone() for n, p in attn.named_parameters()}))
    (out_fused, grads_fused), (out_explicit, grads_explicit) = results
    torch.testing.assert_close(out_fused, out_explicit, atol=1e-5, rtol=1e-4)
    assert grads_fused.keys() == grads_explicit.keys()
    for name in grads_fused:
        assert grads_fused[name].abs().sum() > 0, f'no gradient reaches {name}'
        torch.testing.assert_close(grads_fused[name], grads_explicit[name], atol=1e-5, rtol=1e-3, msg=name)


def _attention_ops(model: torch.nn.Module, x: torch.Tensor, train: bool):
    model.train(train)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        if train:
            model(x).sum().backward()
        else:
            with torch.no_grad():
                model(x)
    return {e.name for e in prof.events()}


@pytest.mark.parametrize('train', [False, True])
def test_full_resolution_model_runs_in_fused_kernel(train):
    """No softmax over an N x N matrix anywhere, in inference and in training (forward and backward)."""
    model = timm.create_model('astroformer_small', num_classes=5)
    ops = _attention_ops(model, torch.randn(2, 3, 16, 16), train)
    fused = {n for n in ops if n.startswith('aten::_scaled_dot_product') and 'attention' in n}
    assert fused, f'no fused attention kernel ran: {sorted(ops)}'
    if train:
        assert any(n.endswith('_backward') for n in fused), 'the backward pass left the fused kernel'
    assert not {n for n in ops if 'softmax' in n}, 'an explicit softmax ran'


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


def test_bad_configuration_messages():
    with pytest.raises(ValueError, match='multiple of dim_head'):
        RelativeAttention2d(60, dim_head=16)
    with pytest.raises(ValueError, match="'table' or 'fourier'"):
        RelativeAttention2d(64, dim_head=16, rel_pos_type='mlp')
