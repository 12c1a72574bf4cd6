"""Test-time symmetry: a galaxy image has no preferred orientation, so a classifier may average over the
symmetries of the square.

``'d4'`` is the dihedral group of the square, all 8 of its symmetries: the identity, the rotations by 90, 180 and
270 degrees, and the four reflections (each rotation followed by a horizontal flip). ``'flip'`` is its 4-element
subgroup of flips: identity, horizontal, vertical, both (= rotation by 180). Every view is an exact permutation of
pixels (``torch.rot90`` / ``torch.flip``): nothing is interpolated.
"""
from typing import Callable, Dict, List

import torch

__all__ = ['TTA_MODES', 'tta_views', 'view_probabilities']


def _rot(k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.rot90(x, k, dims=(-2, -1))


def _flip_rot(k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda x: torch.rot90(x, k, dims=(-2, -1)).flip(-1)


TTA_MODES: Dict[str, List[Callable[[torch.Tensor], torch.Tensor]]] = {
    'none': [_rot(0)],
    'flip': [_rot(0), lambda x: x.flip(-1), lambda x: x.flip(-2), lambda x: x.flip(-2, -1)],
    'd4': [_rot(k) for k in range(4)] + [_flip_rot(k) for k in range(4)],
}


def tta_views(x: torch.Tensor, mode: str = 'd4') -> List[torch.Tensor]:
    """The views of an image batch ``[B, C, H, W]`` that ``mode`` averages over, the identity first."""
    if mode not in TTA_MODES:
        raise ValueError(f"tta must be one of {', '.join(TTA_MODES)}, got {mode!r}")
    return [view(x) for view in TTA_MODES[mode]]


@torch.no_grad()
def view_probabilities(model: torch.nn.Module, x: torch.Tensor, mode: str = 'none') -> torch.Tensor:
    """Softmax probabilities of every view, ``[views, B, classes]`` (float32), the identity view first.

    Square batches run all views as one forward pass; non-square ones (a rotation swaps height and width) run the
    two orientations separately.
    """
    views = tta_views(x, mode)
    by_shape: Dict[torch.Size, List[int]] = {}
    for i, view in enumerate(views):
        by_shape.setdefault(view.shape, []).append(i)
    out: List[torch.Tensor] = [None] * len(views)  # type: ignore[list-item]
    for indices in by_shape.values():
        logits = model(torch.cat([views[i] for i in indices]))
        for i, chunk in zip(indices, logits.float().softmax(-1).chunk(len(indices))):
            out[i] = chunk
    return torch.stack(out)
