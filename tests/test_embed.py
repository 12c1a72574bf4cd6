"""`timm-astro embed`: timm's pre-logits features per image, ids row for row, resumable and atomic like predict,
and each object's nearest neighbours (cosine) with an outlier score."""
import builtins
import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import timm
from timm.data import create_transform, resolve_model_data_config
from timm_astro.commands.embed import main
from timm_astro.errors import UserError
from timm_astro.evaluation.embed import embed_to_folder, read_embeddings
from timm_astro.evaluation.predict import open_prediction_inputs
from timm_astro.outputs import OUTPUT_MARKER


def _model():
    torch.manual_seed(0)
    model = timm.create_model('resnet18', num_classes=3).eval()
    model.pretrained_cfg = {**model.pretrained_cfg, 'input_size': (3, 16, 16), 'crop_pct': 1.0}
    return model


@pytest.fixture()
def catalogue(tmp_path) -> Path:
    """Nine cutouts in three families (a colour each, with noise), and a catalogue CSV of id, path, ra, dec."""
    root = tmp_path / 'survey'
    (root / 'img').mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = [['id', 'path', 'ra', 'dec']]
    for i in range(9):
        colour = np.array([[255, 40, 40], [40, 255, 40], [40, 40, 255]][i % 3])
        pixels = np.clip(colour + rng.normal(0, 20, (20, 20, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / 'img' / f'{i}.png')
        rows.append([f'G{i}', f'img/{i}.png', f'{150 + i}.1', f'{2 - i}.3'])
    with open(root / 'cat.csv', 'w', newline='') as f:
        csv.writer(f).writerows(rows)
    return root / 'cat.csv'


def _expected_features(model, catalogue: Path) -> np.ndarray:
    """The pre-logits features computed here by hand, image by image."""
    transform = create_transform(**{k: v for k, v in resolve_model_data_config(model).items() if k != 'first_conv'})
    with torch.no_grad():
        return np.stack([model.forward_head(model.forward_features(transform(
            Image.open(catalogue.parent / 'img' / f'{i}.png').convert('RGB'))[None]), pre_logits=True)[0].numpy()
            for i in range(9)])


def test_embeddings_are_the_pre_logits_features_with_ids_row_for_row(catalogue, tmp_path):
    model, out = _model(), tmp_path / 'emb'
    summary = embed_to_folder(model, open_prediction_inputs(catalogue), out, batch_size=4, progress=False)
    assert (summary.predicted, summary.errors, summary.dim) == (9, 0, 512)
    embeddings, ids = read_embeddings(out)
    assert embeddings.dtype == np.float32 and embeddings.shape == (9, 512)
    assert [r['id'] for r in ids] == [f'G{i}' for i in range(9)] and list(ids[0]) == ['id', 'path', 'ra', 'dec']
    assert ids[4]['ra'] == '154.1' and ids[4]['dec'] == '-2.3'
    np.testing.assert_allclose(embeddings, _expected_features(model, catalogue), rtol=1e-5, atol=1e-6)
    assert sorted(p.name for p in out.iterdir()) == sorted([OUTPUT_MARKER, 'embeddings.npy', 'ids.csv'])
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith('.emb')] == [], 'no partial or lock left'


def test_neighbours_are_the_exact_cosine_nearest_and_the_score_their_mean_distance(catalogue, tmp_path, capsys):
    out = tmp_path / 'emb'
    assert main(['resnet18', str(catalogue), '--num-classes', '3', '--out', str(out), '--neighbours', '2',
                 '--img-size', '16', '--workers', '0', '--no-progress']) == 0
    printed = capsys.readouterr().out
    assert '9 images embedded (512 features each)' in printed and '2 nearest neighbours (cosine)' in printed
    embeddings, ids = read_embeddings(out)
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    distance = 1 - unit @ unit.T
    np.fill_diagonal(distance, np.inf)
    with open(out / 'neighbours.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ['id', 'outlier_score', 'neighbour_1', 'distance_1', 'neighbour_2', 'distance_2']
    names = [r['id'] for r in ids]
    for i, row in enumerate(rows):
        assert row['id'] == names[i]
        nearest = np.argsort(distance[i], kind='stable')[:2]
        assert {row['neighbour_1'], row['neighbour_2']} == {names[j] for j in nearest}
        assert float(row['distance_1']) == pytest.approx(distance[i, nearest[0]], abs=2e-5)
        assert float(row['outlier_score']) == pytest.approx(distance[i, nearest].mean(), abs=2e-5)
        assert names[i] not in (row['neighbour_1'], row['neighbour_2'])


def test_an_interrupted_embed_resumes_to_the_same_folder(catalogue, tmp_path, monkeypatch, capsys):
    import timm_astro.evaluation.embed as embed
    model, out = _model(), tmp_path / 'emb'
    real, calls = embed.pooled_features, []

    def stop(*args):
        calls.append(1)
        if len(calls) > 2:  # the check on a blank image, then one batch of 4
            raise KeyboardInterrupt
        return real(*args)
    with monkeypatch.context() as m:
        m.setattr(embed, 'pooled_features', stop)
        with pytest.raises(KeyboardInterrupt, match=r'4 embeddings so far are kept in .*\.emb\.partial'):
            embed_to_folder(model, open_prediction_inputs(catalogue), out, batch_size=4, progress=False)
    assert not out.exists() and (tmp_path / '.emb.partial').exists()
    with pytest.raises(UserError, match='an interrupted run of timm-astro embed for emb is there'):
        embed_to_folder(model, open_prediction_inputs(catalogue), out, progress=False)
    summary = embed_to_folder(model, open_prediction_inputs(catalogue), out, batch_size=4, resume=True,
                              progress=False)
    assert (summary.resumed, summary.predicted) == (4, 5)
    resumed = np.load(out / 'embeddings.npy')
    whole = tmp_path / 'whole'
    embed_to_folder(model, open_prediction_inputs(catalogue), whole, batch_size=4, progress=False)
    # bit for bit (the same batches): each vector is stored exactly, the kept ones and the new ones in order
    assert np.array_equal(resumed, np.load(whole / 'embeddings.npy'))
    assert (out / 'ids.csv').read_bytes() == (whole / 'ids.csv').read_bytes()
    with pytest.raises(UserError, match='is already finished; --resume continues only an interrupted run'):
        embed_to_folder(model, open_prediction_inputs(catalogue), out, resume=True, progress=False)
    other = _model()
    with torch.no_grad():
        other.conv1.weight.mul_(2)
    with pytest.raises(UserError, match='not empty; pass --overwrite'):
        embed_to_folder(other, open_prediction_inputs(catalogue), out, progress=False)
    embed_to_folder(other, open_prediction_inputs(catalogue), out, overwrite=True, progress=False)
    assert not np.array_equal(np.load(out / 'embeddings.npy'), resumed)


def test_resume_refuses_another_model(catalogue, tmp_path, monkeypatch):
    import timm_astro.evaluation.embed as embed
    out = tmp_path / 'emb'
    real, calls = embed.pooled_features, []

    def stop(*args):
        calls.append(1)
        if len(calls) > 2:
            raise KeyboardInterrupt
        return real(*args)
    with monkeypatch.context() as m:
        m.setattr(embed, 'pooled_features', stop)
        with pytest.raises(KeyboardInterrupt):
            embed_to_folder(_model(), open_prediction_inputs(catalogue), out, batch_size=4, progress=False)
    other = _model()
    with torch.no_grad():
        other.fc.bias.add_(1)
    with pytest.raises(UserError, match='used other weights'):
        embed_to_folder(other, open_prediction_inputs(catalogue), out, resume=True, progress=False)


@pytest.mark.parametrize('case, expected', [
    ('duplicate id', "cat.csv, line 4: id 'G0' repeats line 2; ids must be unique"),
    ('path outside', "cat.csv, line 2 (id G0): path '../../secret.png' leaves the source folder"),
    ('no path column', "cat.csv: no 'path' column (image paths)"),
    ('too many neighbours', '--neighbours 9 needs more than 9 images; the input has 9'),
    ('out is a file', '--out'),
])
def test_bad_input_is_one_line_and_nothing_is_written(case, expected, catalogue, tmp_path, capsys):
    rows = list(csv.reader(open(catalogue, newline='')))
    out = tmp_path / 'emb'
    args = ['resnet18', str(catalogue), '--num-classes', '3', '--out', str(out), '--img-size', '16', '--workers', '0',
            '--no-progress']
    if case == 'duplicate id':
        rows[3][0] = 'G0'
    elif case == 'path outside':
        rows[1][1] = '../../secret.png'
    elif case == 'no path column':
        rows[0][1] = 'file'
    elif case == 'too many neighbours':
        args += ['--neighbours', '9']
    elif case == 'out is a file':
        out.write_text('x')
    with open(catalogue, 'w', newline='') as f:
        csv.writer(f).writerows(rows)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and expected in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == (['emb', 'survey'] if case == 'out is a file' else
                                                           ['survey'])


def test_neighbours_without_scikit_learn_say_what_to_install(catalogue, tmp_path, capsys, monkeypatch):
    real_import = builtins.__import__

    def no_sklearn(name, *args, **kwargs):
        if name == 'sklearn' or name.startswith('sklearn.'):
            raise ImportError(f'No module named {name!r}')
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, '__import__', no_sklearn)
    assert main(['resnet18', str(catalogue), '--num-classes', '3', '--out', str(tmp_path / 'emb'), '--neighbours',
                 '3', '--img-size', '16', '--workers', '0', '--no-progress']) == 2
    err = capsys.readouterr().err
    assert err == ('timm-astro embed: error: --neighbours needs scikit-learn: pip install "timm-astro[embed]" (or pip '
                   'install scikit-learn)\n')
    assert not (tmp_path / 'emb').exists()


def test_unreadable_images_are_listed_and_left_out(catalogue, tmp_path, capsys):
    (catalogue.parent / 'img' / '4.png').write_text('not a png')
    out = tmp_path / 'emb'
    assert main(['resnet18', str(catalogue), '--num-classes', '3', '--out', str(out), '--neighbours', '2',
                 '--img-size', '16', '--workers', '0', '--no-progress']) == 1
    assert '8 images embedded' in capsys.readouterr().out
    embeddings, ids = read_embeddings(out)
    assert embeddings.shape[0] == 8 and 'G4' not in [r['id'] for r in ids]
    errors = list(csv.DictReader(open(out / 'errors.csv', newline='')))
    assert [e['id'] for e in errors] == ['G4']
    neighbours = list(csv.DictReader(open(out / 'neighbours.csv', newline='')))
    assert len(neighbours) == 8 and all('G4' not in row.values() for row in neighbours)


def test_a_model_that_does_not_pool_is_refused_before_any_file(catalogue, tmp_path):
    model = timm.create_model('resnet18', num_classes=0, global_pool='')
    model.pretrained_cfg = {**model.pretrained_cfg, 'input_size': (3, 16, 16)}
    with pytest.raises(UserError, match=r'pre-logits features have shape \(1, 512, 1, 1\).*does not pool'):
        embed_to_folder(model, open_prediction_inputs(catalogue), tmp_path / 'emb', progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['survey']


def test_embed_reads_fits_through_the_stretch_and_hdu_given(tmp_path):
    """--stretch and --hdu reach the reader, as for predict: HDU 1 is the default here, HDU 2 other data."""
    fits = pytest.importorskip('astropy.io.fits', reason='the fits extra (astropy) is not installed')
    folder = tmp_path / 'fits'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        first, second = (rng.normal(10, 3, (3, 20, 20)).astype(np.float32) for _ in range(2))
        fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(first), fits.ImageHDU(second)]).writeto(folder / f'g{i}.fits')

    def embed(name, *extra):
        torch.manual_seed(0)  # the same (random) weights each time
        assert main(['resnet18', str(folder), '--num-classes', '3', '--out', str(tmp_path / name), '--img-size', '16',
                     '--workers', '0', '--no-progress', '--stretch', 'asinh:softening=0.05', *extra]) == 0
        return read_embeddings(tmp_path / name)[0]
    default, first, second = embed('default'), embed('hdu1', '--hdu', '1'), embed('hdu2', '--hdu', '2')
    assert np.array_equal(default, first) and not np.allclose(default, second)


def test_an_output_another_run_finishes_before_the_lock_is_not_replaced(catalogue, tmp_path, monkeypatch):
    import timm_astro.evaluation.predict as predict
    out = tmp_path / 'emb'
    real = predict.output_lock

    def another_run_finishes_first(path, command):
        out.mkdir()
        (out / 'notes.txt').write_text('not ours')
        return real(path, command)
    monkeypatch.setattr(predict, 'output_lock', another_run_finishes_first)
    with pytest.raises(UserError, match='folder is not empty; pass --overwrite'):
        embed_to_folder(_model(), open_prediction_inputs(catalogue), out, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ['emb', 'survey'], 'no partial is left'
    assert [p.name for p in out.iterdir()] == ['notes.txt']
