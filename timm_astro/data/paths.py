"""Paths that a source's own files name (a manifest row, a CSV column), kept inside the source.

A manifest is data, not a trusted instruction: a row naming ``../../etc/hostname``, ``/home/me/secret.jpg`` or a
symlink that points out of the copy would otherwise have that file copied into a dataset (and its manifest).
``resolve_inside`` is the one check every reader of such paths uses.
"""
import os
from pathlib import Path
from typing import Union

from timm_astro.errors import UserError

__all__ = ['resolve_inside']


def resolve_inside(root: Union[str, os.PathLike], relative: str, what: str) -> Path:
    """``root / relative`` with every symlink resolved, refused unless it stays inside ``root``.

    Args:
        root: The folder the path must stay in (the user's copy of the source).
        relative: The path as the source names it; backslashes (CSVs written on Windows) count as separators.
        what: Where the path came from, for the message (e.g. ``'labels.csv, row 12 (objid 587...)'``).

    Raises:
        UserError: ``relative`` is empty, absolute, climbs out with ``..``, or resolves (through a symlink)
            outside ``root``. The file need not exist: callers say what is missing in their own words.
    """
    text = str(relative).replace('\\', '/')
    path = Path(text)
    expected = f'expected a path inside {root}'
    if not text.strip():
        raise UserError(f'{what}: empty path; {expected}')
    if path.is_absolute() or path.drive or '..' in path.parts:
        raise UserError(f'{what}: path {text!r} leaves the source folder; {expected}')
    base = Path(root).resolve()
    resolved = (base / path).resolve()
    if not resolved.is_relative_to(base):
        raise UserError(f'{what}: path {text!r} resolves to {resolved} (a symlink), outside the source folder; '
                        f'{expected}')
    return resolved
