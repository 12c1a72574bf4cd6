"""Relative attention for Astroformer: ``softmax_j(q_i . (k_j + r_j) / sqrt(d) + W_h[i - j]) v_j`` over a 2-D map.

``W_h[i - j]`` is the paper's static, input-independent kernel over relative offsets (Eq. 1). It comes in two forms
that share one attention module:

* ``RelPosBiasTable``: timm's ``RelPosBias`` (one learned value per head and 2-D offset, the official models' layout),
  extended to derive the bias for whatever feature-map size arrives at runtime. It enters the fused kernel as a 4-D
  mask broadcast over the batch; cheap where the map is small (the paper family's last stage, 7x7 at 224 px).
* ``RelPosBiasFourier``: a band-limited kernel ``W_h[d] = sum_m a_hm cos(w_hm . d) + b_hm sin(w_hm . d)`` with learned
  amplitudes and frequencies. By the angle-difference identities it factorises exactly into per-position query and
  key features, ``W_h[i - j] = f_h(i) . g_h(j)``, so it is folded into extra q/k channels and the fused kernel runs
  without a mask, forward and backward. A mask that requires grad makes the kernel keep ``batch x heads x N^2``
  intermediates (3x slower, ~3x the memory at 32x32, see ../shared/notes/cpu-attention.md); the folded form costs
  ``2 * num_freqs`` extra channels instead. Used by the resolution-preserving family, where N = H*W is large.

Both are functions of ``i - j`` only and resolution independent: a model built for one size runs at another.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.jit import Final

from timm.layers import RelPosBias, resize_rel_pos_bias_table, trunc_normal_, use_fused_attn
from timm.models import register_notrace_module

__all__ = ['RelPosBiasTable', 'RelPosBiasFourier', 'RelativeAttention2d', 'relative_offset_index']


def relative_offset_index(height: int, width: int, device: Optional[torch.device] = None) -> torch.Tensor:
    """Index of the 2-D offset ``i - j`` for every (query i, key j) pair of a height x width map.

    Offsets are numbered row-major over the ``(2 * height - 1) x (2 * width - 1)`` offset grid, the layout of timm's
    relative position tables. Returns a long tensor of shape ``[height * width, height * width]``.
    """
    ys = torch.arange(height, device=device).repeat_interleave(width)
    xs = torch.arange(width, device=device).repeat(height)
    dy = ys[:, None] - ys[None, :] + (height - 1)
    dx = xs[:, None] - xs[None, :] + (width - 1)
    return dy * (2 * width - 1) + dx


class RelPosBiasTable(RelPosBias):
    """timm's learned relative position table, evaluated at the runtime feature size.

    The parameter (``relative_position_bias_table``, ``[(2h-1)(2w-1), heads]``) and its state-dict key are timm's, so
    official Astroformer / MaxxVit weights load unchanged. At the construction size the bias is gathered exactly as
    timm does; at any other size the table, seen as a ``heads x (2h-1) x (2w-1)`` image of offsets, is resized
    bicubically (corners aligned, so the zero offset stays at the centre) and gathered for the new size. A table of
    another size in a state dict is resized on load.
    """

    def __init__(
            self,
            window_size: Tuple[int, int],
            num_heads: int,
            device=None,
            dtype=None,
    ):
        super().__init__(window_size=window_size, num_heads=num_heads, device=device, dtype=dtype)

    def relative_position_bias(self, height: int, width: int) -> torch.Tensor:
        """W as it enters the logits, ``[heads, height * width, height * width]``."""
        if height == self.window_size[0] and width == self.window_size[1]:
            return self.get_bias()[0]
        num_heads = self.relative_position_bias_table.shape[-1]
        table = self.relative_position_bias_table.t().reshape(
            1, num_heads, 2 * self.window_size[0] - 1, 2 * self.window_size[1] - 1)
        table = F.interpolate(table, size=(2 * height - 1, 2 * width - 1), mode='bicubic', align_corners=True)
        index = relative_offset_index(height, width, device=table.device)
        return table.reshape(num_heads, -1)[:, index]

    def fused_inputs(
            self,
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            height: int,
            width: int,
            scale: float,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """q, k, v and the mask for the fused kernel: the bias itself, 4-D so it broadcasts over the batch."""
        return q, k, v, self.relative_position_bias(height, width).unsqueeze(0)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + 'relative_position_bias_table'
        table = state_dict.get(key, None)
        if table is not None and table.shape != self.relative_position_bias_table.shape:
            state_dict[key] = resize_rel_pos_bias_table(
                table, new_window_size=self.window_size, new_bias_shape=self.relative_position_bias_table.shape)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class RelPosBiasFourier(nn.Module):
    """Band-limited relative position bias with learned frequencies, folded into the query and key channels.

    ``W_h[d] = sum_m a_hm cos(w_hm . d) + b_hm sin(w_hm . d)`` for a 2-D offset ``d`` in pixels of the feature map.
    Input independent and exactly a function of ``i - j``; ``relative_position_bias`` materialises it for inspection
    and for the explicit (non-fused) path, ``fused_inputs`` folds it into q/k without ever building the N x N matrix.
    """

    def __init__(
            self,
            num_heads: int,
            num_freqs: int = 4,
            ref_size: Tuple[int, int] = (32, 32),
            device=None,
            dtype=None,
    ):
        """
        Args:
            num_heads: Attention heads, each with its own kernel.
            num_freqs: Frequencies per head; the kernel costs ``2 * num_freqs`` extra q/k channels.
            ref_size: Feature size the frequencies are initialised for (periods from the map size down to 4 px).
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.num_heads = num_heads
        self.num_freqs = num_freqs
        self.ref_size = ref_size
        # [heads, freqs, (y, x)] in radians per pixel, and [heads, freqs, (cos, sin)] amplitudes
        self.relative_position_frequencies = nn.Parameter(torch.empty(num_heads, num_freqs, 2, **dd))
        self.relative_position_amplitudes = nn.Parameter(torch.empty(num_heads, num_freqs, 2, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Spread the frequencies over directions and scales (log-uniform), start from a small random kernel."""
        freqs = self.relative_position_frequencies
        if freqs.is_meta:
            return
        with torch.no_grad():
            low, high = math.log(2 * math.pi / max(self.ref_size)), math.log(math.pi / 2)
            magnitude = torch.empty(freqs.shape[:2], device=freqs.device).uniform_(low, high).exp()
            angle = torch.empty(freqs.shape[:2], device=freqs.device).uniform_(0, math.pi)
            freqs.copy_(torch.stack([magnitude * angle.sin(), magnitude * angle.cos()], dim=-1))
        trunc_normal_(self.relative_position_amplitudes, std=.02)

    def factors(self, height: int, width: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Query and key features with ``f_h(i) . g_h(j) = W_h[i - j]``, each ``[heads, height * width, 2 * freqs]``."""
        freqs = self.relative_position_frequencies
        ys = torch.arange(height, device=freqs.device, dtype=freqs.dtype) - (height - 1) / 2
        xs = torch.arange(width, device=freqs.device, dtype=freqs.dtype) - (width - 1) / 2
        pos = torch.stack([ys.repeat_interleave(width), xs.repeat(height)], dim=-1)  # [N, 2], centred for precision
        phase = torch.einsum('hmc,nc->hnm', freqs, pos)
        cos, sin = phase.cos(), phase.sin()
        a = self.relative_position_amplitudes[:, None, :, 0]  # cos amplitudes, [heads, 1, freqs]
        b = self.relative_position_amplitudes[:, None, :, 1]  # sin amplitudes
        # a cos(p_i - p_j) + b sin(p_i - p_j) = (a cos_i + b sin_i) cos_j + (a sin_i - b cos_i) sin_j
        query_feat = torch.cat([a * cos + b * sin, a * sin - b * cos], dim=-1)
        key_feat = torch.cat([cos, sin], dim=-1)
        return query_feat, key_feat

    def relative_position_bias(self, height: int, width: int) -> torch.Tensor:
        """W as it enters the logits, ``[heads, height * width, height * width]``."""
        query_feat, key_feat = self.factors(height, width)
        return query_feat @ key_feat.transpose(-1, -2)

    def fused_inputs(
            self,
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            height: int,
            width: int,
            scale: float,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """q and k with the kernel's features appended (the query side divided by ``scale`` so that the kernel's
        scaling leaves W exact), v zero-padded to the same width (the fused CPU/GPU kernels want equal head dims)."""
        batch = q.shape[0]
        query_feat, key_feat = self.factors(height, width)
        query_feat = (query_feat / scale).to(q.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        key_feat = key_feat.to(k.dtype).unsqueeze(0).expand(batch, -1, -1, -1)
        q = torch.cat([q, query_feat], dim=-1)
        k = torch.cat([k, key_feat], dim=-1)
        v = F.pad(v, (0, key_feat.shape[-1]))
        return q, k, v, None


@register_notrace_module  # shape-dependent bias construction; a leaf for torch.fx feature extraction
class RelativeAttention2d(nn.Module):
    """Multi-head relative attention over all positions of an NCHW map.

    Channel layout and parameter names follow timm's MaxxVit ``Attention2d`` (qkv 1x1 conv with per-head
    [q | k | v] channels, ``rel_pos``, ``proj``), so official checkpoints load as-is. Optionally the keys get a
    local-context term ``r = DepthwiseConv(x)`` (the resolution-preserving design). The fused path calls
    ``F.scaled_dot_product_attention``; the explicit path materialises ``softmax(logits) @ v`` (reference, and
    ``fused_attn=False`` / ``TIMM_FUSED_ATTN=0``).
    """
    fused_attn: Final[bool]

    def __init__(
            self,
            dim: int,
            dim_out: Optional[int] = None,
            dim_head: int = 32,
            bias: bool = True,
            rel_pos_type: str = 'table',
            window_size: Tuple[int, int] = (7, 7),
            rel_pos_freqs: int = 4,
            key_context_kernel: int = 0,
            attn_drop: float = 0.,
            proj_drop: float = 0.,
            device=None,
            dtype=None,
    ):
        """
        Args:
            dim: Input channels.
            dim_out: Output (and attention) channels, defaults to ``dim``.
            dim_head: Channels per head.
            bias: Bias in the qkv and output projections.
            rel_pos_type: ``'table'`` (one value per offset, mask path) or ``'fourier'`` (folded into q/k).
            window_size: Feature size the table is built for (``'table'``); reference size for ``'fourier'``.
            rel_pos_freqs: Frequencies per head for ``'fourier'``.
            key_context_kernel: Kernel of the depthwise conv whose output joins the keys; 0 disables it.
            attn_drop: Attention dropout.
            proj_drop: Output projection dropout.
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        dim_out = dim_out or dim
        if dim_out % dim_head:
            raise ValueError(f'attention channels ({dim_out}) must be a multiple of dim_head ({dim_head})')
        self.num_heads = dim_out // dim_head
        self.dim_head = dim_head
        self.scale = dim_head ** -0.5
        self.fused_attn = use_fused_attn()

        self.qkv = nn.Conv2d(dim, dim_out * 3, 1, bias=bias, **dd)
        if key_context_kernel:
            if dim_out % dim:
                raise ValueError(f'key context conv is depthwise: dim_out ({dim_out}) must be a multiple of dim ({dim})')
            self.key_context = nn.Conv2d(
                dim, dim_out, key_context_kernel, padding=key_context_kernel // 2, groups=dim, bias=bias, **dd)
        else:
            self.key_context = None
        if rel_pos_type == 'table':
            self.rel_pos = RelPosBiasTable(window_size=window_size, num_heads=self.num_heads, **dd)
        elif rel_pos_type == 'fourier':
            self.rel_pos = RelPosBiasFourier(
                num_heads=self.num_heads, num_freqs=rel_pos_freqs, ref_size=window_size, **dd)
        else:
            raise ValueError(f"rel_pos_type must be 'table' or 'fourier', got {rel_pos_type!r}")
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Conv2d(dim_out, dim_out, 1, bias=bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    def relative_position_bias(self, height: int, width: int) -> torch.Tensor:
        """The learned kernel W as it enters the logits for a height x width map, ``[heads, H*W, H*W]``."""
        return self.rel_pos.relative_position_bias(height, width)

    def qkv_heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k + r and v, each ``[B, heads, H*W, dim_head]``."""
        B, C, H, W = x.shape
        q, k, v = self.qkv(x).view(B, self.num_heads, self.dim_head * 3, -1).chunk(3, dim=2)
        if self.key_context is not None:
            k = k + self.key_context(x).view(B, self.num_heads, self.dim_head, -1)
        return q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2)

    def fused_inputs(
            self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Exactly what ``forward`` hands to ``F.scaled_dot_product_attention`` (with ``scale=self.scale``)."""
        H, W = x.shape[-2:]
        q, k, v = self.qkv_heads(x)
        return self.rel_pos.fused_inputs(q, k, v, H, W, self.scale)

    def forward(self, x: torch.Tensor, shared_rel_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        B, C, H, W = x.shape
        if self.fused_attn:
            q, k, v, mask = self.fused_inputs(x)
            x = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=mask,
                dropout_p=self.attn_drop.p if self.training else 0.,
                scale=self.scale,
            )
            x = x[..., :self.dim_head]
        else:
            q, k, v = self.qkv_heads(x)
            attn = (q * self.scale) @ k.transpose(-2, -1) + self.relative_position_bias(H, W).unsqueeze(0)
            attn = attn.softmax(dim=-1)
            attn = self.attn_drop(attn)
            x = attn @ v
        x = x.transpose(-1, -2).reshape(B, -1, H, W)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x
