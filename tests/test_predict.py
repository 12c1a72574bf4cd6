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
        (tmp_path / 'x.dat').write_text('a')  # .csv is a catalogue
        args[1] = str(tmp_path / 'x.dat')
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
        torch.manual_seed(0)  # resnet18 without --checkpoint: the resume must build the same random weights
        assert main(args) == 130
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if ': warning: ' not in line]
    assert lines == [f'timm-astro predict: error: interrupted; 4 predictions so far are kept in {partial}; run the '
                     f'same command with --resume to continue, or --overwrite to start again'], lines
    assert partial.read_text().count('\n') == 1 + 4 and not out.exists()
    torch.manual_seed(0)
    assert main(args + ['--resume']) == 0
    assert '7 images predicted' in capsys.readouterr().out and len(_rows(out)) == 11 and not partial.exists()


# ---- issue 29: a resume proves it continues the same run; one writer per output; names with line breaks; one-line
# errors for a bad --out, a full disk, a model that cannot run at the size asked, bad label names

def _images(root: Path, names, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for name in names:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(root / name)
    return root


def _interrupted(model, source, out, monkeypatch, after_batches: int = 1, catalogue=None, **kwargs):
    """Run predict_to_csv and interrupt it (as Ctrl-C does) once ``after_batches`` batches are written."""
    import timm_astro.evaluation.predict as predict
    real, calls = predict.view_probabilities, []

    def stop(*a, **k):
        calls.append(1)
        if len(calls) > after_batches:
            raise KeyboardInterrupt
        return real(*a, **k)
    with monkeypatch.context() as m:
        m.setattr(predict, 'view_probabilities', stop)
        with pytest.raises(KeyboardInterrupt):
            predict_to_csv(model, open_prediction_inputs(source, catalogue), out, batch_size=4, progress=False,
                           **kwargs)


def _other_model():
    model = _model()
    with torch.no_grad():
        model.fc.bias.add_(1.0)  # the same architecture and labels, other weights
    return model


@pytest.mark.parametrize('change, expected', [
    ('another folder, the same names', 'read other images'),
    ('other weights', 'other weights'),
    ('another input size', 'another preprocessing'),
    ('other label names', 'other label names'),
])
def test_resume_refuses_to_continue_another_run(change, expected, folder, tmp_path, monkeypatch):
    out, partial = tmp_path / 'pred.csv', tmp_path / '.pred.csv.partial'
    _interrupted(_model(), folder, out, monkeypatch)
    kept = partial.read_bytes()
    assert len(_rows(partial)) == 4
    source, model, kwargs = folder, _model(), {}
    if change == 'another folder, the same names':
        source = _images(tmp_path / 'other', sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*.png')),
                         seed=1)
    elif change == 'other weights':
        model = _other_model()
    elif change == 'another input size':
        kwargs['data_config'] = {'input_size': (3, 32, 32)}
    else:
        kwargs['label_names'] = ['a', 'b', 'c']
    with pytest.raises(UserError, match=expected) as e:
        predict_to_csv(model, open_prediction_inputs(source), out, resume=True, progress=False, **kwargs)
    assert '\n' not in str(e.value) and '--overwrite' in str(e.value)
    assert partial.read_bytes() == kept and not out.exists(), 'the interrupted run is left as it was'
    # the same command resumes it, and --overwrite starts the other run afresh
    summary = predict_to_csv(_model(), open_prediction_inputs(folder), out, resume=True, progress=False)
    assert (summary.resumed, summary.predicted) == (4, 7)
    _interrupted(_model(), folder, out, monkeypatch, overwrite=True)
    summary = predict_to_csv(model, open_prediction_inputs(source), out, overwrite=True, progress=False, **kwargs)
    assert (summary.resumed, summary.predicted) == (0, 11) and len(_rows(out)) == 11


@pytest.mark.parametrize('change', ['--images-root', '--path-column', '--hdf5'])
def test_resume_refuses_a_catalogue_read_from_other_images(change, tmp_path, monkeypatch):
    """The same catalogue and ids, but the images found elsewhere: the rows kept are of other images."""
    names = [f'g{i}.png' for i in range(6)]
    _images(tmp_path / 'one', names, seed=0)
    _images(tmp_path / 'two', names, seed=1)
    catalogue = tmp_path / 'cat.csv'
    with open(catalogue, 'w', newline='') as f:
        csv.writer(f).writerows([['id', 'path', 'file', 'row']] + [[f'G{i}', f'one/{n}', f'two/{n}', i]
                                                                  for i, n in enumerate(names)])
    out, partial = tmp_path / 'pred.csv', tmp_path / '.pred.csv.partial'
    _interrupted(_model(), catalogue, out, monkeypatch, catalogue={'columns': ['file']})
    kept = partial.read_bytes()
    options = {'columns': ['file']}
    if change == '--images-root':
        (tmp_path / 'elsewhere').mkdir()
        _images(tmp_path / 'elsewhere' / 'one', names, seed=2)
        options['root'] = tmp_path / 'elsewhere'
    elif change == '--path-column':
        options = {'path_column': 'file', 'columns': ['path']}
    else:
        h5py = pytest.importorskip('h5py', reason="h5py is the optional 'data' extra")
        with h5py.File(tmp_path / 'g.h5', 'w') as f:
            f['images'] = np.random.default_rng(3).integers(0, 255, (6, 69, 69, 3), dtype=np.uint8)  # Galaxy10 SDSS
            f['ans'] = np.zeros(6, dtype=np.int64)
        options = {'hdf5': tmp_path / 'g.h5', 'columns': ['path', 'file']}
    with pytest.raises(UserError, match='read the same ids from other images') as e:
        predict_to_csv(_model(), open_prediction_inputs(catalogue, options), out, resume=True, progress=False)
    assert '\n' not in str(e.value) and '--overwrite' in str(e.value)
    assert partial.read_bytes() == kept and not out.exists()


def test_an_output_another_run_finishes_before_the_lock_is_not_replaced(folder, tmp_path, monkeypatch):
    """--out is checked before the model runs, and again under the lock: another run may have written it between."""
    import timm_astro.evaluation.predict as predict
    out = tmp_path / 'pred.csv'
    real = predict.output_lock

    def another_run_finishes_first(path, command):
        out.write_text('written by another run\n')
        return real(path, command)
    monkeypatch.setattr(predict, 'output_lock', another_run_finishes_first)
    with pytest.raises(UserError, match='exists; pass --overwrite'):
        predict_to_csv(_model(), open_prediction_inputs(folder), out, progress=False)
    assert out.read_text() == 'written by another run\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['catalogue', 'pred.csv'], 'no partial is left'


def test_resume_refuses_a_finished_csv(folder, tmp_path):
    out = tmp_path / 'pred.csv'
    predict_to_csv(_model(), open_prediction_inputs(folder), out, progress=False)
    before = out.read_bytes()
    other = _images(tmp_path / 'other', ['x.png', 'y.png'])
    with pytest.raises(UserError, match='finished prediction of other images') as e:
        predict_to_csv(_model(), open_prediction_inputs(other), out, resume=True, progress=False)
    assert '--overwrite' in str(e.value)
    with pytest.raises(UserError, match='already finished'):
        predict_to_csv(_model(), open_prediction_inputs(folder), out, resume=True, progress=False)
    assert out.read_bytes() == before


def _slow_run(folder, out, *extra):
    """A predict run in another process, slowed so that it is still writing while the test starts a second one."""
    script = ('import sys, time, torch, timm\n'
              'import timm_astro.evaluation.predict as p\n'
              'real = p.view_probabilities\n'
              'def slow(*a, **k):\n'
              '    time.sleep(0.5)\n'
              '    return real(*a, **k)\n'
              'p.view_probabilities = slow\n'
              'torch.manual_seed(0)\n'
              'model = timm.create_model("resnet18", num_classes=3).eval()\n'
              'print(p.predict_to_csv(model, p.open_prediction_inputs(sys.argv[1]), sys.argv[2], batch_size=1,\n'
              '                        progress=False, data_config={"input_size": (3, 16, 16)}).predicted)\n')
    return subprocess.Popen([sys.executable, '-c', script, str(folder), str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_rows(partial: Path, rows: int, proc) -> None:
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_text().count('\n') >= rows + 1:
            return
        time.sleep(0.05)
    raise AssertionError(f'the run wrote fewer than {rows} rows: {proc.communicate()}')


def test_a_second_run_on_the_same_output_fails_at_once(folder, tmp_path, capsys):
    out, partial = tmp_path / 'pred.csv', tmp_path / '.pred.csv.partial'
    proc = _slow_run(folder, out)
    try:
        _wait_for_rows(partial, 1, proc)
        args = ['resnet18', str(folder), '--num-classes', '3', '--out', str(out), '--img-size', '16', '--workers', '0',
                '--no-progress']
        for extra in ([], ['--resume'], ['--overwrite']):
            assert main(args + extra) == 2
            err = capsys.readouterr().err.splitlines()[-1]
            assert err == f'timm-astro predict: error: another timm-astro predict is writing {out} (pid {proc.pid})'
    finally:
        stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()
    assert stdout.decode().strip() == '11'
    rows = _rows(out)
    assert sorted(r['path'] for r in rows) == sorted(p.relative_to(folder).as_posix() for p in folder.rglob('*.png'))
    assert sorted(p.name for p in tmp_path.iterdir()) == ['catalogue', 'pred.csv'], 'no lock or partial is left'


LINE_BREAKS = ['cr\rname.png', 'lf\nname.png', 'crlf\r\nname.png', 'ls\u2028name.png', 'nel\x85name.png',
               'quote"name.png', 'comma,name.png', 'plain.png']


def test_names_with_line_breaks_are_one_record_each_and_resume_exactly(tmp_path, monkeypatch):
    folder = _images(tmp_path / 'odd', LINE_BREAKS)
    out = tmp_path / 'pred.csv'
    _interrupted(_model(), folder, out, monkeypatch)
    summary = predict_to_csv(_model(), open_prediction_inputs(folder), out, resume=True, progress=False)
    assert (summary.resumed, summary.predicted) == (4, 4)
    with open(out, newline='', encoding='utf-8') as f:
        records = list(csv.reader(f))
    assert sorted(r[0] for r in records[1:]) == sorted(LINE_BREAKS) and len(records) == 1 + len(LINE_BREAKS)


def test_out_is_checked_before_the_model_is_loaded(folder, tmp_path, capsys, monkeypatch):
    def no_model(*a, **k):
        raise AssertionError('the model was loaded before --out was checked')
    args = ['resnet18', str(folder), '--num-classes', '3', '--img-size', '16', '--workers', '0', '--no-progress']
    (tmp_path / 'taken.csv').write_text('mine')
    with monkeypatch.context() as m:
        m.setattr('timm_astro.commands.predict.load_model_from_args', no_model)
        for out, expected in (('.', "--out '.': expected the name of a file to write"),
                              (str(tmp_path), f'--out {tmp_path}: is a folder; expected a file name'),
                              (str(tmp_path / 'taken.csv'), 'taken.csv: exists; pass --overwrite')):
            assert main(args + ['--out', out]) == 2
            err = capsys.readouterr().err
            assert expected in err and 'Traceback' not in err and len(err.strip().splitlines()) == 1, err
    # a missing folder is made, as for every other output
    out = tmp_path / 'new' / 'deeper' / 'pred.csv'
    assert main(args + ['--out', str(out)]) == 0
    assert len(_rows(out)) == 11 and sorted(p.name for p in out.parent.iterdir()) == ['pred.csv']


def test_a_full_disk_names_the_file_and_keeps_the_partial_for_resume(folder, tmp_path, capsys, monkeypatch):
    import errno
    out, partial = tmp_path / 'pred.csv', tmp_path / '.pred.csv.partial'
    args = ['resnet18', str(folder), '--num-classes', '3', '--out', str(out), '--img-size', '16', '--batch-size', '4',
            '--workers', '0', '--no-progress']
    real_writer, written = csv.writer, []

    class FullDisk:
        def __init__(self, f, **kwargs):
            self.writer = real_writer(f, **kwargs)

        def writerow(self, row):
            written.append(row)
            if len(written) > 1 + 4:  # the header and the first batch fit
                raise OSError(errno.ENOSPC, 'No space left on device')
            return self.writer.writerow(row)

        def writerows(self, rows):
            for row in rows:
                self.writerow(row)
    with monkeypatch.context() as m:
        m.setattr(csv, 'writer', FullDisk)
        torch.manual_seed(0)  # random weights: the resume below must build the same ones
        assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f'timm-astro predict: error: {out}: cannot be written: no space left on the device; 4 predictions '
                   f'so far are kept in {partial}: run the same command with --resume to continue'), err
    torch.manual_seed(0)
    assert main(args + ['--resume']) == 0
    assert '7 images predicted' in capsys.readouterr().out and len(_rows(out)) == 11


def _killed_before_the_first_batch(folder, out):
    script = ('import os, signal, sys, torch, timm\n'
              'import timm_astro.evaluation.predict as p\n'
              'p.view_probabilities = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n'
              'torch.manual_seed(0)\n'
              'model = timm.create_model("resnet18", num_classes=3).eval()\n'
              'p.predict_to_csv(model, p.open_prediction_inputs(sys.argv[1]), sys.argv[2], progress=False,\n'
              '                 data_config={"input_size": (3, 16, 16)})\n')
    proc = subprocess.run([sys.executable, '-c', script, str(folder), str(out)], capture_output=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()


def test_resume_after_a_kill_before_the_first_batch(folder, tmp_path):
    """Killed before its first batch, a run leaves a partial file with its header only, or (killed before even
    that reached the disk) an empty one: either resumes as a new run would start."""
    out, partial, record = tmp_path / 'pred.csv', tmp_path / '.pred.csv.partial', tmp_path / '.pred.csv.partial.json'
    _killed_before_the_first_batch(folder, out)
    assert partial.exists() and record.exists() and not out.exists()
    left = {'record': record.read_bytes(), 'as the kill left it': partial.read_bytes(), 'empty': b'',
            'the header only': b'path,prediction,probability,prob_0,prob_1,prob_2,entropy\n'}
    for case in ('as the kill left it', 'empty', 'the header only'):
        record.write_bytes(left['record'])
        partial.write_bytes(left[case])
        torch.manual_seed(0)
        model = timm.create_model('resnet18', num_classes=3).eval()
        summary = predict_to_csv(model, open_prediction_inputs(folder), out, resume=True, progress=False,
                                 data_config={'input_size': (3, 16, 16)})
        assert (summary.resumed, summary.predicted) == (0, 11), case
        assert len(_rows(out)) == 11 and not partial.exists() and not record.exists(), case
        out.unlink()


def test_overwrite_replaces_the_errors_file_with_the_csv(folder, tmp_path):
    out, errors = tmp_path / 'pred.csv', tmp_path / 'pred.errors.csv'
    bad = folder / 'a' / 'g03.png'
    good = bad.read_bytes()
    bad.write_bytes(b'not a png')
    assert predict_to_csv(_model(), open_prediction_inputs(folder), out, progress=False).errors == 1
    assert [e['id'] for e in _rows(errors)] == ['a/g03.png']
    bad.write_bytes(good)
    assert predict_to_csv(_model(), open_prediction_inputs(folder), out, overwrite=True, progress=False).errors == 0
    assert len(_rows(out)) == 11 and not errors.exists(), 'no stale error list beside the new CSV'


def test_a_model_that_cannot_run_at_the_size_asked_fails_before_any_file(folder, tmp_path, capsys):
    out = tmp_path / 'pred.csv'
    assert main(['astroformer_0', str(folder), '--num-classes', '3', '--out', str(out), '--img-size', '48',
                 '--workers', '0', '--no-progress']) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith('timm-astro predict: error: input size 3x48x48 does not fit the model: astroformer_0 runs on '
                          'inputs with height and width multiples of 32 and at least 64'), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['catalogue'], 'no partial or lock file is left'


def test_label_names_must_be_a_list_file_or_names(tmp_path):
    from timm_astro.evaluation.predict import read_label_names
    (tmp_path / 'names').mkdir()
    with pytest.raises(UserError, match=r'names: is a folder; expected a JSON list file'):
        read_label_names(str(tmp_path / 'names'))
    latin = tmp_path / 'names.txt'
    latin.write_bytes('café\nspiral\n'.encode('latin-1'))
    with pytest.raises(UserError, match=r'names\.txt: not UTF-8 text .*; expected a UTF-8 file of class names'):
        read_label_names(str(latin))
    with pytest.raises(UserError, match=r'missing\.json: no such file'):
        read_label_names(str(tmp_path / 'missing.json'))
    assert read_label_names('a, b,c') == ['a', 'b', 'c']
    latin.write_text('café\n\nspiral\r\n', encoding='utf-8')
    assert read_label_names(str(latin)) == ['café', 'spiral']


def test_a_list_file_splits_at_newlines_only(tmp_path):
    """U+2028 and NEL are line breaks to str.splitlines but legal in a Linux file name: one entry each."""
    names = ['ls\u2028name.png', 'nel\x85name.png', 'plain.png']
    _images(tmp_path / 'odd', names)
    listing = tmp_path / 'list.txt'
    listing.write_text(''.join(f'odd/{name}\r\n' for name in names), encoding='utf-8')
    summary = predict_to_csv(_model(), open_prediction_inputs(listing), tmp_path / 'p.csv', progress=False)
    assert (summary.predicted, summary.errors) == (3, 0)
    assert sorted(r['path'] for r in _rows(tmp_path / 'p.csv')) == sorted(f'odd/{name}' for name in names)
    listing.write_bytes('odd/café.png\n'.encode('latin-1'))
    with pytest.raises(UserError, match=r'list\.txt: not UTF-8 text .*; expected a UTF-8 list of image paths'):
        open_prediction_inputs(listing)
