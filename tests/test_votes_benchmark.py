"""benchmarks/votes_benchmark.py on a tiny vote set the test writes (made-up counts: it checks the protocol and the
arithmetic, not any model), and the paired bootstrap for real-valued scores it uses."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from timm_astro.evaluation.compare import paired_bootstrap_mean

from votes_helpers import write_vote_set

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'


def test_paired_bootstrap_mean():
    rng = np.random.default_rng(0)
    b = rng.uniform(0, 0.5, (2, 300))
    shifted = paired_bootstrap_mean(b + 0.1, b, n_boot=500)  # the same shift on every galaxy: no spread at all
    assert shifted.mean == pytest.approx(0.1) and shifted.low == pytest.approx(0.1) and shifted.high == \
        pytest.approx(0.1)
    a = b + rng.normal(0.02, 0.05, b.shape)
    forward, backward = paired_bootstrap_mean(a, b, n_boot=2000), paired_bootstrap_mean(b, a, n_boot=2000)
    assert forward.mean == pytest.approx(0.02, abs=0.01) and forward.low < forward.mean < forward.high
    assert backward.mean == pytest.approx(-forward.mean) and backward.low == pytest.approx(-forward.high)
    assert not forward.contains_zero and paired_bootstrap_mean(b, b.copy(), n_boot=100).contains_zero
    with pytest.raises(ValueError, match='same shape'):
        paired_bootstrap_mean(a, b[:1])
    with pytest.raises(ValueError, match='finite'):
        paired_bootstrap_mean(np.full((1, 3), np.nan), np.ones((1, 3)))


def test_votes_benchmark_protocol(tmp_path: Path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import votes_benchmark
    data = write_vote_set(tmp_path / 'votes', per_split=(16, 6, 10), size=16, seed=1)
    monkeypatch.setattr(sys, 'argv', ['votes_benchmark.py', '--data-dir', str(data)])  # what the report quotes
    report = votes_benchmark.main([
        '--data-dir', str(data), '--models', 'test_resnet@16', 'astroformer_small@16', '--seeds', '0', '1',
        '--budget-cpu-s', '0.3', '--probe-steps', '2', '--lr-grid', '1e-3', '3e-3', '--n-boot', '200',
        '--set', 'batch_size=4', '--threads', '1', '--cache-dir', str(tmp_path / 'cache'),
        '--out-dir', str(tmp_path / 'out'), '--name', 'tiny'])
    assert json.loads((tmp_path / 'out' / 'tiny.json').read_text())['summary'] == report['summary']
    runs = report['runs']
    assert len(runs) == 8 and all(r['steps'] >= 1 and r['validation_loss'] > 0 for r in runs)
    for entry in report['summary']:
        mine = [r for r in runs if r['model'] == entry['model']]
        means = {lr: np.mean([r['validation_loss'] for r in mine if r['lr'] == lr]) for lr in (1e-3, 3e-3)}
        assert entry['lr'] == min(means, key=lambda lr: (round(means[lr], 4), lr))  # lowest validation loss
        for r in mine:  # test is scored for the chosen lr only
            assert ('test_errors' in r) == (r['lr'] == entry['lr'])
    assert not any((tmp_path / 'cache').rglob('*.pt')), 'every weight file is scored or deleted'

    tested = [r for r in runs if 'test_errors' in r]
    for r in tested:  # a run's test MAE is the mean over questions of the mean over galaxies that answered
        errors = np.array([[np.nan if v is None else v for v in row] for row in r['test_errors']])
        assert errors.shape == (10, 9)
        assert r['test_mae'] == pytest.approx(np.nanmean(np.nanmean(errors, 0)), abs=1e-4)

    by = {c['model']: c for c in report['comparisons']}
    c = by['astroformer_small@16']
    assert c['reference'] == 'test_resnet@16' and c['seeds'] == [0, 1]

    def overall(model):
        chosen = next(e['lr'] for e in report['summary'] if e['model'] == model)
        rows = [np.array([[np.nan if v is None else v for v in row] for row in r['test_errors']])
                for r in sorted(tested, key=lambda r: r['seed']) if r['model'] == model and r['lr'] == chosen]
        return np.stack([np.nanmean(e, 1) for e in rows])
    difference = overall('astroformer_small@16') - overall('test_resnet@16')
    assert c['overall']['mean'] == pytest.approx(difference.mean(), abs=1e-4)
    assert c['overall']['low'] <= c['overall']['mean'] <= c['overall']['high']
    assert by['test_resnet@16']['overall']['mean'] == pytest.approx(-c['overall']['mean'])
    markdown = (tmp_path / 'out' / 'tiny.md').read_text()
    assert 'test per-galaxy MAE difference [95%]' in markdown and 'Per question: `astroformer_small@16`' in markdown
    assert str(data) not in markdown and 'DATA_DIR' in markdown
