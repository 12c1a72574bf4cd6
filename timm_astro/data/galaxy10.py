"""Galaxy10 DECals and Galaxy10 SDSS: from the published HDF5 file to data timm can train on.

Two routes:

* ``prepare_galaxy10`` (``timm-astro galaxy10 prepare Galaxy10_DECals.h5 OUT_DIR``) writes an ImageFolder
  (``OUT_DIR/train/<class>/*.png``, ``OUT_DIR/validation/<class>/*.png`` and, with a test fraction,
  ``OUT_DIR/test/<class>/*.png``) that timm's ``train.py`` reads as-is with ``--data-dir OUT_DIR``, plus
  ``manifest.csv``, ``class_names.json`` and ``dataset.json``.
* ``Galaxy10Dataset`` reads the HDF5 file directly (lazily, one handle per worker process) for code
  that builds its own ``DataLoader`` and does not want a copy of the images on disk.

Both use the same stratified, seeded split, so they agree on which image is in which split.

h5py is an optional dependency (``pip install 'timm-astro[data]'``); it is imported only when a file is
read, so ``import timm_astro`` never needs it.
"""
import hashlib
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch.utils.data
from PIL import Image

from timm_astro.data.image_folder import write_dataset_files
from timm_astro.data.splits import SPLITS, stratified_split
from timm_astro.errors import MissingDependency, UserError
from timm_astro.outputs import atomic_output_dir, check_output_location

__all__ = [
    'GALAXY10_DECALS_CLASSES', 'GALAXY10_SDSS_CLASSES', 'GALAXY10_DECALS_SHA256', 'Galaxy10Variant',
    'GALAXY10_VARIANTS', 'Galaxy10Error', 'Galaxy10Dataset', 'prepare_galaxy10', 'PrepareResult',
]

# Label order of Galaxy10_DECals.h5 (astroNN documentation, Leung & Bovy).
GALAXY10_DECALS_CLASSES: Tuple[str, ...] = (
    'Disturbed Galaxies',
    'Merging Galaxies',
    'Round Smooth Galaxies',
    'In-between Round Smooth Galaxies',
    'Cigar Shaped Smooth Galaxies',
    'Barred Spiral Galaxies',
    'Unbarred Tight Spiral Galaxies',
    'Unbarred Loose Spiral Galaxies',
    'Edge-on Galaxies without Bulge',
    'Edge-on Galaxies with Bulge',
)

# Label order of the older Galaxy10.h5 made from SDSS images (astroNN documentation).
GALAXY10_SDSS_CLASSES: Tuple[str, ...] = (
    'Disk, Face-on, No Spiral',
    'Smooth, Completely round',
    'Smooth, in-between round',
    'Smooth, Cigar shaped',
    'Disk, Edge-on, Rounded Bulge',
    'Disk, Edge-on, Boxy Bulge',
    'Disk, Edge-on, No Bulge',
    'Disk, Face-on, Tight Spiral',
    'Disk, Face-on, Medium Spiral',
    'Disk, Face-on, Loose Spiral',
)

# SHA-256 of Galaxy10_DECals.h5 as published on Zenodo (record 10845026).
GALAXY10_DECALS_SHA256 = '19aefc477c41bb7f77ff07599a6b82a038dc042f889a111b0d4d98bb755c1571'

IMAGES_KEY = 'images'
LABELS_KEY = 'ans'
METADATA_KEYS = ('ra', 'dec', 'redshift', 'pxscale')  # per-image columns copied to the manifest when present
MANIFEST_COLUMNS = ('index', 'label', 'class_name', 'split') + METADATA_KEYS + ('file',)
CREATED_BY = 'timm-astro galaxy10 prepare'
H5PY_HINT = "h5py is needed to read Galaxy10 HDF5 files: pip install 'timm-astro[data]' (or: pip install h5py)"
IMAGE_FORMATS = {'png': ('PNG', '.png', {}), 'jpeg': ('JPEG', '.jpg', {'quality': 95, 'subsampling': 0})}


class Galaxy10Error(UserError):
    """A problem with the input file, the arguments or the output directory, worded for the user."""


@dataclass(frozen=True)
class Galaxy10Variant:
    """One published Galaxy10 file: its name, image size and class names in label order."""
    name: str
    key: str
    image_size: int
    class_names: Tuple[str, ...]

    @property
    def class_folders(self) -> Tuple[str, ...]:
        return tuple(class_folder_name(label, name) for label, name in enumerate(self.class_names))


GALAXY10_VARIANTS: Dict[str, Galaxy10Variant] = {
    'decals': Galaxy10Variant('Galaxy10 DECals', 'decals', 256, GALAXY10_DECALS_CLASSES),
    'sdss': Galaxy10Variant('Galaxy10 SDSS', 'sdss', 69, GALAXY10_SDSS_CLASSES),
}


def class_folder_name(label: int, class_name: str) -> str:
    """ASCII, lower-case folder name that starts with the label, e.g. ``8_edge_on_galaxies_without_bulge``.

    With ten classes the single-digit prefix makes timm's alphabetical class indexing equal the label.
    """
    slug = re.sub(r'[^a-z0-9]+', '_', class_name.lower()).strip('_')
    return f'{label}_{slug}'


def _import_h5py():
    try:
        import h5py
    except ImportError as e:
        raise MissingDependency(H5PY_HINT) from e
    return h5py


def _open_h5(path: Path):
    """Open ``path`` read-only, turning missing, non-HDF5 and truncated files into a clear Galaxy10Error."""
    h5py = _import_h5py()
    if not path.exists():
        raise Galaxy10Error(f'{path}: no such file; expected the Galaxy10 HDF5 file (e.g. Galaxy10_DECals.h5)')
    if not path.is_file():
        raise Galaxy10Error(f'{path}: not a file; expected the Galaxy10 HDF5 file (e.g. Galaxy10_DECals.h5)')
    if not h5py.is_hdf5(str(path)):
        raise Galaxy10Error(f'{path}: not an HDF5 file (no HDF5 signature); expected the Galaxy10 .h5 file')
    try:
        return h5py.File(str(path), 'r')
    except OSError as e:
        if 'truncated' in str(e):
            raise Galaxy10Error(
                f'{path}: the HDF5 file is truncated ({path.stat().st_size:,} bytes, shorter than its header '
                f'says); the download is probably incomplete, download it again') from None
        hint = '; on a network filesystem try HDF5_USE_FILE_LOCKING=FALSE' if 'lock' in str(e) else ''
        raise Galaxy10Error(f'{path}: cannot be opened as HDF5 ({e}){hint}') from None


def _dataset(f, key: str, path: Path):
    """``f[key]`` as an h5py Dataset whose data this file can reach, or a Galaxy10Error naming the file and key."""
    h5py = _import_h5py()
    link = f.get(key, getlink=True)
    if link is None:
        found = ', '.join(repr(k) for k in f.keys()) or 'none'
        raise Galaxy10Error(
            f"{path}: no {key!r} dataset; a Galaxy10 file has {IMAGES_KEY!r} and {LABELS_KEY!r} (found: {found})")
    try:
        ds = f[key]
    except (KeyError, OSError):  # a link whose target cannot be opened
        if isinstance(link, h5py.ExternalLink):
            raise Galaxy10Error(
                f'{path}: {key!r} is an external link to {link.filename}:{link.path}, which cannot be opened; '
                f'expected the dataset stored in the file itself (or the linked file beside it)') from None
        target = f' to {link.path}' if isinstance(link, h5py.SoftLink) else ''
        raise Galaxy10Error(f'{path}: {key!r} is a link{target} that leads nowhere; expected a dataset') from None
    if not isinstance(ds, h5py.Dataset):
        raise Galaxy10Error(f'{path}: {key!r} is a {type(ds).__name__.lower()}, expected a dataset')
    return ds


def _read(ds, selection, path: Path, what: str) -> np.ndarray:
    """``ds[selection]``, its read errors (damaged chunks, storage that went missing) named by file and dataset."""
    try:
        return ds[selection]
    except OSError as e:
        outside = f'; its data is stored outside the file, in {os.fsdecode(ds.external[0][0])}' if ds.external else ''
        raise Galaxy10Error(f'{path}: cannot read {what} of {ds.name.lstrip("/")!r} ({e}){outside}') from None


def _detect_variant(images, path: Path) -> Galaxy10Variant:
    shape = tuple(images.shape)
    expected = ' or '.join(f'(N, {v.image_size}, {v.image_size}, 3) for {v.name}' for v in GALAXY10_VARIANTS.values())
    for variant in GALAXY10_VARIANTS.values():
        if shape[1:] == (variant.image_size, variant.image_size, 3):
            break
    else:
        raise Galaxy10Error(f'{path}: {IMAGES_KEY!r} has shape {shape}; expected {expected}')
    if images.dtype != np.uint8:
        raise Galaxy10Error(f'{path}: {IMAGES_KEY!r} has dtype {images.dtype}; expected uint8')
    if shape[0] == 0:
        raise Galaxy10Error(f'{path}: {IMAGES_KEY!r} holds no images')
    return variant


def _read_labels(ans, num_images: int, num_classes: int, path: Path) -> np.ndarray:
    if ans.ndim != 1 or ans.shape[0] != num_images:
        raise Galaxy10Error(
            f'{path}: {LABELS_KEY!r} has shape {tuple(ans.shape)} but {IMAGES_KEY!r} holds {num_images} images; '
            f'expected one label per image, shape ({num_images},)')
    if ans.dtype.kind not in 'iuf':
        raise Galaxy10Error(f'{path}: {LABELS_KEY!r} has dtype {ans.dtype}; expected integer labels')
    raw = _read(ans, (), path, 'the labels')
    with np.errstate(invalid='ignore'):  # NaN labels are reported below, not warned about here
        labels = raw.astype(np.int64)
    bad = (labels < 0) | (labels >= num_classes)
    if ans.dtype.kind == 'f':
        bad |= ~np.isfinite(raw) | (raw != labels)  # 2.5 or NaN is not a label
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise Galaxy10Error(
            f'{path}: labels out of range: {raw[first].item()!r} at index {first} ({int(bad.sum())} bad in all); '
            f'expected integers 0-{num_classes - 1}')
    return labels


def _inspect(path: Path) -> Tuple[Galaxy10Variant, np.ndarray]:
    """Check keys, shapes, dtypes, label range and that the images can be read (the first one is); returns the
    variant and the labels (int64)."""
    with _open_h5(path) as f:
        images = _dataset(f, IMAGES_KEY, path)
        ans = _dataset(f, LABELS_KEY, path)
        variant = _detect_variant(images, path)
        labels = _read_labels(ans, images.shape[0], len(variant.class_names), path)
        _read(images, 0, path, 'image 0')  # storage that is missing or damaged shows here, before any work
        for key in METADATA_KEYS:
            column = _metadata_dataset(f, key, path)
            if column is not None and tuple(column.shape) != (images.shape[0],):
                raise Galaxy10Error(
                    f'{path}: {key!r} has shape {tuple(column.shape)}; expected ({images.shape[0]},), one per image')
    return variant, labels


def _metadata_dataset(f, key: str, path: Path):
    """The optional per-image column ``key`` (None when the file has none), checked as ``_dataset`` checks."""
    return _dataset(f, key, path) if f.get(key, getlink=True) is not None else None


class Galaxy10Dataset(torch.utils.data.Dataset):
    """Galaxy10 (DECals or SDSS) read straight from the HDF5 file; items are ``(PIL RGB image, label)``.

    The file is checked and its labels read once here; images are read on access through a handle opened
    lazily in each process, so the dataset is safe with ``DataLoader(num_workers>0)``. ``split='train'``,
    ``'validation'`` or ``'test'`` selects the same stratified split that ``timm-astro galaxy10 prepare`` writes
    for the same ``val_fraction``, ``test_fraction`` and ``seed``; ``split=None`` gives every image.
    ``transform`` may be a timm transform (``timm.data.create_transform``); timm's ``create_loader`` also sets it.
    """

    def __init__(
            self,
            path: Union[str, os.PathLike],
            split: Optional[str] = None,
            val_fraction: float = 0.1,
            test_fraction: float = 0.0,
            seed: int = 0,
            transform: Optional[Callable] = None,
            target_transform: Optional[Callable] = None,
    ):
        split = {'val': 'validation', 'valid': 'validation'}.get(split, split)
        stratified_split((), val_fraction, test_fraction, seed)  # bad split arguments are refused before the file
        if split is not None and split not in SPLITS:
            raise Galaxy10Error(f"split must be None, 'train', 'validation' or 'test', got {split!r}")
        if split == 'test' and not test_fraction:
            raise Galaxy10Error("split='test' needs test_fraction > 0 (the fraction prepare --test-fraction used)")
        for name, fn in (('transform', transform), ('target_transform', target_transform)):
            if fn is not None and not callable(fn):
                raise Galaxy10Error(f'{name} must be callable (e.g. timm.data.create_transform(...)), got {fn!r}')
        self.path = Path(path)
        self.variant, labels = _inspect(self.path)
        self.classes: List[str] = list(self.variant.class_names)
        self.class_to_idx: Dict[str, int] = {name: i for i, name in enumerate(self.classes)}
        if split is None:
            self.indices = np.arange(len(labels))
        else:
            self.indices = np.flatnonzero(stratified_split(labels, val_fraction, test_fraction, seed) == split)
        self.split = split
        self.targets: List[int] = labels[self.indices].tolist()
        self.transform = transform
        self.target_transform = target_transform
        self._file = None
        self._images = None
        self._pid: Optional[int] = None

    def __len__(self) -> int:
        return len(self.indices)

    def _image_array(self, index: int) -> np.ndarray:
        if self._images is None or self._pid != os.getpid():
            # a handle inherited from a parent process (fork) must not be shared: open our own
            self._file = _import_h5py().File(str(self.path), 'r')
            self._images = self._file[IMAGES_KEY]
            self._pid = os.getpid()
        return _read(self._images, index, self.path, f'image {index}')

    def __getitem__(self, index: int):
        img = Image.fromarray(self._image_array(int(self.indices[index])))
        target = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def metadata(self) -> Dict[str, List[str]]:
        """The file's per-image columns (ra, dec, redshift, pxscale) for this dataset's images, as text ('' where
        the file has no such column), plus ``index``, each image's row in the file."""
        return {'index': [str(i) for i in self.indices.tolist()], **_read_metadata(self.path, self.indices)}

    def __getstate__(self):
        state = self.__dict__.copy()
        state.update(_file=None, _images=None, _pid=None)  # open handles do not pickle; workers reopen
        return state

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._images = self._pid = None

    def __repr__(self) -> str:
        return f'{type(self).__name__}({str(self.path)!r}, {self.variant.name}, split={self.split!r}, n={len(self)})'


def _sha256(path: Path, progress: bool) -> str:
    from tqdm import tqdm
    digest = hashlib.sha256()
    with open(path, 'rb') as f, tqdm(
            total=path.stat().st_size, unit='B', unit_scale=True, unit_divisor=1024, desc='sha256',
            file=sys.stderr, disable=None if progress else True, leave=False) as bar:
        for block in iter(lambda: f.read(4 * 2 ** 20), b''):
            digest.update(block)
            bar.update(len(block))
    return digest.hexdigest()


def _check_sha256(path: Path, expected: str, variant: Galaxy10Variant, progress: bool) -> None:
    if expected == 'published':
        if variant.key != 'decals':
            raise Galaxy10Error(
                f'no published checksum is known for {variant.name}; pass --sha256 HEX with the value to expect')
        expected, source = GALAXY10_DECALS_SHA256, 'the published Galaxy10_DECals.h5, Zenodo record 10845026'
    else:
        source = 'given with --sha256'
    actual = _sha256(path, progress)
    if actual != expected.lower():
        raise Galaxy10Error(
            f'{path}: SHA-256 is {actual}, expected {expected.lower()} ({source}); the file is corrupt, '
            f'incomplete or a different file')


def _read_metadata(path: Path, indices: np.ndarray) -> Dict[str, List[str]]:
    """The per-image metadata columns of the images ``indices``, as text ('' where the file lacks a column)."""
    columns = {}
    with _open_h5(path) as f:
        for key in METADATA_KEYS:
            column = _metadata_dataset(f, key, path)
            # str() of a numpy scalar is its shortest round-trip form for its own dtype (float32 stays short)
            columns[key] = [''] * len(indices) if column is None else \
                [str(v) for v in _read(column, (), path, 'the values')[indices]]
    return columns


def _read_chunk_size(images, bytes_per_image: int, chunk_bytes: int) -> int:
    """Images per read: about ``chunk_bytes``, a whole number of the file's HDF5 chunks when it is chunked."""
    per_read = max(1, chunk_bytes // bytes_per_image)
    if images.chunks:
        rows = images.chunks[0]
        per_read = max(rows, per_read // rows * rows)
    return per_read


def _save_image(array: np.ndarray, path: str, pil_format: str, options: dict) -> None:
    Image.fromarray(array).save(path, format=pil_format, **options)


def _write_tree(
        tmp_dir: Path, h5_path: Path, variant: Galaxy10Variant, labels: np.ndarray, splits: np.ndarray,
        image_format: str, workers: int, chunk_bytes: int, progress: bool, settings: Dict[str, object],
) -> Dict[str, int]:
    from tqdm import tqdm
    pil_format, ext, options = IMAGE_FORMATS[image_format]
    num_images = len(labels)
    width = max(5, len(str(num_images - 1)))
    used_splits = [split for split in SPLITS if split != 'test' or settings['test_fraction']]
    files = [
        f'{split}/{variant.class_folders[label]}/{index:0{width}d}{ext}'
        for index, (split, label) in enumerate(zip(splits, labels))]
    for split in used_splits:
        for folder in variant.class_folders:
            (tmp_dir / split / folder).mkdir(parents=True)
    metadata = _read_metadata(h5_path, np.arange(num_images))

    pool = ThreadPoolExecutor(workers, thread_name_prefix='galaxy10')
    try:
        with _open_h5(h5_path) as f, tqdm(
                total=num_images, unit='img', desc=variant.name, file=sys.stderr,
                disable=None if progress else True) as bar:
            images = f[IMAGES_KEY]
            per_read = _read_chunk_size(images, int(np.prod(images.shape[1:])), chunk_bytes)
            buffer = np.empty((min(per_read, num_images),) + images.shape[1:], dtype=np.uint8)  # reused
            for start in range(0, num_images, per_read):
                stop = min(start + per_read, num_images)
                block = buffer[:stop - start]
                try:
                    images.read_direct(block, np.s_[start:stop], np.s_[0:stop - start])
                except OSError as e:
                    raise Galaxy10Error(f'{h5_path}: cannot read images {start}-{stop - 1} ({e})') from None
                paths = [str(tmp_dir / files[i]) for i in range(start, stop)]
                list(pool.map(lambda i: _save_image(block[i], paths[i], pil_format, options), range(len(paths))))
                bar.update(stop - start)
    finally:
        # no thread may still be writing when the caller removes the temporary directory
        pool.shutdown(wait=True, cancel_futures=True)

    rows = ([index, label, variant.class_names[label], splits[index]] + [metadata[key][index] for key in METADATA_KEYS]
            + [files[index]] for index, label in enumerate(labels.tolist()))
    return write_dataset_files(tmp_dir, MANIFEST_COLUMNS, rows, variant.class_names, variant.class_folders, labels,
                               splits, {
                                   'created_by': CREATED_BY,
                                   'dataset': variant.name,
                                   'source': h5_path.name,
                                   'num_images': num_images,
                                   'num_classes': len(variant.class_names),
                                   'image_size': [variant.image_size, variant.image_size],
                                   'format': image_format,
                                   **settings,
                               })


@dataclass
class PrepareResult:
    variant: Galaxy10Variant
    out_dir: Path
    num_images: int
    splits: Dict[str, int]
    seconds: float
    train_classes: Tuple[str, ...] = ()  # the class folders of train/ that hold images: what timm will number

    @property
    def num_classes(self) -> int:
        """The classes timm finds in train/ (its ImageFolder skips empty class folders): train.py's --num-classes."""
        return len(self.train_classes)


def prepare_galaxy10(
        h5_path: Union[str, os.PathLike],
        out_dir: Union[str, os.PathLike],
        val_fraction: float = 0.1,
        seed: int = 0,
        image_format: str = 'png',
        test_fraction: float = 0.0,
        sha256: Optional[str] = None,
        overwrite: bool = False,
        workers: Optional[int] = None,
        chunk_bytes: int = 16 * 2 ** 20,
        progress: bool = True,
) -> PrepareResult:
    """Write the ImageFolder, manifest and class names for a Galaxy10 HDF5 file into ``out_dir``.

    Everything is checked before anything is written; images are streamed ``chunk_bytes`` at a time into a
    temporary directory beside ``out_dir`` that is renamed into place only when complete, and removed on
    any failure or interrupt (``timm_astro.outputs.atomic_output_dir``). ``test_fraction`` > 0 adds a held-out
    ``test/`` split. ``sha256`` is a hex digest to expect, or ``'published'`` for the published
    Galaxy10_DECals.h5. Same arguments, same bytes: nothing time- or machine-dependent goes into the files.
    """
    start_time = time.monotonic()
    h5_path, out_dir = Path(h5_path), Path(out_dir)
    if image_format not in IMAGE_FORMATS:
        raise Galaxy10Error(f"image format must be one of {', '.join(IMAGE_FORMATS)}, got {image_format!r}")
    workers = workers or min(8, os.cpu_count() or 1)
    if workers < 1:
        raise Galaxy10Error(f'workers must be at least 1 (or None: one per core, up to 8), got {workers}')
    variant, labels = _inspect(h5_path)
    splits = stratified_split(labels, val_fraction, test_fraction, seed)
    if out_dir.resolve() in h5_path.resolve().parents:
        raise Galaxy10Error(f'{out_dir}: contains the input file {h5_path}; choose an output directory elsewhere')
    check_output_location(out_dir, overwrite=overwrite, created_by=CREATED_BY)
    if sha256:
        _check_sha256(h5_path, sha256, variant, progress)
    settings = {'val_fraction': val_fraction, 'test_fraction': test_fraction, 'seed': seed}
    with atomic_output_dir(out_dir, CREATED_BY, overwrite=overwrite) as tmp_dir:
        counts = _write_tree(
            tmp_dir, h5_path, variant, labels, splits, image_format, workers, chunk_bytes, progress, settings)
    train_classes = tuple(variant.class_folders[label] for label in np.unique(labels[splits == 'train']))
    return PrepareResult(variant, out_dir, len(labels), counts, time.monotonic() - start_time, train_classes)
