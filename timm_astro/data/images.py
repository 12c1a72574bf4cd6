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

**Survey data as numbers** (``read_array``; ``ImageReader`` decides which path a file takes). FITS files (astropy,
``timm_astro.data.fits``: which HDU or bands, data cubes, row order) and, when a stretch is given, every other image
Pillow reads (16-bit and float pixels at their full depth; RGB as 3 bands) become float32 tensors ``(bands, H, W)``
in [0, 1] through the per-band ``timm_astro.data.stretch.Stretch`` (NaN -> 0; a band with no finite pixel is
unreadable). The same file rules hold. A model trained so records its stretch, FITS HDU or bands and band count in
its config (``reader_for_model``); a file whose band count differs from the model's ``in_chans``, or FITS data
without a stretch, is a ``BandMismatch``, which ``ImageReader.check`` turns into one line before any work: the data
do not fit the model. timm's eval and train transforms (resize, crop, flips, normalise) accept such tensors as they
are (``MaybeToTensor`` passes them through); ``band_data_config`` gives mean and std one value per band.

``read_image`` raises ``UnreadableImage``, a ``UserError`` whose one line names the file and the reason. A dataset
over many files (``ImageFiles``) returns an ``Unreadable`` marker instead, which ``collate_readable`` separates from
the images: a command then reports every such file and scores the rest, and never scores one file with another
file's pixels, as timm's ``ImageDataset`` does when it substitutes the next image for one it cannot read.
"""
import contextlib
import errno
import os
import re
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from timm_astro.data.fits import FITS_EXTENSIONS, HduKey, is_fits, read_fits
from timm_astro.data.stretch import Stretch, StretchError
from timm_astro.errors import MissingDependency, UserError

__all__ = [
    'UnreadableImage', 'BandMismatch', 'Unreadable', 'ImageFiles', 'ImageReader', 'image_problem', 'read_image',
    'read_array', 'reader_for_model', 'model_in_chans', 'band_data_config', 'check_folder_tree', 'list_image_folder',
    'collate_readable', 'to_8bit',
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


class BandMismatch(UnreadableImage):
    """A file that reads but does not fit the model: another band count than its ``in_chans``, or FITS data and no
    stretch. ``ImageReader.check`` refuses a run whose first readable file is one."""

    def __init__(self, path: PathLike, reason: str):
        UserError.__init__(self, f'{path}: does not fit the model: {reason}')
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


@contextlib.contextmanager
def _opened(path: PathLike) -> Iterator[BinaryIO]:
    """``path`` opened for reading by the module's rules (regular files only, never blocking on a FIFO)."""
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
        yield f


@contextlib.contextmanager
def _decoded(path: PathLike, f: BinaryIO) -> Iterator[Image.Image]:
    """The image in ``f``, loaded, with Pillow's failures (bombs, unknown formats, broken data) as
    ``UnreadableImage``."""
    with warnings.catch_warnings():
        warnings.simplefilter('error', Image.DecompressionBombWarning)
        try:
            with Image.open(f) as image:
                image.load()
                yield image
        except UnreadableImage:
            raise
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


def read_image(path: PathLike, mode: str = 'RGB') -> Image.Image:
    """The image at ``path`` in ``mode`` ('RGB' or 'L'), read by the module's rules; raises ``UnreadableImage``."""
    with _opened(path) as f, _decoded(path, f) as image:
        try:
            return to_8bit(image).convert(mode)  # converted before the file and its image are closed
        except ValueError as e:
            raise UnreadableImage(path, str(e)) from None


# Pillow modes read as they are stored (one band, or RGB as three); the others are converted first
_ARRAY_MODES = ('L', 'I', 'F', 'RGB') + SIXTEEN_BIT_MODES
_ARRAY_CONVERT = {'1': 'L', 'LA': 'L', 'La': 'L', 'I;16S': 'I'}


def _pil_bands(image: Image.Image) -> np.ndarray:
    """``(bands, H, W)`` numbers of a Pillow image at its full bit depth (alpha dropped, palettes expanded)."""
    if image.mode not in _ARRAY_MODES:
        image = image.convert(_ARRAY_CONVERT.get(image.mode, 'RGB'))
    values = np.asarray(image)
    return values[None] if values.ndim == 2 else np.moveaxis(values, -1, 0)


def _reason(e: UserError, path: PathLike) -> str:
    """The reason of a reader's one-line error, without the file name it starts with."""
    text, prefix = str(e), f'{path}: '
    return text[len(prefix):] if text.startswith(prefix) else text


def read_array(path: PathLike, stretch: Stretch, *, hdu: Optional[HduKey] = None,
               bands: Optional[Sequence[HduKey]] = None) -> torch.Tensor:
    """The data at ``path`` as float32 ``(bands, H, W)`` in [0, 1]: a FITS file's image (``hdu`` or ``bands`` pick it,
    ``timm_astro.data.fits``) or any image Pillow reads, at its full bit depth, through ``stretch`` per band.

    Raises ``UnreadableImage`` (one line naming the file); a missing astropy is a ``MissingDependency``."""
    with _opened(path) as f:
        start = f.read(9)
        f.seek(0)
        if is_fits(path) or start == b'SIMPLE  =':  # a FITS file named otherwise is still read as FITS
            try:
                data = read_fits(f, hdu=hdu, bands=bands, source=str(path))
            except MissingDependency:
                raise
            except UserError as e:
                raise UnreadableImage(path, _reason(e, path)) from None
        else:
            with _decoded(path, f) as image:
                data = _pil_bands(image)
    try:
        return torch.from_numpy(stretch(data, source=str(path)))
    except StretchError as e:
        raise UnreadableImage(path, e.reason) from None


@dataclass(frozen=True)
class ImageReader:
    """How image files become a model's input. Without a stretch: 8-bit PIL images (``read_image``; mode 'L' for a
    one-band model, else 'RGB'), and FITS files are refused (their numbers need one). With a stretch: every file
    through ``read_array``. ``in_chans`` (None: any) is the band count the model takes; a file with another is a
    ``BandMismatch``."""
    in_chans: Optional[int] = None
    stretch: Optional[Stretch] = None
    hdu: Optional[HduKey] = None
    bands: Optional[Tuple[HduKey, ...]] = None

    def __post_init__(self):
        if self.hdu is not None and self.bands is not None:
            raise UserError(f'give the FITS hdu ({self.hdu!r}) or bands ({list(self.bands)}), not both')
        if self.bands is not None and self.in_chans is not None and len(self.bands) != self.in_chans:
            raise UserError(f'{len(self.bands)} FITS bands ({", ".join(map(str, self.bands))}) for a model that takes '
                            f'{self.in_chans} (in_chans)')
        limits = self.stretch.limit_bands() if self.stretch is not None else None
        if limits is not None and self.in_chans is not None and limits != self.in_chans:
            raise UserError(f'the stretch {self.stretch} has limits for {limits} bands; the model takes '
                            f'{self.in_chans} (in_chans)')

    @property
    def mode(self) -> str:
        return 'L' if self.in_chans == 1 else 'RGB'

    def __call__(self, path: PathLike) -> Union[Image.Image, torch.Tensor]:
        """The input of the file at ``path``: a PIL image or a ``(bands, H, W)`` tensor (see the class)."""
        if self.stretch is None:
            if is_fits(path):
                raise BandMismatch(path, 'FITS data are numbers in the survey\'s units and need a stretch to become '
                                         'network input; the model records none: pass --stretch (e.g. asinh)')
            image = read_image(path, self.mode)
            if self.in_chans is not None and self.in_chans not in (1, 3):
                raise BandMismatch(path, f'an 8-bit image ({len(image.getbands())} channels as read), but the model '
                                         f'takes {self.in_chans} bands (in_chans): give it N-band data and the stretch '
                                         f'it was trained with')
            return image
        data = read_array(path, self.stretch, hdu=self.hdu, bands=self.bands)
        if self.in_chans is not None and data.shape[0] != self.in_chans:
            raise BandMismatch(path, f'{data.shape[0]} band{"s" if data.shape[0] != 1 else ""}, but the model takes '
                                     f'{self.in_chans} (in_chans)')
        return data

    def check(self, paths: Iterable[PathLike]) -> None:
        """Read ``paths`` until one reads: a ``BandMismatch`` is raised (the data do not fit the model: said once,
        before any work), other unreadable files are passed over (each run reports them one by one)."""
        for path in paths:
            try:
                self(path)
            except BandMismatch:
                raise
            except UnreadableImage:
                continue
            return


def model_in_chans(model: torch.nn.Module) -> int:
    """The band count ``model`` takes: its ``in_chans``, else its first convolution's, else its data config's."""
    value = getattr(model, 'in_chans', None)
    if isinstance(value, int):
        return value
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    with contextlib.suppress(AttributeError, TypeError, KeyError):
        return int(model.get_submodule(cfg['first_conv']).in_channels)
    return int((cfg.get('input_size') or (3,))[0])


def _stretch_from(value: Any, source: str) -> Optional[Stretch]:
    if value is None or isinstance(value, Stretch):
        return value
    try:
        return Stretch.parse(value) if isinstance(value, str) else Stretch.from_config(value)
    except UserError as e:
        raise UserError(f'{source}: {e}') from None


def reader_for_model(model: torch.nn.Module, stretch: Union[None, str, Stretch] = None,
                     hdu: Optional[HduKey] = None, bands: Optional[Sequence[HduKey]] = None) -> ImageReader:
    """The ``ImageReader`` for ``model``: its band count, and the stretch, FITS hdu and bands its config records
    (``pretrained_cfg['stretch' | 'fits_hdu' | 'fits_bands']``, written at export). ``stretch`` (``--stretch``),
    ``hdu`` and ``bands`` are for a model that records none; one that differs from the model's is refused, naming
    both, since the model would see data scaled otherwise than in training."""
    cfg = getattr(model, 'pretrained_cfg', None) or {}
    given = _stretch_from(stretch, '--stretch')
    recorded = _stretch_from(cfg.get('stretch'), "the model's stretch")
    if given is not None and recorded is not None and given != recorded:
        raise UserError(f'--stretch {given} differs from the stretch the model was trained with ({recorded}); leave '
                        f'out --stretch: the model applies its own')
    bands = tuple(bands) if bands is not None else None
    for name, value, own in (('--hdu', hdu, cfg.get('fits_hdu')), ('--bands', bands, cfg.get('fits_bands'))):
        own = tuple(own) if isinstance(own, list) else own
        if value is not None and own is not None and value != own:
            shown = (lambda v: ','.join(map(str, v)) if isinstance(v, tuple) else str(v))
            raise UserError(f'{name} {shown(value)} differs from the FITS {name[2:]} the model was trained with '
                            f'({shown(own)}); leave out {name}')
    own_bands = cfg.get('fits_bands')
    return ImageReader(model_in_chans(model), recorded or given, hdu if hdu is not None else cfg.get('fits_hdu'),
                       bands or (tuple(own_bands) if own_bands else None))


def band_data_config(config: Dict[str, Any], in_chans: int) -> Dict[str, Any]:
    """``config`` (a timm data config) for ``in_chans`` bands: ``input_size`` with that band count, and ``mean`` /
    ``std`` with one value per band; a single value, or one repeated (0.5, 0.5, 0.5), is repeated, as timm's
    ``resolve_data_config`` repeats a single one. Per-colour values (ImageNet's) for another band count are refused."""
    config = dict(config)
    config['input_size'] = (in_chans, *tuple(config['input_size'])[1:])
    for key in ('mean', 'std'):
        values = tuple(config[key])
        if len(values) != in_chans:
            if len(set(values)) != 1:
                raise UserError(f'the data config has {len(values)} {key} values {values} for a model that takes '
                                f'{in_chans} bands; give one per band (--mean/--std), or one for all')
            values = values[:1] * in_chans
        config[key] = values
    return config


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
    (``find_images_and_targets``: extensions timm reads, and FITS files; label = the image's folder name, natural
    order), once ``check_folder_tree`` has made sure that walk ends and lists each file once."""
    from timm.data.readers.img_extensions import get_img_extensions
    from timm.data.readers.reader_image_folder import find_images_and_targets
    from timm.utils.misc import natural_key
    check_folder_tree(root)
    # timm matches the last suffix only: .gz/.fz are listed, then kept only when FITS (.fits.gz, .fits.fz)
    types = set(get_img_extensions()) | {'.' + e.rsplit('.', 1)[-1] for e in FITS_EXTENSIONS}
    samples, found = find_images_and_targets(str(root), types=types, class_to_idx=class_to_idx)
    kept = [(p, t) for p, t in samples if is_fits(p) or os.path.splitext(p)[1].lower() in get_img_extensions()]
    if len(kept) == len(samples) or class_to_idx is not None:
        return kept, found
    names = {i: n for n, i in found.items()}
    classes = sorted({names[t] for _, t in kept}, key=natural_key)
    index = {name: i for i, name in enumerate(classes)}
    return [(p, index[names[t]]) for p, t in kept], index


class ImageFiles(torch.utils.data.Dataset):
    """``(image, target)`` for each ``(path, target)`` of ``samples``, read by ``reader`` (default: ``read_image`` in
    ``mode``); a file that cannot be read gives ``(Unreadable(reason), target)``, or raises with ``strict`` (training,
    whose batches have no room for a missing image). ``transform`` (set by timm's ``create_loader``) applies to what
    was read: a PIL image, or a tensor of bands."""

    def __init__(self, samples: Sequence[Tuple[str, int]], mode: str = 'RGB', transform: Optional[Callable] = None,
                 reader: Optional[ImageReader] = None, strict: bool = False):
        self.samples, self.mode, self.transform = list(samples), mode, transform
        self.reader, self.strict = reader, strict

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Tuple[Any, int]:
        path, target = self.samples[index]
        try:
            image = self.reader(path) if self.reader is not None else read_image(path, self.mode)
        except UnreadableImage as e:
            if self.strict:
                raise
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
