"""`timm-astro predict`: one CSV row per image from a folder, a list or an HDF5 file; resume, bad images, errors."""
import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import timm
from timm_astro.commands.predict import main
from timm_astro.errors import UserError
from timm_astro.evaluation.predict import open_prediction_inputs, predict_to_csv

LABELS = ('round', 'edge-on', 'spiral')


def _model():
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=3).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, 'input_size': (3, 16, 16), 'crop_pct': 1.0,
                            'label_names': list(LABELS)}
    return model


@pytest.fixture()
def folder(tmp_path) -> Path:
    root = tmp_path / 'catalogue'
    rng = np.random.default_rng(0)
    for i in range(11):
        sub = root / ('a' if i < 6 else 'b/deeper')
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(sub / f'g{i:02d}.png')
    (root / 'notes.txt').write_text('not an image')
    return root


def _rows(path: Path):
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def test_folder_to_csv_with_d4(folder, tmp_path):
    out = tmp_path / 'pred.csv'
    summary = predict_to_csv(_model(), open_prediction_inputs(folder), out, tta='d4', batch_size=4, progress=False)
    assert summary.predicted == 11 and summary.errors == 0 and summary.resumed == 0
    rows = _rows(out)
    assert [r['path'] for r in rows] == sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*.png'))
    assert list(rows[0]) == ['path', 'prediction', 'probability'] + [f'prob_{n}' for n in LABELS] + [
        'entropy', 'tta_disagreement', 'tta_mutual_information']
    for row in rows:
        probs = [float(row[f'prob_{n}']) for n in LABELS]
        assert sum(probs) == pytest.approx(1.0, abs=1e-4)
        assert row['prediction'] == LABELS[int(np.argmax(probs))] and float(row['probability']) == max(probs)
        assert 0 <= float(row['tta_disagreement']) <= 1 and float(row['tta_mutual_information']) >= 0
        assert float(row['tta_disagreement']) * 8 == pytest.approx(round(float(row['tta_disagreement']) * 8))
    assert not list(tmp_path.glob('.pred.csv*')), 'no partial file left'


def test_list_file_and_label_names_from_class_names_json(folder, tmp_path, capsys):
    listing = tmp_path / 'list.txt'
    listing.write_text('# a catalogue\ncatalogue/a/g00.png\n\n' + str(folder / 'b/deeper/g07.png') + '\n')
    names = tmp_path / 'class_names.json'
    names.write_text('["x", "y", "z"]')
    out = tmp_path / 'list.csv'
    assert main(['resnet18', str(listing), '--num-classes', '3', '--out', str(out), '--label-names', str(names),
                 '--img-size', '16', '--workers', '0', '--no-progress']) == 0
    rows = _rows(out)
    assert [r['path'] for r in rows] == ['catalogue/a/g00.png', str(folder / 'b/deeper/g07.png')]
    assert 'prob_z' in rows[0] and rows[0]['prediction'] in ('x', 'y', 'z')
    assert '2 images predicted' in capsys.readouterr().out


def test_hdf5_rows_carry_index_and_sky_coordinates(tmp_path):
    h5py = pytest.importorskip('h5py', reason="h5py is the optional 'data' extra")
    rng = np.random.default_rng(0)
    with h5py.File(tmp_path / 'survey.h5', 'w') as f:
        f['images'] = rng.integers(0, 255, (5, 69, 69, 3), dtype=np.uint8)
        f['ans'] = np.arange(5, dtype=np.uint8)
        f['ra'] = np.linspace(10, 11, 5)
        f['dec'] = np.linspace(-1, 1, 5)
        f['redshift'] = np.array([0.1, np.nan, 0.2, 0.3, 0.4], dtype=np.float32)
    model = timm.create_model('resnet18', num_classes=3).eval()
    out = tmp_path / 'survey.csv'
    predict_to_csv(model, open_prediction_inputs(tmp_path / 'survey.h5'), out, progress=False,
                   data_config={'input_size': (3, 32, 32)})
    rows = _rows(out)
    assert list(rows[0])[:4] == ['index', 'ra', 'dec', 'redshift'] and 'pxscale' not in rows[0]
    assert [r['index'] for r in rows] == ['0', '1', '2', '3', '4'] and rows[1]['redshift'] == 'nan'
    assert float(rows[4]['ra']) == 11.0 and 'prob_0' in rows[0], 'no label names: class indices'


def test_unreadable_images_are_counted_not_fatal_and_strict_stops(folder, tmp_path, capsys):
    (folder / 'a' / 'g03.png').write_bytes(b'\x89PNG\r\n\x1a\n not really')
    (folder / 'a' / 'zz.jpg').write_bytes(b'')
    out = tmp_path / 'pred.csv'
    assert main(['resnet18', str(folder), '--num-classes', '3', '--out', str(out), '--img-size', '16',
                 '--workers', '2', '--no-progress']) == 1
    printed = capsys.readouterr().out
    assert '10 images predicted' in printed and '2 unreadable' in printed
    assert len(_rows(out)) == 10
    errors = _rows(out.with_name('pred.errors.csv'))
    assert sorted(e['id'] for e in errors) == ['a/g03.png', 'a/zz.jpg'] and all(e['error'] for e in errors)
    strict_out = tmp_path / 'strict.csv'
    assert main(['resnet18', str(folder), '--num-classes', '3', '--out', str(strict_out), '--img-size', '16',
                 '--workers', '0', '--strict', '--no-progress']) == 2
    assert 'a/g03.png: cannot be read' in capsys.readouterr().err and not strict_out.exists()


@pytest.mark.parametrize('case, expected', [
    ('empty folder', 'no images found'),
    ('label count', '2 label names for a model that predicts 3 classes'),
    ('unknown suffix', 'expected a folder, a list of paths'),
    ('empty list', 'the list names no images'),
    ('bad tta', "invalid choice: 'd8'"),
])
def test_bad_input_is_one_clear_line(case, expected, folder, tmp_path, capsys):
    args = ['resnet18', str(folder), '--num-classes', '3', '--out', str(tmp_path / 'p.csv'), '--no-progress']
    if case == 'empty folder':
        (tmp_path / 'empty').mkdir()
        args[1] = str(tmp_path / 'empty')
    elif case == 'label count':
        args += ['--label-names', 'a,b']
    elif case == 'unknown suffix':
        (tmp_path / 'x.csv').write_text('a')
        args[1] = str(tmp_path / 'x.csv')
    elif case == 'empty list':
        (tmp_path / 'l.txt').write_text('# nothing\n')
        args[1] = str(tmp_path / 'l.txt')
    elif case == 'bad tta':
        args += ['--tta', 'd8']
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own usage error
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert expected in err and 'Traceback' not in err
    assert not (tmp_path / 'p.csv').exists()


def _run_predict(folder, out, *extra):
    script = ('import sys, torch, timm, timm_astro, time\n'
              'from timm_astro.evaluation.predict import open_prediction_inputs, predict_to_csv\n'
              'import timm_astro.evaluation.predict as p\n'
              'real = p.view_probabilities\n'
              'def slow(*a, **k):\n'
              '    time.sleep(0.3)\n'
              '    return real(*a, **k)\n'
              'p.view_probabilities = slow\n'
              'torch.manual_seed(0)\n'
              'model = timm.create_model("resnet18", num_classes=3).eval()\n'
              'predict_to_csv(model, open_prediction_inputs(sys.argv[1]), sys.argv[2], batch_size=2, progress=False,\n'
              '               data_config={"input_size": (3, 16, 16)}, resume=len(sys.argv) > 3)\n')
    return subprocess.Popen([sys.executable, '-c', script, str(folder), str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_resume_after_a_kill_predicts_each_image_exactly_once(folder, tmp_path):
    out = tmp_path / 'pred.csv'
    partial = tmp_path / '.pred.csv.partial'
    proc = _run_predict(folder, out)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until some rows are on disk, then kill it without any clean-up
        if partial.exists() and partial.read_text().count('\n') >= 4:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert partial.exists() and not out.exists()
    written = partial.read_text().count('\n') - 1
    assert 0 < written < 11
    with open(partial, 'a') as f:  # the kill may also cut a row in half
        f.write('a/g99.png,round,0.5')
    # a plain rerun refuses to clobber the interrupted run
    with pytest.raises(UserError, match='pass --resume'):
        predict_to_csv(_model(), open_prediction_inputs(folder), out, progress=False)
    proc = _run_predict(folder, out, '--resume')
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    rows = _rows(out)
    assert sorted(r['path'] for r in rows) == sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*.png'))
    assert len(rows) == 11 and not partial.exists()
    # the rows are those a single uninterrupted run gives
    full = tmp_path / 'full.csv'
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=3).eval()
    predict_to_csv(model, open_prediction_inputs(folder), full, progress=False, data_config={'input_size': (3, 16, 16)})
    assert sorted(map(tuple, (r.values() for r in rows))) == sorted(map(tuple, (r.values() for r in _rows(full))))


def test_interrupt_names_the_kept_partial_and_resume_continues_it(folder, tmp_path, capsys, monkeypatch):
    import timm_astro.evaluation.predict as predict
    out, partial = tmp_path / 'pred.csv', tmp_path / '.pred.csv.partial'
    args = ['resnet18', str(folder), '--num-classes', '3', '--out', str(out), '--img-size', '16', '--batch-size', '4',
            '--no-progress']

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    # interrupted before anything is written (loading the model): nothing is left, and the message says so
    with monkeypatch.context() as m:
        m.setattr('timm_astro.commands.predict.load_model_from_args', interrupt)
        assert main(args) == 130
    assert capsys.readouterr().err.strip() == 'timm-astro predict: error: interrupted; nothing was left half-written'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['catalogue']
    # interrupted (Ctrl-C or SIGTERM) after the first batch: the partial CSV is kept for --resume, and named
    real, calls = predict.view_probabilities, []

    def interrupted_second_batch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*a, **k)
    with monkeypatch.context() as m:
        m.setattr(predict, 'view_probabilities', interrupted_second_batch)
        assert main(args) == 130
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if ': warning: ' not in line]
    assert lines == [f'timm-astro predict: error: interrupted; 4 predictions so far are kept in {partial}; run the '
                     f'same command with --resume to continue, or --overwrite to start again'], lines
    assert partial.read_text().count('\n') == 1 + 4 and not out.exists()
    assert main(args + ['--resume']) == 0
    assert '7 images predicted' in capsys.readouterr().out and len(_rows(out)) == 11 and not partial.exists()
