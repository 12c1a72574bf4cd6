"""Full-resolution (resolution-preserving) Astroformer for small images: astroformer_small / base / large.

C-C-C-T like the paper, but no stage ever reduces the spatial size: a 32x32 image is still 32x32 when the
transformer stage attends over all of its positions, which keeps the fine detail small images (CIFAR, Galaxy10
thumbnails) have little of. Shapes for a B x 3 x H x W batch, expansion e:

    stem S0   Conv3x3-BN-ReLU, Conv3x3-BN-ReLU                      -> B x 32 x H x W
    S1        stage blocks, + 1x1 projection of S0's output          -> B x 32e x H x W
    S2        stage blocks, + 1x1 projection of S1's output          -> B x 32e^2 x H x W
    S3        stage blocks                                           -> B x 32e^3 x H x W
    S4        pre-norm transformer block, relative attention over all H*W positions (shape kept)
    head      global average pool -> flatten -> linear

Stage block: depthwise 3x3 (D-Conv) -> BN -> act -> 1x1 expansion (E-Conv) -> BN, plus a skip (1x1 projection
where channels change). S4's attention is ``softmax(q.(k + r)/sqrt(d) + W[i - j]) v`` with r a depthwise conv of
the input joining the keys and W a learned, band-limited kernel over relative offsets that the fused attention
kernel takes without a mask (see ``timm_astro.layers.relative_attention``).
"""
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Dict, List, Optional, Set, Tuple, Union

import torch
import torch.nn as nn

from timm.layers import (
    ClassifierHead, ConvMlp, ConvNormAct, DropPath, calculate_drop_path_rates, get_act_layer, get_norm_layer,
    to_2tuple,
)
from timm.layers.helpers import get_device_dtype
from timm.models._features import feature_take_indices
from timm.models import build_model_with_cfg, checkpoint_seq, generate_default_cfgs, register_model

from timm_astro.layers.checks import check_image_batch, reject_drop_block
from timm_astro.layers.relative_attention import RelativeAttention2d

__all__ = ['AstroformerFullRes', 'AstroformerFullResCfg']


@dataclass
class AstroformerFullResCfg:
    """Architecture of a full-resolution Astroformer."""
    stem_width: int = 32
    expansion: int = 2  # channel multiplier per convolution stage
    depths: Tuple[int, int, int] = (1, 1, 1)  # stage blocks in S1, S2, S3
    stage_skip: Tuple[bool, bool, bool] = (True, True, False)  # add a 1x1 projection of the stage input (S1, S2)
    kernel_size: int = 3
    act_layer: str = 'relu'
    dim_head: int = 32
    mlp_ratio: float = 4.
    norm_layer: str = 'layernorm2d'  # transformer pre-norm
    rel_pos_type: str = 'fourier'  # 'fourier' (folded into q/k, maskless fused attention) or 'table' (mask)
    rel_pos_freqs: int = 4  # frequencies per head for 'fourier': 2x this many extra q/k channels
    key_context_kernel: int = 3  # depthwise conv r joining the keys, 0 to disable


class Stem(nn.Module):
    """S0: Conv3x3-BN-act twice, stride 1."""

    def __init__(self, in_chs: int, out_chs: int, act_layer: str = 'relu', device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        act_layer = get_act_layer(act_layer)
        self.conv1 = ConvNormAct(in_chs, out_chs, 3, act_layer=act_layer, **dd)
        self.conv2 = ConvNormAct(out_chs, out_chs, 3, act_layer=act_layer, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class StageBlock(nn.Module):
    """D-Conv -> BN -> act -> E-Conv -> BN with a residual skip; never changes the spatial size."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            kernel_size: int = 3,
            act_layer: str = 'relu',
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        act_layer = get_act_layer(act_layer)
        self.conv_dw = ConvNormAct(in_chs, in_chs, kernel_size, groups=in_chs, act_layer=act_layer, **dd)
        self.conv_pw = ConvNormAct(in_chs, out_chs, 1, apply_act=False, **dd)
        self.shortcut = nn.Identity() if in_chs == out_chs else nn.Conv2d(in_chs, out_chs, 1, **dd)
        self.drop_path = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.drop_path(self.conv_pw(self.conv_dw(x)))


class ConvStage(nn.Module):
    """Stage blocks, optionally plus a 1x1 projection of the stage's input (the design's stage adjustment)."""

    def __init__(
            self,
            in_chs: int,
            out_chs: int,
            depth: int,
            stage_skip: bool = False,
            kernel_size: int = 3,
            act_layer: str = 'relu',
            drop_path: Union[float, List[float]] = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.grad_checkpointing = False
        drop_path = drop_path if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.Sequential(*[
            StageBlock(in_chs if i == 0 else out_chs, out_chs, kernel_size, act_layer, drop_path[i], **dd)
            for i in range(depth)
        ])
        self.stage_skip = nn.Conv2d(in_chs, out_chs, 1, **dd) if stage_skip else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            out = checkpoint_seq(self.blocks, x)
        else:
            out = self.blocks(x)
        if self.stage_skip is not None:
            out = out + self.stage_skip(x)
        return out


class TransformerBlock(nn.Module):
    """Pre-norm transformer block on an NCHW map: relative attention and an MLP, stochastic depth on both."""

    def __init__(
            self,
            dim: int,
            dim_head: int = 32,
            mlp_ratio: float = 4.,
            norm_layer: str = 'layernorm2d',
            rel_pos_type: str = 'fourier',
            rel_pos_freqs: int = 4,
            key_context_kernel: int = 3,
            ref_size: Tuple[int, int] = (32, 32),
            drop_path: float = 0.,
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        norm_layer = get_norm_layer(norm_layer)
        self.norm1 = norm_layer(dim, **dd)
        self.attn = RelativeAttention2d(
            dim,
            dim_head=dim_head,
            rel_pos_type=rel_pos_type,
            window_size=ref_size,
            rel_pos_freqs=rel_pos_freqs,
            key_context_kernel=key_context_kernel,
            **dd,
        )
        self.drop_path1 = DropPath(drop_path) if drop_path > 0. else nn.Identity()
        self.norm2 = norm_layer(dim, **dd)
        self.mlp = ConvMlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU, **dd)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0. else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x


class TransformerStage(nn.Module):
    """S4: one (or more) transformer blocks at the incoming resolution."""

    def __init__(self, dim: int, depth: int = 1, drop_path: Union[float, List[float]] = 0., **block_kwargs: Any):
        super().__init__()
        self.grad_checkpointing = False
        drop_path = drop_path if isinstance(drop_path, (list, tuple)) else [drop_path] * depth
        self.blocks = nn.Sequential(*[TransformerBlock(dim, drop_path=drop_path[i], **block_kwargs) for i in range(depth)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)


class AstroformerFullRes(nn.Module):
    """Full-resolution Astroformer: C-C-C-T with every stage at the input resolution."""

    def __init__(
            self,
            cfg: AstroformerFullResCfg,
            img_size: Union[int, Tuple[int, int]] = 32,
            in_chans: int = 3,
            num_classes: int = 1000,
            global_pool: str = 'avg',
            drop_rate: float = 0.,
            drop_path_rate: float = 0.,
            drop_block_rate: Optional[float] = None,
            device=None,
            dtype=None,
            **kwargs: Any,
    ):
        """
        Args:
            cfg: Architecture.
            img_size: Reference input size (initial frequency range of the relative bias); any size runs.
            in_chans: Input channels.
            num_classes: Classes, 0 for no classifier (pooled features).
            global_pool: Global pooling type, '' for none (unpooled features).
            drop_rate: Dropout before the classifier.
            drop_path_rate: Stochastic depth, rising linearly over the blocks to this rate.
            drop_block_rate: Must be None: DropBlock is unsupported (it harms morphology labels).
            **kwargs: Overrides of fields of ``cfg`` (e.g. ``rel_pos_type='table'``); others raise TypeError.
        """
        super().__init__()
        reject_drop_block(drop_block_rate)
        if kwargs:
            cfg = replace(cfg, **kwargs)  # TypeError for anything that is not a cfg field
        dd = {'device': device, 'dtype': dtype}
        self.model_name = 'astroformer'  # set to the registered name by the factory, used in error messages
        self.img_size = to_2tuple(img_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.stem = Stem(in_chans, cfg.stem_width, act_layer=cfg.act_layer, **dd)
        self.feature_info = [dict(num_chs=cfg.stem_width, reduction=1, module='stem')]

        dpr = calculate_drop_path_rates(drop_path_rate, list(cfg.depths) + [1], stagewise=True)  # per block
        stages = []
        in_chs = cfg.stem_width
        for i, depth in enumerate(cfg.depths):
            out_chs = in_chs * cfg.expansion
            stages.append(ConvStage(
                in_chs,
                out_chs,
                depth=depth,
                stage_skip=cfg.stage_skip[i],
                kernel_size=cfg.kernel_size,
                act_layer=cfg.act_layer,
                drop_path=dpr[i],
                **dd,
            ))
            self.feature_info.append(dict(num_chs=out_chs, reduction=1, module=f'stages.{i}'))
            in_chs = out_chs
        stages.append(TransformerStage(
            in_chs,
            depth=1,
            drop_path=dpr[-1],
            dim_head=cfg.dim_head,
            mlp_ratio=cfg.mlp_ratio,
            norm_layer=cfg.norm_layer,
            rel_pos_type=cfg.rel_pos_type,
            rel_pos_freqs=cfg.rel_pos_freqs,
            key_context_kernel=cfg.key_context_kernel,
            ref_size=self.img_size,
            **dd,
        ))
        self.feature_info.append(dict(num_chs=in_chs, reduction=1, module=f'stages.{len(cfg.depths)}'))
        self.stages = nn.Sequential(*stages)

        self.num_features = self.head_hidden_size = in_chs
        self.head = ClassifierHead(in_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate, **dd)

    @torch.jit.ignore
    def no_weight_decay(self) -> Set[str]:
        """The relative-position kernels (tables or their Fourier coefficients) are not decayed."""
        return {n for n, _ in self.named_parameters() if 'relative_position' in n}

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False) -> Dict[str, Any]:
        return dict(stem=r'^stem', blocks=r'^stages\.(\d+)' if coarse else r'^stages\.(\d+)\.blocks\.(\d+)')

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for stage in self.stages:
            stage.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None) -> None:
        self.num_classes = num_classes
        self.head.reset(num_classes, global_pool, in_features=self.num_features, **get_device_dtype(self))
        if global_pool is not None:
            self.global_pool = global_pool

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """Features of the stem and every stage (all at input resolution), and optionally the final features.

        Args:
            x: Input batch.
            indices: Take the last n if int, all if None, those listed if a sequence (0 is the stem).
            norm: Unused (there is no final norm), kept for the timm API.
            stop_early: Stop after the last requested feature.
            output_fmt: Only 'NCHW'.
            intermediates_only: Return only the intermediate features.
        """
        assert output_fmt in ('NCHW',), 'Output shape must be NCHW.'
        x = check_image_batch(x, self.model_name, self.in_chans)
        intermediates = []
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        x = self.stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        stages = self.stages if torch.jit.is_scripting() or not stop_early else self.stages[:max_index]
        for feat_idx, stage in enumerate(stages, start=1):
            x = stage(x)
            if feat_idx in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(
            self,
            indices: Union[int, List[int]] = 1,
            prune_norm: bool = False,
            prune_head: bool = True,
    ) -> List[int]:
        """Drop the stages after the last requested feature (and the classifier)."""
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        if max_index < len(self.stages):
            self.stages = self.stages[:max_index]
            self.num_features = self.head_hidden_size = self.feature_info[max_index]['num_chs']
            prune_head = True
        if prune_head:
            self.reset_classifier(0, '')
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_batch(x, self.model_name, self.in_chans)
        x = self.stem(x)
        x = self.stages(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits) if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


model_cfgs = dict(
    astroformer_small=AstroformerFullResCfg(expansion=2, depths=(1, 1, 1)),
    astroformer_base=AstroformerFullResCfg(expansion=2, depths=(2, 2, 2)),
    astroformer_large=AstroformerFullResCfg(expansion=3, depths=(2, 3, 3)),
)


def checkpoint_filter_fn(state_dict: Dict[str, torch.Tensor], model: nn.Module) -> Dict[str, torch.Tensor]:
    """Unwrap train.py checkpoints (EMA first) and strip DDP ``module.`` prefixes."""
    for key in ('state_dict_ema', 'model_ema', 'state_dict', 'model'):
        if isinstance(state_dict.get(key, None), dict):
            state_dict = state_dict[key]
            break
    return {k[7:] if k.startswith('module.') else k: v for k, v in state_dict.items()}


def _create_astroformer_fullres(variant: str, pretrained: bool = False, **kwargs: Any) -> AstroformerFullRes:
    model = build_model_with_cfg(
        AstroformerFullRes,
        variant,
        pretrained,
        model_cfg=model_cfgs[variant.split('.')[0]],
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(flatten_sequential=True),
        **kwargs,
    )
    if isinstance(model, AstroformerFullRes):
        model.model_name = variant
    return model


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return {
        'num_classes': 1000, 'input_size': (3, 32, 32), 'pool_size': (32, 32),
        'crop_pct': 1.0, 'interpolation': 'bicubic', 'fixed_input_size': False,
        'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5),
        'first_conv': 'stem.conv1.conv', 'classifier': 'head.fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2304.05350',
        'paper_name': 'Astroformer: More Data Might not be all you need for Classification',
        **kwargs,
    }


default_cfgs = generate_default_cfgs({
    'astroformer_small.untrained': _cfg(),
    'astroformer_base.untrained': _cfg(),
    'astroformer_large.untrained': _cfg(),
})


@register_model
def astroformer_small(pretrained: bool = False, **kwargs: Any) -> AstroformerFullRes:
    """Full-resolution Astroformer, expansion 2, one block per convolution stage (~1M params)."""
    return _create_astroformer_fullres('astroformer_small', pretrained=pretrained, **kwargs)


@register_model
def astroformer_base(pretrained: bool = False, **kwargs: Any) -> AstroformerFullRes:
    """Full-resolution Astroformer, expansion 2, two blocks per convolution stage."""
    return _create_astroformer_fullres('astroformer_base', pretrained=pretrained, **kwargs)


@register_model
def astroformer_large(pretrained: bool = False, **kwargs: Any) -> AstroformerFullRes:
    """Full-resolution Astroformer, expansion 3, (2, 3, 3) blocks per convolution stage."""
    return _create_astroformer_fullres('astroformer_large', pretrained=pretrained, **kwargs)
