"""Catalogue input: a CSV of id, path (or HDF5 row) and carried columns, for predict and evaluate; bad catalogues
are one line naming the file and line, and nothing is written."""
import csv
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import timm
from timm_astro.data.catalogue import class_indices, read_catalogue
from timm_astro.errors import UserError
from timm_astro.evaluation.evaluate import evaluate, open_labelled_data
from timm_astro.evaluation.predict import open_prediction_inputs, predict_to_csv


def _write_csv(path: Path, rows) -> Path:
    with open(path, 'w', newline='', encoding='utf-8') as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.fixture()
def survey(tmp_path) -> Path:
    """Six cutouts under survey/cutouts/ and survey/catalogue.csv naming them, with sky positions and labels."""
    root = tmp_path / 'survey'
    (root / 'cutouts').mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = [['objid', 'file', 'ra', 'dec', 'label', 'mag']]
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / 'cutouts' / f'{i}.png')
        rows.append([f'obj{5 - i}', f'cutouts/{i}.png', f'{10 + i}.5', f'-{i}.25', ['spiral', 'round'][i % 2],
                     f'{17 + i / 10:.1f}'])
    _write_csv(root / 'catalogue.csv', rows)
    return root


def _model(num_classes=2):
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=num_classes).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, 'input_size': (3, 16, 16), 'crop_pct': 1.0}
    return model


def test_read_catalogue_keeps_file_order_and_carries_the_named_columns(survey):
    table = read_catalogue(survey / 'catalogue.csv', id_column='objid', path_column='file')
    assert table.ids == [f'obj{5 - i}' for i in range(6)]  # file order, not sorted
    assert list(table.columns) == ['objid', 'file', 'ra', 'dec', 'label']  # default: ra, dec, label where present
    assert table.columns['ra'][2] == '12.5' and table.columns['dec'][2] == '-2.25'
    assert table.paths[0] == (survey / 'cutouts' / '0.png').resolve()
    table = read_catalogue(survey / 'catalogue.csv', id_column='objid', path_column='file', columns=['mag'],
                           label_column='label')
    assert list(table.columns) == ['objid', 'file', 'mag'] and table.labels[:2] == ['spiral', 'round']


def test_class_indices_are_numbers_or_names_in_timm_order():
    assert class_indices(['2', '0', '2']) == (['0', '1', '2'], [2, 0, 2])
    assert class_indices(['spiral', 'edge_on', 'class10', 'class9']) == (
        ['class9', 'class10', 'edge_on', 'spiral'], [3, 2, 1, 0])
    assert class_indices(['a', 'B', 'a'], ['b', 'a']) == (['b', 'a'], [1, 0, 1])  # the model's names, then slugs
    assert class_indices(['1', '0'], ['b', 'a'], num_classes=2) == (['b', 'a'], [1, 0])
    assert class_indices(['1'], num_classes=3) == (['0', '1', '2'], [1])


@pytest.mark.parametrize('case, expected', [
    ('no id column', "no 'objid' column (object ids); the columns are: id, file"),
    ('no path column', "no 'file' column (image paths)"),
    ('named column missing', "no 'redshift' column (named to be carried)"),
    ('duplicate id', "line 4: id 'obj5' repeats line 2; ids must be unique"),
    ('empty id', "line 3: empty 'objid'"),
    ('path climbs out', "line 2 (id obj5): path '../outside.png' leaves the source folder"),
    ('absolute path', 'leaves the source folder'),
    ('symlink out', 'a symlink), outside the source folder'),
    ('ragged row', 'line 3: 2 fields, but the header has 6'),
    ('no rows', 'has a header but no rows'),
    ('repeated header', "names the column 'ra' twice"),
    ('not utf-8', 'not UTF-8 text'),
])
def test_a_bad_catalogue_is_one_line_naming_file_and_line(case, expected, survey, tmp_path, capsys):
    from timm_astro.commands.predict import main
    path = survey / 'catalogue.csv'
    rows = list(csv.reader(open(path, newline='')))
    extra = []
    if case == 'no id column':
        rows = [['id', 'file']] + [r[:2] for r in rows[1:]]
    elif case == 'no path column':
        rows = [[c if c != 'file' else 'filename' for c in rows[0]]] + rows[1:]
    elif case == 'named column missing':
        extra = ['--columns', 'ra', 'redshift']
    elif case == 'duplicate id':
        rows[3][0] = 'obj5'
    elif case == 'empty id':
        rows[2][0] = ' '
    elif case == 'path climbs out':
        rows[1][1] = '../outside.png'
    elif case == 'absolute path':
        rows[1][1] = str(survey / 'cutouts' / '0.png')
    elif case == 'symlink out':
        Image.new('RGB', (20, 20)).save(tmp_path / 'elsewhere.png')
        os.symlink(tmp_path / 'elsewhere.png', survey / 'cutouts' / 'link.png')
        rows[1][1] = 'cutouts/link.png'
    elif case == 'ragged row':
        rows[2] = rows[2][:2]
    elif case == 'no rows':
        rows = rows[:1]
    elif case == 'repeated header':
        rows[0][3] = 'ra'
    if case == 'not utf-8':
        path.write_bytes(b'objid,file\nobj\xff,cutouts/0.png\n')
    else:
        _write_csv(path, rows)
    out = tmp_path / 'out' / 'p.csv'
    assert main(['resnet18', str(path), '--num-classes', '2', '--out', str(out), '--id-column', 'objid',
                 '--path-column', 'file', '--img-size', '16', '--workers', '0', '--no-progress'] + extra) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'Traceback' not in err, err
    assert expected in err and str(path) in err, err
    assert not (tmp_path / 'out').exists(), 'nothing written'


def test_images_root_names_the_folder_paths_stay_in(survey, tmp_path):
    listing = _write_csv(tmp_path / 'elsewhere.csv', [['id', 'path'], ['a', 'cutouts/1.png']])
    with pytest.raises(UserError, match='no such folder'):
        read_catalogue(listing, root=tmp_path / 'nowhere')
    table = read_catalogue(listing, root=survey)
    assert table.paths == [(survey / 'cutouts' / '1.png').resolve()]
    with pytest.raises(UserError, match='leaves the source folder'):
        read_catalogue(_write_csv(tmp_path / 'up.csv', [['id', 'path'], ['a', '../survey/cutouts/1.png']]),
                       root=survey / 'cutouts')


def test_predict_rows_carry_the_catalogue_columns_and_a_missing_file_is_counted(survey, tmp_path):
    rows = list(csv.reader(open(survey / 'catalogue.csv', newline='')))
    rows[4][1] = 'cutouts/missing.png'  # the catalogue is fine; the file is not there: that image's error
    path = _write_csv(survey / 'catalogue.csv', rows)
    out = tmp_path / 'pred.csv'
    inputs = open_prediction_inputs(path, {'id_column': 'objid', 'path_column': 'file', 'columns': ['ra', 'mag']})
    summary = predict_to_csv(_model(), inputs, out, batch_size=4, progress=False, log=lambda m: None)
    assert (summary.predicted, summary.errors) == (5, 1)
    with open(out, newline='') as f:
        written = list(csv.DictReader(f))
    assert list(written[0])[:4] == ['objid', 'file', 'ra', 'mag'] and 'prob_0' in written[0]
    assert [(r['objid'], r['ra'], r['mag']) for r in written] == [
        (r[0], r[2], r[5]) for r in rows[1:] if r[1] != 'cutouts/missing.png']
    errors = list(csv.DictReader(open(tmp_path / 'pred.errors.csv', newline='')))
    assert [e['id'] for e in errors] == [rows[4][0]] and 'not found' in errors[0]['error']


def test_a_catalogue_column_named_like_an_output_column_is_refused(survey, tmp_path):
    rows = list(csv.reader(open(survey / 'catalogue.csv', newline='')))
    rows[0][5] = 'entropy'
    path = _write_csv(survey / 'catalogue.csv', rows)
    inputs = open_prediction_inputs(path, {'id_column': 'objid', 'path_column': 'file', 'columns': ['entropy']})
    with pytest.raises(UserError, match="the input column 'entropy' has the name of an output column"):
        predict_to_csv(_model(), inputs, tmp_path / 'p.csv', progress=False)
    assert not list(tmp_path.glob('*p.csv*'))


def test_evaluate_scores_a_catalogue_against_its_label_column(survey, tmp_path):
    data = open_labelled_data(survey / 'catalogue.csv', catalogue={'id_column': 'objid', 'path_column': 'file'})
    assert data.class_names == ['round', 'spiral'] and data.targets == [1, 0, 1, 0, 1, 0]
    assert data.item_ids[0] == 'obj5' and list(data.columns) == ['file', 'ra', 'dec', 'label']
    result = evaluate(_model(), data, batch_size=4, progress=False)
    predicted = result.view_probs[:, 0].argmax(-1)
    expected = 100 * float((predicted == torch.tensor(data.targets)).float().mean())
    assert result.metrics['none']['top1'] == pytest.approx(expected)
    with pytest.raises(UserError, match='a catalogue is one set of objects'):
        open_labelled_data(survey / 'catalogue.csv', 'test', catalogue={'id_column': 'objid', 'path_column': 'file'})
    with pytest.raises(UserError, match="no 'kind' column"):
        open_labelled_data(survey / 'catalogue.csv', catalogue={'id_column': 'objid', 'path_column': 'file',
                                                                'label_column': 'kind'})


def _relabel(survey: Path, labels) -> Path:
    rows = list(csv.reader(open(survey / 'catalogue.csv', newline='')))
    for row, label in zip(rows[1:], labels):
        row[4] = label
    return _write_csv(survey / 'catalogue.csv', rows)


def _named(names, num_classes=None):
    model = _model(num_classes or len(names))
    model.pretrained_cfg = {**model.pretrained_cfg, 'label_names': list(names)}
    return model


def test_evaluate_scores_catalogue_names_in_the_model_s_class_order(survey):
    """A model trained with ['spiral', 'round'] calls 'spiral' class 0, whatever the names' natural order."""
    data = open_labelled_data(survey / 'catalogue.csv', catalogue={'id_column': 'objid', 'path_column': 'file'})
    result = evaluate(_named(['spiral', 'round']), data, batch_size=4, progress=False)
    assert result.label_names == ['spiral', 'round'] and result.data.class_names == ['spiral', 'round']
    assert result.targets.tolist() == [0, 1, 0, 1, 0, 1] and result.warnings == []


def test_catalogue_names_match_the_model_s_by_slug_and_may_lack_a_class(survey):
    _relabel(survey, ['Edge-on', 'spiral'] * 3)
    data = open_labelled_data(survey / 'catalogue.csv', catalogue={'id_column': 'objid', 'path_column': 'file'})
    result = evaluate(_named(['round', 'edge_on', 'spiral']), data, batch_size=4, progress=False)
    assert result.targets.tolist() == [1, 2, 1, 2, 1, 2] and result.label_names == ['round', 'edge_on', 'spiral']
    assert len(result.warnings) == 1 and 'no images of 1 class (round)' in result.warnings[0]


@pytest.mark.parametrize('labels, names, num_classes, expected', [
    (['round', 'bar', 'spiral'], ['spiral', 'round'], 2,
     "the label 'bar' is not a class of the model (spiral, round); label each object with one of them"),
    (['0', '1', '2'], None, 2, 'the label 2 is not a class of the model, which predicts 2 classes (0 to 1)'),
    (['round', 'spiral'], None, 3, 'the model records no class names, so the 2 names of the catalogue (round, '
                                   'spiral) cannot be matched to its 3 classes'),
])
def test_catalogue_labels_the_model_cannot_score_are_one_line(labels, names, num_classes, expected, survey):
    model = _named(names, num_classes) if names else _model(num_classes)
    _relabel(survey, labels * (6 // len(labels)))
    data = open_labelled_data(survey / 'catalogue.csv', catalogue={'id_column': 'objid', 'path_column': 'file'})
    with pytest.raises(UserError) as e:
        evaluate(model, data, batch_size=4, progress=False)
    assert expected in str(e.value) and str(survey / 'catalogue.csv') in str(e.value) and '\n' not in str(e.value)
    assert '--split' not in str(e.value)


def test_hdf5_row_catalogue(tmp_path):
    h5py = pytest.importorskip('h5py', reason="h5py is the optional 'data' extra")
    rng = np.random.default_rng(1)
    images = rng.integers(0, 255, (5, 69, 69, 3), dtype=np.uint8)  # Galaxy10 SDSS geometry
    with h5py.File(tmp_path / 'g10.h5', 'w') as f:
        f['images'] = images
        f['ans'] = np.arange(5) % 10
    catalogue = _write_csv(tmp_path / 'rows.csv', [['id', 'row', 'ra'], ['x', '3', '1.5'], ['y', '0', '2.5']])
    table = read_catalogue(catalogue, hdf5=tmp_path / 'g10.h5')
    assert table.rows == [3, 0] and np.array_equal(np.asarray(table.load(0)), images[3])
    _write_csv(catalogue, [['id', 'row'], ['x', '5']])
    with pytest.raises(UserError, match=r"line 2 \(id x\): row '5' is not a row of .*g10.h5 \(0 to 4\)"):
        read_catalogue(catalogue, hdf5=tmp_path / 'g10.h5')
