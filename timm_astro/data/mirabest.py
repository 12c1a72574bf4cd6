"""MiraBest: 1,256 FIRST radio galaxies as FITS cutouts, labelled Fanaroff-Riley I or II (Porter & Scaife 2023).

The source is the user's copy of the GitHub repository fmporter/MiraBest (``git archive HEAD FITS``): 300x300 float32
FITS images (Jy/beam, from the FIRST survey through SkyView) named ``<class>_<ra><dec>_<z>_<field 4>.fits``. The
three digits of ``<class>`` are: 1 FRI, 2 FRII, 3 hybrid; then 0 confidently or 1 uncertainly classified; then the
morphology, 0 standard, 1 double-double, 2 wide-angle tail, 4 head-tail. The fourth field is not documented by the
source and is kept as given.

The import keeps MiraBest's benchmark task, FRI against FRII: hybrid sources (34) are left out, and ``mirabest``
keeps the confidently classified sources only (the usual "MiraBest Confident" set, 832 FRI/FRII) while
``mirabest-all`` adds the uncertain ones (1,221). The FITS files are copied byte for byte: timm's train.py cannot
read them (its readers decode images with PIL), timm-astro's own tools read them through ``timm_astro.data.fits``.
"""
import re
from pathlib import Path
from typing import List, NamedTuple

from timm_astro.errors import UserError

__all__ = ['MIRABEST_CLASSES', 'MIRABEST_COLUMNS', 'MiraBestImage', 'find_mirabest']

MIRABEST_CLASSES = ('FRI', 'FRII')
MIRABEST_COLUMNS = ('mirabest_class', 'confidence', 'morphology', 'ra', 'dec', 'redshift', 'field4')
_MORPHOLOGY = {'0': 'standard', '1': 'double-double', '2': 'wide-angle tail', '4': 'head-tail'}
_NAME = re.compile(r'^(?P<fr>[123])(?P<conf>[01])(?P<morph>[0124])_(?P<ra>\d{3}\.\d+)(?P<dec>[+-]\d{3}\.\d+)_'
                   r'(?P<z>[-+\d.eE]+)_(?P<field4>[-+\d.eE]+)\.fits$')


class MiraBestImage(NamedTuple):
    path: Path
    label: int  # index into MIRABEST_CLASSES
    columns: dict


def find_mirabest(src: Path, confident_only: bool) -> List[MiraBestImage]:
    """The FRI/FRII sources of the copy ``src`` (the repository, or its ``FITS`` folder), sorted by file name."""
    root = src / 'FITS' if (src / 'FITS').is_dir() else src
    files = sorted(p for p in root.iterdir() if p.name.lower().endswith('.fits')) if root.is_dir() else []
    if not files:
        raise UserError(f'{src}: no .fits files; expected the FITS folder of fmporter/MiraBest (or the repository)')
    images = []
    for path in files:
        match = _NAME.match(path.name)
        if not match:
            raise UserError(f'{path}: not named <class>_<ra><dec>_<z>_<x>.fits with a three-digit MiraBest class '
                            f'(1xx FRI, 2xx FRII, 3xx hybrid)')
        if match['fr'] == '3' or (confident_only and match['conf'] == '1'):
            continue
        images.append(MiraBestImage(path, int(match['fr']) - 1, {
            'mirabest_class': match['fr'] + match['conf'] + match['morph'],
            'confidence': 'confident' if match['conf'] == '0' else 'uncertain',
            'morphology': _MORPHOLOGY[match['morph']], 'ra': match['ra'], 'dec': match['dec'],
            'redshift': match['z'], 'field4': match['field4']}))
    return images
