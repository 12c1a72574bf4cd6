"""Real labelled galaxy images from public copies, as the ImageFolder our tools and timm's scripts read.

``import_images(source, src, out_dir)`` (``timm-astro import SOURCE SRC OUT_DIR``) reads the user's own copy of one
of the sources below, never a download, and writes ``OUT_DIR/{train,validation,test}/<class folder>/<file>``
(files copied byte for byte), ``manifest.csv`` (one row per image: file, split, label, class name, source file and
the source's own columns), ``class_names.json`` and ``dataset.json``. The split is stratified and seeded
(``timm_astro.data.splits``), or the source's published one (``split='source'``, FIRST only). The output is built
beside ``OUT_DIR`` and renamed into place when complete (``timm_astro.outputs``).

Sources (none states a licence for its images: keep them out of version control and cite where they came from):

* ``galaxy10-decals-sample``: 1,000 Galaxy10 DECals images (256x256 RGB JPEG, 100 per class) from the GitHub
  repository suraj-sharma3/Galaxy-Type-Prediction-With-Vision-Transformer, folder ``galaxy_type_dataset``
  (``<Class_Name>/image_<index>_<label>.jpg``, label = the Galaxy10 id). Same class folders as
  ``timm-astro galaxy10 prepare``, so models trained on one evaluate on the other.
* ``gz2-sample``: 1,000 Galaxy Zoo 2 SDSS images (224x224 RGB JPEG) from LevIgnatev/galaxy_morphology,
  ``data/labels/labels_manifest_1000.csv`` (``derived_label``: spiral / elliptical / edge-on / merger, 250 each)
  and ``data/labels/thumbs/``.
* ``gz2-votes``: 7,622 Galaxy Zoo 2 SDSS galaxies (128x128 RGB JPEG) with every volunteer vote count of GZ2's
  questions t01-t09, from Onkarj012/galaxy-dna-fingerprinting (branch ``master``), de-duplicated by sky position, six
  classes derived from the vote fractions for the class benchmark and the rest kept for the vote benchmark under
  ``unclassified/<split>/`` (``timm_astro.data.galaxy_zoo`` states the rule); 10% validation and 35% test by default.
* ``mirabest`` / ``mirabest-all``: FIRST radio galaxies as FITS (300x300 float32), FRI or FRII, from
  fmporter/MiraBest: the 832 confidently classified sources, or all 1,221 (``timm_astro.data.mirabest``).
* ``first``: 2,158 FIRST radio galaxies (300x300 greyscale PNG; FRI, FRII, Compact, Bent) from the PyPI package
  ``firstgalaxydata==0.2.1``: its ``galaxy_data.zip`` (or that zip unpacked), with a published
  train / valid / test split.
"""
import csv
import io
import os
import re
import zipfile
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from timm_astro.data.galaxy10 import GALAXY10_DECALS_CLASSES, class_folder_name
from timm_astro.data.galaxy_zoo import (
    GZ2_CLASSES as GZ2_VOTE_CLASSES, GZ2_COUNT_COLUMNS, GZ2_FRACTIONS, UNCLASSIFIED_FOLDER, read_gz2_votes)
from timm_astro.data.image_folder import write_dataset_files
from timm_astro.data.mirabest import MIRABEST_CLASSES, MIRABEST_COLUMNS, find_mirabest
from timm_astro.data.paths import resolve_inside
from timm_astro.data.splits import stratified_split
from timm_astro.errors import UserError
from timm_astro.outputs import atomic_output_dir, check_output_location

__all__ = ['ImageSource', 'SourceImage', 'SOURCES', 'ImportResult', 'import_images', 'find_source_images']

PathLike = Union[str, os.PathLike]
CREATED_BY = 'timm-astro import'
MANIFEST_COLUMNS = ('file', 'split', 'label', 'class_name', 'source_file')


@dataclass
class SourceImage:
    """One labelled image of a source: where it is, its label, and the source's own columns for the manifest."""
    source_file: str  # path relative to the source root (or inside its zip): stable, used as the split key
    label: int
    read: Callable[[], bytes]
    file_name: str  # name in the output class folder
    source_split: Optional[str] = None  # the source's published split, if it has one
    split_key: Optional[str] = None  # what the split hashes, if not source_file (e.g. a sky position)
    columns: Dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ImageSource:
    """A public copy of labelled galaxy images, and how to read the user's copy of it."""
    key: str
    title: str
    class_names: Tuple[str, ...]
    expected: str  # what SRC should be, for error messages
    find: Callable[[Path], List[SourceImage]]
    extra_columns: Tuple[str, ...] = ()
    has_source_split: bool = False
    fractions: Tuple[float, float] = (0.1, 0.1)  # default validation and test fractions of the stratified split
    unlabelled_folder: Optional[str] = None  # where images of label -1 (in no class) go: <folder>/<split>/<file>
    info: Mapping[str, Any] = field(default_factory=dict)  # more keys for dataset.json

    @property
    def class_folders(self) -> Tuple[str, ...]:
        return tuple(class_folder_name(label, name) for label, name in enumerate(self.class_names))


def _file_reader(path: Path) -> Callable[[], bytes]:
    return path.read_bytes


def _find_galaxy10_sample(src: Path) -> List[SourceImage]:
    root = src / 'galaxy_type_dataset' if (src / 'galaxy_type_dataset').is_dir() else src
    pattern = re.compile(r'^image_(\d+)_(\d)\.jpe?g$', re.IGNORECASE)
    folders = {re.sub(r'[^a-z0-9]+', '', name.lower()): label for label, name in enumerate(GALAXY10_DECALS_CLASSES)}
    images = []
    for path in sorted(root.glob('*/*')):
        match = pattern.match(path.name)
        if not match or not path.is_file():
            continue
        label = int(match.group(2))
        folder_label = folders.get(re.sub(r'[^a-z0-9]+', '', path.parent.name.lower()))
        if folder_label is None:
            raise UserError(f'{path.parent}: not a Galaxy10 DECals class folder (expected one of: '
                            f"{', '.join(n.replace(' ', '_') for n in GALAXY10_DECALS_CLASSES)})")
        if folder_label != label:
            raise UserError(f'{path}: its name says label {label} ({GALAXY10_DECALS_CLASSES[label]}) but it is in the '
                            f'folder of label {folder_label} ({path.parent.name})')
        images.append(SourceImage(
            source_file=path.relative_to(root).as_posix(), label=label, read=_file_reader(path), file_name=path.name,
            columns={'source_index': match.group(1)}))
    return images


GZ2_CLASSES = ('spiral', 'elliptical', 'edge-on', 'merger')
GZ2_COLUMNS = ('objid', 'asset_id', 'gz2_class')


def _find_gz2_sample(src: Path) -> List[SourceImage]:
    candidates = [src / 'data' / 'labels' / 'labels_manifest_1000.csv', src / 'labels_manifest_1000.csv']
    manifest = next((c for c in candidates if c.is_file()), None)
    if manifest is None:
        raise UserError(f'{src}: no labels_manifest_1000.csv (looked for {", ".join(str(c) for c in candidates)})')
    # the manifest names files relative to the repository root (data/labels/thumbs/<asset_id>.jpg)
    repo_root = manifest.parents[2] if manifest.parent.name == 'labels' and manifest.parent.parent.name == 'data' \
        else manifest.parent
    try:  # utf-8-sig: a manifest saved by a spreadsheet starts with a byte-order mark, which is not a column name
        with open(manifest, newline='', encoding='utf-8-sig') as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f'{manifest}: not a UTF-8 CSV file ({e}); expected the labels manifest of that repository') \
            from None
    missing = [c for c in ('derived_label', 'filepath') if rows and c not in rows[0]]
    if not rows or missing:
        raise UserError(f'{manifest}: expected columns derived_label and filepath (missing: {missing or "all rows"})')
    images = []
    for line, row in enumerate(rows, start=2):
        name = (row['derived_label'] or '').strip()
        if name not in GZ2_CLASSES:
            raise UserError(f"{manifest}: derived_label {name!r} (objid {row.get('objid')}) is not one of "
                            f"{', '.join(GZ2_CLASSES)}")
        where = f"{manifest}, line {line} (objid {row.get('objid')})"
        path = resolve_inside(repo_root, row['filepath'] or '', where)
        if not path.is_file():
            path = resolve_inside(manifest.parent, f"thumbs/{Path(row['filepath']).name}", where)
        if not path.is_file():
            raise UserError(f'{manifest}: names {row["filepath"]}, which is not in the copy at {src}')
        images.append(SourceImage(
            source_file=Path(row['filepath']).as_posix(), label=GZ2_CLASSES.index(name), read=_file_reader(path),
            file_name=path.name, columns={c: row.get(c, '') for c in GZ2_COLUMNS}))
    return images


def _find_gz2_votes(src: Path) -> List[SourceImage]:
    galaxies, _ = read_gz2_votes(src)
    return [SourceImage(
        source_file=g.source_file, label=g.label, read=_file_reader(g.image), file_name=g.file_name,
        columns={'ra': g.ra, 'dec': g.dec, **dict(zip(GZ2_COUNT_COLUMNS, map(str, g.counts)))},
        split_key=g.key) for g in galaxies]


def _mirabest_finder(confident_only: bool) -> Callable[[Path], List[SourceImage]]:
    def find(src: Path) -> List[SourceImage]:
        return [SourceImage(source_file=image.path.relative_to(src).as_posix(), label=image.label,
                            read=_file_reader(image.path), file_name=image.path.name, columns=image.columns)
                for image in find_mirabest(src, confident_only)]
    return find


FIRST_CLASSES = ('FRI', 'FRII', 'Compact', 'Bent')  # the label ids of firstgalaxydata's file names
FIRST_SPLITS = {'train': 'train', 'valid': 'validation', 'test': 'test'}
_FIRST_NAME = re.compile(r'^(?P<ra>-?\d+(?:\.\d+)?)_(?P<dec>-?\d+(?:\.\d+)?)_(?P<label>\d)_(?P<catalog>.+)\.png$')


def _find_first(src: Path) -> List[SourceImage]:
    """``galaxy_data.zip`` of firstgalaxydata, or the folder it unpacks to; the ``all/`` copy is skipped."""
    entries: List[Tuple[str, Callable[[], bytes]]] = []
    if src.is_file():
        if not zipfile.is_zipfile(src):
            raise UserError(f'{src}: not a zip file; expected galaxy_data.zip from the firstgalaxydata wheel')
        with zipfile.ZipFile(src) as archive:
            names = [n for n in archive.namelist() if n.lower().endswith('.png')]

        def reader(name: str) -> Callable[[], bytes]:
            def read() -> bytes:
                try:
                    with zipfile.ZipFile(src) as archive:
                        return archive.read(name)
                except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # a damaged member: Bad CRC-32, ...
                    raise UserError(f'{src}: member {name} is damaged ({e}); download the zip again') from None
            return read
        entries = [(name, reader(name)) for name in names]
    else:
        root = src / 'galaxy_data' if (src / 'galaxy_data').is_dir() else src
        entries = [(p.relative_to(root.parent).as_posix(), _file_reader(p)) for p in sorted(root.rglob('*.png'))]
    images = []
    for name, read in sorted(entries):
        parts = name.split('/')
        split = next((FIRST_SPLITS[p] for p in parts[:-1] if p in FIRST_SPLITS), None)
        if split is None:
            continue  # galaxy_data/all/ repeats the three splits
        match = _FIRST_NAME.match(parts[-1])
        if not match or int(match.group('label')) >= len(FIRST_CLASSES):
            raise UserError(f'{src}: {name} is not named <ra>_<dec>_<label 0-3>_<catalog>.png as firstgalaxydata names '
                            f'its images')
        label = int(match.group('label'))
        if parts[-2] != FIRST_CLASSES[label]:
            raise UserError(f'{src}: {name} has label {label} ({FIRST_CLASSES[label]}) but sits in folder {parts[-2]}')
        images.append(SourceImage(
            source_file=name, label=label, read=read, file_name=parts[-1], source_split=split,
            columns={'ra': match.group('ra'), 'dec': match.group('dec'), 'catalog': match.group('catalog')}))
    return images


SOURCES: Dict[str, ImageSource] = {s.key: s for s in (
    ImageSource(
        'galaxy10-decals-sample', 'Galaxy10 DECals sample (suraj-sharma3/Galaxy-Type-Prediction-With-Vision-'
        'Transformer)', GALAXY10_DECALS_CLASSES,
        'the galaxy_type_dataset folder of that repository (or the repository itself)',
        _find_galaxy10_sample, extra_columns=('source_index',)),
    ImageSource(
        'gz2-sample', 'Galaxy Zoo 2 sample (LevIgnatev/galaxy_morphology)', GZ2_CLASSES,
        'that repository (with data/labels/labels_manifest_1000.csv and data/labels/thumbs/)',
        _find_gz2_sample, extra_columns=GZ2_COLUMNS),
    ImageSource(
        'gz2-votes', 'Galaxy Zoo 2 vote counts (Onkarj012/galaxy-dna-fingerprinting, branch master)',
        GZ2_VOTE_CLASSES, "that repository's datafinal/ and datafinal2/ folders (git archive master datafinal "
        "datafinal2)", _find_gz2_votes, extra_columns=('ra', 'dec') + GZ2_COUNT_COLUMNS, fractions=GZ2_FRACTIONS,
        unlabelled_folder=UNCLASSIFIED_FOLDER, info={'kind': 'votes', 'tree': 'gz2'}),
    *(ImageSource(
        key, f'MiraBest FRI/FRII radio galaxies, FITS ({which}; fmporter/MiraBest)', MIRABEST_CLASSES,
        'the FITS folder of that repository (or the repository itself)', _mirabest_finder(confident),
        extra_columns=MIRABEST_COLUMNS, info={'format': 'fits'})
      for key, which, confident in (('mirabest', 'confidently classified', True),
                                    ('mirabest-all', 'confident and uncertain', False))),
    ImageSource(
        'first', 'FIRST radio galaxies (PyPI firstgalaxydata 0.2.1)', FIRST_CLASSES,
        "galaxy_data.zip from the firstgalaxydata wheel, or the folder it unpacks to",
        _find_first, extra_columns=('ra', 'dec', 'catalog'), has_source_split=True),
)}


def _source(key: str) -> ImageSource:
    if key not in SOURCES:
        raise UserError(f"unknown source {key!r}; expected one of: {', '.join(SOURCES)}")
    return SOURCES[key]


def find_source_images(source: str, src: PathLike) -> List[SourceImage]:
    """The labelled images of the user's copy ``src`` of ``source``, in a deterministic order."""
    spec, src = _source(source), Path(src)
    if not src.exists():
        raise UserError(f'{src}: no such file or folder; expected {spec.expected}')
    images = spec.find(src)
    if not images:
        raise UserError(f'{src}: no images of {spec.title} found; expected {spec.expected}')
    return images


@dataclass
class ImportResult:
    source: ImageSource
    out_dir: Path
    splits: Dict[str, int]
    unclassified: int = 0  # images in no class (label -1), kept under the source's unlabelled_folder
    class_names: Tuple[str, ...] = ()  # the classes that hold images, in timm's order (fewer than the source's in a
    # partial copy)


def import_images(
        source: str,
        src: PathLike,
        out_dir: PathLike,
        *,
        val_fraction: Optional[float] = None,
        test_fraction: Optional[float] = None,
        seed: int = 0,
        split: str = 'stratified',
        overwrite: bool = False,
) -> ImportResult:
    """Write the ImageFolder, manifest and class names of the user's copy ``src`` of ``source`` into ``out_dir``.

    Args:
        source: A key of ``SOURCES``.
        src: The user's copy (see the module docstring for each source).
        out_dir: The folder to write: new, empty, or (``overwrite``) an earlier output of this function.
        val_fraction, test_fraction, seed: The stratified split (``split='stratified'``); the fractions default to
            the source's own (``ImageSource.fractions``: 0.1 and 0.1, or 0.1 and 0.35 for gz2-votes).
        split: ``'stratified'``, or ``'source'`` to keep the source's published split (FIRST).
    """
    spec = _source(source)
    if split not in ('stratified', 'source'):
        raise UserError(f"split must be 'stratified' or 'source', got {split!r}")
    if split == 'source' and not spec.has_source_split:
        raise UserError(f"{spec.key} has no published split; use split='stratified'")
    val_fraction = spec.fractions[0] if val_fraction is None else val_fraction
    test_fraction = spec.fractions[1] if test_fraction is None else test_fraction
    stratified_split([0, 0, 0], val_fraction, test_fraction, seed)  # checks the split arguments before any work
    _check_apart(Path(src), Path(out_dir))
    check_output_location(out_dir, overwrite=overwrite, created_by=CREATED_BY)
    images = find_source_images(source, src)
    names = Counter((image.label, image.file_name) for image in images)
    clashes = [name for name, count in names.items() if count > 1]
    if clashes:
        raise UserError(f'{src}: {len(clashes)} file names occur twice in one class (e.g. {clashes[0][1]})')
    labels = np.array([image.label for image in images])
    if split == 'source':
        splits = np.array([image.source_split for image in images])
        settings = {'split': 'source'}
    else:
        splits = stratified_split(labels, val_fraction, test_fraction, seed, keys=[i.split_key or i.source_file for i in images])
        settings = {'split': 'stratified', 'val_fraction': val_fraction, 'test_fraction': test_fraction, 'seed': seed}
    # a partial copy: timm numbers the class folders that hold images, so the class files list those, in that order,
    # and the manifest's label is that number (the source's own id stays in the folder name)
    present = sorted({int(label) for label in labels if label >= 0})
    index = {label: i for i, label in enumerate(present)}
    class_names = [spec.class_names[label] for label in present]
    class_folders = [spec.class_folders[label] for label in present]
    columns = MANIFEST_COLUMNS + spec.extra_columns
    with atomic_output_dir(out_dir, CREATED_BY, overwrite=overwrite) as tmp:
        rows = []
        for image, image_split in zip(images, splits):
            rel = (f'{image_split}/{spec.class_folders[image.label]}/{image.file_name}' if image.label >= 0
                   else f'{spec.unlabelled_folder}/{image_split}/{image.file_name}')
            data = image.read()
            _check_image(data, image.file_name, src, image.source_file)
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_bytes(data)
            rows.append([rel, image_split, index.get(image.label, -1),
                         spec.class_names[image.label] if image.label >= 0 else '', image.source_file]
                        + [image.columns.get(c, '') for c in spec.extra_columns])
        timm_labels = np.array([index.get(int(label), -1) for label in labels])
        counts = write_dataset_files(tmp, columns, rows, class_names, class_folders, timm_labels, splits, {
            'created_by': CREATED_BY,
            'source': spec.key,
            'title': spec.title,
            'num_images': len(images),
            'num_classes': len(class_names),
            **({'missing_classes': [n for n in spec.class_names if n not in class_names]}
               if len(class_names) < len(spec.class_names) else {}),
            **({'unclassified': int((labels < 0).sum())} if spec.unlabelled_folder else {}),
            **spec.info,
            **settings,
        })
    return ImportResult(spec, Path(out_dir), counts, int((labels < 0).sum()), tuple(class_names))


# what PIL can check; other formats (FITS) are the source reader's business
PIL_SUFFIXES = ('.png', '.jpg', '.jpeg')


def _check_image(data: bytes, file_name: str, src: PathLike, source_file: str) -> None:
    """Refuse a file that is named like an image but does not decode as one (a text file, a truncated copy)."""
    if not file_name.lower().endswith(PIL_SUFFIXES):
        return
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every pixel: verify() alone passes a JPEG cut short
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise UserError(f'{src}: {source_file} does not decode as an image ({e}); expected a {Path(file_name).suffix} '
                        f'image of the source') from None


def _check_apart(src: Path, out_dir: Path) -> None:
    """OUT_DIR inside SRC would be read back as source images (on --overwrite); SRC inside OUT_DIR would be
    deleted with it."""
    src_abs, out_abs = src.resolve(), out_dir.resolve()
    if src_abs.is_dir() and out_abs.is_relative_to(src_abs):
        raise UserError(f'{out_dir}: is inside the source {src}; choose an output folder outside it')
    if src_abs.is_relative_to(out_abs):
        raise UserError(f'{out_dir}: contains the source {src}; choose an output folder elsewhere')
