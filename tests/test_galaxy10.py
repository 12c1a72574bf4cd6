"""Tests for ``timm-astro galaxy10 prepare`` and ``Galaxy10Dataset`` on small HDF5 files built here."""
import csv
import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import pytest

h5py = pytest.importorskip('h5py', reason="h5py is the optional 'data' extra: pip install 'timm-astro[data]'")

import timm_astro.data.galaxy10 as g10  # noqa: E402
from timm_astro.commands.galaxy10 import main  # noqa: E402
from timm_astro.data.galaxy10 import (  # noqa: E402
    GALAXY10_DECALS_CLASSES, GALAXY10_SDSS_CLASSES, GALAXY10_VARIANTS, Galaxy10Dataset)
from timm_astro.data.splits import stratified_split  # noqa: E402
from timm_astro.errors import UserError  # noqa: E402

from fs_helpers import NO_MOUNT, small_filesystem  # noqa: E402

DECALS, SDSS = GALAXY10_VARIANTS['decals'], GALAXY10_VARIANTS['sdss']
# deliberately unbalanced: class 5 has 2 images, class 9 has 1 (it can only go to train)
DEFAULT_COUNTS = (6, 10, 14, 8, 3, 2, 9, 12, 5, 1)


def make_labels(counts: Sequence[int] = DEFAULT_COUNTS, seed: int = 0) -> np.ndarray:
    labels = np.repeat(np.arange(len(counts)), counts).astype(np.uint8)
    return np.random.default_rng(seed).permutation(labels)


def make_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Low-entropy images (fast to encode) that still differ pixel by pixel and image by image."""
    images = np.zeros((n, size, size, 3), dtype=np.uint8)
    images[:, 8:40, 8:40, :] = np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    images[:, -4:, -4:, :] = (np.arange(n) % 256).astype(np.uint8)[:, None, None, None]
    return images


def make_h5(
        path: Path,
        size: int = 256,
        labels: Optional[np.ndarray] = None,
        images: Optional[np.ndarray] = None,
        metadata: bool = True,
        skip: Sequence[str] = (),
) -> Path:
    """A Galaxy10-schema file: 'images', 'ans' and (optionally) the DECals metadata columns."""
    labels = make_labels() if labels is None else labels
    images = make_images(len(labels), size) if images is None else images
    rng = np.random.default_rng(1)
    with h5py.File(path, 'w') as f:
        columns = {'images': images, 'ans': labels}
        if metadata:
            redshift = rng.uniform(0.01, 0.3, len(labels)).astype(np.float32)
            redshift[::4] = np.nan  # the real file has NaN redshifts
            columns.update(
                ra=rng.uniform(0, 360, len(labels)), dec=rng.uniform(-30, 80, len(labels)),
                redshift=redshift, pxscale=np.full(len(labels), 0.262, dtype=np.float32))
        for key, value in columns.items():
            if key not in skip:
                f.create_dataset(key, data=value)
    return path


def read_manifest(out: Path) -> List[Dict[str, str]]:
    with open(out / 'manifest.csv', newline='') as fh:
        return list(csv.DictReader(fh))


def tree_bytes(root: Path) -> Dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob('*')) if p.is_file()}


def leftovers(parent: Path) -> List[str]:
    return sorted(p.name for p in parent.iterdir() if '.partial-' in p.name or '.old-' in p.name)


@pytest.fixture(scope='module')
def decals_h5(tmp_path_factory) -> Path:
    return make_h5(tmp_path_factory.mktemp('decals') / 'Galaxy10_DECals.h5')


@pytest.fixture(scope='module')
def decals_out(tmp_path_factory, decals_h5) -> Path:
    out = tmp_path_factory.mktemp('prepared') / 'galaxy10'
    assert main(['prepare', str(decals_h5), str(out), '--no-progress']) == 0
    return out


# ---- the split -----------------------------------------------------------------------------------------------

def test_split_is_stratified_deterministic_and_seeded():
    labels = make_labels((1000, 300, 40, 17, 2, 1, 500, 60, 9, 250))
    is_val = stratified_split(labels, 0.1, seed=0) == 'validation'
    for label, count in enumerate((1000, 300, 40, 17, 2, 1, 500, 60, 9, 250)):
        n_val = int(is_val[labels == label].sum())
        expected = {2: 1, 1: 0}.get(count, int(np.floor(0.1 * count + 0.5)))
        assert n_val == expected, f'class {label} ({count} images): {n_val} in validation, expected {expected}'
    assert np.array_equal(is_val, stratified_split(labels, 0.1, seed=0) == 'validation'), 'same seed, same split'
    assert not np.array_equal(is_val, stratified_split(labels, 0.1, seed=1) == 'validation'), 'seed changes it'
    with pytest.raises(ValueError, match='between 0 and 1'):
        stratified_split(labels, 1.0)


# ---- the output tree -----------------------------------------------------------------------------------------

def test_prepare_writes_imagefolder_manifest_and_class_names(decals_h5, decals_out):
    assert sorted(p.name for p in decals_out.iterdir()) == [
        '.timm-astro.json', 'class_names.json', 'dataset.json', 'manifest.csv', 'train', 'validation']
    for split in ('train', 'validation'):
        assert [p.name for p in sorted((decals_out / split).iterdir())] == list(DECALS.class_folders)
    assert DECALS.class_folders[0] == '0_disturbed_galaxies'
    assert DECALS.class_folders[8] == '8_edge_on_galaxies_without_bulge'
    assert json.loads((decals_out / 'class_names.json').read_text()) == list(GALAXY10_DECALS_CLASSES)

    rows = read_manifest(decals_out)
    assert list(rows[0]) == ['index', 'label', 'class_name', 'split', 'ra', 'dec', 'redshift', 'pxscale', 'file']
    with h5py.File(decals_h5, 'r') as f:
        images, labels, ra, redshift = f['images'][()], f['ans'][()], f['ra'][()], f['redshift'][()]
    assert [int(r['index']) for r in rows] == list(range(len(labels)))
    for row in rows:
        i, label = int(row['index']), int(row['label'])
        assert label == labels[i] and row['class_name'] == GALAXY10_DECALS_CLASSES[label]
        assert row['file'] == f"{row['split']}/{DECALS.class_folders[label]}/{i:05d}.png"
        assert float(row['ra']) == ra[i]
        assert np.isnan(redshift[i]) == (row['redshift'] == 'nan')
        if row['redshift'] != 'nan':
            assert np.float32(row['redshift']) == redshift[i]
    # PNG is lossless: every file holds exactly the pixels of its HDF5 row
    from PIL import Image
    for row in rows:
        with Image.open(decals_out / row['file']) as img:
            assert img.mode == 'RGB' and np.array_equal(np.asarray(img), images[int(row['index'])]), row['file']
    assert sum(1 for _ in decals_out.rglob('*.png')) == len(labels)

    info = json.loads((decals_out / 'dataset.json').read_text())
    is_val = stratified_split(labels.astype(np.int64), 0.1, seed=0) == 'validation'
    assert info['dataset'] == 'Galaxy10 DECals' and info['num_images'] == len(labels)
    assert info['splits'] == {'train': int((~is_val).sum()), 'validation': int(is_val.sum())}
    assert [row['split'] == 'validation' for row in rows] == is_val.tolist(), 'manifest must follow the split'


def test_timm_reads_the_output_with_the_original_label_ids(decals_out):
    from timm.data import create_dataset
    label_of = {row['file']: int(row['label']) for row in read_manifest(decals_out)}
    for split in ('train', 'validation'):
        ds = create_dataset('', root=str(decals_out), split=split)
        samples = ds.reader.samples
        assert len(samples) == sum(1 for f in label_of if f.startswith(split + '/'))
        for path, target in samples:
            rel = Path(path).relative_to(decals_out).as_posix()
            assert target == label_of[rel], f'timm gives {rel} label {target}, the file says {label_of[rel]}'
        img, target = ds[0]
        assert img.size == (256, 256) and target == samples[0][1]


def test_rerun_is_byte_identical_and_seed_changes_split(tmp_path, decals_h5, decals_out):
    again = tmp_path / 'again'
    assert main(['prepare', str(decals_h5), str(again), '--no-progress', '--workers', '1']) == 0
    assert tree_bytes(again) == tree_bytes(decals_out), 'same arguments must give the same bytes'
    # --overwrite replaces an earlier output, with the same bytes again
    assert main(['prepare', str(decals_h5), str(again), '--no-progress', '--overwrite']) == 0
    assert tree_bytes(again) == tree_bytes(decals_out)
    other = tmp_path / 'other'
    assert main(['prepare', str(decals_h5), str(other), '--no-progress', '--seed', '7']) == 0
    assert [r['split'] for r in read_manifest(other)] != [r['split'] for r in read_manifest(decals_out)]
    assert leftovers(tmp_path) == []


def test_sdss_file_is_detected_and_jpeg_format(tmp_path):
    labels = make_labels((30, 40, 35, 8, 12, 2, 6, 11, 9, 7))
    h5 = make_h5(tmp_path / 'Galaxy10.h5', size=69, labels=labels, metadata=False)
    out = tmp_path / 'sdss'
    assert main(['prepare', str(h5), str(out), '--no-progress', '--format', 'jpeg', '--val-fraction', '0.2']) == 0
    assert [p.name for p in sorted((out / 'train').iterdir())] == list(SDSS.class_folders)
    assert SDSS.class_folders[0] == '0_disk_face_on_no_spiral'
    assert json.loads((out / 'class_names.json').read_text()) == list(GALAXY10_SDSS_CLASSES)
    info = json.loads((out / 'dataset.json').read_text())
    assert info['dataset'] == 'Galaxy10 SDSS' and info['image_size'] == [69, 69] and info['format'] == 'jpeg'
    rows = read_manifest(out)
    assert all(r['file'].endswith('.jpg') and r['ra'] == '' for r in rows), 'no metadata columns in this file'
    per_class = [sum(1 for r in rows if int(r['label']) == c and r['split'] == 'validation') for c in range(10)]
    assert per_class == [6, 8, 7, 2, 2, 1, 1, 2, 2, 1]
    from PIL import Image
    with Image.open(out / rows[0]['file']) as img:
        assert img.format == 'JPEG' and img.size == (69, 69)


def test_dispatcher_and_checksums(tmp_path, decals_h5, capsys):
    from timm_astro.cli import main as cli_main
    digest = hashlib.sha256(decals_h5.read_bytes()).hexdigest()
    out = tmp_path / 'checked'
    assert cli_main(['galaxy10', 'prepare', str(decals_h5), str(out), '--no-progress', '--sha256', digest]) == 0
    printed = capsys.readouterr().out
    assert f'train with: train.py --data-dir {out} --num-classes 10' in printed


# ---- errors: one clear line, exit code 2, nothing written ----------------------------------------------------

def _truncated(path: Path) -> Path:
    make_h5(path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    return path


def _storage_elsewhere(path: Path, case: str) -> Path:
    """Issue 29: a dataset whose storage is not in the file (a group, a link to nowhere, external raw data)."""
    make_h5(path, skip=('ra',) if case == 'ra group' else ('images',))
    with h5py.File(path, 'a') as f:
        if case == 'ra group':
            f.create_group('ra')
        elif case == 'images external link':
            f['images'] = h5py.ExternalLink('missing.h5', '/images')
        elif case == 'images soft link':
            f['images'] = h5py.SoftLink('/nowhere')
        else:  # raw data in a file that is not there
            f.create_dataset('images', shape=(70, 256, 256, 3), dtype=np.uint8,
                             external=[(str(path.parent / 'missing.raw'), 0, h5py.h5f.UNLIMITED)])
    return path


STORAGE_CASES = {
    'ra group': "input.h5: 'ra' is a group, expected a dataset",
    'images external link': "input.h5: 'images' is an external link to missing.h5:/images, which cannot be opened",
    'images soft link': "input.h5: 'images' is a link to /nowhere that leads nowhere",
    'images external raw data': "input.h5: cannot read image 0 of 'images' (",
}


BAD_INPUTS = {
    **{case: (lambda p, c=case: _storage_elsewhere(p, c), [], message) for case, message in STORAGE_CASES.items()},
    'missing file': (lambda p: p, [], 'no such file'),
    'not hdf5': (lambda p: (p.write_bytes(b'SIMPLE  =  T' * 400), p)[1], [], 'not an HDF5 file'),
    'truncated': (_truncated, [], 'is truncated'),
    'missing labels': (lambda p: make_h5(p, skip=('ans',)), [], "no 'ans' dataset"),
    'missing images': (lambda p: make_h5(p, skip=('images',)), [], "no 'images' dataset"),
    'length mismatch': (
        lambda p: make_h5(p, labels=make_labels()[:-1], images=make_images(len(make_labels()), 256)), [],
        'expected one label per image'),
    'label out of range': (
        lambda p: make_h5(p, labels=np.where(np.arange(70) == 7, 10, make_labels()).astype(np.uint8)), [],
        'labels out of range: 10 at index 7'),
    'fractional label': (
        lambda p: make_h5(p, labels=np.where(np.arange(70) == 3, 2.5, make_labels()).astype(np.float32)), [],
        'labels out of range: 2.5 at index 3'),
    'unknown image size': (lambda p: make_h5(p, size=64), [], 'expected (N, 256, 256, 3) for Galaxy10 DECals'),
    'float images': (
        lambda p: make_h5(p, images=make_images(70, 69).astype(np.float32)), [], "dtype float32; expected uint8"),
    'wrong checksum': (make_h5, ['--sha256', '0' * 64], 'expected ' + '0' * 64),
    'not the published file': (make_h5, ['--sha256'], 'Zenodo record 10845026'),
    'no published sdss checksum': (
        lambda p: make_h5(p, size=69), ['--sha256'], 'no published checksum is known for Galaxy10 SDSS'),
    'bad val fraction': (make_h5, ['--val-fraction', '1.5'], 'between 0 and 1'),
}


@pytest.mark.parametrize('case', list(BAD_INPUTS))
def test_bad_input_gives_one_clear_line_and_writes_nothing(tmp_path, capsys, case):
    build, extra, message = BAD_INPUTS[case]
    h5 = build(tmp_path / 'input.h5')
    out = tmp_path / 'out'
    assert main(['prepare', str(h5), str(out), '--no-progress'] + extra) == 2
    err = capsys.readouterr().err
    assert message in err, f'{case}: {err!r}'
    assert err.startswith('timm-astro galaxy10: error: ') and err.count('\n') == 1 and 'Traceback' not in err
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize('case', list(STORAGE_CASES))
def test_dataset_reader_names_the_file_and_dataset_whose_storage_is_elsewhere(tmp_path, case):
    """The HDF5 reader evaluate and predict use: the same one-line error, before any image is served."""
    h5 = _storage_elsewhere(tmp_path / 'input.h5', case)
    with pytest.raises(UserError) as e:
        Galaxy10Dataset(h5)
    assert STORAGE_CASES[case] in str(e.value) and '\n' not in str(e.value), str(e.value)


def test_a_file_with_some_classes_says_what_timm_will_find(tmp_path, capsys):
    """Issue 29: 3 of the 10 classes present: timm numbers the 3 folders that hold images, so --num-classes 3."""
    labels = np.repeat(np.array([0, 3, 7], dtype=np.uint8), 10)
    h5 = make_h5(tmp_path / 'three.h5', size=69, labels=labels, metadata=False)
    out = tmp_path / 'out'
    assert main(['prepare', str(h5), str(out), '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert f'--num-classes 3\n' in printed and '--num-classes 10' not in printed
    folders = ', '.join(SDSS.class_folders[i] for i in (0, 3, 7))
    assert f'train/ holds images of 3 of the 10 Galaxy10 SDSS classes ({folders}); timm will find 3 classes' in printed
    from timm.data import create_dataset
    assert len(create_dataset('', root=str(out), split='train').reader.class_to_idx) == 3


def _file(path: Path) -> Path:
    path.write_text('not a folder')
    return path


def _read_only(tmp: Path, stack) -> Path:
    ro = stack.enter_context(small_filesystem(tmp / 'ro', read_only=True))
    if ro is None:
        pytest.skip(NO_MOUNT)
    return ro / 'out'


def _full(tmp: Path, stack) -> Path:
    small = stack.enter_context(small_filesystem(tmp / 'small', size_kb=64))
    if small is None:
        pytest.skip(NO_MOUNT)
    return small / 'out'


# where OUT_DIR goes wrong: (build it under tmp, expected message)
BAD_OUTPUTS = {
    'parent is a file': (lambda t, s: _file(t / 'afile') / 'sub', 'cannot be created, {tmp}/afile is a file'),
    'grandparent is a file': (lambda t, s: _file(t / 'afile') / 'sub' / 'deeper', '{tmp}/afile is a file'),
    'a file, with --overwrite': (lambda t, s: _file(t / 'afile'), 'afile: exists and is a file, not a folder'),
    'read-only file system': (_read_only, 'the file system is read-only'),
    'full file system': (_full, 'out: cannot be written: no space left on the device'),
}


@pytest.mark.parametrize('case', list(BAD_OUTPUTS))
def test_bad_output_location_gives_one_line_and_leaves_nothing(case, tmp_path, decals_h5, capsys):
    import contextlib
    build, message = BAD_OUTPUTS[case]
    with contextlib.ExitStack() as stack:
        out = build(tmp_path, stack)
        before = sorted(str(p) for p in tmp_path.rglob('*'))
        assert main(['prepare', str(decals_h5), str(out), '--no-progress', '--overwrite']) == 2
        err = capsys.readouterr().err
        assert message.format(tmp=tmp_path) in err, err
        assert err.startswith('timm-astro galaxy10: error: ') and err.count('\n') == 1 and 'Traceback' not in err
        assert sorted(str(p) for p in tmp_path.rglob('*')) == before, 'nothing may be left behind'


def test_unwritable_parent_gives_one_line(tmp_path, decals_h5, capsys, monkeypatch):
    # root ignores permission bits: the kernel's answer for a folder we may not write to is stood in for
    real_access = os.access
    monkeypatch.setattr(os, 'access', lambda p, mode, **kw: Path(p) != tmp_path and real_access(p, mode, **kw))
    assert main(['prepare', str(decals_h5), str(tmp_path / 'out'), '--no-progress']) == 2
    err = capsys.readouterr().err
    assert f'cannot be created in {tmp_path} (permission denied)' in err and err.count('\n') == 1


KILLED_RUN = r"""
import pathlib, sys, time
import timm_astro.data.galaxy10 as g10
from timm_astro.cli import main
real_save, sentinel = g10._save_image, pathlib.Path(sys.argv[3])

def save_then_hang(array, path, *args):
    real_save(array, path, *args)
    if len(list(pathlib.Path(path).parents[2].rglob('*.png'))) >= 10:  # some images are on disk
        sentinel.touch()
        time.sleep(600)

g10._save_image = save_then_hang
main(['galaxy10', 'prepare', sys.argv[1], sys.argv[2], '--no-progress', '--workers', '1'])
"""


def test_rerun_after_sigkill_removes_its_own_partial_only(tmp_path, decals_h5, decals_out, capsys):
    out, sentinel = tmp_path / 'out', tmp_path / 'written'
    proc = subprocess.Popen([sys.executable, '-c', KILLED_RUN, str(decals_h5), str(out), str(sentinel)])
    try:
        deadline = time.monotonic() + 120
        while not sentinel.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert sentinel.exists(), 'the run never got to write images'
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    partials = leftovers(tmp_path)
    assert len(partials) == 1 and not out.exists(), partials  # what a killed run leaves: no finally block ran
    assert sum(1 for _ in (tmp_path / partials[0]).rglob('*.png')) >= 10
    stranger = tmp_path / '.out.partial-not-ours'  # a look-alike with no marker of ours: never touched
    stranger.mkdir()

    assert main(['prepare', str(decals_h5), str(out), '--no-progress']) == 0
    err = capsys.readouterr().err
    assert f'removed {tmp_path / partials[0]}, left by an earlier run (process {proc.pid}) that was killed' in err
    assert leftovers(tmp_path) == ['.out.partial-not-ours']
    assert tree_bytes(out) == tree_bytes(decals_out)


BAD_DATASET_ARGS = {
    'seed is text': (dict(seed='x'), "seed must be an integer, got 'x'"),
    'seed is a float': (dict(seed=1.5), 'seed must be an integer, got 1.5'),
    'val_fraction 1': (dict(val_fraction=1.0), 'val_fraction must be between 0 and 1'),
    'negative test_fraction': (dict(test_fraction=-0.1), 'test_fraction must be [0, 1)'),
    'fractions sum to 1': (dict(val_fraction=0.5, test_fraction=0.5), 'must be below 1'),
    'unknown split': (dict(split='tst'), "split must be None, 'train', 'validation' or 'test', got 'tst'"),
    'test split without a fraction': (dict(split='test'), "split='test' needs test_fraction > 0"),
    'transform not callable': (dict(transform=224), 'transform must be callable'),
}


@pytest.mark.parametrize('case', list(BAD_DATASET_ARGS))
def test_dataset_arguments_are_checked_before_the_file_is_read(case, tmp_path):
    kwargs, message = BAD_DATASET_ARGS[case]
    with pytest.raises(UserError, match=None) as e:
        Galaxy10Dataset(tmp_path / 'no-such-file.h5', **kwargs)  # the argument is reported, not the missing file
    assert message in str(e.value), str(e.value)


def test_damaged_data_found_while_writing_leaves_nothing(tmp_path):
    """A file that opens fine but has a corrupt compressed chunk: the error names the images, no output remains."""
    h5 = tmp_path / 'damaged.h5'
    with h5py.File(h5, 'w') as f:
        f.create_dataset('images', data=make_images(70, 256), chunks=(10, 256, 256, 3), compression='gzip')
        f.create_dataset('ans', data=make_labels())
    with h5py.File(h5, 'r') as f:
        chunk = f['images'].id.get_chunk_info(5)  # images 50-59
    with open(h5, 'r+b') as fh:
        fh.seek(chunk.byte_offset + 16)
        fh.write(b'\xff' * 64)
    out = tmp_path / 'out'
    with pytest.raises(g10.Galaxy10Error, match='cannot read images 40-59'):
        g10.prepare_galaxy10(h5, out, progress=False, chunk_bytes=20 * 256 * 256 * 3)
    assert not out.exists() and leftovers(tmp_path) == []


def test_library_refuses_fewer_than_one_worker_before_writing(tmp_path, decals_h5):
    with pytest.raises(g10.Galaxy10Error, match='workers must be at least 1'):
        g10.prepare_galaxy10(decals_h5, tmp_path / 'out', workers=-1, progress=False)
    assert not (tmp_path / 'out').exists()


def test_refuses_a_non_empty_out_dir(tmp_path, decals_h5, capsys):
    out = tmp_path / 'mine'
    out.mkdir()
    (out / 'notes.txt').write_text('keep me')
    assert main(['prepare', str(decals_h5), str(out), '--no-progress']) == 2
    assert 'not empty; pass --overwrite' in capsys.readouterr().err
    assert main(['prepare', str(decals_h5), str(out), '--no-progress', '--overwrite']) == 2
    assert 'not an earlier output' in capsys.readouterr().err, '--overwrite must not delete unrelated folders'
    assert [p.name for p in out.iterdir()] == ['notes.txt'] and leftovers(tmp_path) == []
    empty = tmp_path / 'empty'
    empty.mkdir()
    assert main(['prepare', str(decals_h5), str(empty), '--no-progress']) == 0, 'an empty OUT_DIR is fine'


def test_sha256_argument_is_checked_by_the_parser(tmp_path, decals_h5, capsys):
    # a bare --sha256 before the positionals would swallow the file name; say so instead of guessing
    assert main(['prepare', '--sha256', str(decals_h5), str(tmp_path / 'x')]) == 2
    assert 'a bare --sha256 goes after the file names' in capsys.readouterr().err
    assert main(['prepare', '--help']) == 0


@pytest.mark.parametrize('exc, code, workers', [(KeyboardInterrupt, 130, '1'), (OSError, 2, '2')])
def test_failure_while_writing_leaves_nothing(tmp_path, decals_h5, decals_out, monkeypatch, capsys,
                                              exc, code, workers):
    real_save, calls = g10._save_image, []

    def failing_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 25:
            raise exc(28, 'No space left on device') if exc is OSError else exc()
        real_save(*args, **kwargs)

    monkeypatch.setattr(g10, '_save_image', failing_save)
    out = tmp_path / 'out'
    assert main(['prepare', str(decals_h5), str(out), '--no-progress', '--workers', workers]) == code
    err = capsys.readouterr().err
    assert ('no space left' in err.lower()) if exc is OSError else ('interrupted' in err)
    assert not out.exists() and leftovers(tmp_path) == []
    # a failed --overwrite keeps the earlier output as it was
    before = tree_bytes(decals_out)
    calls.clear()
    assert main(['prepare', str(decals_h5), str(decals_out), '--no-progress', '--overwrite']) == code
    assert tree_bytes(decals_out) == before and leftovers(decals_out.parent) == []


def test_missing_h5py_says_how_to_install(tmp_path, decals_h5, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, 'h5py', None)  # makes 'import h5py' fail
    assert main(['prepare', str(decals_h5), str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert "pip install 'timm-astro[data]'" in err and 'Traceback' not in err
    with pytest.raises(ImportError, match='timm-astro\\[data\\]'):
        Galaxy10Dataset(decals_h5)


# ---- the Dataset ---------------------------------------------------------------------------------------------

def test_dataset_reads_the_file_and_agrees_with_prepare(decals_h5, decals_out):
    with h5py.File(decals_h5, 'r') as f:
        images, labels = f['images'][()], f['ans'][()]
    full = Galaxy10Dataset(decals_h5)
    assert len(full) == len(labels) and full.classes == list(GALAXY10_DECALS_CLASSES)
    img, target = full[5]
    assert img.mode == 'RGB' and np.array_equal(np.asarray(img), images[5]) and target == labels[5]
    rows = read_manifest(decals_out)
    for split in ('train', 'validation'):
        ds = Galaxy10Dataset(decals_h5, split=split)
        assert ds.indices.tolist() == [int(r['index']) for r in rows if r['split'] == split]
        assert ds.targets == [int(r['label']) for r in rows if r['split'] == split]
    full.close()


def test_test_fraction_gives_three_disjoint_stratified_splits_the_dataset_matches(tmp_path, decals_h5, decals_out):
    """--test-fraction: train/validation/test partition the file, each class split by the fractions, the validation
    split unchanged from a run without a test split (earlier figures stay comparable), the manifest and the folders
    agree, and Galaxy10Dataset(split=...) with the same fractions picks the same images."""
    labels = make_labels()
    out = tmp_path / 'with_test'
    assert main(['prepare', str(decals_h5), str(out), '--test-fraction', '0.2', '--no-progress']) == 0
    rows = read_manifest(out)
    by_split = {split: {int(r['index']) for r in rows if r['split'] == split}
                for split in ('train', 'validation', 'test')}
    assert sum(map(len, by_split.values())) == len(labels)
    assert set().union(*by_split.values()) == set(range(len(labels)))
    assert not (by_split['train'] & by_split['test']) and not (by_split['validation'] & by_split['test'])
    assert by_split['validation'] == {int(r['index']) for r in read_manifest(decals_out) if r['split'] == 'validation'}
    for label, count in enumerate(DEFAULT_COUNTS):
        n_test = sum(1 for i in by_split['test'] if labels[i] == label)
        assert abs(n_test - 0.2 * count) <= 1, f'class {label}: {n_test} of {count} images in test'
    assert len(by_split['test']) > 0
    for split, indices in by_split.items():
        files = {int(p.stem) for p in (out / split).rglob('*.png')}
        assert files == indices, split
        ds = Galaxy10Dataset(decals_h5, split=split, test_fraction=0.2)
        assert set(ds.indices.tolist()) == indices and ds.targets == [int(labels[i]) for i in ds.indices]
        ds.close()


def test_dataset_with_timm_transform_and_worker_processes(decals_h5):
    import torch
    from timm.data import create_transform
    ds = Galaxy10Dataset(decals_h5, split='train', transform=create_transform(64, is_training=False))
    first, _ = ds[0]  # opens a handle in this process; the workers must open their own
    clone = pickle.loads(pickle.dumps(ds))
    assert torch.equal(clone[0][0], first)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=2, shuffle=False)
    batches = list(loader)
    assert torch.cat([b[0] for b in batches]).shape == (len(ds), 3, 64, 64)
    assert torch.cat([b[1] for b in batches]).tolist() == ds.targets
    assert torch.equal(batches[0][0][0], first)


# ---- memory and import laziness, in a fresh process ----------------------------------------

MEMORY_PROBE = r'''
import json, sys, time, tracemalloc
import timm_astro, timm_astro.data.galaxy10 as g10
lazy = 'h5py' not in sys.modules
import h5py, PIL.PngImagePlugin, tqdm  # loading the libraries is not what is measured

def status_bytes(key):  # this process only; getrusage's ru_maxrss would include the parent's peak before exec
    with open('/proc/self/status') as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(key + ':')) * 1024

try:
    with open('/proc/self/clear_refs', 'w') as fh:
        fh.write('5')  # reset the peak-RSS mark to the current RSS
except OSError:
    pass  # then the peak may include import-time spikes: an overestimate, which only makes the test stricter
before = status_bytes('VmRSS')
tracemalloc.start()
t0 = time.perf_counter()
g10.prepare_galaxy10(sys.argv[1], sys.argv[2], progress=False)
seconds = time.perf_counter() - t0
traced_peak = tracemalloc.get_traced_memory()[1]
print(json.dumps(dict(lazy=lazy, traced_peak=traced_peak, rss_growth=status_bytes('VmHWM') - before, seconds=seconds)))
'''


@pytest.fixture(scope='module')
def big_run(tmp_path_factory):
    if not Path('/proc/self/status').exists():
        pytest.skip('measuring resident memory needs /proc (Linux)')
    root = tmp_path_factory.mktemp('big')
    h5 = root / 'big.h5'
    n, block = 1536, 128  # 1536 x 256 x 256 x 3 bytes = 302 MB of pixels
    with h5py.File(h5, 'w') as f:
        images = f.create_dataset('images', shape=(n, 256, 256, 3), dtype=np.uint8)
        pattern = np.zeros((block, 256, 256, 3), dtype=np.uint8)
        for start in range(0, n, block):
            pattern[:, 100:140, 100:140, :] = start // block  # compressible, so the test stays quick
            images[start:start + block] = pattern
        f.create_dataset('ans', data=np.arange(n) % 10)
    result = subprocess.run(
        [sys.executable, '-c', MEMORY_PROBE, str(h5), str(root / 'out')],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout.strip().splitlines()[-1])
    stats.update(file_size=h5.stat().st_size, images=sum(1 for _ in (root / 'out').rglob('*.png')))
    return stats


def test_peak_memory_is_far_below_the_file_size(big_run):
    size = big_run['file_size']
    assert size > 300e6 and big_run['images'] == 1536
    print(f"\n300 MB file: traced peak {big_run['traced_peak'] / 2**20:.1f} MiB, "
          f"RSS growth {big_run['rss_growth'] / 2**20:.1f} MiB, {big_run['seconds']:.1f} s")
    assert big_run['traced_peak'] < size / 10, f"Python/numpy peak {big_run['traced_peak']:,} B for a {size:,} B file"
    assert big_run['rss_growth'] < size / 4, f"resident memory grew {big_run['rss_growth']:,} B"


def test_import_does_not_load_h5py(big_run):
    assert big_run['lazy'], "'import timm_astro.data.galaxy10' imported h5py; it must be imported lazily"


def test_progress_bar_in_a_terminal_shows_count_and_rate(tmp_path, decals_h5, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, 'stderr', terminal)
    assert main(['prepare', str(decals_h5), str(tmp_path / 'out')]) == 0
    assert '70/70' in terminal.getvalue() and 'img/s' in terminal.getvalue(), terminal.getvalue()
    quiet = Terminal()
    monkeypatch.setattr(sys, 'stderr', quiet)
    assert main(['prepare', str(decals_h5), str(tmp_path / 'quiet'), '--no-progress']) == 0
    assert quiet.getvalue() == ''
