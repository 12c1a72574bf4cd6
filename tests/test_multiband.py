"""More than three bands end to end: a 4-band FITS set made here, trained with ``timm-astro train-fits``, exported
with its stretch, reloaded, and read again the same way by ``evaluate`` and ``predict``; and the bad inputs (a file
without image data, all-NaN data, another band count, an impossible or contradicting stretch), each one line naming
what was wrong, with nothing written."""
import csv
import json

import numpy as np
import pytest
import torch

from timm_astro import cli
from timm_astro.data.images import BandMismatch, ImageReader, UnreadableImage, read_array, reader_for_model
from timm_astro.data.stretch import Stretch
from timm_astro.errors import UserError

fits = pytest.importorskip('astropy.io.fits', reason='the fits extra (astropy) is not installed')

BANDS = 4
MODEL = 'test_resnet'  # timm's tiny test network: the path under test is the data's, not the model's
STRETCH = 'asinh:softening=0.05'


def cube(label: int, seed: int, bands: int = BANDS, size: int = 20) -> np.ndarray:
    """A blob in ``bands`` bands, brighter in the redder bands; class 1 is elongated. Flux units, with noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    q = 1.0 if label == 0 else 0.35
    blob = np.exp(-(xx ** 2 + (yy / q) ** 2) / (size / 2))
    return np.stack([blob * 50 * (b + 1) + rng.normal(0, 0.5, blob.shape) for b in range(bands)]).astype(np.float32)


@pytest.fixture(scope='module')
def band_set(tmp_path_factory):
    """DATA/{train,validation,test}/{0_round,1_long}/*.fits, 4-band cubes (BANDS x 20 x 20)."""
    root = tmp_path_factory.mktemp('bands') / 'data'
    for split, count in (('train', 8), ('validation', 2), ('test', 3)):
        for label, name in enumerate(('0_round', '1_long')):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                fits.PrimaryHDU(cube(label, seed=100 * label + 10 * i + len(split))).writeto(folder / f'g{i}.fits')
    (root / 'class_names.json').write_text(json.dumps(['round', 'long']))
    return root


@pytest.fixture(scope='module')
def trained(band_set, tmp_path_factory):
    """The run folder of `train-fits` on the 4-band set: 1 epoch of a tiny model at 16 px."""
    out = tmp_path_factory.mktemp('run') / 'run'
    code = cli.main(['train-fits', MODEL, str(band_set), '--stretch', STRETCH, '--out', str(out), '--img-size', '16',
                     '--epochs', '1', '--batch-size', '4', '--threads', '1', '--seed', '1'])
    assert code == 0
    return out


def test_train_fits_exports_an_n_band_model_with_its_stretch(trained):
    config = json.loads((trained / 'model' / 'config.json').read_text())
    assert config['stretch'] == Stretch.parse(STRETCH).to_config()
    assert config['pretrained_cfg']['input_size'][0] == BANDS
    assert config['pretrained_cfg']['mean'] == [0.5] * BANDS and config['label_names'] == ['round', 'long']
    summary = json.loads((trained / 'summary.json').read_text())
    assert summary['bands'] == BANDS and summary['reload_identical'] is True and len(summary['history']) == 1
    assert 'asinh:softening=0.05' in (trained / 'model' / 'README.md').read_text()

    from timm_astro.loading import load_model
    model = load_model(f'local-dir:{trained / "model"}')
    reader = reader_for_model(model)
    assert reader.in_chans == BANDS and reader.stretch == Stretch.parse(STRETCH)


def test_predict_applies_the_stretch_of_the_model(trained, band_set, tmp_path, capsys):
    out = tmp_path / 'predictions.csv'
    assert cli.main(['predict', f'local-dir:{trained / "model"}', str(band_set / 'test'), '--out', str(out),
                     '--workers', '0', '--no-progress']) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6 and {r['prediction'] for r in rows} <= {'round', 'long'}

    # the same probabilities by hand: the file through the stretch the training used, timm's eval transform
    import timm
    from timm_astro.loading import load_model
    model = load_model(f'local-dir:{trained / "model"}')
    config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**config, is_training=False)
    path = band_set / 'test' / rows[0]['path']
    data = read_array(path, Stretch.parse(STRETCH))
    with torch.no_grad():
        probs = model(transform(data)[None]).softmax(-1)[0]
    assert float(rows[0]['prob_round']) == pytest.approx(float(probs[0]), abs=1e-5)
    # and not what another stretch gives (the check could not pass by accident)
    other = read_array(path, Stretch(kind='linear'))
    with torch.no_grad():
        assert not torch.allclose(model(transform(other)[None]).softmax(-1)[0], probs, atol=1e-5)


def test_evaluate_reads_the_test_split_through_the_model_stretch(trained, band_set, tmp_path, capsys):
    out = tmp_path / 'eval'
    assert cli.main(['evaluate', f'local-dir:{trained / "model"}', str(band_set), '--split', 'test', '--output',
                     str(out), '--no-plots', '--workers', '0', '--no-progress']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['num_images'] == 6 and metrics['stretch'] == Stretch.parse(STRETCH).to_config()
    assert 'stretch asinh:softening=0.05' in capsys.readouterr().out


def _one_line_error(capsys) -> str:
    """The error of a command: one line (a warning about untrained weights may come before it)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if ': warning: ' not in line]
    assert len(lines) == 1 and ': error: ' in lines[0], lines
    return lines[0]


def test_another_band_count_is_one_line_naming_the_file_and_both_counts(trained, tmp_path, capsys):
    for name in ('1_long', '0_round'):  # both classes of the model: only the band count is wrong
        folder = tmp_path / 'three' / 'test' / name
        folder.mkdir(parents=True)
        fits.PrimaryHDU(cube(0, 0, bands=3)).writeto(folder / 'three.fits')
    model = f'local-dir:{trained / "model"}'
    out = tmp_path / 'p.csv'
    assert cli.main(['predict', model, str(folder), '--out', str(out), '--workers', '0']) == 2
    err = _one_line_error(capsys)
    assert f'{folder / "three.fits"}: does not fit the model: 3 bands, but the model takes {BANDS}' in err
    assert not out.exists() and not list(tmp_path.glob('.p.csv*'))
    assert cli.main(['evaluate', model, str(tmp_path / 'three' / 'test'), '--output', str(tmp_path / 'e'),
                     '--no-plots', '--workers', '0']) == 2
    assert f'3 bands, but the model takes {BANDS} (in_chans)' in _one_line_error(capsys)
    assert not (tmp_path / 'e').exists()


def test_a_different_stretch_is_refused_naming_both(trained, band_set, tmp_path, capsys):
    assert cli.main(['predict', f'local-dir:{trained / "model"}', str(band_set / 'test'), '--out',
                     str(tmp_path / 'p.csv'), '--stretch', 'linear', '--workers', '0']) == 2
    err = _one_line_error(capsys)
    assert '--stretch linear differs from the stretch the model was trained with (asinh:softening=0.05)' in err
    assert not (tmp_path / 'p.csv').exists()


@pytest.mark.parametrize('spec, message', [
    ('asinh:softening=0', r'--stretch asinh:softening=0: stretch softening must be in (0, 1], got 0.0'),
    ('log', '--stretch log: stretch kind must be one of linear, asinh'),
    ('linear:low_percentile=90,high_percentile=10', 'percentiles must satisfy 0 <= low < high <= 100'),
])
def test_an_impossible_stretch_is_one_line_before_any_work(band_set, tmp_path, capsys, spec, message):
    assert cli.main(['train-fits', MODEL, str(band_set), '--stretch', spec, '--out', str(tmp_path / 'r')]) == 2
    assert message in _one_line_error(capsys) and not (tmp_path / 'r').exists()
    assert cli.main(['predict', MODEL, str(band_set / 'test'), '--num-classes', '2', '--stretch', spec, '--out',
                     str(tmp_path / 'p.csv')]) == 2
    assert message in _one_line_error(capsys) and not (tmp_path / 'p.csv').exists()


def test_an_impossible_stretch_in_config_json_names_the_file(trained, tmp_path):
    import shutil
    from timm_astro.loading import load_model
    copy = tmp_path / 'model'
    shutil.copytree(trained / 'model', copy)
    config = json.loads((copy / 'config.json').read_text())
    config['stretch']['softening'] = -1
    (copy / 'config.json').write_text(json.dumps(config))
    with pytest.raises(UserError, match=r'config.json: stretch softening must be in \(0, 1\], got -1'):
        load_model(f'local-dir:{copy}')


def test_fits_without_image_data_and_all_nan_data_are_unreadable_with_their_reason(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column(name='flux', format='E', array=np.ones(3))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / 'table.fits')
    with pytest.raises(UnreadableImage, match=r'table.fits: cannot be read as an image: no HDU holds image data'):
        read_array(tmp_path / 'table.fits', Stretch())
    fits.PrimaryHDU(np.full((2, 8, 8), np.nan, dtype=np.float32)).writeto(tmp_path / 'blank.fits')
    with pytest.raises(UnreadableImage, match=r'blank.fits: cannot be read as an image: band 0 has no finite pixel'):
        read_array(tmp_path / 'blank.fits', Stretch())
    data = cube(0, 0)
    data[1, :3] = np.nan  # some NaN pixels: the stated rule, black after the stretch
    fits.PrimaryHDU(data).writeto(tmp_path / 'holes.fits')
    read = read_array(tmp_path / 'holes.fits', Stretch())
    assert read.shape == (BANDS, 20, 20) and float(read.min()) >= 0 and float(read.max()) <= 1
    assert torch.all(read[1, -3:] == 0)  # FITS rows count from the bottom: the NaN rows are at the top-last


def test_unreadable_files_in_a_prediction_are_listed_and_the_rest_predicted(trained, band_set, tmp_path, capsys):
    folder = tmp_path / 'mixed'
    folder.mkdir()
    fits.PrimaryHDU(cube(0, 1)).writeto(folder / 'a_good.fits')
    fits.PrimaryHDU(np.full((BANDS, 20, 20), np.nan, dtype=np.float32)).writeto(folder / 'b_blank.fits')
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
        [fits.Column(name='f', format='E', array=np.ones(2))])]).writeto(folder / 'c_table.fits')
    out = tmp_path / 'p.csv'
    assert cli.main(['predict', f'local-dir:{trained / "model"}', str(folder), '--out', str(out), '--workers',
                     '0', '--no-progress']) == 1
    assert [r['path'] for r in csv.DictReader(out.open())] == ['a_good.fits']
    errors = {r['id']: r['error'] for r in csv.DictReader((tmp_path / 'p.errors.csv').open())}
    assert 'band 0 has no finite pixel' in errors['b_blank.fits'] and 'no HDU holds image data' in errors['c_table.fits']


def test_fits_needs_a_stretch_when_the_model_has_none(band_set, tmp_path, capsys):
    assert cli.main(['predict', MODEL, str(band_set / 'test'), '--num-classes', '2', '--out',
                     str(tmp_path / 'p.csv'), '--workers', '0']) == 2
    err = _one_line_error(capsys)
    assert 'g0.fits: does not fit the model: FITS data' in err and 'pass --stretch' in err


def test_a_16bit_png_keeps_its_depth_through_the_stretch(tmp_path):
    from PIL import Image
    values = np.array([[0, 1, 2, 3], [1000, 1001, 60000, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / 'deep.png')
    read = read_array(tmp_path / 'deep.png', Stretch(kind='linear', low=0.0, high=65535.0))
    np.testing.assert_allclose(read[0].numpy(), values / 65535.0, rtol=1e-6)
    assert read[0, 0, 1] > read[0, 0, 0]  # 0 and 1 differ: 8 bits would have made both 0
    reader = ImageReader(1, Stretch(kind='linear', low=0.0, high=65535.0))
    assert torch.equal(reader(tmp_path / 'deep.png'), read)
    with pytest.raises(BandMismatch, match=r'deep.png: does not fit the model: 1 band, but the model takes 3'):
        ImageReader(3, Stretch())(tmp_path / 'deep.png')


def test_train_fits_refuses_colour_augmentations_and_mixed_band_counts(band_set, tmp_path, capsys):
    assert cli.main(['train-fits', MODEL, str(band_set), '--stretch', 'asinh', '--out', str(tmp_path / 'r'),
                     '--set', 'color_jitter=0.4']) == 2
    assert 'color_jitter=0.4: colour jitter works on RGB colours' in _one_line_error(capsys)
    import shutil
    mixed = tmp_path / 'mixed'
    shutil.copytree(band_set, mixed)
    odd = mixed / 'train' / '1_long' / 'odd.fits'
    fits.PrimaryHDU(cube(1, 5, bands=2)).writeto(odd)
    assert cli.main(['train-fits', MODEL, str(mixed), '--stretch', 'asinh', '--out', str(tmp_path / 'r')]) == 2
    err = _one_line_error(capsys)
    assert f'{odd}: does not fit the model: 2 bands, but' in err and 'has 4' in err
    assert not (tmp_path / 'r').exists()
