"""What both Astroformer families register with timm in the same way: the pretrained-cfg fields and the factory."""
from typing import Any, Dict, Type

import torch.nn as nn

from timm.models import build_model_with_cfg
from timm.models.maxxvit import checkpoint_filter_fn

from timm_astro.layers.checks import check_out_indices

__all__ = ['astroformer_pretrained_cfg', 'create_astroformer']

NUM_FEATURE_LEVELS = 5  # both families: the stem and four stages


def astroformer_pretrained_cfg(**kwargs: Any) -> Dict[str, Any]:
    """A pretrained cfg with the fields both families share (paper, licence, normalisation, classifier)."""
    return {
        'num_classes': 1000, 'fixed_input_size': False, 'interpolation': 'bicubic',
        'mean': (0.5, 0.5, 0.5), 'std': (0.5, 0.5, 0.5), 'classifier': 'head.fc',
        'license': 'apache-2.0', 'paper_ids': 'arXiv:2304.05350',
        'paper_name': 'Astroformer: More Data Might not be all you need for Classification',
        **kwargs,
    }


def create_astroformer(model_cls: Type[nn.Module], variant: str, model_cfg: Any, pretrained: bool = False,
                       **kwargs: Any) -> nn.Module:
    """``build_model_with_cfg`` for either family; the model learns its registered name for its error messages.

    Checkpoints go through timm's loading, which unwraps train.py files (EMA weights first) and strips ``module.``
    and ``_orig_mod.`` prefixes, then through timm's MaxxVit filter, which resizes relative position tables built
    for another size (timm's rule, the one the models also apply at runtime).
    """
    if kwargs.get('features_only') and 'out_indices' in kwargs:
        check_out_indices(kwargs['out_indices'], NUM_FEATURE_LEVELS, variant)
    return build_model_with_cfg(
        model_cls,
        variant,
        pretrained,
        model_cfg=model_cfg,
        feature_cfg=dict(flatten_sequential=True),
        pretrained_filter_fn=checkpoint_filter_fn,
        model_name=variant,
        **kwargs,
    )
