"""benchmarks/lowdata.py (the low-data study) and benchmarks/predict_speed.py, end to end on tiny data."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import lowdata  # noqa: E402
import predict_speed  # noqa: E402

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(scope='module')
def three_splits(tmp_path_factory) -> Path:
    """The layout `timm-astro import` writes: train/, validation/, test/ with one folder per class."""
    root = tmp_path_factory.mktemp('study')
    rng = np.random.default_rng(0)
    for split, count in (('train', 6), ('validation', 2), ('test', 3)):
        for label in range(3):
            folder = root / split / f'{label}_class'
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    (root / 'dataset.json').write_text(json.dumps({'title': 'tiny stand-in'}))
    return root


def test_study_writes_json_markdown_and_both_plots(three_splits, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['lowdata.py'])
    report = lowdata.main([
        '--data-dir', str(three_splits), '--models', 'resnet18@16', 'astroformer_small[rel_pos_type=none]@16',
        '--shots', '2', 'all', '--seeds', '0', '1', '--steps', '2', '--set', 'batch_size=4', 'epochs=1',
        '--out-dir', str(tmp_path), '--name', 'smoke'])
    assert len(report['runs']) == 2 * 2 * 2  # shots x seeds x models
    for run in report['runs']:
        assert run['train_images'] == 3 * (2 if run['shots'] == '2' else 6)
        for key in ('test_top1', 'test_top1_d4', 'test_balanced', 'test_balanced_d4', 'validation_top1'):
            assert 0 <= run[key] <= 100
        assert run['train_cpu_s'] > 0 and run['steps'] >= 1
    assert report['settings']['eval_sizes'] == {'validation': 6, 'test': 9}
    assert {(e['model'], e['shots']) for e in report['summary']} == {
        (m, s) for m in ('resnet18@16', 'astroformer_small[rel_pos_type=none]@16') for s in ('2', 'all')}
    assert all(e['test_top1']['n'] == 2 for e in report['summary'])
    markdown = (tmp_path / 'smoke.md').read_text()
    assert 'tiny stand-in' in markdown and '`resnet18@16`' in markdown and 'one image is 11.1 points' in markdown
    for kind in ('shots', 'cost'):
        assert (tmp_path / f'smoke_{kind}.png').read_bytes()[:8] == PNG_SIGNATURE
    # --resume runs nothing again
    again = lowdata.main([
        '--data-dir', str(three_splits), '--models', 'resnet18@16', 'astroformer_small[rel_pos_type=none]@16',
        '--shots', '2', 'all', '--seeds', '0', '1', '--steps', '2', '--set', 'batch_size=4', 'epochs=1',
        '--out-dir', str(tmp_path), '--name', 'smoke', '--resume', '--no-plot'])
    assert again['runs'] == report['runs']
    # --report-only trains none of the cells the merged runs lack; k, seeds and models are the runs'
    reported = lowdata.main([
        '--data-dir', str(three_splits), '--models', 'convnext_atto@16', '--shots', '3', '--seeds', '5',
        '--out-dir', str(tmp_path), '--name', 'reported', '--merge', str(tmp_path / 'smoke.json'), '--report-only',
        '--no-plot'])
    assert reported['runs'] == report['runs'] and reported['summary'] == report['summary']
    assert reported['settings']['shots'] == ['2', 'all'] and reported['settings']['seeds'] == [0, 1]
    assert reported['settings']['models'] == ['resnet18@16', 'astroformer_small[rel_pos_type=none]@16']
    with pytest.raises(SystemExit, match='--report-only reports earlier runs'):
        lowdata.main(['--data-dir', str(three_splits), '--out-dir', str(tmp_path), '--name', 'none', '--report-only'])


def test_jobs_run_side_by_side_and_score_as_one_process_does(three_splits, tmp_path, monkeypatch):
    """--jobs 2 (a spawned single-threaded process per run) gives the runs, and the accuracies, of one
    single-threaded process: the parallel default study measures the same thing."""
    monkeypatch.setattr(sys, 'argv', ['lowdata.py'])
    common = ['--data-dir', str(three_splits), '--models', 'resnet18@16', 'resnet18@24', '--shots', '2',
              '--seeds', '0', '--steps', '2', '--set', 'batch_size=4', '--out-dir', str(tmp_path), '--no-plot']
    serial = lowdata.main(common + ['--threads', '1', '--name', 'serial'])
    parallel = lowdata.main(common + ['--jobs', '2', '--name', 'parallel'])

    def scores(report):
        return {r['model']: (r['test_top1'], r['test_top1_d4'], r['final_train_loss']) for r in report['runs']}
    assert scores(parallel) == scores(serial) and len(scores(serial)) == 2
    assert json.loads((tmp_path / 'parallel.json').read_text())['settings']['jobs'] == 2
    with pytest.raises(SystemExit, match='--jobs 0: expected 1 or more'):
        lowdata.main(common + ['--jobs', '0'])


def test_recipe_search_on_validation_in_two_parts_merged(three_splits, tmp_path, monkeypatch):
    """A grid run as two parts (as two processes would), merged: the report never scores test, compares the
    recipes side by side on validation with each row's best in bold, and names the parts it merged."""
    monkeypatch.setattr(sys, 'argv', ['lowdata.py'])
    common = ['--data-dir', str(three_splits), '--models', 'resnet18@16', '--shots', '2', '--seeds', '0',
              '--steps', '2', '--set', 'batch_size=4', '--eval-splits', 'validation', '--out-dir', str(tmp_path),
              '--no-plot']
    for lr in ('0.001', '0.01'):
        lowdata.main(common + ['--grid', f'lr={lr}', '--name', f'part_{lr}'])
    merged = lowdata.main(common + ['--grid', 'lr=0.001|0.01', '--name', 'search',
                                    '--merge', str(tmp_path / 'part_0.001.json'), str(tmp_path / 'part_0.01.json')])
    assert sorted(r['recipe'] for r in merged['runs']) == ['lr=0.001', 'lr=0.01'], 'merged, nothing run again'
    assert all('test_top1' not in r and 'validation_top1_d4' in r for r in merged['runs'])
    assert [p['file'] for p in merged['parts']] == ['part_0.001.json', 'part_0.01.json']
    markdown = (tmp_path / 'search.md').read_text()
    assert 'The test split was not evaluated' in markdown and 'merging `part_0.001.json` (1 runs' in markdown
    table = markdown.split('## Validation top-1 with D4 (%), by recipe')[1]
    assert '| model | k | `lr=0.001` | `lr=0.01` |' in table and '**' in table.split('`resnet18@16`')[1]
    # reported without --grid: the recipes (and steps) are the parts', not the command line's
    reported = lowdata.main(['--data-dir', str(three_splits), '--eval-splits', 'validation', '--out-dir', str(tmp_path),
                             '--no-plot', '--name', 'search_report', '--report-only',
                             '--merge', str(tmp_path / 'part_0.001.json'), str(tmp_path / 'part_0.01.json')])
    assert list(reported['recipes']) == ['lr=0.001', 'lr=0.01'] and reported['settings']['steps'] == 2
    assert '| model | k | `lr=0.001` | `lr=0.01` |' in (tmp_path / 'search_report.md').read_text()


def test_few_shot_subsets_are_balanced_nested_and_seeded():
    by_class = {c: list(range(c * 100, c * 100 + 30)) for c in range(3)}
    ten = lowdata.few_shot_indices(by_class, 10, seed=0)
    twenty = lowdata.few_shot_indices(by_class, 20, seed=0)
    assert len(ten) == 30 and all(sum(i // 100 == c for i in ten) == 10 for c in range(3))
    assert set(ten) <= set(twenty)
    assert ten == lowdata.few_shot_indices(by_class, 10, seed=0)
    assert ten != lowdata.few_shot_indices(by_class, 10, seed=1)
    assert sorted(lowdata.few_shot_indices(by_class, None, seed=0)) == sorted(sum(by_class.values(), []))


def test_model_specs_and_recipe_grids():
    assert lowdata.parse_model('astroformer_small[rel_pos_type=table,rel_pos_freqs=16]@32') == (
        'astroformer_small', {'rel_pos_type': 'table', 'rel_pos_freqs': 16}, 32)
    assert lowdata.parse_model('resnet18@64') == ('resnet18', {}, 64)
    with pytest.raises(SystemExit, match='expected NAME@SIZE'):
        lowdata.parse_model('resnet18')
    variants = lowdata.recipe_variants({'lr': 1e-3, 'mixup': 0.8}, ['mixup=0.2'], ['lr=0.001|0.003', 'drop_path=0|0.1'])
    assert len(variants) == 4 and all(v['mixup'] == 0.2 for v in variants.values())
    assert variants['lr=0.003,drop_path=0.1'] == {'lr': 0.003, 'mixup': 0.2, 'drop_path': 0.1}
    assert lowdata.recipe_variants({'lr': 1.0}, [], []) == {'base': {'lr': 1.0}}
    assert list(lowdata.recipe_variants({}, [], ['scale=[0.5, 1.0]|[0.2, 0.4]']).values())[1] == {'scale': [0.2, 0.4]}


def test_predict_speed_reports_ratios_and_memory(three_splits, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, 'argv', ['predict_speed.py'])
    report = predict_speed.main([
        '--images', str(three_splits / 'test'), '--models', 'resnet18@16', '--num-classes', '3', '--batch-size', '4',
        '--workers', '0', '--repeats', '1', '--catalogue-sizes', '30', '--cache-dir', str(tmp_path / 'cache'),
        '--out-dir', str(tmp_path), '--name', 'speed'])
    kinds = {r['kind']: r for r in report['rows']}
    assert set(kinds) == {'bare', 'predict'} and kinds['bare']['ratio_to_bare'] == 1.0
    assert kinds['predict']['img_s'] > 0 and report['settings']['num_images'] == 9
    assert report['memory'][0]['images'] == 30 and report['memory'][0]['peak_rss_mb'] > 0
    assert 'x bare forward' in (tmp_path / 'speed.md').read_text()
