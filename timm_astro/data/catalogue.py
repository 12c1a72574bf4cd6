"""Catalogues: a CSV with one row per object (an id, where its image is, and columns such as ra, dec or a label).

Astronomers work from catalogues, not folders of PNGs. ``read_catalogue`` reads one for ``predict``, ``evaluate``
and ``embed``:

* an **id column** (``id``): unique, non-empty; it keys the output rows and a ``--resume``;
* a **path column** (``path``): each image's file, relative to the catalogue's own folder or to ``root``, and kept
  inside it by ``timm_astro.data.paths.resolve_inside`` (a catalogue is data: a row naming ``../../x.jpg``, an
  absolute path or a symlink out of the folder is refused); or, with ``hdf5``, a **row column** (``row``): the row
  of a Galaxy10-schema HDF5 file that holds the image;
* **carried columns** (default: those of ``ra``, ``dec`` and ``label`` that the catalogue has): copied as they are
  into every output row, after the id and path (or row);
* a **label column** for ``evaluate``: class indices (0, 1, ...) or class names, scored as the model's own classes
  (``class_indices``).

Every problem with the catalogue itself is one ``UserError`` line naming the file and, for a row, its line; nothing
is read from an image until the whole catalogue has been checked. A missing or unreadable image file is not the
catalogue's fault: it is reported when read, as for any other input (``timm_astro.data.images``).
"""
import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from PIL import Image

from timm_astro.data.images import Unreadable
from timm_astro.data.paths import resolve_inside
from timm_astro.errors import UserError

__all__ = ['CATALOGUE_SUFFIXES', 'Catalogue', 'CatalogueImages', 'read_catalogue', 'class_indices', 'class_key']

PathLike = Union[str, os.PathLike]
CATALOGUE_SUFFIXES = ('.csv',)
DEFAULT_CARRIED = ('ra', 'dec', 'label')


@dataclass
class Catalogue:
    """A checked catalogue: ids in file order and the columns to carry into output rows (id column first)."""
    source: Path
    ids: List[str]
    columns: Dict[str, List[str]]
    paths: List[Path] = field(default_factory=list)  # resolved image files (path catalogues)
    rows: List[int] = field(default_factory=list)  # HDF5 rows (row catalogues)
    hdf5: Optional[Path] = None
    labels: Optional[List[str]] = None
    _dataset: object = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def load(self, position: int) -> Image.Image:
        """The image of the ``position``-th row of an HDF5 catalogue (a path catalogue's files are read by the
        reader of whoever reads them: evaluate's and predict's, with the model's stretch)."""
        if self.hdf5 is None:
            raise ValueError(f'{self.source} names image files, not HDF5 rows: read its paths')
        if self._dataset is None:  # opened once per process; Galaxy10Dataset reopens its handle in a worker itself
            from timm_astro.data.galaxy10 import Galaxy10Dataset
            self._dataset = Galaxy10Dataset(self.hdf5)
        return self._dataset[self.rows[position]][0]


class CatalogueImages(torch.utils.data.Dataset):
    """``(image, target)`` per row of an HDF5 catalogue, or ``(Unreadable(reason), target)``: what ``ImageFiles``
    gives, so ``collate_readable`` and ``evaluate`` treat an unreadable row as they treat an unreadable file."""

    def __init__(self, catalogue: Catalogue, targets: Sequence[int], transform=None):
        self.catalogue, self.targets, self.transform = catalogue, list(targets), transform

    def __len__(self) -> int:
        return len(self.catalogue)

    def __getitem__(self, index: int):
        try:
            image = self.catalogue.load(index)
        except Exception as e:  # noqa: BLE001  one unreadable row is that row's problem, never the worker's
            reason = getattr(e, 'reason', None) or f'{type(e).__name__}: {e}'.replace('\n', ' ')
            return Unreadable(reason), self.targets[index]
        return (self.transform(image) if self.transform is not None else image), self.targets[index]


def _open_rows(path: Path) -> Tuple[List[str], List[Tuple[int, List[str]]]]:
    """The header and ``(line, fields)`` of every non-blank record; utf-8-sig: a spreadsheet's byte-order mark is
    not part of the first column's name."""
    if not path.exists():
        raise UserError(f'{path}: no such catalogue; expected a CSV with an id column and a path (or row) column')
    if not path.is_file():
        raise UserError(f'{path}: not a file; expected a catalogue CSV')
    try:
        with open(path, newline='', encoding='utf-8-sig') as f:
            reader = csv.reader(f)
            header = next(reader, None)
            records = []
            start = reader.line_num + 1
            for fields in reader:
                if any(cell.strip() for cell in fields):
                    records.append((start, fields))
                start = reader.line_num + 1
    except UnicodeDecodeError as e:
        raise UserError(f'{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); expected a '
                        f'UTF-8 CSV catalogue') from None
    except csv.Error as e:
        raise UserError(f'{path}: not a readable CSV ({e}); expected a catalogue CSV') from None
    if not header or not any(name.strip() for name in header):
        raise UserError(f'{path}: empty; expected a header line (id, path, ...) and one row per object')
    header = [name.strip() for name in header]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise UserError(f'{path}: the header names the column {repeated[0]!r} twice; each column needs its own name')
    if not records:
        raise UserError(f'{path}: has a header but no rows; expected one row per object')
    return header, records


def _column(header: Sequence[str], name: str, path: Path, option: str, role: str) -> int:
    if name not in header:
        shown = ', '.join(header[:12]) + (', ...' if len(header) > 12 else '')
        raise UserError(f'{path}: no {name!r} column ({role}); the columns are: {shown}. Name it with {option}')
    return header.index(name)


def read_catalogue(
        path: PathLike,
        *,
        id_column: str = 'id',
        path_column: str = 'path',
        root: Optional[PathLike] = None,
        hdf5: Optional[PathLike] = None,
        row_column: str = 'row',
        columns: Optional[Sequence[str]] = None,
        label_column: Optional[str] = None,
) -> Catalogue:
    """Read and check the catalogue CSV ``path`` (see the module docstring).

    Args:
        path: The CSV.
        id_column: The column of unique object ids.
        path_column: The column of image files, relative to ``root`` (default: the CSV's folder).
        root: The folder every image must lie in.
        hdf5: A Galaxy10-schema HDF5 file: images are its rows, named by ``row_column``, instead of files.
        row_column: The column of HDF5 rows (with ``hdf5``).
        columns: Columns to carry into the output rows; default those of ra, dec and label the CSV has.
        label_column: The column of class labels (for ``evaluate``); required when given.
    """
    path = Path(path)
    header, records = _open_rows(path)
    id_at = _column(header, id_column, path, '--id-column', 'object ids')
    if hdf5 is None:
        where_name, where_at = path_column, _column(header, path_column, path, '--path-column', 'image paths')
        root = Path(root) if root is not None else path.parent
        if not root.is_dir():
            raise UserError(f'{root}: no such folder; expected the folder the catalogue\'s paths are relative to')
    else:
        hdf5 = Path(hdf5)
        where_name, where_at = row_column, _column(header, row_column, path, '--row-column', 'HDF5 rows')
    carried = list(columns) if columns is not None else [name for name in DEFAULT_CARRIED if name in header]
    for name in carried:
        _column(header, name, path, '--columns', 'named to be carried')
    label_at = _column(header, label_column, path, '--label-column', 'class labels') if label_column else None
    names = list(dict.fromkeys([id_column, where_name] + carried))  # a column named twice is carried once
    positions = [header.index(name) for name in names]

    from timm_astro.data.galaxy10 import Galaxy10Dataset
    num_rows = len(Galaxy10Dataset(hdf5)) if hdf5 is not None else 0
    seen: Dict[str, int] = {}
    ids: List[str] = []
    values: Dict[str, List[str]] = {name: [] for name in names}
    paths: List[Path] = []
    rows: List[int] = []
    labels: List[str] = []
    for line, fields in records:
        if len(fields) != len(header):
            raise UserError(f'{path}, line {line}: {len(fields)} fields, but the header has {len(header)}; every row '
                            f'needs one field per column')
        object_id = fields[id_at].strip()
        if not object_id:
            raise UserError(f'{path}, line {line}: empty {id_column!r}; every object needs an id')
        if object_id in seen:
            raise UserError(f'{path}, line {line}: id {object_id!r} repeats line {seen[object_id]}; ids must be '
                            f'unique')
        seen[object_id] = line
        what = f'{path}, line {line} (id {object_id})'
        where = fields[where_at].strip()
        if hdf5 is None:
            paths.append(resolve_inside(root, where, what))
        else:
            try:
                row = int(where)
            except ValueError:
                row = -1
            if not 0 <= row < num_rows:
                raise UserError(f'{what}: {row_column} {where!r} is not a row of {hdf5} (0 to {num_rows - 1})')
            rows.append(row)
        if label_at is not None:
            if not fields[label_at].strip():
                raise UserError(f'{what}: empty {label_column!r}; every object needs a label to be scored')
            labels.append(fields[label_at].strip())
        ids.append(object_id)
        for name, at in zip(names, positions):
            values[name].append(object_id if at == id_at else fields[at])
    return Catalogue(path, ids, values, paths, rows, hdf5, labels if label_at is not None else None)


def class_key(name: str) -> str:
    """A class name as two sources are matched on: lower case, letters and digits only, without a folder's sort
    prefix ('0_round'), so that 'Edge-on', 'edge_on' and '1_edge_on' are one class."""
    return re.sub(r'[^a-z0-9]+', '', re.sub(r'^\d+_', '', name.lower()))


def _listed(values: Sequence[str], limit: int = 12) -> str:
    return ', '.join(values[:limit]) + (', ...' if len(values) > limit else '')


def class_indices(labels: Sequence[str], class_names: Optional[Sequence[str]] = None,
                  num_classes: Optional[int] = None) -> Tuple[List[str], List[int]]:
    """Class names and each label's index, for a model whose classes are ``class_names`` (its label names, in its
    order) or, recording none, ``num_classes``: the targets must be the model's indices, or every score is wrong.

    Whole numbers are class indices themselves. Names are matched to ``class_names`` exactly, else by ``class_key``;
    a catalogue may lack some of the model's classes but not hold others. Without ``class_names`` names are numbered
    in timm's order for class folders (natural sort), as an ImageFolder of the same classes is, which holds only if
    every class is there: for a model of another ``num_classes`` that is refused.
    """
    from timm.utils.misc import natural_key
    if all(label.isdigit() for label in labels):
        targets = [int(label) for label in labels]
        count = num_classes or (len(class_names) if class_names else max(targets) + 1)
        if max(targets) >= count:
            raise UserError(f'the label {max(targets)} is not a class of the model, which predicts {count} classes '
                            f'(0 to {count - 1})')
        return (list(class_names) if class_names else [str(i) for i in range(count)]), targets
    if class_names:
        index = {name: i for i, name in enumerate(class_names)}
        by_key: Dict[str, List[int]] = {}
        for i, name in enumerate(class_names):
            by_key.setdefault(class_key(name), []).append(i)
        for label in dict.fromkeys(labels):
            if label not in index and len(by_key.get(class_key(label), ())) == 1:
                index[label] = by_key[class_key(label)][0]
        unknown = [repr(label) for label in dict.fromkeys(labels) if label not in index]
        if unknown:
            what = f'the label {unknown[0]} is not a class' if len(unknown) == 1 else \
                f'the labels {_listed(unknown, 5)} are not classes'
            raise UserError(f'{what} of the model ({_listed(list(class_names))}); label each object with one of them')
        return list(class_names), [index[label] for label in labels]
    names = sorted(set(labels), key=natural_key)
    if num_classes is not None and len(names) != num_classes:
        raise UserError(f'the model records no class names, so the {len(names)} names of the catalogue '
                        f'({_listed(names)}) cannot be matched to its {num_classes} classes; label the objects with '
                        f'class indices (0 to {num_classes - 1})')
    index = {name: i for i, name in enumerate(names)}
    return names, [index[label] for label in labels]
