"""Argument and input checks whose errors say what was wrong and what is expected."""
from typing import Optional

import torch

from timm.models import register_notrace_function

__all__ = ['check_image_batch', 'reject_drop_block']


@register_notrace_function  # reads concrete shapes; a leaf call for torch.fx tracing
def check_image_batch(x: torch.Tensor, model_name: str, in_chans: int, multiple_of: int = 1, min_size: int = 1):
    """Return ``x`` unchanged if it is a ``[B, in_chans, H, W]`` batch with H, W >= min_size and multiples of
    ``multiple_of``; raise a ValueError saying what was expected and what was given otherwise."""
    if x.dim() != 4:
        raise ValueError(
            '{} expects an image batch of shape [B, {}, H, W], got a {}-D tensor of shape {}'.format(
                model_name, in_chans, x.dim(), list(x.shape)))
    if x.shape[1] != in_chans:
        raise ValueError(
            '{} expects {} input channels, shape [B, {}, H, W], got shape {}'.format(
                model_name, in_chans, in_chans, list(x.shape)))
    height, width = x.shape[-2], x.shape[-1]
    if height < min_size or width < min_size or height % multiple_of != 0 or width % multiple_of != 0:
        if multiple_of > 1:
            sizes = 'height and width multiples of {} and at least {} (e.g. {}, {}, {})'.format(
                multiple_of, min_size, min_size, min_size + multiple_of, 4 * min_size)
        else:
            sizes = 'height and width of at least {}'.format(min_size)
        raise ValueError('{} runs on inputs with {}, got shape {}'.format(model_name, sizes, list(x.shape)))
    return x


def reject_drop_block(drop_block_rate: Optional[float]) -> None:
    """DropBlock is deliberately unsupported: raise if a rate is given (train.py passes None unless asked)."""
    if drop_block_rate is not None:
        raise ValueError(
            f'drop_block_rate={drop_block_rate}: DropBlock is deliberately unsupported by Astroformer models. '
            "Occluding regions changes a galaxy's morphology label, and the paper found DropBlock (like CutMix and "
            'Cutout) harmful on Galaxy10 DECals; use drop_path_rate (stochastic depth) for regularisation instead.')
