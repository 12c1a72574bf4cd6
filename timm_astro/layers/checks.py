"""Argument and input checks whose errors say what was wrong and what is expected."""
from typing import Optional, Sequence, Tuple, Union

import torch

from timm.models import register_notrace_function

__all__ = ['check_image_batch', 'check_img_size', 'check_in_chans', 'check_out_indices', 'reject_drop_block']


def _sizes_that_work(multiple_of: int, min_size: int) -> str:
    if multiple_of > 1:
        return 'height and width multiples of {} and at least {} (e.g. {}, {}, {})'.format(
            multiple_of, min_size, min_size, min_size + multiple_of, 4 * min_size)
    return 'height and width of at least {}'.format(min_size)


@register_notrace_function  # reads concrete shapes; a leaf call for torch.fx tracing
def check_image_batch(x: torch.Tensor, model_name: str, in_chans: int, multiple_of: int = 1, min_size: int = 1):
    """Return ``x`` unchanged if it is a ``[B, in_chans, H, W]`` batch with H, W >= min_size and multiples of
    ``multiple_of`` (B may be 0); raise a ValueError saying what was expected and what was given otherwise."""
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
        raise ValueError('{} runs on inputs with {}, got shape {}'.format(
            model_name, _sizes_that_work(multiple_of, min_size), list(x.shape)))
    return x


def check_img_size(img_size: Tuple[int, int], model_name: str, multiple_of: int = 1, min_size: int = 1) -> None:
    """Refuse at construction an ``img_size`` that the model's own forward would refuse."""
    height, width = img_size
    if height < min_size or width < min_size or height % multiple_of or width % multiple_of:
        raise ValueError(f'{model_name}: img_size={tuple(img_size)} is not a size it runs at; it runs on inputs with '
                         f'{_sizes_that_work(multiple_of, min_size)}')


def check_in_chans(in_chans: int, model_name: str) -> None:
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f'{model_name}: in_chans must be a positive number of input channels, got {in_chans!r}')


def check_out_indices(out_indices: Union[int, Sequence[int]], num_levels: int, model_name: str) -> None:
    """``features_only`` indices as timm reads them: an int n (the last n levels) or indices of levels."""
    valid = f'indices 0..{num_levels - 1} (0 is the stem; negative ones count from the end) or an int 1..{num_levels}'
    if isinstance(out_indices, int):
        ok = 1 <= out_indices <= num_levels
    else:
        ok = all(isinstance(i, int) and -num_levels <= i < num_levels for i in out_indices)
    if not ok:
        raise ValueError(
            f'{model_name}: out_indices={out_indices!r} names a feature level it does not have; it has {num_levels} '
            f'levels: {valid}')


def reject_drop_block(drop_block_rate: Optional[float]) -> None:
    """DropBlock is deliberately unsupported: raise if a rate is given (train.py passes None unless asked)."""
    if drop_block_rate is not None:
        raise ValueError(
            f'drop_block_rate={drop_block_rate}: DropBlock is deliberately unsupported by Astroformer models. '
            "Occluding regions changes a galaxy's morphology label, and the paper found DropBlock (like CutMix and "
            'Cutout) harmful on Galaxy10 DECals; use drop_path_rate (stochastic depth) for regularisation instead.')
