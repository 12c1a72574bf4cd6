"""The Galaxy Zoo 2 vote source: de-duplication by position, the class rule, and bad copies refused."""
import csv
from pathlib import Path
from typing import Dict, List

import pytest
from PIL import Image

from timm_astro.data.galaxy_zoo import (
    GZ2_CLASSES, GZ2_COUNT_COLUMNS, GZ2_QUESTIONS, gz2_class, read_gz2_votes)
from timm_astro.errors import UserError

COLUMNS = ['idx', 'image_filename', 'ra', 'dec', 'extended_label'] + [
    f'{q}_{a}_{kind}' for q, answers in GZ2_QUESTIONS.items() for a in answers for kind in ('count', 'debiased')]


def galaxy_row(debiased: Dict[str, float], counts: Dict[str, int] = None, n: int = 30) -> Dict[str, str]:
    """A row whose debiased fractions are 0 except ``debiased`` (question_answer -> value), and every question
    answered ``n`` times (split over its answers) unless ``counts`` says otherwise."""
    row = {}
    for q, answers in GZ2_QUESTIONS.items():
        for i, a in enumerate(answers):
            row[f'{q}_{a}_debiased'] = str(debiased.get(f'{q}_{a}', 0.0))
            row[f'{q}_{a}_count'] = str((counts or {}).get(f'{q}_{a}', n if i == 0 else 0))
    return row


SMOOTH_ROUND = {'t01_smooth_or_features_a01_smooth': 0.9, 't07_rounded_a16_completely_round': 0.8}
EDGE_ON = {'t01_smooth_or_features_a02_features_or_disk': 0.9, 't02_edgeon_a04_yes': 0.9}
BARRED = {'t01_smooth_or_features_a02_features_or_disk': 0.9, 't02_edgeon_a05_no': 0.9, 't03_bar_a06_bar': 0.7}
SPIRAL = {'t01_smooth_or_features_a02_features_or_disk': 0.9, 't02_edgeon_a05_no': 0.9,
          't03_bar_a07_no_bar': 0.7, 't04_spiral_a08_spiral': 0.8}


def write_source(root: Path, halves: Dict[str, List[Dict[str, str]]]) -> Path:
    """A copy of the source: ``halves`` maps datafinal / datafinal2 to rows (image_filename/ra/dec filled in)."""
    for half, rows in halves.items():
        (root / half / 'images').mkdir(parents=True, exist_ok=True)
        with open(root / half / 'image_mapping_new.csv', 'w', newline='', encoding='utf-8') as f:
            writer = csv.DictWriter(f, COLUMNS, restval='0')
            writer.writeheader()
            for i, row in enumerate(rows):
                row = {'idx': str(i), 'image_filename': f'{half}/images\\{i}.jpg', 'ra': f'{10 + i}.5',
                       'dec': f'{len(half) - 12}.25', 'extended_label': '0', **row}
                name = row['image_filename'].replace('\\', '/')
                if (root / name).parent.is_dir() and not (root / name).exists():
                    Image.new('RGB', (8, 8), (i * 20 % 255, 0, 0)).save(root / name)
                writer.writerow(row)
    return root


def test_class_rule():
    assert GZ2_CLASSES[gz2_class(galaxy_row(SMOOTH_ROUND))] == 'smooth_round'
    assert GZ2_CLASSES[gz2_class(galaxy_row(EDGE_ON))] == 'edge_on'
    assert GZ2_CLASSES[gz2_class(galaxy_row(BARRED))] == 'barred'
    assert GZ2_CLASSES[gz2_class(galaxy_row(SPIRAL))] == 'unbarred_spiral'
    # meets two classes (smooth and featured both reach 0.5): ambiguous, not the first one listed
    assert gz2_class(galaxy_row({**SMOOTH_ROUND, **EDGE_ON})) == -1
    # featured, face-on, no bar and no arms: no class
    assert gz2_class(galaxy_row({**SPIRAL, 't04_spiral_a08_spiral': 0.3})) == -1
    # a deciding question answered by fewer than GZ2_MIN_VOTES volunteers
    assert gz2_class(galaxy_row(BARRED, counts={'t01_smooth_or_features_a01_smooth': 30, 't03_bar_a06_bar': 2})) == -1
    # a missing debiased fraction never meets a threshold
    assert gz2_class({**galaxy_row(EDGE_ON), 't02_edgeon_a04_yes_debiased': ''}) == -1


def test_read_deduplicates_by_position(tmp_path):
    rows = [galaxy_row(SMOOTH_ROUND), galaxy_row(EDGE_ON), galaxy_row(BARRED)]
    src = write_source(tmp_path, {'datafinal': rows, 'datafinal2': [galaxy_row(SPIRAL), galaxy_row(SPIRAL)]})
    # datafinal2's second row repeats datafinal's third galaxy (same position and counts, written another way)
    table = src / 'datafinal2' / 'image_mapping_new.csv'
    lines = table.read_text().splitlines()
    fields = lines[2].split(',')
    fields[2], fields[3] = '12.500000', '-3.250'  # == datafinal's row 2: ra 12.5, dec -3.25
    lines[2] = ','.join(fields)
    table.write_text('\n'.join(lines) + '\n')
    galaxies, stats = read_gz2_votes(src)
    assert stats == {'rows': 5, 'duplicates': 1}
    assert [g.file_name for g in galaxies] == ['datafinal_0.jpg', 'datafinal_1.jpg', 'datafinal_2.jpg',
                                               'datafinal2_0.jpg']
    assert [GZ2_CLASSES[g.label] for g in galaxies] == ['smooth_round', 'edge_on', 'barred', 'unbarred_spiral']
    assert galaxies[0].counts[GZ2_COUNT_COLUMNS.index('t01_smooth_or_features_a01_smooth_count')] == 30
    assert galaxies[0].source_file == 'datafinal/images/0.jpg'


def test_same_position_other_votes_refused(tmp_path):
    src = write_source(tmp_path, {'datafinal': [galaxy_row(SMOOTH_ROUND)],
                                  'datafinal2': [galaxy_row(SMOOTH_ROUND, n=31)]})
    table = src / 'datafinal2' / 'image_mapping_new.csv'
    table.write_text(table.read_text().replace(',10.5,-2.25,', ',10.5,-3.25,'))
    with pytest.raises(UserError, match='with other vote counts'):
        read_gz2_votes(src)


@pytest.mark.parametrize('value', ['-1', '2.5', 'many', ''])
def test_bad_counts_refused(tmp_path, value):
    row = {**galaxy_row(SMOOTH_ROUND), 't02_edgeon_a04_yes_count': value}
    src = write_source(tmp_path, {'datafinal': [row], 'datafinal2': []})
    with pytest.raises(UserError, match=r"line 2: t02_edgeon_a04_yes_count is .*expected a vote count"):
        read_gz2_votes(src)


@pytest.mark.parametrize('path', ['../../outside.jpg', '/etc/hostname', 'datafinal/../../outside.jpg'])
def test_image_path_outside_the_source_refused(tmp_path, path):
    (tmp_path / 'outside.jpg').write_bytes(b'not a galaxy')
    src = write_source(tmp_path / 'copy', {'datafinal': [{**galaxy_row(EDGE_ON), 'image_filename': path}],
                                           'datafinal2': []})
    with pytest.raises(UserError, match='leaves the source folder'):
        read_gz2_votes(src)


def test_symlink_out_of_the_source_refused(tmp_path):
    (tmp_path / 'outside.jpg').write_bytes(b'not a galaxy')
    src = write_source(tmp_path / 'copy', {'datafinal': [galaxy_row(EDGE_ON)], 'datafinal2': []})
    (src / 'datafinal' / 'images' / '0.jpg').unlink()
    (src / 'datafinal' / 'images' / '0.jpg').symlink_to(tmp_path / 'outside.jpg')
    with pytest.raises(UserError, match='outside the source folder'):
        read_gz2_votes(src)


def test_missing_half_and_columns(tmp_path):
    write_source(tmp_path, {'datafinal': [galaxy_row(EDGE_ON)]})
    with pytest.raises(UserError, match='no datafinal2/image_mapping_new.csv'):
        read_gz2_votes(tmp_path)
    write_source(tmp_path, {'datafinal2': [galaxy_row(EDGE_ON)]})
    table = tmp_path / 'datafinal2' / 'image_mapping_new.csv'
    table.write_text(table.read_text().replace('t09_bulge_shape_a26_boxy_count', 'boxy'))
    with pytest.raises(UserError, match='missing column t09_bulge_shape_a26_boxy_count'):
        read_gz2_votes(tmp_path)


def test_utf8_bom_is_read(tmp_path):
    src = write_source(tmp_path, {'datafinal': [galaxy_row(EDGE_ON)], 'datafinal2': []})
    table = src / 'datafinal' / 'image_mapping_new.csv'
    table.write_bytes(b'\xef\xbb\xbf' + table.read_bytes())
    galaxies, _ = read_gz2_votes(src)
    assert [GZ2_CLASSES[g.label] for g in galaxies] == ['edge_on']


def test_import_writes_both_benchmarks_with_one_split(tmp_path, capsys):
    from timm_astro.commands.import_images import main
    rows = [galaxy_row(r) for r in (SMOOTH_ROUND, EDGE_ON, BARRED, SPIRAL) for _ in range(5)]
    rows += [galaxy_row({**SMOOTH_ROUND, **EDGE_ON}) for _ in range(4)]  # ambiguous: votes only
    src = write_source(tmp_path / 'copy', {'datafinal': rows[:12], 'datafinal2': rows[12:]})
    out = tmp_path / 'gz2'
    assert main(['gz2-votes', str(src), str(out), '--test-fraction', '0.4']) == 0
    printed = capsys.readouterr().out
    assert '24 images, 4 classes (of 6' in printed and '4 of them meet no class' in printed
    with open(out / 'manifest.csv', newline='', encoding='utf-8') as f:
        manifest = list(csv.DictReader(f))
    assert len(manifest) == 24
    assert set(GZ2_COUNT_COLUMNS) <= set(manifest[0]) and {'ra', 'dec', 'file', 'split', 'label'} <= set(manifest[0])
    unclassified = [r for r in manifest if r['label'] == '-1']
    assert len(unclassified) == 4 and all(r['class_name'] == '' for r in unclassified)
    for row in manifest:
        assert (out / row['file']).is_file()
        top = row['file'].split('/')[0]
        assert top == ('unclassified' if row['label'] == '-1' else row['split'])
    # timm's ImageFolder of a split sees the six class folders only
    assert sorted(p.name for p in (out / 'train').iterdir()) == ['0_smooth_round', '3_edge_on', '4_barred',
                                                                '5_unbarred_spiral']
    info = __import__('json').loads((out / 'dataset.json').read_text())
    assert (info['kind'], info['tree'], info['unclassified'], info['test_fraction']) == ('votes', 'gz2', 4, 0.4)
    # the split hashes the sky position: the same galaxy listed by the other half lands in the same split
    by_position = {(r['ra'], r['dec']): r['split'] for r in manifest}
    again = tmp_path / 'gz2_again'
    src2 = write_source(tmp_path / 'copy2', {'datafinal': rows[:12], 'datafinal2': rows[12:]})
    assert main(['gz2-votes', str(src2), str(again), '--test-fraction', '0.4']) == 0
    with open(again / 'manifest.csv', newline='', encoding='utf-8') as f:
        assert {(r['ra'], r['dec']): r['split'] for r in csv.DictReader(f)} == by_position


def test_import_default_fractions_are_the_sources(tmp_path):
    from timm_astro.data.real_galaxies import SOURCES
    assert SOURCES['gz2-votes'].fractions == (0.1, 0.35)
    assert SOURCES['galaxy10-decals-sample'].fractions == (0.1, 0.1)
