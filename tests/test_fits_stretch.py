"""FITS cutouts read as bands, and the stretch that makes them network input."""
import numpy as np
import pytest

from timm_astro.data.stretch import Stretch
from timm_astro.errors import UserError

fits = pytest.importorskip('astropy.io.fits', reason='the fits extra (astropy) is not installed')

from timm_astro.data.fits import is_fits, read_fits  # noqa: E402


def gradient(height=6, width=5, offset=0.0):
    return (np.arange(height * width, dtype=np.float32).reshape(height, width) + offset)


def test_primary_image_is_one_band_top_row_first(tmp_path):
    path = tmp_path / 'cutout.fits'
    fits.PrimaryHDU(gradient()).writeto(path)
    data = read_fits(path)
    assert data.shape == (1, 6, 5) and data.dtype == np.float32
    # FITS row 0 is the bottom of the picture: it becomes the last row
    np.testing.assert_array_equal(data[0], gradient()[::-1])


def test_cube_and_singleton_axes(tmp_path):
    cube = np.stack([gradient(), gradient(offset=100), gradient(offset=200)])
    fits.PrimaryHDU(cube).writeto(tmp_path / 'cube.fits')
    assert read_fits(tmp_path / 'cube.fits').shape == (3, 6, 5)
    fits.PrimaryHDU(gradient()[None, None]).writeto(tmp_path / 'radio.fits')  # 1 x 1 x H x W, as radio maps
    assert read_fits(tmp_path / 'radio.fits').shape == (1, 6, 5)


def test_first_image_hdu_named_hdu_and_bands(tmp_path):
    path = tmp_path / 'grz.fits'
    hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(gradient(offset=10 * i), name=b) for i, b in enumerate('GRZ')]
    fits.HDUList(hdus).writeto(path)
    assert read_fits(path)[0, -1, 0] == 0  # the empty primary is skipped: the first image is G
    assert read_fits(path, hdu='R')[0, -1, 0] == 10
    data = read_fits(path, bands=['Z', 'G'])
    assert data.shape == (2, 6, 5) and (data[0, -1, 0], data[1, -1, 0]) == (20, 0)
    with pytest.raises(UserError, match=r"grz.fits: no HDU 'I'; it has"):
        read_fits(path, bands=['I'])


def test_files_without_image_data_refused(tmp_path):
    table = fits.BinTableHDU.from_columns([fits.Column(name='flux', format='E', array=np.ones(3))])
    fits.HDUList([fits.PrimaryHDU(), table]).writeto(tmp_path / 'table.fits')
    with pytest.raises(UserError, match='table.fits: no HDU holds image data'):
        read_fits(tmp_path / 'table.fits')
    (tmp_path / 'text.fits').write_text('SIMPLE? not really\n')
    with pytest.raises(UserError, match='text.fits: not a readable FITS file'):
        read_fits(tmp_path / 'text.fits')
    fits.PrimaryHDU(np.ones(7, dtype=np.float32)).writeto(tmp_path / 'spectrum.fits')
    with pytest.raises(UserError, match='spectrum.fits: no HDU holds image data'):
        read_fits(tmp_path / 'spectrum.fits')


def test_is_fits():
    assert is_fits('a/b.FITS') and is_fits('x.fits.gz') and is_fits('y.fit') and not is_fits('z.png')


def test_percentile_asinh_and_linear():
    data = np.linspace(0, 100, 101, dtype=np.float64).reshape(1, 1, 101)
    linear = Stretch(kind='linear', low_percentile=10, high_percentile=90)(data)
    assert linear.dtype == np.float32 and linear.min() == 0 and linear.max() == 1
    assert linear[0, 0, 50] == pytest.approx(0.5)
    asinh = Stretch(kind='asinh', low_percentile=10, high_percentile=90, softening=0.1)(data)
    # asinh lifts the faint end: monotone, same end points, above linear in between
    assert np.all(np.diff(asinh[0, 0]) >= 0) and asinh[0, 0, 10] == 0 and asinh[0, 0, 90] == pytest.approx(1)
    assert asinh[0, 0, 30] > linear[0, 0, 30]
    expected = np.arcsinh(0.25 / 0.1) / np.arcsinh(1 / 0.1)
    assert asinh[0, 0, 30] == pytest.approx(expected, rel=1e-6)


def test_fixed_limits_per_band_and_nan_rule():
    data = np.stack([np.full((2, 2), 5.0), np.full((2, 2), 5.0)])
    data[0, 0, 0] = np.nan
    out = Stretch(kind='linear', low=[0, 4], high=[10, 6])(data)
    assert out[0, 0, 0] == 0  # NaN becomes the black level
    assert out[0, 1, 1] == pytest.approx(0.5) and out[1, 1, 1] == pytest.approx(0.5)
    with pytest.raises(UserError, match='limits for 2 bands; the image has 3'):
        Stretch(kind='linear', low=[0, 4], high=[10, 6])(np.ones((3, 2, 2)))
    with pytest.raises(UserError, match='galaxy.fits: band 1 has no finite pixel'):
        Stretch()(np.stack([np.ones((2, 2)), np.full((2, 2), np.nan)]), source='galaxy.fits')
    assert not Stretch()(np.full((1, 3, 3), 7.0)).any()  # a flat band is black, not a division by zero


@pytest.mark.parametrize('params, message', [
    ({'kind': 'log'}, 'kind must be one of linear, asinh'),
    ({'low_percentile': 99, 'high_percentile': 1}, 'percentiles must satisfy'),
    ({'high_percentile': float('nan')}, 'high_percentile must be a finite number'),
    ({'softening': 0}, r'softening must be in \(0, 1\]'),
    ({'low': 1.0}, 'both low and high'),
    ({'low': 2.0, 'high': 1.0}, 'low < high'),
    ({'gamma': 2}, "unknown stretch parameter 'gamma'"),
])
def test_impossible_parameters_refused(params, message):
    with pytest.raises(UserError, match=message):
        Stretch.from_config(params)


def test_config_round_trip_and_parse():
    stretch = Stretch(kind='linear', low=[0, 1], high=[2, 3])
    assert Stretch.from_config(stretch.to_config()) == Stretch(kind='linear', low=[0, 1], high=[2, 3])
    assert Stretch.parse('asinh:softening=0.05,high_percentile=99') == Stretch(softening=0.05, high_percentile=99)
    with pytest.raises(UserError, match='must be KEY=VALUE'):
        Stretch.parse('asinh:soft')


def test_truncated_file_and_declared_bomb_are_refused(tmp_path, monkeypatch):
    from PIL import Image
    fits.PrimaryHDU(gradient(50, 40)).writeto(tmp_path / 'whole.fits')
    data = (tmp_path / 'whole.fits').read_bytes()
    (tmp_path / 'short.fits').write_bytes(data[:-2000])  # data cut short: astropy only warns, and would read on
    with pytest.raises(UserError, match='short.fits: a truncated FITS file'):
        read_fits(tmp_path / 'short.fits')
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # the header's size is checked before the data are read
    with pytest.raises(UserError, match=r"whole.fits: HDU PRIMARY declares 2,000 values .* over Pillow's limit"):
        read_fits(tmp_path / 'whole.fits')


def test_read_array_follows_the_reader_rules_for_fits(tmp_path):
    import gzip
    import os
    from timm_astro.data.images import UnreadableImage, list_image_folder, read_array
    (tmp_path / 'c').mkdir()
    fits.PrimaryHDU(gradient()).writeto(tmp_path / 'c' / 'plain.fits')
    (tmp_path / 'c' / 'packed.fits.gz').write_bytes(gzip.compress((tmp_path / 'c' / 'plain.fits').read_bytes()))
    (tmp_path / 'c' / 'notes.txt.gz').write_bytes(gzip.compress(b'not an image'))
    (tmp_path / 'c' / 'misnamed.png').write_bytes((tmp_path / 'c' / 'plain.fits').read_bytes())
    samples, classes = list_image_folder(tmp_path)
    assert sorted(os.path.basename(p) for p, _ in samples) == ['misnamed.png', 'packed.fits.gz', 'plain.fits']
    stretch = Stretch(kind='linear', low=0.0, high=29.0)
    plain = read_array(tmp_path / 'c' / 'plain.fits', stretch)
    assert plain.shape == (1, 6, 5) and float(plain[0, -1, 0]) == 0 and float(plain[0, 0, -1]) == 1
    for name in ('packed.fits.gz', 'misnamed.png'):  # gzipped; and FITS by content, whatever the name
        assert (read_array(tmp_path / 'c' / name, stretch) == plain).all()
    if hasattr(os, 'mkfifo'):
        os.mkfifo(tmp_path / 'pipe.fits')
        with pytest.raises(UnreadableImage, match='pipe.fits: cannot be read as an image: a named pipe'):
            read_array(tmp_path / 'pipe.fits', stretch)
