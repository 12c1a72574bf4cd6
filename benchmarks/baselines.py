"""The alternatives Astroformer is measured against, built so that rows compare like with like.

* ``PlainRelativeAttention`` / ``plain_design_model``: the S4 of the design document for 32x32 images, written the
  direct way a user would write it: a QKV projection plus a depthwise convolution giving the position term,
  ``softmax(q^T k + q^T r) v`` with ``r = DWConv(x)`` ("combined standard and relative attention weights applied to
  values"), one head, no 1/sqrt(d) scaling, no norm, no MLP, no output projection, the N x N matrices materialised
  with ``torch.bmm``, plus the residual. The whole model is a full-resolution model (speed.py: astroformer_base)
  with its transformer stage replaced by this block, so stem, convolution stages and head are identical.
* ``official_maxxvit``: timm's own ``MaxxVit`` built with the official astroformer_N layout (the same parameters;
  its relative position bias is fixed at construction, so it runs only at the size it was built for).
* ``free_attention_kernel``: a benchmark-side patch that replaces the fused attention kernel by its value input (as if
  the kernel cost nothing), every other op kept: the bound on what any attention kernel could gain.

The explicit form and the other kernels and relative-position forms need nothing here: they are the models' own
``attn_impl`` and ``rel_pos_type`` (``timm_astro.layers.RelativeAttention2d``).
"""
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

import timm
import timm_astro  # noqa: F401  registers the astroformer models
from timm.models.maxxvit import MaxxVit
from timm_astro.layers import RelativeAttention2d
from timm_astro.models.astroformer import model_cfgs as paper_cfgs

__all__ = ['PlainRelativeAttention', 'plain_design_model', 'official_maxxvit', 'free_attention_kernel']


class PlainRelativeAttention(nn.Module):
    """The design document's relative attention, written plainly: one head over all H*W positions of an NCHW map.

    ``out = x + V softmax(Q^T K + Q^T R)^T`` with ``Q, K, V`` a 1x1 projection of ``x`` and ``R`` a depthwise
    convolution of ``x`` (the position term). Both ``[B, N, N]`` weight matrices are materialised and summed.
    """

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.position = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(x).flatten(2).chunk(3, dim=1)  # each [B, C, N]
        r = self.position(x).flatten(2)
        q_t = q.transpose(1, 2)
        standard = torch.bmm(q_t, k)  # [B, N, N]
        relative = torch.bmm(q_t, r)  # [B, N, N]
        attn = (standard + relative).softmax(dim=-1)
        out = torch.bmm(v, attn.transpose(1, 2))  # [B, C, N]
        return x + out.view(B, C, H, W)


def plain_design_model(name: str = 'astroformer_base', num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """A full-resolution model (stem, convolution stages, head) with S4 replaced by ``PlainRelativeAttention``."""
    model = timm.create_model(name, num_classes=num_classes, **kwargs)
    dim = model.num_features
    model.stages[-1] = PlainRelativeAttention(dim)
    return model


def official_maxxvit(name: str, num_classes: int = 10, img_size: int = 224, **kwargs: Any) -> MaxxVit:
    """timm's MaxxVit with the official layout of ``name`` (astroformer_0 ... astroformer_5), built for img_size."""
    return MaxxVit(paper_cfgs[name], img_size=img_size, num_classes=num_classes, **kwargs)


class _ValuesForAttention(TorchFunctionMode):
    """Answers ``F.scaled_dot_product_attention(q, k, v, ...)`` with ``v``; every other torch call runs unchanged."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            return args[2] if len(args) > 2 else kwargs['value']
        return func(*args, **kwargs)


def free_attention_kernel(model: nn.Module) -> int:
    """Make every ``RelativeAttention2d`` of ``model`` skip the fused kernel (its output is the values); returns how
    many were patched.

    The projections, the relative-bias features, the reshapes and the rest of the model still run, so a training
    step of the patched model is the fastest any attention kernel could make the model: the ratio against the
    explicit row bounds the fused/explicit speed-up on this machine. Patches instances, never the library code.
    """
    patched = 0
    for module in model.modules():
        if isinstance(module, RelativeAttention2d):
            original = module.forward

            def forward(*args: Any, _original=original, **kwargs: Any) -> torch.Tensor:
                with _ValuesForAttention():
                    return _original(*args, **kwargs)

            module.forward = forward
            patched += 1
    return patched
