"""benchmarks/lowdata.py (the low-data study) and benchmarks/predict_speed.py, end to end on tiny data."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from timm_astro.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'benchmarks'))
import lowdata  # noqa: E402
import predict_speed  # noqa: E402

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(autouse=True)
def _torch_threads_restored():
    """lowdata.main sets torch's thread count for its runs (--threads, in-process jobs) and leaves it set: restored
    here, or a later test's in-process logits are summed over another number of threads than its subprocess's."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def three_splits(tmp_path_factory) -> Path:
    """The layout `timm-astro import` writes: train/, validation/, test/ with one folder per class."""
    root = tmp_path_factory.mktemp('study')
    rng = np.random.default_rng(0)
    for split, count in (('train', 6), ('validation', 2), ('test', 3)):
        for label in range(3):
            folder = root / split / f"{label}_{('round', 'edge_on', 'spiral')[label]}"
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    (root / 'dataset.json').write_text(json.dumps({'title': 'tiny stand-in'}))
    return root


def _study(data: Path, out: Path, *extra: str) -> dict:
    return lowdata.main(['--data-dir', str(data), '--set', 'batch_size=4', '--out-dir', str(out),
                         '--cache-dir', str(out / 'cache'), '--n-boot', '500', *extra])


def test_protocol_chooses_lr_on_validation_and_scores_only_it_on_test(three_splits, tmp_path, monkeypatch):
    """Two models, two lrs, two seeds, fixed steps: each model's lr is the best mean plain validation top-1; only
    its runs have test predictions; every run has its curve; the report holds paired intervals and warns that a
    two-value grid cannot bracket; --report-only gives the same report back; old and foreign reports are refused."""
    monkeypatch.setattr(sys, 'argv', ['lowdata.py'])
    models = ['resnet18@16', 'astroformer_small[rel_pos_type=none]@16']
    report = _study(three_splits, tmp_path, '--models', *models, '--shots', '2', '--seeds', '0', '1', '--steps', '3',
                    '--curve-points', '3', '--lr-grid', '1e-3', '3e-3', '--jobs', '1', '--name', 'smoke')
    runs = report['runs']
    assert len(runs) == 2 * 2 * 2  # models x seeds x lrs
    labels = report['settings']['labels']
    assert len(labels['validation']) == 6 and len(labels['test']) == 9 and report['settings']['format'] == 2
    for run in runs:
        assert run['steps'] == 3 and run['warmup_steps'] == 1 and run['train_images'] == 3 * 2
        assert [h['step'] for h in run['history']] == [1, 2, 3] and run['history'][-1]['cpu_s'] <= run['train_cpu_s']
        assert all(0 <= h['validation_top1'] <= 100 and h['train_loss'] > 0 for h in run['history'])
        assert len(run['validation_pred']) == len(run['validation_pred_d4']) == 6
    for entry in report['summary']:
        members = [r for r in runs if r['model'] == entry['model']]
        means = {lr: np.mean([r['validation_top1'] for r in members if r['lr'] == lr]) for lr in (1e-3, 3e-3)}
        assert entry['lr'] == (3e-3 if means[3e-3] > means[1e-3] else 1e-3)
        assert entry['lr_edge'] == ('low' if entry['lr'] == 1e-3 else 'high')
        for run in members:
            chosen = run['lr'] == entry['lr']
            assert ('test_top1' in run) == ('test_pred' in run) == ('test_pred_d4' in run) == chosen
            if chosen:
                assert len(run['test_pred']) == 9 and 0 <= run['test_top1_d4'] <= 100
    assert not list((tmp_path / 'cache').rglob('*.pt')), 'every weights file is gone once scored or not chosen'
    kinds = {(c['kind'], c['model'], c.get('mode'), c['split']) for c in report['comparisons']}
    assert ('versus', models[1], 'plain', 'test') in kinds and ('versus', models[0], 'd4', 'test') in kinds
    assert ('d4_effect', models[0], None, 'validation') in kinds and ('d4_effect', models[1], None, 'test') in kinds
    for c in report['comparisons']:
        assert c['low'] <= c['mean'] <= c['high'] and c['seeds'] == [0, 1]
    markdown = (tmp_path / 'smoke.md').read_text()
    assert '## Fixed length: 3 optimizer steps per run' in markdown and 'tiny stand-in' in markdown
    assert '**Warning: the lr grid does not bracket the optimum**' in markdown
    assert 'D4 averaging minus plain' in markdown and 'test plain: difference [95%]' in markdown
    for kind in ('curves', 'shots'):
        assert (tmp_path / f'smoke_{kind}.png').read_bytes()[:8] == PNG_SIGNATURE

    again = _study(three_splits, tmp_path, '--name', 'reported', '--merge', str(tmp_path / 'smoke.json'),
                   '--report-only', '--no-plot', '--models', 'convnext_atto@16', '--seeds', '5')
    assert again['runs'] == runs and again['summary'] == report['summary']
    assert again['comparisons'] == report['comparisons'] and again['settings']['lr_grid'] == [1e-3, 3e-3]
    with pytest.raises(SystemExit, match='before the study protocol.*commit c377f1a'):
        _study(three_splits, tmp_path, '--name', 'old', '--report-only', '--merge',
               str(ROOT / 'benchmarks' / 'results' / 'lowdata.json'))
    foreign = json.loads((tmp_path / 'smoke.json').read_text())
    foreign['settings']['labels']['test'][0] = 2 - foreign['settings']['labels']['test'][0]
    (tmp_path / 'foreign.json').write_text(json.dumps(foreign))
    with pytest.raises(SystemExit, match='other validation/test images'):
        _study(three_splits, tmp_path, '--name', 'x', '--report-only', '--merge', str(tmp_path / 'foreign.json'))
    with pytest.raises(SystemExit, match='--report-only reports earlier runs'):
        _study(three_splits, tmp_path, '--name', 'none', '--report-only')


def test_equal_compute_and_convergence_regimes(three_splits, tmp_path, monkeypatch):
    """A CPU-second budget becomes steps through the probe's cost per step; convergence stops when validation has
    not improved for --patience evaluations (or at the cap) and scores the best weights."""
    monkeypatch.setattr(sys, 'argv', ['lowdata.py'])
    report = _study(three_splits, tmp_path, '--models', 'resnet18@16', '--shots', 'all', '--seeds', '0', '--jobs', '1',
                    '--budget-cpu-s', '1.5', '--converge', '--eval-every', '2', '--patience', '1', '--max-steps', '8',
                    '--probe-steps', '2', '--warmup-min-steps', '2', '--name', 'regimes', '--no-plot')
    runs = {r['regime']: r for r in report['runs']}
    assert set(runs) == {'cpu1.5s', 'converge'} and set(report['settings']['regimes']) == set(runs)
    budget, converged = runs['cpu1.5s'], runs['converge']
    assert budget['probe']['steps'] == 2 and budget['probe']['cpu_s_per_step'] > 0
    assert budget['steps'] == max(1, round(1.5 / budget['probe']['cpu_s_per_step']))
    assert converged['steps'] <= 8 and [h['step'] for h in converged['history']][:2] == [2, 4]
    best = max(converged['history'], key=lambda h: h['validation_top1'])  # the first of the best, as kept
    assert converged['best_step'] == best['step']
    if converged['stopped_early']:
        assert converged['steps'] - converged['best_step'] >= 2  # one evaluation (2 steps) without improvement
    markdown = (tmp_path / 'regimes.md').read_text()
    assert '## Equal compute: 1.5 CPU-seconds of training per run' in markdown
    assert '## Trained to convergence: validation every 2 steps' in markdown
    with pytest.raises(SystemExit, match='--budget-cpu-s counts CPU-seconds'):
        _study(three_splits, tmp_path, '--budget-cpu-s', '10', '--device', 'cuda')
    with pytest.raises(SystemExit, match="give the lrs to --lr-grid alone"):
        _study(three_splits, tmp_path, '--lr-grid', '1e-3', '--grid', 'lr=0.1|0.2')


def test_lr_choice_brackets_extends_and_waits_for_every_seed():
    cell = ('steps3', 'base', 'm@16', '30')

    def run(lr, seed, top1):
        return {'regime': 'steps3', 'recipe': 'base', 'model': 'm@16', 'shots': '30', 'lr': lr, 'seed': seed,
                'validation_top1': top1}
    runs = [run(1e-3, 0, 50), run(1e-3, 1, 60), run(3e-3, 0, 58), run(3e-3, 1, 58), run(1e-2, 0, 40)]
    waiting = lowdata.decide(runs, cell, [0, 1], [1e-3, 3e-3, 1e-2], extend=0)
    assert 'lr' not in waiting and waiting['validation_by_lr'][1e-2] == 40, 'seed 1 of lr 1e-2 missing'
    runs.append(run(1e-2, 1, 30))
    inside = lowdata.decide(runs, cell, [0, 1], [1e-3, 3e-3, 1e-2], extend=0)
    assert inside['lr'] == 3e-3 and inside['edge'] is None  # 58 against 55 and 35: bracketed
    ties = lowdata.decide([run(1e-3, 0, 50), run(3e-3, 0, 50)], cell, [0], [1e-3, 3e-3], extend=0)
    assert ties['lr'] == 1e-3 and ties['edge'] == 'low'
    high = [run(1e-3, 0, 50), run(3e-3, 0, 60)]
    assert lowdata.decide(high, cell, [0], [1e-3, 3e-3], extend=0)['edge'] == 'high'
    assert lowdata.decide(high, cell, [0], [1e-3, 3e-3], extend=1)['extend'] == 9e-3  # the grid's ratio
    high.append(run(9e-3, 0, 55))
    assert lowdata.decide(high, cell, [0], [1e-3, 3e-3], extend=1) == {
        'grid': [1e-3, 3e-3, 9e-3], 'validation_by_lr': {1e-3: 50, 3e-3: 60, 9e-3: 55}, 'lr': 3e-3, 'edge': None}


def test_lr_ties_in_images_go_to_the_smaller_lr_whatever_the_rounding():
    """0 and 2 of 6 images right against 1 and 1: the same 2 images, but the rounded top-1s (0 + 33.3333 against
    16.6667 + 16.6667) differ in the last digit; that is a tie, and the smaller lr wins it."""
    cell = ('steps3', 'base', 'm@16', '30')
    runs = [{'regime': 'steps3', 'recipe': 'base', 'model': 'm@16', 'shots': '30', 'lr': lr, 'seed': seed,
             'validation_top1': round(100.0 * correct / 6, 4)}
            for lr, counts in ((1e-3, (0, 2)), (3e-3, (1, 1))) for seed, correct in enumerate(counts)]
    assert lowdata.decide(runs, cell, [0, 1], [1e-3, 3e-3], extend=0)['lr'] == 1e-3
    runs[0]['validation_top1'] = round(100.0 * 1 / 6, 4)  # one image more is not a tie
    assert lowdata.decide(runs, cell, [0, 1], [1e-3, 3e-3], extend=0)['lr'] == 1e-3
    runs[0]['validation_top1'] = 0.0
    runs[2]['validation_top1'] = round(100.0 * 2 / 6, 4)
    assert lowdata.decide(runs, cell, [0, 1], [1e-3, 3e-3], extend=0)['lr'] == 3e-3


def test_report_says_when_test_was_scored_for_an_lr_not_chosen(three_splits, tmp_path, monkeypatch):
    """Two parts of an lr grid, each run with one lr and test on, each chose (and scored on test) its own lr: merged,
    one lr is chosen and the report says the other's test was computed. It also says that validation chose the
    stopping point of a converged run, and the most-common-class rate beside chance."""
    monkeypatch.setattr(sys, 'argv', ['lowdata.py'])
    labels = {split: list(lowdata.open_labelled_data(three_splits, split).targets) for split in ('validation', 'test')}
    regime = {'kind': 'converge', 'max_steps': 8, 'eval_every': 2, 'patience': 1}
    for lr, right in ((1e-3, 2), (3e-3, 4)):  # 3e-3 gets more validation images right: it is chosen
        validation = [y if i < right else (y + 1) % 3 for i, y in enumerate(labels['validation'])]
        top1 = round(100.0 * right / len(validation), 4)
        run = {'regime': 'converge', 'recipe': 'base', 'model': 'resnet18@16', 'shots': '2', 'seed': 0, 'lr': lr,
               'params': 1, 'steps': 8, 'best_step': 4, 'train_cpu_s': 1.0, 'history': [],
               'validation_top1': top1, 'validation_top1_d4': top1, 'validation_balanced': top1,
               'validation_balanced_d4': top1, 'validation_pred': validation, 'validation_pred_d4': validation,
               'test_top1': 100.0, 'test_top1_d4': 100.0, 'test_balanced': 100.0, 'test_balanced_d4': 100.0,
               'test_pred': labels['test'], 'test_pred_d4': labels['test']}
        settings = {'format': lowdata.FORMAT, 'labels': labels, 'lr_grid': [lr], 'extend_grid': 0,
                    'warmup_fraction': 0.05, 'warmup_min_steps': 5, 'regimes': {'converge': regime}}
        (tmp_path / f'part_{lr}.json').write_text(json.dumps({
            'command': 'part', 'wall_time_s': 1.0, 'settings': settings, 'recipes': {'base': {'lr': lr}},
            'runs': [run]}))
    report = _study(three_splits, tmp_path, '--name', 'merged', '--report-only', '--no-plot', '--merge',
                    str(tmp_path / 'part_0.001.json'), str(tmp_path / 'part_0.003.json'))
    assert [e['lr'] for e in report['summary']] == [3e-3]
    markdown = (tmp_path / 'merged.md').read_text()
    warning = next(line for line in markdown.splitlines() if line.startswith('**Warning: test was scored for an lr'))
    assert '`resnet18@16` at k = 2 (converge: 0.001)' in warning and '0.003' not in warning
    assert 'the split that chose the lr also chose the stopping point' in markdown
    assert 'Chance: 33.3% (uniform guess); always the most common class: 33.3% of validation' in markdown


def test_training_counts_in_steps_and_stops_early(three_splits):
    """train_classifier's step budget: exactly N steps, warm-up in steps, history every E steps with the hook's
    result, and should_stop ending the run."""
    from timm.data import create_dataset
    from timm_astro.training import train_args, train_classifier
    import timm
    dataset = create_dataset('', root=str(three_splits), split='train', is_training=True)  # 18 images: 4 per epoch
    config = {'input_size': (3, 16, 16), 'mean': (0.5,) * 3, 'std': (0.5,) * 3}
    args = train_args({'opt': 'adamw', 'lr': 1e-2, 'batch_size': 4, 'warmup_lr': 0.0, 'min_lr': 0.0,
                       'warmup_epochs': 2 / 4, 'sched_on_updates': True, 'epochs': 300})
    result = train_classifier(timm.create_model('resnet18', num_classes=3), dataset, args, data_config=config,
                              num_classes=3, steps=6, log_every=2, on_epoch_end=lambda e, m, s: {'seen': s['step']})
    assert result.steps == 6 and [h['step'] for h in result.history] == [2, 4, 6]
    assert [h['seen'] for h in result.history] == [2, 4, 6] and result.history[0]['epoch'] == 0.5
    assert result.history[-1]['lr'] == pytest.approx(0.0, abs=1e-9), 'the cosine ends at the last step'
    assert 0 < result.history[0]['cpu_s'] < result.history[-1]['cpu_s'] <= result.cpu_seconds
    stopped = train_classifier(timm.create_model('resnet18', num_classes=3), dataset, args, data_config=config,
                               num_classes=3, steps=6, log_every=1, should_stop=lambda history: len(history) == 3)
    assert stopped.steps == 3 and len(stopped.history) == 3
    assert stopped.history[0]['lr'] == pytest.approx(0.5e-2), 'half way through a warm-up of 2 steps from 0'
    with pytest.raises(UserError, match='steps must be a whole number'):
        train_classifier(timm.create_model('resnet18', num_classes=3), dataset, args, data_config=config,
                         num_classes=3, steps=0)


def test_jobs_run_side_by_side_and_score_as_one_process_does(three_splits, tmp_path, monkeypatch):
    """--jobs 2 (a spawned single-threaded process per run) gives the runs, and the accuracies, of one
    single-threaded process: the parallel default study measures the same thing."""
    monkeypatch.setattr(sys, 'argv', ['lowdata.py'])
    common = ['--models', 'resnet18@16', 'resnet18@24', '--shots', '2', '--seeds', '0', '--steps', '2', '--no-plot']
    serial = _study(three_splits, tmp_path, *common, '--threads', '1', '--jobs', '1', '--name', 'serial')
    parallel = _study(three_splits, tmp_path, *common, '--jobs', '2', '--name', 'parallel')

    def scores(report):
        return {r['model']: (r['test_pred'], r['test_pred_d4'], r['final_train_loss']) for r in report['runs']}
    assert scores(parallel) == scores(serial) and len(scores(serial)) == 2
    assert json.loads((tmp_path / 'parallel.json').read_text())['settings']['jobs'] == 2
    with pytest.raises(SystemExit, match='--jobs 0: expected 1 or more'):
        _study(three_splits, tmp_path, *common, '--jobs', '0')


def test_lr_search_on_validation_in_two_parts_merged(three_splits, tmp_path, monkeypatch):
    """An lr grid run as two parts (as two machines would), merged: test is never scored nor weights kept, the
    parts' grids are one grid, and the report names the parts it merged."""
    monkeypatch.setattr(sys, 'argv', ['lowdata.py'])
    common = ['--models', 'resnet18@16', 'astroformer_small[rel_pos_type=none]@16', '--shots', '2', '--seeds', '0',
              '--steps', '2', '--eval-splits', 'validation', '--no-plot', '--jobs', '1']
    for lr in ('0.001', '0.01'):
        _study(three_splits, tmp_path, *common, '--lr-grid', lr, '--name', f'part_{lr}')
    assert not list((tmp_path / 'cache').rglob('*.pt'))
    merged = _study(three_splits, tmp_path, *common, '--name', 'search', '--report-only',
                    '--merge', str(tmp_path / 'part_0.001.json'), str(tmp_path / 'part_0.01.json'))
    assert sorted(r['lr'] for r in merged['runs']) == [0.001, 0.001, 0.01, 0.01]
    assert merged['settings']['lr_grid'] == [0.001, 0.01]
    assert all('test_top1' not in r and 'validation_top1_d4' in r for r in merged['runs'])
    assert [p['file'] for p in merged['parts']] == ['part_0.001.json', 'part_0.01.json']
    markdown = (tmp_path / 'search.md').read_text()
    assert "merging `part_0.001.json` (2 runs" in markdown and '| regime | model | k |' in markdown
    assert not any(c['split'] == 'test' for c in merged['comparisons'])


def test_parts_of_different_models_keep_each_models_own_lr_grid(three_splits, tmp_path, monkeypatch):
    """Two parts, each a model with its own grid (a pretrained model searched lower): merged, each model chooses
    from its own grid, not from the union (where it would lack runs and never be complete), and the report says so."""
    monkeypatch.setattr(sys, 'argv', ['lowdata.py'])
    common = ['--shots', '2', '--seeds', '0', '--steps', '1', '--eval-splits', 'validation', '--no-plot', '--jobs', '1']
    _study(three_splits, tmp_path, *common, '--models', 'resnet18@16', '--lr-grid', '1e-3', '3e-3', '--name', 'a')
    _study(three_splits, tmp_path, *common, '--models', 'resnet18@24', '--lr-grid', '3e-4', '1e-3', '--name', 'b')
    merged = _study(three_splits, tmp_path, *common, '--name', 'ab', '--report-only',
                    '--merge', str(tmp_path / 'a.json'), str(tmp_path / 'b.json'))
    assert all(e['complete'] for e in merged['summary'])
    assert {e['model']: e['lr_grid'] for e in merged['summary']} == {'resnet18@16': [1e-3, 3e-3],
                                                                      'resnet18@24': [3e-4, 1e-3]}
    assert merged['settings']['lr_grid_by_model'] == {'resnet18@16': [1e-3, 3e-3], 'resnet18@24': [3e-4, 1e-3]}
    assert "each model's grid (`resnet18@16` [0.001, 0.003]" in (tmp_path / 'ab.md').read_text()


def test_budget_from_a_step_cost_measured_beforehand(three_splits, tmp_path, monkeypatch):
    """--step-cost: the budget regime takes a model's CPU-seconds per step as given (pretrained or not) instead of
    probing it beside other jobs; the report says so; a malformed cost is refused."""
    monkeypatch.setattr(sys, 'argv', ['lowdata.py'])
    (tmp_path / 'pre').mkdir()
    import torch
    import timm
    torch.save(timm.create_model('resnet18', num_classes=3).state_dict(), tmp_path / 'pre' / 'r.pt')
    report = _study(three_splits, tmp_path, '--models', 'resnet18@16', 'resnet18[pretrained_path=pre/r.pt]@16',
                    '--shots', '2', '--seeds', '0', '--budget-cpu-s', '2', '--step-cost', 'resnet18@16=0.5',
                    '--jobs', '1', '--no-plot', '--name', 'given', '--pretrained-dir', str(tmp_path))
    assert [(r['steps'], r['probe']) for r in report['runs']] == [(4, {'cpu_s_per_step': 0.5, 'given': True})] * 2
    assert 'measured beforehand, not probed in the run (`resnet18@16` 0.5)' in (tmp_path / 'given.md').read_text()
    again = _study(three_splits, tmp_path, '--name', 'again', '--report-only', '--no-plot', '--merge',
                   str(tmp_path / 'given.json'))
    assert again['settings']['step_cost'] == {'resnet18@16': 0.5}  # a merged report says it too
    with pytest.raises(SystemExit):
        lowdata.parse_args(['--data-dir', 'x', '--step-cost', 'resnet18@16=fast'])


def test_a_recipe_run_apart_is_compared_with_the_first_recipe_model_by_model(three_splits, tmp_path, monkeypatch):
    """D4 training views as a recipe (device_modules), run as a second part and merged with the first: each model
    under it is compared with the same model under the first recipe, paired on test, plain and D4."""
    monkeypatch.setattr(sys, 'argv', ['lowdata.py'])
    common = ['--models', 'resnet18@16', '--shots', '2', '--seeds', '0', '1', '--steps', '2', '--no-plot',
              '--jobs', '1']
    _study(three_splits, tmp_path, *common, '--name', 'flips')
    _study(three_splits, tmp_path, *common, '--name', 'd4', '--grid',
           'device_modules=[timm_astro, timm_astro.data.d4_augment]')
    merged = _study(three_splits, tmp_path, '--name', 'both', '--report-only', '--no-plot',
                    '--merge', str(tmp_path / 'flips.json'), str(tmp_path / 'd4.json'))
    recipe = "device_modules=['timm_astro', 'timm_astro.data.d4_augment']"
    assert list(merged['recipes']) == ['base', recipe]
    found = [c for c in merged['comparisons'] if c['kind'] == 'recipe']
    assert {(c['recipe'], c['reference'], c['mode'], c['model']) for c in found} == {
        (recipe, 'base', 'plain', 'resnet18@16'), (recipe, 'base', 'd4', 'resnet18@16')}
    assert all(c['seeds'] == [0, 1] for c in found)
    assert f"Recipe `{recipe}` minus recipe `base`" in (tmp_path / 'both.md').read_text()


def test_fine_tuning_from_a_pretraining_is_compared_with_scratch_and_with_peers_of_the_same_pretraining(
        three_splits, tmp_path, monkeypatch):
    """Models fine-tuned from a pretraining folder: each is compared with the same model from scratch, and with the
    other side's model of the same pretraining (never a scratch peer), in the JSON and the markdown."""
    import torch
    import timm
    monkeypatch.setattr(sys, 'argv', ['lowdata.py'])
    for folder in ('gz2', 'votes'):
        (tmp_path / folder).mkdir()
    for name, kwargs, file in (('resnet18', {}, 'gz2/resnet18.pth.tar'),
                               ('astroformer_small', dict(rel_pos_type='none', img_size=16), 'gz2/small.pth.tar'),
                               ('astroformer_small', dict(rel_pos_type='none', img_size=16), 'votes/small.pth.tar')):
        torch.save({'state_dict': timm.create_model(name, num_classes=6, **kwargs).state_dict()}, tmp_path / file)
    peer, small = 'resnet18@16', 'astroformer_small[rel_pos_type=none]@16'
    tuned_peer = 'resnet18[pretrained_path=gz2/resnet18.pth.tar]@16'
    tuned_small = 'astroformer_small[rel_pos_type=none,pretrained_path=gz2/small.pth.tar]@16'
    votes_small = 'astroformer_small[rel_pos_type=none,pretrained_path=votes/small.pth.tar]@16'
    report = _study(three_splits, tmp_path, '--models', peer, small, tuned_peer, tuned_small, votes_small,
                    '--shots', '2',
                    '--seeds', '0', '--steps', '2', '--curve-points', '1', '--jobs', '1', '--name', 'tuned',
                    '--pretrained-dir', str(tmp_path))
    found = {(c['kind'], c['model'], c.get('mode')): c.get('reference') for c in report['comparisons']}
    assert found[('pretraining', tuned_small, 'plain')] == small and found[('pretraining', tuned_peer, 'd4')] == peer
    assert found[('versus', tuned_small, 'plain')] == tuned_peer and found[('versus', small, 'plain')] == peer
    assert ('pretraining', small, 'plain') not in found
    assert found[('pretraining_vs', votes_small, 'plain')] == tuned_small  # two pretrainings of one architecture
    assert ('pretraining_vs', tuned_small, 'plain') not in found and ('versus', votes_small, 'plain') not in found
    markdown = (tmp_path / 'tuned.md').read_text()
    assert 'Pretrained minus the same model from scratch' in markdown and 'One pretraining minus another' in markdown
    with pytest.raises(SystemExit, match='pretrained_path gz2/none.pt is not a file under --pretrained-dir'):
        _study(three_splits, tmp_path, '--models', 'resnet18[pretrained_path=gz2/none.pt]@16', '--pretrained-dir',
               str(tmp_path), '--name', 'missing')


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


def test_probe_only_prints_one_step_cost_per_architecture(three_splits, tmp_path, monkeypatch, capsys):
    """--probe-only measures each architecture once (a spec with pretrained weights costs what its architecture
    does), in the form --step-cost takes, and writes no report."""
    monkeypatch.setattr(sys, 'argv', ['lowdata.py'])
    weights = tmp_path / 'w.safetensors'
    weights.touch()
    out = _study(three_splits, tmp_path, '--models', 'resnet18@16', f'resnet18[pretrained_path={weights.name}]@16',
                 'astroformer_small[rel_pos_type=none]@16', '--shots', '2', '--probe-only', '--probe-steps', '2',
                 '--pretrained-dir', str(tmp_path), '--jobs', '1')
    specs = [line.rpartition('=')[0] for line in out['step_cost']]
    assert specs == ['resnet18@16', 'astroformer_small[rel_pos_type=none]@16']
    assert [float(line.rpartition('=')[2]) > 0 for line in out['step_cost']] == [True, True]
    assert lowdata._step_cost(out['step_cost'][1])[0] == specs[1]
    assert capsys.readouterr().out.split() == out['step_cost']
    assert not list(tmp_path.glob('*.json'))


def test_pretrained_classifiers_as_they_are_against_their_fine_tuned_copies(three_splits, tmp_path, monkeypatch):
    """benchmarks/asis.py: a pretraining's weights are scored with their own classifier (the predictions the weights
    give when built by hand, not a fresh head's), on the report's splits, and each fine-tuned cell is compared with
    them over its seeds, image by image; weights of other classes, or of the same classes in another order, are
    refused before anything is written."""
    import argparse
    import timm
    import asis
    (tmp_path / 'gz2').mkdir()
    torch.manual_seed(7)
    pretrained = timm.create_model('resnet18', num_classes=3)
    with torch.no_grad():
        pretrained.fc.bias += torch.tensor([0.0, 3.0, -3.0])  # a head no fresh initialisation gives
    weights = pretrained.state_dict()
    names = ['0_round', '1_edge_on', '2_spiral']
    torch.save({'arch': 'resnet18', 'state_dict': weights, 'args': argparse.Namespace(label_names=names)},
               tmp_path / 'gz2' / 'r.pth.tar')
    tuned = 'resnet18[pretrained_path=gz2/r.pth.tar]@16'
    monkeypatch.setattr(sys, 'argv', ['lowdata.py'])
    _study(three_splits, tmp_path, '--models', tuned, '--shots', '2', '--seeds', '0', '1', '--steps', '2',
           '--curve-points', '1', '--jobs', '1', '--name', 'ft', '--pretrained-dir', str(tmp_path))
    argv = ['--data-dir', str(three_splits), '--pretrained-dir', str(tmp_path), '--reports', str(tmp_path / 'ft.json'),
            '--out-dir', str(tmp_path), '--n-boot', '200']
    monkeypatch.setattr(sys, 'argv', ['asis.py', *argv, '--name', 'alone'])
    result = asis.main(argv + ['--name', 'alone'])

    test = lowdata.eval_data(three_splits, 'test')
    config = lowdata.eval_config(16, 1.0)

    def predictions(model):
        return lowdata.score(model.eval(), test, config, asis.parse_args(argv), 'test')

    expected = predictions(pretrained)
    alone = result['as_is'][tuned]
    assert alone['test_pred'] == expected['test_pred'] and alone['test_pred_d4'] == expected['test_pred_d4']
    assert alone['test_pred'] != predictions(lowdata.build_model(tuned, 3, {}, 0, tmp_path)[0])['test_pred']
    assert len(alone['validation_pred']) == 6 and alone['class_names_checked']
    found = {(c['kind'], c['mode']): c for c in result['comparisons']}
    assert set(found) == {('fine_tuned', 'plain'), ('fine_tuned', 'd4')}
    plain = found[('fine_tuned', 'plain')]
    assert plain['seeds'] == [0, 1] and plain['model'] == tuned and plain['report'] == 'ft.json'
    tuned_runs = [r for r in json.loads((tmp_path / 'ft.json').read_text())['runs'] if 'test_top1' in r]
    assert plain['mean'] == pytest.approx(np.mean([r['test_top1'] for r in tuned_runs]) - alone['test_top1'],
                                          abs=0.01)  # paired image by image with the report's labels
    assert str(tmp_path) not in result['command'] and '--pretrained-dir PRETRAINED_DIR' in result['command']
    assert 'fine-tuned (ft.json' in (tmp_path / 'alone.md').read_text()

    torch.save({'arch': 'resnet18', 'state_dict': weights, 'args': argparse.Namespace(label_names=names[::-1])},
               tmp_path / 'gz2' / 'r.pth.tar')
    with pytest.raises(SystemExit, match="its classes are not the data's"):
        asis.main(argv + ['--name', 'other_order'])
    torch.save({'arch': 'resnet18', 'state_dict': timm.create_model('resnet18', num_classes=4).state_dict()},
               tmp_path / 'gz2' / 'r.pth.tar')
    with pytest.raises(UserError, match='the model predicts 4 classes but the data has 3'):
        asis.main(argv + ['--name', 'other_classes'])
    assert not any((tmp_path / f'{n}.json').exists() for n in ('other_order', 'other_classes'))
