"""Relative attention for Astroformer: ``softmax_j(q_i . (k_j + r_j) / sqrt(d) + W_h[i - j]) v_j`` over a 2-D map.

``W_h[i - j]`` is the paper's static, input-independent kernel over relative offsets (Eq. 1). Its forms
(``rel_pos_type``), all functions of ``i - j`` only and valid at any feature-map size:

* ``'table'``, ``RelPosBiasTable``: timm's ``RelPosBias``, one learned value per head and 2-D offset (the official
  models' layout and state-dict keys). At another size the table is resized with timm's
  ``resize_rel_pos_bias_table``, the rule of timm's checkpoint loading, so running a model at a new size equals
  loading its weights into a model built for that size.
* ``'fourier'``, ``RelPosBiasFourier``: a band-limited kernel ``W_h[d] = sum_m a_hm cos(w_hm . d) + b_hm sin(w_hm . d)``
  with learned amplitudes and frequencies. It factorises exactly into per-position features,
  ``W_h[i - j] = f_h(i) . g_h(j)``, which are appended to q and k: SDPA then runs without a mask, forward and
  backward, for ``2 * num_freqs`` extra channels per head.
* ``'none'``: no W at all (timm's ``Attention2d`` without ``rel_pos``): the maskless fused kernel.

Both implement ``RelPosBiasBase``, what ``RelativeAttention2d`` needs of a W.

Kernels (``attn_impl``): ``'sdpa'`` is ``F.scaled_dot_product_attention`` with the table as a 4-D mask. On CPU its
flash kernel takes a mask that needs no grad, but a mask that requires grad (training the table) sends it to the
math path, which keeps ``batch x heads x N^2`` intermediates: CPU training with the table costs about the explicit
form's time and memory. ``'flex'`` is FlexAttention with a ``score_mod`` that adds ``table[h, offset(i, j)]``
inside the kernel (no N x N tensor, gradients into the table), compiled; torch has no FlexAttention backward on
CPU, so there it serves inference only. ``'auto'`` picks flex on CUDA when the table is trained, SDPA otherwise.
``'explicit'`` materialises ``softmax(logits) @ v`` (the reference; also what timm's ``TIMM_FUSED_ATTN=0`` selects).
"""
import functools
import math
from typing import Any, Callable, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.jit import Final

from timm.layers import RelPosBias, is_exporting, resize_rel_pos_bias_table, trunc_normal_, use_fused_attn
from timm.layers.pos_embed_rel import gen_relative_position_index
from timm.models import register_notrace_module

try:
    from torch.nn.attention.flex_attention import flex_attention
except ImportError:  # torch < 2.5
    flex_attention = None

__all__ = [
    'ATTN_IMPLS', 'REL_POS_TYPES', 'RelPosBiasBase', 'RelPosBiasTable', 'RelPosBiasFourier', 'RelativeAttention2d',
    'has_flex_attention',
]

# 'table' rather than timm's 'bias': every form here is a bias; this one is timm's per-offset table (RelPosBias)
REL_POS_TYPES = ('fourier', 'table', 'none')
ATTN_IMPLS = ('auto', 'flex', 'sdpa', 'explicit')
# gradients into tensors captured by a score_mod (the table) need torch >= 2.6
# major.minor only: a 2.6 pre-release or vendor build ('2.6.0a0+...nv25.01') has it too, which TorchVersion's
# ordering would put before 2.6
_FLEX_TRAINS_TABLE = flex_attention is not None and tuple(map(int, torch.__version__.split('.')[:2])) >= (2, 6)


def has_flex_attention(training: bool = False) -> bool:
    """Whether this torch has FlexAttention (and, with ``training``, gradients into the table through it)."""
    return _FLEX_TRAINS_TABLE if training else flex_attention is not None


@functools.cache
def _compiled_flex_attention() -> Callable:
    return torch.compile(flex_attention, dynamic=False)


def _run_flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, score_mod: Callable, scale: float):
    """FlexAttention compiled (eager FlexAttention is an unfused reference); inside torch.compile, called as is."""
    run = flex_attention if torch.compiler.is_compiling() else _compiled_flex_attention()
    return run(q, k, v, score_mod=score_mod, scale=scale)


# a function, not a method: a scripted model's ignored _bias_at calls it on the RecursiveScriptModule, which has no
# uncompiled methods
def _table_at(table: torch.Tensor, window_size: Tuple[int, int], height: int, width: int) -> torch.Tensor:
    """A ``[(2h-1)(2w-1), heads]`` table built for ``window_size`` at a height x width map, by timm's resize rule."""
    if (height, width) == window_size:
        return table
    return resize_rel_pos_bias_table(
        table,
        new_window_size=(height, width),
        new_bias_shape=((2 * height - 1) * (2 * width - 1), table.shape[-1]),
        old_window_size=window_size,
    )


class RelPosBiasBase(nn.Module):
    """What ``RelativeAttention2d`` needs of a relative-position kernel W (the interface of both forms)."""

    def relative_position_bias(self, height: int, width: int) -> torch.Tensor:
        """W as it enters the logits for a height x width map, ``[heads, height * width, height * width]``."""
        raise NotImplementedError

    def offset_kernel(self, height: int, width: int) -> torch.Tensor:
        """W over the offsets of a height x width map, ``[heads, 2 * height - 1, 2 * width - 1]``: entry
        ``[h, dy + height - 1, dx + width - 1]`` is ``W_h[(dy, dx)]``, the zero offset at the centre (for pictures)."""
        raise NotImplementedError

    def fused_inputs(
            self,
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            height: int,
            width: int,
            scale: float,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """q, k, v and the mask to give ``F.scaled_dot_product_attention(..., scale=scale)`` so that its logits are
        ``q . k * scale + W``; q, k, v are ``[B, heads, N, dim_head]``."""
        raise NotImplementedError


class RelPosBiasTable(RelPosBias, RelPosBiasBase):
    """timm's learned relative position table (``relative_position_bias_table``, ``[(2h-1)(2w-1), heads]``) at any
    feature size: timm's own gather at the build size (``window_size``), the table resized by timm's rule at another
    size, and a table of another size in a state dict resized by the same rule on load.
    """

    def table_at(self, height: int, width: int) -> torch.Tensor:
        """The table for a height x width map, ``[(2 * height - 1) * (2 * width - 1), heads]``."""
        return _table_at(self.relative_position_bias_table, tuple(self.window_size), height, width)

    @torch.jit.ignore
    def offset_kernel(self, height: int, width: int) -> torch.Tensor:
        return self.table_at(height, width).t().reshape(-1, 2 * height - 1, 2 * width - 1)  # timm's offset order

    def relative_position_bias(self, height: int, width: int) -> torch.Tensor:
        if height == self.window_size[0] and width == self.window_size[1]:
            return self.get_bias()[0]
        return self._bias_at(height, width)

    # timm's resize and index helpers are not scriptable: a scripted model calls them as Python at other sizes (so
    # torch.jit.save refuses a scripted table model; torch.export has no such limit)
    @torch.jit.ignore
    def _bias_at(self, height: int, width: int) -> torch.Tensor:
        table = _table_at(self.relative_position_bias_table, tuple(self.window_size), height, width)
        return table[gen_relative_position_index((height, width), device=table.device)].permute(2, 0, 1)

    def fused_inputs(
            self,
            q: torch.Tensor,
            k: torch.Tensor,
            v: torch.Tensor,
            height: int,
            width: int,
            scale: float,
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """The bias itself as the mask, 4-D so that it broadcasts over the batch (a 3-D mask leaves the fast kernel)."""
        return q, k, v, self.relative_position_bias(height, width).unsqueeze(0).to(q.dtype)

    @torch.jit.ignore
    def score_mod(self, height: int, width: int, dtype: Optional[torch.dtype] = None) -> Callable:
        """FlexAttention ``score_mod`` adding ``W_h[i - j]`` from the table (in ``dtype``, as the SDPA mask is),
        offsets numbered as timm's index."""
        table = self.table_at(height, width).t().to(dtype)  # [heads, offsets]

        def add_relative_bias(score, b, h, q_idx, kv_idx):
            dy = q_idx // width - kv_idx // width + (height - 1)
            dx = q_idx % width - kv_idx % width + (width - 1)
            return score + table[h, dy * (2 * width - 1) + dx]

        return add_relative_bias

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + 'relative_position_bias_table'
        table = state_dict.get(key, None)
        if table is not None and table.shape != self.relative_position_bias_table.shape:
            try:
                state_dict[key] = resize_rel_pos_bias_table(
                    table, new_window_size=self.window_size, new_bias_shape=self.relative_position_bias_table.shape)
            except ValueError:
                raise ValueError(
                    f'{key}: a table of {table.shape[0]} offsets is not square, so the size it was built for is '
                    f'unknown; load it into a model built for that size (it then runs at {tuple(self.window_size)} '
                    f'too)') from None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class RelPosBiasFourier(RelPosBiasBase):
    """Band-limited relative position bias with learned frequencies, folded into the query and key channels.

    ``W_h[d] = sum_m a_hm cos(w_hm . d) + b_hm sin(w_hm . d)`` for a 2-D offset ``d`` in pixels of the feature map;
    ``fused_inputs`` folds it into q/k without ever building the N x N matrix.
    """

    def __init__(
            self,
            num_heads: int,
            num_freqs: int = 4,
            init_period: int = 32,
            device=None,
            dtype=None,
    ):
        """
        Args:
            num_heads: Attention heads, each with its own kernel.
            num_freqs: Frequencies per head; the kernel costs ``2 * num_freqs`` extra q/k channels.
            init_period: Longest period, in pixels, of the initial frequencies (drawn log-uniform between this
                period and 4 px); training moves them freely.
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.num_heads = num_heads
        self.num_freqs = num_freqs
        self.init_period = init_period
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
            low, high = math.log(2 * math.pi / self.init_period), math.log(math.pi / 2)
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
        query_feat, key_feat = self.factors(height, width)
        return query_feat @ key_feat.transpose(-1, -2)

    @torch.jit.ignore
    def offset_kernel(self, height: int, width: int) -> torch.Tensor:
        freqs = self.relative_position_frequencies
        dy = torch.arange(1 - height, height, device=freqs.device, dtype=freqs.dtype)
        dx = torch.arange(1 - width, width, device=freqs.device, dtype=freqs.dtype)
        phase = freqs[..., 0, None, None] * dy[:, None] + freqs[..., 1, None, None] * dx  # [heads, freqs, 2h-1, 2w-1]
        amps = self.relative_position_amplitudes[..., None, None]
        return (amps[:, :, 0] * phase.cos() + amps[:, :, 1] * phase.sin()).sum(1)

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
        scaling leaves W exact), v zero-padded to the same width (the fused kernels want equal head dims); no mask."""
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

    Parameters and forward contract are those of timm's MaxxVit ``Attention2d`` (qkv 1x1 conv with per-head
    [q | k | v] channels, ``rel_pos``, ``proj``), so official checkpoints load as they are and timm's blocks take
    it in place of theirs. It differs in three ways: W is derived for the runtime map size, the keys can get a
    local-context term ``r = DepthwiseConv(x)`` (the full-resolution design), and the kernel is selectable.
    """
    fused_attn: Final[bool]
    attn_impl: Final[str]

    def __init__(
            self,
            dim: int,
            dim_out: Optional[int] = None,
            dim_head: int = 32,
            bias: bool = True,
            rel_pos_type: str = 'table',
            window_size: Tuple[int, int] = (7, 7),
            rel_pos_freqs: int = 4,
            rel_pos_init_period: int = 32,
            key_context_kernel: int = 0,
            attn_impl: str = 'auto',
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
            rel_pos_type: ``'table'``, ``'fourier'`` or ``'none'`` (see the module docstring).
            window_size: Feature size the table is built for (``'table'`` only).
            rel_pos_freqs: Frequencies per head (``'fourier'`` only).
            rel_pos_init_period: Longest initial period in pixels (``'fourier'`` only).
            key_context_kernel: Kernel of the depthwise conv whose output joins the keys; 0 disables it.
            attn_impl: ``'auto'``, ``'flex'``, ``'sdpa'`` or ``'explicit'`` (see the module docstring); ``'auto'``
                follows timm's fused-attention setting (``TIMM_FUSED_ATTN=0`` means explicit).
            attn_drop: Attention dropout.
            proj_drop: Output projection dropout.
        """
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        dim_out = dim_out or dim
        if dim_out % dim_head:
            raise ValueError(f'attention channels ({dim_out}) must be a multiple of dim_head ({dim_head})')
        if rel_pos_type not in REL_POS_TYPES:
            raise ValueError(f'rel_pos_type must be one of {REL_POS_TYPES}, got {rel_pos_type!r}')
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f'attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}')
        if attn_impl == 'flex':
            if rel_pos_type != 'table':
                raise ValueError(
                    f"attn_impl='flex' adds the table inside FlexAttention, so it needs rel_pos_type='table', got "
                    f"{rel_pos_type!r} (which runs maskless in SDPA already: use attn_impl='auto' or 'sdpa')")
            if flex_attention is None:
                raise ValueError(
                    f"attn_impl='flex' needs torch >= 2.5 (FlexAttention), this is torch {torch.__version__}")
            if attn_drop:
                raise ValueError(f"attn_impl='flex' has no attention dropout: use attn_drop=0 or attn_impl='sdpa'")
        self.num_heads = dim_out // dim_head
        self.dim_head = dim_head
        self.scale = dim_head ** -0.5
        self.attn_impl = attn_impl
        self.fused_attn = attn_impl in ('flex', 'sdpa') or (attn_impl == 'auto' and use_fused_attn())

        self.qkv = nn.Conv2d(dim, dim_out * 3, 1, bias=bias, **dd)
        if key_context_kernel:
            self.key_context = nn.Conv2d(
                dim, dim_out, key_context_kernel, padding=key_context_kernel // 2, groups=dim, bias=bias, **dd)
        else:
            self.key_context = None
        if rel_pos_type == 'table':
            self.rel_pos = RelPosBiasTable(window_size=tuple(window_size), num_heads=self.num_heads, **dd)
        elif rel_pos_type == 'fourier':
            self.rel_pos = RelPosBiasFourier(
                num_heads=self.num_heads, num_freqs=rel_pos_freqs, init_period=rel_pos_init_period, **dd)
        else:
            self.rel_pos = None
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Conv2d(dim_out, dim_out, 1, bias=bias, **dd)
        self.proj_drop = nn.Dropout(proj_drop)

    @classmethod
    def from_attention2d(cls, attn: nn.Module, **kwargs: Any) -> 'RelativeAttention2d':
        """timm's head-first ``Attention2d`` as this module: same channels, heads, biases, dropout and values (qkv,
        proj and any relative position table); ``kwargs`` choose the rest (``rel_pos_type``, ``window_size``, ...)."""
        if not getattr(attn, 'head_first', False):
            raise ValueError(f'expected a head-first timm Attention2d, got {type(attn).__name__}')
        weight = attn.qkv.weight
        module = cls(
            attn.qkv.in_channels, attn.proj.out_channels, dim_head=attn.dim_head, bias=attn.qkv.bias is not None,
            attn_drop=attn.attn_drop.p, proj_drop=attn.proj_drop.p, device=weight.device, dtype=weight.dtype, **kwargs)
        result = module.load_state_dict(attn.state_dict(), strict=False)  # keeps timm's initialisation
        if result.unexpected_keys:
            raise ValueError(
                f'RelativeAttention2d({kwargs}) has no place for {result.unexpected_keys} of {type(attn).__name__}')
        return module

    def relative_position_bias(self, height: int, width: int) -> torch.Tensor:
        """The learned kernel W as it enters the logits for a height x width map, ``[heads, H*W, H*W]`` (zeros for
        ``rel_pos_type='none'``)."""
        if self.rel_pos is None:
            n = height * width
            return self.qkv.weight.new_zeros(self.num_heads, n, n)
        return self.rel_pos.relative_position_bias(height, width)

    def qkv_heads(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k + r and v, each ``[B, heads, H*W, dim_head]`` with unit stride on the channels: SDPA's CPU flash kernel
        needs that and silently takes the N x N math path otherwise."""
        B, _, H, W = x.shape
        N = H * W  # explicit sizes: a view with -1 fails for an empty batch
        qkv = self.qkv(x).view(B, self.num_heads, 3 * self.dim_head, N).transpose(-1, -2).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)
        if self.key_context is not None:
            k = k + self.key_context(x).view(B, self.num_heads, self.dim_head, N).transpose(-1, -2)
        return q, k, v

    def fused_inputs(
            self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        """Exactly what ``forward`` hands to ``F.scaled_dot_product_attention`` (with ``scale=self.scale``)."""
        H, W = x.shape[-2:]
        q, k, v = self.qkv_heads(x)
        if self.rel_pos is None:
            return q, k, v, None
        return self.rel_pos.fused_inputs(q, k, v, H, W, self.scale)

    @torch.jit.ignore
    def attention_probs(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Where the given query positions (flat indices into the H*W map) attend: ``softmax_j`` of their logits,
        ``[B, heads, len(queries), H*W]``; only those rows are computed (for pictures, not for training)."""
        H, W = x.shape[-2:]
        q, k, _ = self.qkv_heads(x)
        logits = (q[:, :, queries] * self.scale) @ k.transpose(-2, -1)
        if self.rel_pos is not None:
            logits = logits + self.rel_pos.relative_position_bias(H, W)[:, queries].unsqueeze(0)
        return logits.softmax(dim=-1)

    @torch.jit.ignore
    def _use_flex(self, x: torch.Tensor) -> bool:
        """Whether this call runs FlexAttention; refuses what torch cannot do (flex training on CPU)."""
        if self.attn_impl == 'sdpa' or not isinstance(self.rel_pos, RelPosBiasTable) or is_exporting():
            return False  # an exported graph takes the SDPA form, same weights
        table = self.rel_pos.relative_position_bias_table
        training = torch.is_grad_enabled() and (x.requires_grad or table.requires_grad)
        if self.attn_impl == 'auto':
            return x.is_cuda and training and _FLEX_TRAINS_TABLE and self.attn_drop.p == 0
        if training and x.device.type == 'cpu':
            raise NotImplementedError(
                f"attn_impl='flex' cannot train on CPU: torch {torch.__version__} has no FlexAttention backward on "
                f"CPU; train with attn_impl='auto' or 'sdpa' (or run under torch.no_grad() for flex inference)")
        if training and not _FLEX_TRAINS_TABLE:
            raise NotImplementedError(
                f"attn_impl='flex' training needs torch >= 2.6 (gradients into the table), this is {torch.__version__}")
        return True

    def forward(self, x: torch.Tensor, shared_rel_pos: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``x``: ``[B, dim, H, W]`` -> ``[B, dim_out, H, W]``. ``shared_rel_pos`` is in the signature because timm's
        blocks pass it (always None in Astroformer); this module derives its own W and refuses a shared one."""
        if shared_rel_pos is not None:
            raise ValueError('RelativeAttention2d derives its own relative position bias; shared_rel_pos must be None')
        B, _, H, W = x.shape
        if not self.fused_attn:
            q, k, v = self.qkv_heads(x)
            attn = (q * self.scale) @ k.transpose(-2, -1)
            if self.rel_pos is not None:
                attn = attn + self.rel_pos.relative_position_bias(H, W).unsqueeze(0)
            attn = self.attn_drop(attn.softmax(dim=-1))
            x = attn @ v
        elif not torch.jit.is_scripting() and self._use_flex(x):
            q, k, v = self.qkv_heads(x)
            x = _run_flex_attention(q, k, v, self.rel_pos.score_mod(H, W, q.dtype), self.scale)
        else:
            q, k, v, mask = self.fused_inputs(x)
            x = F.scaled_dot_product_attention(
                q, k, v,
                attn_mask=mask,
                dropout_p=self.attn_drop.p if self.training else 0.,
                scale=self.scale,
            )
            x = x[..., :self.dim_head]  # the Fourier form pads v
        x = x.transpose(-1, -2).reshape(B, self.num_heads * self.dim_head, H, W)
        x = self.proj(x)
        x = self.proj_drop(x)
        return x
