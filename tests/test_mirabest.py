"""MiraBest's FITS radio galaxies imported as an FRI/FRII ImageFolder of FITS files."""
import csv
import json

import numpy as np
import pytest

from timm_astro.commands.import_images import main as import_main

fits = pytest.importorskip('astropy.io.fits', reason='the fits extra (astropy) is not installed')

NAMES = ['100_010.451-009.284_0.0529_0080.60', '100_016.236+000.073_0.2797_0058.67', '110_030.033+000.024_0.3_27.9',
         '102_114.242+043.484_0.2731_0057.94', '200_120.100+010.000_0.1_40.0', '200_121.100+011.000_0.2_41.0',
         '210_122.100+012.000_0.3_42.0', '201_123.100-013.000_0.4_43.0', '300_124.100+014.000_0.5_44.0',
         '310_125.100+015.000_0.6_45.0']


def write_copy(root, names=NAMES):
    (root / 'FITS').mkdir(parents=True)
    for i, name in enumerate(names):
        fits.PrimaryHDU(np.full((1, 1, 6, 6), i, dtype=np.float32)).writeto(root / 'FITS' / f'{name}.fits')
    return root


@pytest.mark.parametrize('source, expected', [('mirabest', {'FRI': 3, 'FRII': 3}),
                                              ('mirabest-all', {'FRI': 4, 'FRII': 4})])
def test_import_keeps_fri_frii_and_the_confidence_asked_for(tmp_path, source, expected):
    src = write_copy(tmp_path / 'MiraBest')
    out = tmp_path / 'out'
    assert import_main([source, str(src), str(out), '--val-fraction', '0.2', '--test-fraction', '0.2']) == 0
    with open(out / 'manifest.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    counts = {name: sum(r['class_name'] == name for r in rows) for name in ('FRI', 'FRII')}
    assert counts == expected
    assert not any(r['mirabest_class'].startswith('3') for r in rows)  # hybrids are not FRI/FRII
    assert (source == 'mirabest') == all(r['confidence'] == 'confident' for r in rows)
    row = next(r for r in rows if r['mirabest_class'] == '102')
    assert (row['morphology'], row['ra'], row['dec'], row['redshift']) == ('wide-angle tail', '114.242', '+043.484',
                                                                           '0.2731')
    for r in rows:  # copied byte for byte
        assert (out / r['file']).read_bytes() == (src / r['source_file']).read_bytes()
    assert json.loads((out / 'dataset.json').read_text())['format'] == 'fits'


def test_misnamed_file_refused(tmp_path, capsys):
    src = write_copy(tmp_path / 'MiraBest', NAMES[:2] + ['galaxy_7'])
    assert import_main(['mirabest', str(src), str(tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert 'galaxy_7.fits: not named <class>_<ra><dec>_<z>_<x>.fits' in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / 'out').exists()
