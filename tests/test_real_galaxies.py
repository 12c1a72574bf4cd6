"""`timm-astro import`: tiny stand-ins of each real source's layout become a train/validation/test ImageFolder."""
import csv
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from timm_astro.commands.import_images import main
from timm_astro.data.galaxy10 import GALAXY10_DECALS_CLASSES, class_folder_name
from timm_astro.data.real_galaxies import FIRST_CLASSES, GZ2_CLASSES, import_images
from timm_astro.errors import UserError

PER_CLASS = 10


def _image_bytes(seed: int, size: int = 8, fmt: str = 'JPEG', mode: str = 'RGB') -> bytes:
    import io
    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3 if mode == 'RGB' else 1), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels if mode == 'RGB' else pixels[..., 0], mode=mode).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope='module')
def galaxy10_sample(tmp_path_factory) -> Path:
    """suraj-sharma3/...: galaxy_type_dataset/<Class_Name>/image_<idx>_<label>.jpg"""
    root = tmp_path_factory.mktemp('g10') / 'galaxy_type_dataset'
    index = 0
    for label, name in enumerate(GALAXY10_DECALS_CLASSES):
        folder = root / name.replace(' ', '_').replace('-', '_')
        folder.mkdir(parents=True)
        for _ in range(PER_CLASS):
            (folder / f'image_{index}_{label}.jpg').write_bytes(_image_bytes(index))
            index += 1
    return root


@pytest.fixture(scope='module')
def gz2_sample(tmp_path_factory) -> Path:
    """LevIgnatev/galaxy_morphology: data/labels/labels_manifest_1000.csv + data/labels/thumbs/<asset_id>.jpg"""
    repo = tmp_path_factory.mktemp('gz2')
    thumbs = repo / 'data' / 'labels' / 'thumbs'
    thumbs.mkdir(parents=True)
    rows = []
    for i in range(4 * PER_CLASS):
        asset = 1000 + i
        (thumbs / f'{asset}.jpg').write_bytes(_image_bytes(i))
        rows.append({'objid': str(587000 + i), 'asset_id': str(asset), 'gz2_class': 'Sc', 't01_smooth': '0.5',
                     'derived_label': GZ2_CLASSES[i % 4], 'filepath': f'data/labels/thumbs/{asset}.jpg'})
    with open(repo / 'data' / 'labels' / 'labels_manifest_1000.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return repo


@pytest.fixture(scope='module')
def first_zip(tmp_path_factory) -> Path:
    """firstgalaxydata's galaxy_data.zip: galaxy_data/{train,valid,test,all}/<Class>/<ra>_<dec>_<label>_<cat>.png"""
    path = tmp_path_factory.mktemp('first') / 'galaxy_data.zip'
    with zipfile.ZipFile(path, 'w') as archive:
        n = 0
        for split, count in (('train', 6), ('valid', 2), ('test', 2)):
            for label, name in enumerate(FIRST_CLASSES):
                for _ in range(count):
                    member = f'{name}/{100 + n * 0.5:.3f}_{-5 + n * 0.1:.3f}_{label}_Proctor_Tab1.png'
                    data = _image_bytes(n, fmt='PNG', mode='L')
                    archive.writestr(f'galaxy_data/{split}/{member}', data)
                    archive.writestr(f'galaxy_data/all/{member}', data)  # the package repeats every image in all/
                    n += 1
    return path


def _manifest(out: Path):
    with open(out / 'manifest.csv', newline='') as f:
        return list(csv.DictReader(f))


def test_galaxy10_sample_three_disjoint_stratified_splits(galaxy10_sample, tmp_path, capsys):
    out = tmp_path / 'g10'
    assert main(['galaxy10-decals-sample', str(galaxy10_sample), str(out)]) == 0
    assert '100 images, 10 classes' in capsys.readouterr().out
    rows = _manifest(out)
    assert len(rows) == 10 * PER_CLASS and len({r['source_file'] for r in rows}) == len(rows)
    for label in range(10):
        splits = [r['split'] for r in rows if int(r['label']) == label]
        assert (splits.count('train'), splits.count('validation'), splits.count('test')) == (8, 1, 1)
    for row in rows:  # bytes copied unchanged, into the class folder `galaxy10 prepare` uses for that label
        label = int(row['label'])
        assert row['file'] == f"{row['split']}/{class_folder_name(label, GALAXY10_DECALS_CLASSES[label])}/" \
                              f"{Path(row['source_file']).name}"
        assert (out / row['file']).read_bytes() == (galaxy10_sample / row['source_file']).read_bytes()
        assert row['source_index'] == Path(row['source_file']).name.split('_')[1]
    info = json.loads((out / 'dataset.json').read_text())
    assert info['splits'] == {'train': 80, 'validation': 10, 'test': 10} and info['seed'] == 0
    assert json.loads((out / 'class_names.json').read_text()) == list(GALAXY10_DECALS_CLASSES)
    # timm reads the splits with the Galaxy10 label ids
    from timm.data import create_dataset
    for split in ('train', 'validation', 'test'):
        dataset = create_dataset('', root=str(out), split=split)
        label_of = {r['file']: int(r['label']) for r in rows if r['split'] == split}
        assert {Path(p).relative_to(out).as_posix(): t for p, t in dataset.reader.samples} == label_of


def test_split_is_deterministic_seeded_and_keeps_validation_when_test_changes(galaxy10_sample, tmp_path):
    def splits(out, *extra):
        assert main(['galaxy10-decals-sample', str(galaxy10_sample), str(out), *extra]) == 0
        return {r['source_file']: r['split'] for r in _manifest(out)}
    base = splits(tmp_path / 'a')
    assert splits(tmp_path / 'b') == base, 'same arguments must give the same split'
    assert splits(tmp_path / 'c', '--seed', '3') != base
    no_test = splits(tmp_path / 'd', '--test-fraction', '0')
    assert 'test' not in no_test.values()
    assert {f for f, s in no_test.items() if s == 'validation'} == {f for f, s in base.items() if s == 'validation'}


def test_gz2_sample_keeps_its_ids(gz2_sample, tmp_path):
    result = import_images('gz2-sample', gz2_sample, tmp_path / 'gz2', val_fraction=0.2, test_fraction=0.2)
    assert result.splits == {'train': 24, 'validation': 8, 'test': 8}
    rows = _manifest(tmp_path / 'gz2')
    assert {r['class_name'] for r in rows} == set(GZ2_CLASSES)
    assert all(r['file'].endswith(f"/{r['asset_id']}.jpg") and r['objid'].startswith('587') for r in rows)
    assert all(r['class_name'] == GZ2_CLASSES[int(r['label'])] for r in rows)


def test_first_zip_published_split_or_stratified(first_zip, tmp_path):
    source = import_images('first', first_zip, tmp_path / 'source', split='source')
    assert source.splits == {'train': 24, 'validation': 8, 'test': 8}, 'all/ must not be imported twice'
    rows = _manifest(tmp_path / 'source')
    assert {r['split'] for r in rows if '/valid/' in r['source_file']} == {'validation'}
    assert all(r['catalog'] == 'Proctor_Tab1' and float(r['ra']) >= 100 for r in rows)
    with zipfile.ZipFile(first_zip) as archive:
        assert all((tmp_path / 'source' / r['file']).read_bytes() == archive.read(r['source_file']) for r in rows)
    stratified = import_images('first', first_zip, tmp_path / 'stratified')
    assert sum(stratified.splits.values()) == 40


@pytest.mark.parametrize('case, expected', [
    ('missing', 'no such file or folder'),
    ('empty', 'no images of Galaxy10 DECals sample'),
    ('wrong folder', "its name says label 3"),
    ('bad fraction', 'test_fraction must be [0, 1)'),
    ('fractions too big', 'must be below 1'),
    ('source split', 'has no published split'),
    ('not ours', "not an earlier output of 'timm-astro import'"),
])
def test_bad_input_is_one_clear_line(case, expected, galaxy10_sample, tmp_path, capsys):
    src, args = galaxy10_sample, []
    out = tmp_path / 'out'
    if case == 'missing':
        src = tmp_path / 'nowhere'
    elif case == 'empty':
        src = tmp_path / 'empty'
        src.mkdir()
    elif case == 'wrong folder':
        src = tmp_path / 'wrong'
        (src / 'Disturbed_Galaxies').mkdir(parents=True)
        (src / 'Disturbed_Galaxies' / 'image_1_3.jpg').write_bytes(_image_bytes(0))
    elif case == 'bad fraction':
        args = ['--test-fraction', '1.5']
    elif case == 'fractions too big':
        args = ['--val-fraction', '0.6', '--test-fraction', '0.5']
    elif case == 'source split':
        args = ['--split', 'source']
    elif case == 'not ours':
        out.mkdir()
        (out / 'notes.txt').write_text('mine')
        args = ['--overwrite']
    assert main(['galaxy10-decals-sample', str(src), str(out), *args]) == 2
    err = capsys.readouterr().err
    assert expected in err and err.count('\n') == 1 and 'Traceback' not in err
    if case == 'not ours':
        assert (out / 'notes.txt').read_text() == 'mine'
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if '.partial-' in p.name]


def test_overwrite_replaces_an_earlier_import(galaxy10_sample, tmp_path):
    out = tmp_path / 'out'
    assert main(['galaxy10-decals-sample', str(galaxy10_sample), str(out)]) == 0
    assert main(['galaxy10-decals-sample', str(galaxy10_sample), str(out)]) == 2  # exists: refused
    assert main(['galaxy10-decals-sample', str(galaxy10_sample), str(out), '--overwrite', '--seed', '1']) == 0
    assert json.loads((out / 'dataset.json').read_text())['seed'] == 1


def test_a_failure_midway_leaves_nothing(galaxy10_sample, tmp_path, monkeypatch):
    from timm_astro.data import real_galaxies
    real = real_galaxies._file_reader
    calls = []

    def failing_reader(path):
        read = real(path)

        def read_or_fail():
            calls.append(1)
            if len(calls) == 30:
                raise OSError(28, 'No space left on device')
            return read()
        return read_or_fail
    monkeypatch.setattr(real_galaxies, '_file_reader', failing_reader)
    with pytest.raises(UserError, match='no space left'):
        import_images('galaxy10-decals-sample', galaxy10_sample, tmp_path / 'out')
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ---- issue 29: a manifest's paths stay inside the source; damaged, partial and misplaced inputs ------------------

def _gz2_copy(gz2_sample: Path, tmp_path: Path, filepath: str = None, bom: bool = False) -> Path:
    """A copy of the GZ2 stand-in whose first manifest row names ``filepath`` (and, with ``bom``, a UTF-8 BOM)."""
    import shutil
    repo = tmp_path / 'gz2'
    shutil.copytree(gz2_sample, repo)
    manifest = repo / 'data' / 'labels' / 'labels_manifest_1000.csv'
    text = manifest.read_text(encoding='utf-8')
    if filepath is not None:
        lines = text.splitlines()
        lines[1] = lines[1].replace('data/labels/thumbs/1000.jpg', filepath)
        text = '\n'.join(lines) + '\n'
    if bom:  # as a spreadsheet saves it, with the label column first: the BOM would stick to its name
        rows = list(csv.DictReader(text.splitlines()))
        with open(manifest, 'w', newline='', encoding='utf-8-sig') as f:
            writer = csv.DictWriter(f, fieldnames=['derived_label'] + [c for c in rows[0] if c != 'derived_label'])
            writer.writeheader()
            writer.writerows(rows)
    else:
        manifest.write_text(text, encoding='utf-8')
    return repo


@pytest.mark.parametrize('case', ['dot-dot', 'absolute', 'symlink'])
def test_a_manifest_path_out_of_the_source_is_refused(case, gz2_sample, tmp_path, capsys):
    secret = tmp_path / 'secret.jpg'
    secret.write_bytes(_image_bytes(99))  # an image, so only the path can be what is refused
    if case == 'dot-dot':
        repo = _gz2_copy(gz2_sample, tmp_path, filepath='../' * 8 + str(secret).lstrip('/'))
    elif case == 'absolute':
        repo = _gz2_copy(gz2_sample, tmp_path, filepath=str(secret))
    else:
        repo = _gz2_copy(gz2_sample, tmp_path, filepath='data/labels/thumbs/link.jpg')
        (repo / 'data' / 'labels' / 'thumbs' / 'link.jpg').symlink_to(secret)
    out = tmp_path / 'out'
    assert main(['gz2-sample', str(repo), str(out)]) == 2
    err = capsys.readouterr().err
    assert 'labels_manifest_1000.csv, line 2 (objid 587000)' in err and err.count('\n') == 1, err
    assert ('leaves the source folder' if case != 'symlink' else 'outside the source folder') in err, err
    assert not out.exists()


def test_resolve_inside_keeps_paths_in_the_root(tmp_path):
    from timm_astro.data.paths import resolve_inside
    (tmp_path / 'a').mkdir()
    assert resolve_inside(tmp_path, 'a/b.jpg', 'row 1') == (tmp_path / 'a' / 'b.jpg').resolve()
    assert resolve_inside(tmp_path, 'a\\b.jpg', 'row 1') == (tmp_path / 'a' / 'b.jpg').resolve()  # Windows CSV
    for bad in ('', '../x.jpg', 'a/../../x.jpg', '/etc/hostname', '..\\..\\x.jpg'):
        with pytest.raises(UserError, match='row 7: '):
            resolve_inside(tmp_path, bad, 'row 7')


def test_a_manifest_saved_with_a_byte_order_mark_reads(gz2_sample, tmp_path):
    repo = _gz2_copy(gz2_sample, tmp_path, bom=True)
    assert sum(import_images('gz2-sample', repo, tmp_path / 'out').splits.values()) == 4 * PER_CLASS


def test_a_damaged_zip_member_is_named(first_zip, tmp_path, capsys):
    damaged = tmp_path / 'galaxy_data.zip'
    data = bytearray(first_zip.read_bytes())
    with zipfile.ZipFile(first_zip) as archive:
        member = next(i for i in archive.infolist() if i.filename.startswith('galaxy_data/train/'))
    start = member.header_offset + 30 + len(member.filename.encode()) + len(member.extra)
    data[start + 40] ^= 0xFF  # stored (not deflated): a flipped byte only the CRC-32 notices
    damaged.write_bytes(bytes(data))
    out = tmp_path / 'out'
    assert main(['first', str(damaged), str(out)]) == 2
    err = capsys.readouterr().err
    assert f'member {member.filename} is damaged (Bad CRC-32' in err and err.count('\n') == 1, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if '.partial-' in p.name]


def test_a_partial_copy_reports_and_writes_the_classes_it_has(galaxy10_sample, tmp_path, capsys):
    import shutil
    src = tmp_path / 'partial'
    kept = [GALAXY10_DECALS_CLASSES[i].replace(' ', '_').replace('-', '_') for i in (3, 7)]
    for name in kept:
        shutil.copytree(galaxy10_sample / name, src / name)
    out = tmp_path / 'out'
    assert main(['galaxy10-decals-sample', str(src), str(out)]) == 0
    printed = capsys.readouterr().out
    assert '20 images, 2 classes (of 10: SRC has no images of the others' in printed, printed
    names = [GALAXY10_DECALS_CLASSES[3], GALAXY10_DECALS_CLASSES[7]]
    assert json.loads((out / 'class_names.json').read_text()) == names
    info = json.loads((out / 'dataset.json').read_text())
    assert info['num_classes'] == 2 and [c['name'] for c in info['classes']] == names
    from timm.data import create_dataset
    rows = _manifest(out)
    dataset = create_dataset('', root=str(out), split='train')
    label_of = {r['file']: int(r['label']) for r in rows if r['split'] == 'train'}
    assert {Path(p).relative_to(out).as_posix(): t for p, t in dataset.reader.samples} == label_of
    assert all(names[int(r['label'])] == r['class_name'] for r in rows)


def test_a_file_that_is_not_an_image_is_refused(galaxy10_sample, tmp_path, capsys):
    import shutil
    src = tmp_path / 'src'
    shutil.copytree(galaxy10_sample, src)
    fake = next((src / 'Merging_Galaxies').glob('*.jpg'))
    fake.write_text('not a jpeg\n')
    out = tmp_path / 'out'
    assert main(['galaxy10-decals-sample', str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert f'Merging_Galaxies/{fake.name} does not decode as an image' in err and err.count('\n') == 1, err
    assert not out.exists()


@pytest.mark.parametrize('where', ['out inside src', 'src inside out'])
def test_output_and_source_must_not_nest(where, galaxy10_sample, tmp_path, capsys):
    import shutil
    src = tmp_path / 'src'
    shutil.copytree(galaxy10_sample, src)
    out = src / 'imported' if where == 'out inside src' else tmp_path
    assert main(['galaxy10-decals-sample', str(src), str(out), '--overwrite']) == 2
    err = capsys.readouterr().err
    assert ('is inside the source' if where == 'out inside src' else 'contains the source') in err, err
    assert sorted(p.name for p in src.iterdir()) == sorted(p.name for p in galaxy10_sample.iterdir())
