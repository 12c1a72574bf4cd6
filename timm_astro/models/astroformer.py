"""The paper's Astroformer (arXiv:2304.05350): astroformer_0 ... astroformer_5 on timm's MaxxVit.

Astroformer is CoAtNet with a C-C-C-T stack: a two-conv stem (S0), MBConv stages with squeeze-excitation (S1-S3)
and one transformer stage with global relative attention (S4), at the CoAtNet-0..5 widths. timm's ``MaxxVit``
builds exactly that from a config, so this file only configures it and swaps S4's attention for one whose relative
position bias is derived for the runtime feature size: timm's (and the official code's) bias is fixed at
construction, so those models only run at the size they were built for, and timm's train.py never passes
``img_size``. Parameters and state-dict keys are unchanged, so official checkpoints load as they are.
"""
from typing import Any, Dict, List, Optional, Tuple, Union

import torch

from timm.layers import to_2tuple
from timm.models import generate_default_cfgs, register_model
from timm.models.maxxvit import MaxxVit, MaxxVitCfg, TransformerBlock2d

from timm_astro.layers.checks import check_image_batch, check_img_size, check_in_chans, reject_drop_block
from timm_astro.layers.relative_attention import RelativeAttention2d
from timm_astro.models._factory import astroformer_pretrained_cfg, create_astroformer

__all__ = ['Astroformer', 'astroformer_cfg']

INPUT_MULTIPLE = 32  # total stride: S4's feature map is input / 32
MIN_INPUT_SIZE = 64  # S4 needs at least a 2x2 map for the relative bias to mean anything


def astroformer_cfg(embed_dim: Tuple[int, ...], depths: Tuple[int, ...], stem_width: int, head_hidden_size: int):
    """The official layout: MaxxVit defaults (MBConv with SE, pre-norm transformer with a relative position
    table, ``vit_eff`` init) with block types C-C-C-T."""
    return MaxxVitCfg(
        embed_dim=embed_dim,
        depths=depths,
        block_type=('C', 'C', 'C', 'T'),
        stem_width=stem_width,
        head_hidden_size=head_hidden_size,
    )


class Astroformer(MaxxVit):
    """MaxxVit in the C-C-C-T layout whose transformer stage runs at any input size (multiples of 32, >= 64)."""

    def __init__(
            self,
            cfg: MaxxVitCfg,
            img_size: Union[int, Tuple[int, int]] = 224,
            in_chans: int = 3,
            *,
            drop_block_rate: Optional[float] = None,
            attn_impl: str = 'auto',
            model_name: str = 'astroformer',
            **kwargs: Any,
    ):
        """
        Args:
            cfg: MaxxVit configuration (see ``astroformer_cfg``).
            img_size: Size the relative position tables are built for; other sizes run without rebuilding.
            drop_block_rate: Must be None: DropBlock is unsupported (it harms morphology labels).
            attn_impl: S4's attention kernel, see ``RelativeAttention2d``.
            model_name: Name used in error messages (the factory passes the registered name).
            **kwargs: MaxxVit's other arguments (``num_classes``, ``global_pool``, ``drop_rate``, ``drop_path_rate``,
                ``device``, ``dtype``) and config overlays (``transformer_*``, ``conv_*``, cfg fields); others raise
                TypeError.
        """
        reject_drop_block(drop_block_rate)
        check_in_chans(in_chans, model_name)
        check_img_size(to_2tuple(img_size), model_name, INPUT_MULTIPLE, MIN_INPUT_SIZE)
        super().__init__(cfg, img_size=img_size, in_chans=in_chans, **kwargs)
        self.model_name = model_name
        self.input_multiple = INPUT_MULTIPLE  # attributes: TorchScript cannot read module-level ints
        self.min_input_size = MIN_INPUT_SIZE
        for stage in self.stages:
            for block in stage.blocks:
                if isinstance(block, TransformerBlock2d):
                    block.attn = RelativeAttention2d.from_attention2d(
                        block.attn, rel_pos_type='table', window_size=block.attn.rel_pos.window_size,
                        attn_impl=attn_impl)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: Optional[Union[int, List[int]]] = None,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = 'NCHW',
            intermediates_only: bool = False,
    ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """MaxxVit's, after checking the input size."""
        x = check_image_batch(x, self.model_name, self.in_chans, self.input_multiple, self.min_input_size)
        return super().forward_intermediates(
            x, indices=indices, norm=norm, stop_early=stop_early, output_fmt=output_fmt,
            intermediates_only=intermediates_only)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = check_image_batch(x, self.model_name, self.in_chans, self.input_multiple, self.min_input_size)
        x = self.stem(x)
        x = self.stages(x)
        x = self.norm(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # defined here (not inherited) so torch.fx autowraps this module's input check
        x = self.forward_features(x)
        x = self.forward_head(x)
        return x


model_cfgs = dict(
    astroformer_0=astroformer_cfg((96, 192, 384, 768), (2, 3, 5, 2), stem_width=64, head_hidden_size=768),
    astroformer_1=astroformer_cfg((96, 192, 384, 768), (2, 6, 14, 2), stem_width=64, head_hidden_size=768),
    astroformer_2=astroformer_cfg((128, 256, 512, 1024), (2, 6, 14, 2), stem_width=128, head_hidden_size=1024),
    astroformer_3=astroformer_cfg((192, 384, 768, 1536), (2, 6, 14, 2), stem_width=192, head_hidden_size=1536),
    astroformer_4=astroformer_cfg((192, 384, 768, 1536), (2, 12, 28, 2), stem_width=192, head_hidden_size=1536),
    astroformer_5=astroformer_cfg((256, 512, 1280, 2048), (2, 12, 28, 2), stem_width=192, head_hidden_size=2048),
)


def _create_astroformer(variant: str, pretrained: bool = False, **kwargs: Any) -> Astroformer:
    return create_astroformer(Astroformer, variant, model_cfgs[variant], pretrained=pretrained, **kwargs)


def _cfg(**kwargs: Any) -> Dict[str, Any]:
    return astroformer_pretrained_cfg(
        input_size=(3, 224, 224), pool_size=(7, 7), min_input_size=(3, MIN_INPUT_SIZE, MIN_INPUT_SIZE),
        crop_pct=0.95, first_conv='stem.conv1', **kwargs)


# No pretrained weights have been published for any Astroformer (the official code has none either): the
# 'untrained' tags carry the architecture's data config only. Add a tag with hf_hub_id when weights exist.
default_cfgs = generate_default_cfgs({f'astroformer_{i}.untrained': _cfg() for i in range(6)})


@register_model
def astroformer_0(pretrained: bool = False, **kwargs: Any) -> Astroformer:
    """Astroformer-0: CoAtNet-0 widths, C-C-C-T (23.5M params at 1000 classes)."""
    return _create_astroformer('astroformer_0', pretrained=pretrained, **kwargs)


@register_model
def astroformer_1(pretrained: bool = False, **kwargs: Any) -> Astroformer:
    """Astroformer-1: CoAtNet-1 widths, C-C-C-T (38.1M params)."""
    return _create_astroformer('astroformer_1', pretrained=pretrained, **kwargs)


@register_model
def astroformer_2(pretrained: bool = False, **kwargs: Any) -> Astroformer:
    """Astroformer-2: CoAtNet-2 widths, C-C-C-T (67.4M params)."""
    return _create_astroformer('astroformer_2', pretrained=pretrained, **kwargs)


@register_model
def astroformer_3(pretrained: bool = False, **kwargs: Any) -> Astroformer:
    """Astroformer-3: CoAtNet-3 widths, C-C-C-T (150.4M params)."""
    return _create_astroformer('astroformer_3', pretrained=pretrained, **kwargs)


@register_model
def astroformer_4(pretrained: bool = False, **kwargs: Any) -> Astroformer:
    """Astroformer-4: CoAtNet-4 widths, C-C-C-T (242.6M params)."""
    return _create_astroformer('astroformer_4', pretrained=pretrained, **kwargs)


@register_model
def astroformer_5(pretrained: bool = False, **kwargs: Any) -> Astroformer:
    """Astroformer-5: CoAtNet-5 widths, C-C-C-T (595.6M params)."""
    return _create_astroformer('astroformer_5', pretrained=pretrained, **kwargs)
