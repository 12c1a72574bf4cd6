"""FITS cutouts as bands x height x width float arrays (astropy, the ``fits`` extra: ``pip install timm-astro[fits]``).

Which data a file gives, so that one rule holds for every command:

* ``hdu=None``: the first HDU that holds image data of at least two dimensions (survey cutouts put it in the
  primary HDU, compressed ones in the first extension); ``hdu`` may name one by index or EXTNAME.
* A 2-D image is one band; a 3-D cube ``(bands, height, width)`` gives its planes as bands (the FITS axis order
  NAXIS3 x NAXIS2 x NAXIS1); axes of length 1 are dropped first (a radio map stored as 1 x 1 x H x W).
* ``bands=('G', 'R', 'Z')``: one band from each named image extension of a multi-extension file, in that order.
* Pixels are returned as they are (NaN included): ``timm_astro.data.stretch.Stretch`` decides what they become.
  Rows are flipped so that row 0 is the top of the picture, as in PNG/JPEG cutouts of the same sky (FITS counts
  rows from the bottom).
* As for PNGs (``timm_astro.data.images``), data of more values than Pillow's ``Image.MAX_IMAGE_PIXELS`` are
  refused before they are read (a gzipped header can declare gigabytes), and a truncated file is unreadable, not
  read with the missing pixels made up.
"""
import os
import warnings
from pathlib import Path
from typing import BinaryIO, Optional, Sequence, Union

import numpy as np
from PIL import Image

from timm_astro.errors import MissingDependency, UserError

__all__ = ['FITS_EXTENSIONS', 'is_fits', 'read_fits']

FITS_EXTENSIONS = ('.fits', '.fit', '.fts', '.fits.gz', '.fit.gz', '.fits.fz')
HduKey = Union[int, str]


def is_fits(path: Union[str, os.PathLike]) -> bool:
    """Whether ``path`` names a FITS file by its extension."""
    return str(path).lower().endswith(FITS_EXTENSIONS)


def _astropy_fits():
    try:
        from astropy.io import fits
    except ImportError:
        raise MissingDependency('reading FITS needs astropy: pip install "timm-astro[fits]"') from None
    return fits


def _image_data(hdu, source: str) -> np.ndarray:
    shape = getattr(hdu, 'shape', None) or ()
    values = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if values > Image.MAX_IMAGE_PIXELS:
        raise UserError(f"{source}: HDU {hdu.name or 0} declares {values:,} values (shape {tuple(shape)}), over "
                        f"Pillow's limit of {Image.MAX_IMAGE_PIXELS:,} (PIL.Image.MAX_IMAGE_PIXELS): not read")
    data = hdu.data
    if data is None or not hasattr(data, 'ndim') or data.dtype.names is not None:
        raise UserError(f'{source}: HDU {hdu.name or 0} has no image data')
    data = np.asarray(data)
    data = data.reshape([n for n in data.shape if n != 1] or [1])
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or min(data.shape[-2:]) < 2:
        raise UserError(f'{source}: HDU {hdu.name or 0} holds data of shape {hdu.data.shape}; expected an image '
                        f'(height x width) or a cube (bands x height x width)')
    if not np.issubdtype(data.dtype, np.number):
        raise UserError(f'{source}: HDU {hdu.name or 0} holds {data.dtype} data; expected numbers')
    return data


def _has_image(hdu) -> bool:
    return getattr(hdu, 'is_image', False) and hdu.header.get('NAXIS', 0) >= 2


def read_fits(path: Union[str, os.PathLike, BinaryIO], hdu: Optional[HduKey] = None,
              bands: Optional[Sequence[HduKey]] = None, source: Optional[str] = None) -> np.ndarray:
    """The image of a FITS file as a float32 array ``(bands, height, width)``, row 0 at the top.

    ``path`` may be a file opened in binary mode (``timm_astro.data.images`` opens files by its own rules);
    ``source`` names it in messages (default: ``path``)."""
    from astropy.utils.exceptions import AstropyUserWarning
    fits = _astropy_fits()
    source = source or str(getattr(path, 'name', path))
    if hdu is not None and bands is not None:
        raise UserError('give hdu or bands, not both')
    opened = path if hasattr(path, 'read') else Path(path)
    try:
        with warnings.catch_warnings():
            # survey headers often carry cards astropy cannot verify (tabs in comments): the pixels are fine
            warnings.simplefilter('ignore', fits.verify.VerifyWarning)
            # a short file is only warned about by astropy, then read with the missing pixels made up
            warnings.filterwarnings('error', message='.*truncated', category=AstropyUserWarning)
            with fits.open(opened, memmap=False, lazy_load_hdus=False) as hdus:
                data = _select(hdus, hdu, bands, source)
                return np.ascontiguousarray(data[:, ::-1, :], dtype=np.float32)
    except UserError:
        raise
    except AstropyUserWarning as e:
        raise UserError(f'{source}: a truncated FITS file ({" ".join(str(e).split())[:200]})') from None
    except (OSError, ValueError, TypeError, IndexError, KeyError) as e:  # not FITS, bad header, short data
        raise UserError(f'{source}: not a readable FITS file ({" ".join(str(e).split())[:200]})') from None


def _named_hdu(hdus, key: HduKey, source: str):
    found = (0 <= key < len(hdus)) if isinstance(key, int) else key in hdus
    if not found:
        raise UserError(f'{source}: no HDU {key!r}; it has ' + ', '.join(
            repr(h.name or i) for i, h in enumerate(hdus)))
    return hdus[key]


def _select(hdus, hdu: Optional[HduKey], bands: Optional[Sequence[HduKey]], source: str) -> np.ndarray:
    """The ``(bands, height, width)`` data the module's rules pick from an open file."""
    if bands is not None:
        planes = []
        for key in bands:
            plane = _image_data(_named_hdu(hdus, key, source), source)
            if plane.shape[0] != 1:
                raise UserError(f'{source}: HDU {key!r} is a cube of {plane.shape[0]} planes; expected one band per '
                                f'named HDU')
            planes.append(plane[0])
        shapes = {p.shape for p in planes}
        if len(shapes) > 1:
            raise UserError(f'{source}: the bands {list(bands)} have different shapes {sorted(shapes)}')
        return np.stack(planes)
    if hdu is not None:
        return _image_data(_named_hdu(hdus, hdu, source), source)
    found = next((h for h in hdus if _has_image(h)), None)
    if found is None:
        raise UserError(f'{source}: no HDU holds image data (it has '
                        + ', '.join(type(h).__name__ for h in hdus) + ')')
    return _image_data(found, source)
