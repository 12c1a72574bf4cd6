"""Full-resolution Astroformer for small images: astroformer_small / base / large.

("Full-resolution" in prose, ``fullres`` in code identifiers: the design document calls it resolution-preserving.)
C-C-C-T like the paper, but no stage ever reduces the spatial size: a 32x32 image is still 32x32 when the
transformer stage attends over all of its positions, which keeps the fine detail small images (CIFAR, Galaxy10
thumbnails) have little of. Shapes for a B x 3 x H x W batch, expansion e:

    stem S0   Conv3x3-BN-ReLU, Conv3x3-BN-ReLU                      -> B x 32 x H x W
    S1        stage blocks, + 1x1 projection of S0's output          -> B x 32e x H x W
    S2        stage blocks, + 1x1 projection of S1's output          -> B x 32e^2 x H x W
    S3        stage blocks                                           -> B x 32e^3 x H x W
    S4        timm's pre-norm TransformerBlock2d, relative attention over all H*W positions (shape kept; with
              ``transformer_stride=2`` it average-pools 2x2 first and attends over H/2*W/2, an option to
              let larger inputs through the convolutions without S4's quadratic cost)
    head      global average pool -> flatten -> linear

Stage block: depthwise 3x3 (D-Conv) -> BN -> act -> 1x1 expansion (E-Conv) -> BN, plus a skip (1x1 projection
where channels change). S4 is timm's MaxxVit stage with its attention swapped (as the paper family does) for
``softmax(q.(k + r)/sqrt(d) + W[i - j]) v``, r a depthwise conv of the input joining the keys and W a learned kernel
over relative offsets (``rel_pos_type``, see ``timm_astro.layers.relative_attention``).

W defaults to the band-limited Fourier form with 16 frequencies, provisionally: in the real-galaxy study so far
(benchmarks/RESULTS.md, "Which form of W": about 160 training steps, 100 test images, 3 seeds) no form of W is
measurably more accurate than another, and the default was picked partly after test scores were seen; the new
study of issue 25 is to decide it on validation only. What holds regardless: it trains on the fused attention
kernel, at 0.56 times the table's CPU step time and 0.31 times its memory. ``rel_pos_type='table'`` is the paper's
Eq. 1.
"""
from dataclasses import dataclass, replace
from typing import Any, Dict, List, Mapping, Optional, Set, Tuple, Union

import torch
import torch.nn as nn

from timm.layers import ClassifierHead, ConvNormAct, DropPath, calculate_drop_path_rates, to_2tuple
from timm.layers.helpers import get_device_dtype
from timm.models import checkpoint_seq, generate_default_cfgs, register_model
from timm.models._features import feature_take_indices
from timm.models.maxxvit import MaxxVitStage, MaxxVitTransformerCfg

from timm_astro.layers.checks import check_image_batch, check_img_size, check_in_chans, reject_drop_block
from timm_astro.layers.relative_attention import RelativeAttention2d
from timm_astro.models._factory import astroformer_pretrained_cfg, create_astroformer

__all__ = ['AstroformerFullRes', 'AstroformerFullResCfg', 'kwargs_from_weights']


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
    rel_pos_type: str = 'fourier'  # 'fourier' (folded into q/k), 'table' (the paper's W: a value per offset), 'none'
    rel_pos_freqs: int = 16  # frequencies per head for 'fourier': 2x this many extra q/k channels
    key_context_kernel: int = 3  # depthwise conv r joining the keys, 0 to disable
    transformer_stride: int = 1  # 2: S4 average-pools 2x2 first (timm's strided TransformerBlock2d), a quarter
                                 # of the positions to attend over: larger inputs for the convolutions at S4's cost
    attn_impl: str = 'auto'  # S4's kernel: 'auto', 'flex', 'sdpa' or 'explicit' (see RelativeAttention2d)


class Stem(nn.Module):
    """S0: Conv3x3-BN-act twice, stride 1 (a module, not a Sequential, so that features_only keeps it whole)."""

    def __init__(self, in_chs: int, out_chs: int, act_layer: str = 'relu', device=None, dtype=None):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.conv1 = ConvNormAct(in_chs, out_chs, 3, act_layer=act_layer, **dd)
        self.conv2 = ConvNormAct(out_chs, out_chs, 3, act_layer=act_layer, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x))


class StageBlock(nn.Module):
    """D-Conv -> BN -> act -> E-Conv -> BN with a residual skip; never changes the spatial size.

    Not timm's DepthwiseSeparableConv: that has no projection shortcut where channels change, as the design's
    blocks do, and other state-dict keys.
    """

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
            drop_path: List[float],
            stage_skip: bool = False,
            kernel_size: int = 3,
            act_layer: str = 'relu',
            device=None,
            dtype=None,
    ):
        dd = {'device': device, 'dtype': dtype}
        super().__init__()
        self.grad_checkpointing = False
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
            model_name: str = 'astroformer',
            device=None,
            dtype=None,
            **kwargs: Any,
    ):
        """
        Args:
            cfg: Architecture.
            img_size: Size a ``'table'`` kernel is built for (``'fourier'``: its longest initial period); any size runs.
            in_chans: Input channels.
            num_classes: Classes, 0 for no classifier (pooled features).
            global_pool: Global pooling type, '' for none (unpooled features).
            drop_rate: Dropout before the classifier.
            drop_path_rate: Stochastic depth, rising linearly over the blocks to this rate.
            drop_block_rate: Must be None: DropBlock is unsupported (it harms morphology labels).
            model_name: Name used in error messages (the factory passes the registered name).
            **kwargs: Overrides of fields of ``cfg`` (e.g. ``rel_pos_type='table'``); others raise TypeError.
        """
        super().__init__()
        reject_drop_block(drop_block_rate)
        check_in_chans(in_chans, model_name)
        if kwargs:
            cfg = replace(cfg, **kwargs)  # TypeError for anything that is not a cfg field
        if cfg.transformer_stride not in (1, 2):
            raise ValueError(f'{model_name}: transformer_stride={cfg.transformer_stride}; expected 1 (attend over '
                             f'every position) or 2 (average-pool 2x2 before S4)')
        check_img_size(to_2tuple(img_size), model_name, min_size=cfg.transformer_stride)
        dd = {'device': device, 'dtype': dtype}
        self.model_name = model_name
        self.img_size = to_2tuple(img_size)
        self.in_chans = in_chans
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.drop_rate = drop_rate

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
                drop_path=dpr[i],
                stage_skip=cfg.stage_skip[i],
                kernel_size=cfg.kernel_size,
                act_layer=cfg.act_layer,
                **dd,
            ))
            self.feature_info.append(dict(num_chs=out_chs, reduction=1, module=f'stages.{i}'))
            in_chs = out_chs
        s4_size = tuple(s // cfg.transformer_stride for s in self.img_size)
        transformer_cfg = MaxxVitTransformerCfg(
            dim_head=cfg.dim_head, expand_ratio=cfg.mlp_ratio, norm_layer=cfg.norm_layer, rel_pos_type='none')
        stage = MaxxVitStage(
            in_chs, in_chs, stride=cfg.transformer_stride, depth=1, block_types='T', transformer_cfg=transformer_cfg,
            drop_path=dpr[-1], **dd)
        for block in stage.blocks:
            block.attn = RelativeAttention2d.from_attention2d(
                block.attn,
                rel_pos_type=cfg.rel_pos_type,
                window_size=s4_size,
                rel_pos_freqs=cfg.rel_pos_freqs,
                rel_pos_init_period=max(s4_size),
                key_context_kernel=cfg.key_context_kernel,
                attn_impl=cfg.attn_impl,
            )
        stages.append(stage)
        self.feature_info.append(dict(
            num_chs=in_chs, reduction=cfg.transformer_stride, module=f'stages.{len(cfg.depths)}'))
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
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


def kwargs_from_weights(state_dict: Mapping[str, torch.Tensor]) -> Dict[str, Any]:
    """The architecture arguments a full-resolution model's weights were trained with: ``rel_pos_type`` (and
    ``rel_pos_freqs``), and ``stem_width`` / ``transformer_stride`` where they are not the variants' own (32 and 1).

    Weights do not name their W form, and the default has changed twice (Fourier with 4 frequencies, the table,
    Fourier with 16): loaders and exports read the form from the weights instead of trusting the current default.
    The same holds for the width and S4's pooling, which a run may set through train.py's ``--model-kwargs``: an
    export that dropped them would not load back.
    """
    out: Dict[str, Any] = {}
    for key, value in state_dict.items():
        if key.endswith('attn.rel_pos.relative_position_frequencies'):
            out = {'rel_pos_type': 'fourier', 'rel_pos_freqs': int(value.shape[1])}
            break
        if key.endswith('attn.rel_pos.relative_position_bias_table'):
            out = {'rel_pos_type': 'table'}
            break
    else:
        if any('.attn.' in key for key in state_dict):  # S4 attention without any W
            out = {'rel_pos_type': 'none'}
    stem = state_dict.get('stem.conv1.conv.weight')
    if stem is not None and stem.shape[0] != AstroformerFullResCfg.stem_width:
        out['stem_width'] = int(stem.shape[0])
    if any(key.endswith('.norm1.norm.weight') for key in state_dict):  # timm's strided block: norm1 -> (norm, down)
        out['transformer_stride'] = 2
    return out


model_cfgs = dict(
    astroformer_small=AstroformerFullResCfg(expansion=2, depths=(1, 1, 1)),
    astroformer_base=AstroformerFullResCfg(expansion=2, depths=(2, 2, 2)),
    astroformer_large=AstroformerFullResCfg(expansion=3, depths=(2, 3, 3)),
)


def _create_astroformer_fullres(variant: str, pretrained: bool = False, **kwargs: Any) -> AstroformerFullRes:
    return create_astroformer(AstroformerFullRes, variant, model_cfgs[variant], pretrained=pretrained, **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return astroformer_pretrained_cfg(
        input_size=(3, 32, 32), pool_size=(32, 32), crop_pct=1.0, first_conv='stem.conv1.conv', **kwargs)


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
