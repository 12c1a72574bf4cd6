"""Reading image files: one reader, with one rule for which files are opened and how their pixels become 8 bits.

``evaluate``, ``predict`` and ``inspect`` read every image through ``read_image``; an ImageFolder is listed by timm's
own ``find_images_and_targets`` (what ``ReaderImageFolder`` lists) after ``check_folder_tree``, and read by
``ImageFiles``. The rules:

* **Only regular files are opened.** Symbolic links are followed, to files inside the data folder or outside it,
  and what they reach is read if it is a regular file. A dangling link, a link loop, a folder, a FIFO (named pipe;
  opening one waits for a writer forever), a device or a socket is reported with that reason and never opened.
* **A folder tree is walked only if no folder is reached twice.** A link to a folder above it (a loop: timm's walk,
  which follows links, would go round it ~40 levels deep, and 2**40 times with two such links) or a second link to
  the same folder (every image in it counted twice) is refused with one line naming the link.
* **The content decides the format**, not the name: a JPEG named ``.png`` is read as a JPEG; a file Pillow cannot
  identify (text named ``.png``) or decode (a truncated PNG) is unreadable, with Pillow's reason.
* **Pixels become 8 bits by their bit depth.** 8-bit modes convert as Pillow converts them. 16-bit integers (modes
  ``I;16*``, and mode ``I`` holding 0..65535) are scaled, ``v * 255 / 65535`` rounded: Pillow's own ``convert``
  clips them at 255, which turned a 16-bit galaxy almost white. Float pixels (mode ``F``) and integers beyond 16
  bits are refused: they need a stretch (asinh, percentiles) that a reader must not guess.
* **Decompression bombs are refused unread**: an image of more pixels than Pillow's ``Image.MAX_IMAGE_PIXELS`` (over
  which Pillow only warns, up to twice it) is unreadable, with its pixel count.

``read_image`` raises ``UnreadableImage``, a ``UserError`` whose one line names the file and the reason. A dataset
over many files (``ImageFiles``) returns an ``Unreadable`` marker instead, which ``collate_readable`` separates from
the images: a command then reports every such file and scores the rest, and never scores one file with another
file's pixels, as timm's ``ImageDataset`` does when it substitutes the next image for one it cannot read.
"""
import errno
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from timm_astro.errors import UserError

__all__ = [
    'UnreadableImage', 'Unreadable', 'ImageFiles', 'image_problem', 'read_image', 'check_folder_tree',
    'list_image_folder', 'collate_readable', 'to_8bit',
]

PathLike = Union[str, os.PathLike]
SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N')
FLOAT_REASON = ('float pixels (mode F) need a stretch to 8 bits, which this reader does not guess; '
                'save the image with 8- or 16-bit integer pixels')


class UnreadableImage(UserError):
    """A file that is not read as an image, and why: ``'<path>: cannot be read as an image: <reason>'``."""

    def __init__(self, path: PathLike, reason: str):
        super().__init__(f'{path}: cannot be read as an image: {reason}')
        self.path, self.reason = str(path), reason


class Unreadable(NamedTuple):
    """What ``ImageFiles`` returns in place of an image it cannot read."""
    reason: str


def _kind_problem(mode: int) -> Optional[str]:
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return 'a folder, not an image file'
    if stat.S_ISFIFO(mode):
        return 'a named pipe (FIFO), not a regular file: not opened'
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return 'a device, not a regular file: not opened'
    if stat.S_ISSOCK(mode):
        return 'a socket, not a regular file: not opened'
    return 'not a regular file: not opened'


def _os_reason(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return 'a symbolic link loop'
    if isinstance(e, PermissionError):
        return 'permission denied'
    return e.strerror or str(e)


def image_problem(path: PathLike) -> Optional[str]:
    """Why ``path`` would not be opened (links followed; see the module's rules), or None for a regular file."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return 'a symbolic link to a missing file' if os.path.islink(path) else 'not found'
    except OSError as e:
        return _os_reason(e)
    return _kind_problem(mode)


def to_8bit(image: Image.Image) -> Image.Image:
    """``image`` with 8-bit pixels: 16-bit integers scaled by their bit depth, 8-bit modes as they are; raises
    ``ValueError`` (the reason) for pixels that need a stretch."""
    if image.mode == 'F':
        raise ValueError(FLOAT_REASON)
    if image.mode in SIXTEEN_BIT_MODES or image.mode == 'I':
        values = np.asarray(image).astype(np.int64)
        if image.mode == 'I' and values.size and (values.min() < 0 or values.max() > 65535):
            raise ValueError(f'32-bit integer pixels outside 0..65535 (from {values.min()} to {values.max()}) need a '
                             'stretch to 8 bits, which this reader does not guess; save them as 8 or 16 bits')
        return Image.fromarray(((2 * values + 257) // 514).astype(np.uint8))  # round(v * 255 / 65535)
    return image


def _bomb_reason(e: Exception) -> str:
    found = re.search(r'\((\d+) pixels\)', str(e))
    size = f'{int(found.group(1)):,} pixels' if found else 'an image size'
    return (f"{size}, over Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} (PIL.Image.MAX_IMAGE_PIXELS): a possible "
            f'decompression bomb, not decoded')


def read_image(path: PathLike, mode: str = 'RGB') -> Image.Image:
    """The image at ``path`` in ``mode`` ('RGB' or 'L'), read by the module's rules; raises ``UnreadableImage``."""
    problem = image_problem(path)
    if problem:
        raise UnreadableImage(path, problem)
    try:  # non-blocking, and checked again once open: a file swapped for a FIFO since the stat never blocks us
        fd = os.open(path, os.O_RDONLY | getattr(os, 'O_NONBLOCK', 0) | getattr(os, 'O_BINARY', 0))
    except OSError as e:
        raise UnreadableImage(path, _os_reason(e)) from None
    with os.fdopen(fd, 'rb') as f:
        problem = _kind_problem(os.fstat(fd).st_mode)
        if problem:
            raise UnreadableImage(path, problem)
        with warnings.catch_warnings():
            warnings.simplefilter('error', Image.DecompressionBombWarning)
            try:
                with Image.open(f) as image:
                    image.load()
                    return to_8bit(image).convert(mode)  # converted before the file and its image are closed
            except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
                raise UnreadableImage(path, _bomb_reason(e)) from None
            except UnidentifiedImageError:
                raise UnreadableImage(path, 'not an image Pillow can identify (its content, whatever its name)') \
                    from None
            except ValueError as e:
                raise UnreadableImage(path, str(e)) from None
            except Exception as e:  # noqa: BLE001  Pillow's decoders raise OSError, SyntaxError, EOFError, ...
                raise UnreadableImage(path, f'cannot be decoded ({type(e).__name__}: {e})'.replace('\n', ' ')) \
                    from None


def check_folder_tree(root: PathLike) -> None:
    """Refuse a tree that reaches a folder twice (through a link loop, or two links to one folder), or that has a
    folder that cannot be listed, before anything walks it: one line naming the folder."""
    root = Path(root)
    seen: Dict[Tuple[int, int], Path] = {}
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            info = os.stat(folder)
            entries = sorted(os.scandir(folder), key=lambda e: e.name, reverse=True)
        except OSError as e:
            raise UserError(f'{folder}: this folder of the data cannot be listed ({_os_reason(e)})') from None
        key = (info.st_dev, info.st_ino)
        if key in seen:
            first, parent = seen[key], folder.parent.resolve()
            if first == parent or first in parent.parents:
                raise UserError(f'{folder}: a symbolic link to a folder above it ({first}), a loop that would list '
                                f'its images again and again; remove the link')
            raise UserError(f'{folder}: the same folder as {first}, reached twice (through a symbolic link), so its '
                            f'images would be counted twice; remove the link')
        seen[key] = folder.resolve()
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows links; a dangling or looping link is a file, reported when read
            except OSError:
                is_dir = False
            if is_dir:
                stack.append(Path(entry.path))


def list_image_folder(
        root: PathLike,
        class_to_idx: Optional[Dict[str, int]] = None,
) -> Tuple[List[Tuple[str, int]], Dict[str, int]]:
    """``(path, label)`` of every image file under ``root`` and the class index, as timm lists an ImageFolder
    (``find_images_and_targets``: extensions timm reads, label = the image's folder name, natural order), once
    ``check_folder_tree`` has made sure that walk ends and lists each file once."""
    from timm.data.readers.reader_image_folder import find_images_and_targets
    check_folder_tree(root)
    return find_images_and_targets(str(root), class_to_idx=class_to_idx)


class ImageFiles(torch.utils.data.Dataset):
    """``(image, target)`` for each ``(path, target)`` of ``samples``, read by ``read_image``; a file that cannot be
    read gives ``(Unreadable(reason), target)``. ``transform`` (set by timm's ``create_loader``) applies to images."""

    def __init__(self, samples: Sequence[Tuple[str, int]], mode: str = 'RGB', transform: Optional[Callable] = None):
        self.samples, self.mode, self.transform = list(samples), mode, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        path, target = self.samples[index]
        try:
            image = read_image(path, self.mode)
        except UnreadableImage as e:
            return Unreadable(e.reason), target
        return (self.transform(image) if self.transform is not None else image), target


def collate_readable(batch: Sequence[Tuple[Any, int]]) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor],
                                                                List[Optional[str]]]:
    """Collate the images that were read; returns ``(images, targets, reasons)``, ``reasons`` one per item of the
    batch (None where the image was read), images and targets None when none was."""
    reasons = [item[0].reason if isinstance(item[0], Unreadable) else None for item in batch]
    readable = [item for item, reason in zip(batch, reasons) if reason is None]
    if not readable:
        return None, None, reasons
    images, targets = torch.utils.data.default_collate(readable)
    return images, targets, reasons
