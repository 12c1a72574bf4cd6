"""All 8 symmetries of the square (the group D4) as a training augmentation, for an unchanged timm train.py.

A galaxy has no preferred orientation: its 4 rotations by 90 degrees and their 4 reflections are equally likely
views of it. timm's train.py offers horizontal and vertical flips only, which reach 4 of the 8 (its ``--hflip`` and
``--vflip``; a rotation by 90 degrees is not among them). ``RandomD4`` draws one of the 8 uniformly per image; the
pixels are permuted, never interpolated.

train.py builds its augmentation with ``timm.data.create_transform``, which calls
``timm.data.transforms_factory.transforms_imagenet_train``. Importing this module wraps that function so that every
training transform it builds gets ``RandomD4`` just before the image becomes a tensor; evaluation transforms are
untouched. So a recipe turns it on with train.py's own option, which imports modules before the model is built::

    device_modules: [timm_astro, timm_astro.data.d4_augment]

(``--device-modules timm_astro timm_astro.data.d4_augment`` on the command line). train.py's own flips may stay
on: a uniform draw from D4 composed with any independent random symmetry is still uniform over D4. The crop must be
square (a rotation by 90 degrees would swap height and width): a non-square ``img_size`` is refused when the
transform is built. ``uninstall()`` restores timm's function.
"""
import functools
from typing import Any, Callable, Optional

import torch
from PIL import Image

from timm_astro.errors import UserError

__all__ = ['RandomD4', 'D4_TRANSPOSES', 'install', 'uninstall', 'is_installed']

# the 8 elements of D4 as PIL transposes: identity, 3 rotations, 4 reflections (2 flips and the 2 diagonals)
D4_TRANSPOSES = (None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270,
                 Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.TRANSPOSE,
                 Image.Transpose.TRANSVERSE)


def _tensor_view(image: torch.Tensor, index: int) -> torch.Tensor:
    """The same 8 views of a ``(..., H, W)`` tensor, in the order of ``D4_TRANSPOSES`` (PIL rotates
    counter-clockwise, as ``torch.rot90`` over (H, W) does)."""
    if index == 0:
        return image
    if index < 4:
        return torch.rot90(image, index, dims=(-2, -1))
    if index == 4:
        return image.flip(-1)
    if index == 5:
        return image.flip(-2)
    if index == 6:
        return image.transpose(-2, -1)
    return torch.rot90(image, 2, dims=(-2, -1)).transpose(-2, -1)


class RandomD4(torch.nn.Module):
    """One of the 8 symmetries of the square, drawn uniformly (torch's random generator, so timm's per-worker
    seeding applies), for a PIL image or a ``(..., H, W)`` tensor."""

    def forward(self, image: Any) -> Any:
        index = int(torch.randint(len(D4_TRANSPOSES), ()))
        if isinstance(image, torch.Tensor):
            return _tensor_view(image, index)
        return image if index == 0 else image.transpose(D4_TRANSPOSES[index])

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'


def _is_to_tensor(transform: Any) -> bool:
    return type(transform).__name__ in ('MaybeToTensor', 'ToTensor', 'ToNumpy', 'MaybePILToTensor', 'PILToTensor')


def _with_d4(build: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(build)
    def transforms_imagenet_train(img_size: Any = 224, *args: Any, **kwargs: Any) -> Any:
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)[-2:]
        if len(set(size)) != 1:
            raise UserError(f'D4 augmentation (timm_astro.data.d4_augment) needs a square training crop: a rotation '
                            f'by 90 degrees would swap height and width; got img_size {img_size}')
        built = build(img_size, *args, **kwargs)
        compose = built[0] if isinstance(built, tuple) else built  # separate=True: (primary, secondary, final)
        steps = compose.transforms
        at = next((i for i, t in enumerate(steps) if _is_to_tensor(t)), len(steps))
        steps.insert(at, RandomD4())
        return built
    transforms_imagenet_train.timm_astro_d4 = build  # the original, for uninstall
    return transforms_imagenet_train


def is_installed() -> bool:
    from timm.data import transforms_factory
    return hasattr(transforms_factory.transforms_imagenet_train, 'timm_astro_d4')


def install() -> None:
    """Make every training transform timm builds from now on end its image steps with ``RandomD4`` (idempotent)."""
    from timm.data import transforms_factory
    if not is_installed():
        transforms_factory.transforms_imagenet_train = _with_d4(transforms_factory.transforms_imagenet_train)


def uninstall() -> None:
    """Restore timm's own training transform."""
    from timm.data import transforms_factory
    original: Optional[Callable[..., Any]] = getattr(transforms_factory.transforms_imagenet_train, 'timm_astro_d4',
                                                     None)
    if original is not None:
        transforms_factory.transforms_imagenet_train = original


install()
