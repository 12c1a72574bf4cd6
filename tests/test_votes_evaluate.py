"""`timm-astro evaluate` with a votes model on a vote set: the figures checked against a model whose fractions are
known and counts read straight from the manifest; the report's files; an unreadable image left out; and each
mismatch (a class model on a vote set, a votes model on class folders, another tree, a head that is not the tree's)
refused in one line with nothing written."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import timm
from timm_astro.commands import evaluate as evaluate_cmd
from timm_astro.data.decision_tree import load_tree
from timm_astro.votes_model import export_votes_model

from votes_helpers import DECALS_LIKE_TREE, write_vote_set

# logits of the first question (smooth / features or disk / star or artifact): fractions known in advance
T01_LOGITS = [1.0, 0.0, -2.0]


def constant_votes_model(tree_name: str = 'gz2') -> torch.nn.Module:
    """A small timm model whose outputs ignore the image (classifier weights 0, bias chosen): its fractions are
    known without running it."""
    tree = load_tree(tree_name)
    model = timm.create_model('test_resnet', num_classes=tree.n_answers)
    with torch.no_grad():
        model.get_classifier().weight.zero_()
        bias = torch.zeros(tree.n_answers)
        bias[:3] = torch.tensor(T01_LOGITS)
        model.get_classifier().bias.copy_(bias)
    return model.eval()


def expected_t01_fractions() -> np.ndarray:
    alpha = 1 + 99 / (1 + np.exp(-np.array(T01_LOGITS)))  # timm_astro.losses.to_concentrations, written out
    return alpha / alpha.sum()


@pytest.fixture(scope='module')
def vote_set(tmp_path_factory) -> Path:
    return write_vote_set(tmp_path_factory.mktemp('votes') / 'gz2', per_split=(4, 2, 6), seed=3)


@pytest.fixture(scope='module')
def export(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp('models') / 'votes'
    return export_votes_model(constant_votes_model(), out, load_tree('gz2'),
                              data_config={'input_size': (3, 16, 16), 'crop_pct': 1.0})


def _manifest(vote_set: Path, split: str):
    with open(vote_set / 'manifest.csv', newline='') as f:
        return [row for row in csv.DictReader(f) if row['split'] == split]


def _evaluate(*args: str) -> int:
    return evaluate_cmd.main(list(args) + ['--workers', '0', '--no-progress'])


def test_votes_model_on_a_vote_set(export: Path, vote_set: Path, tmp_path: Path, capsys):
    out = tmp_path / 'report'
    assert _evaluate(f'local-dir:{export}', str(vote_set), '--split', 'test', '--output', str(out)) == 0
    printed = capsys.readouterr().out
    assert '6 galaxies, 28 answers of the gz2 tree' in printed and 't01_smooth_or_features' in printed
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith('.')) == \
        ['calibration.png', 'metrics.json', 'predictions.csv']
    assert (out / 'calibration.png').read_bytes()[:4] == b'\x89PNG'

    # the mean absolute error of the first question, from the manifest's counts and the known fractions
    rows = _manifest(vote_set, 'test')
    tree = load_tree('gz2')
    columns = [a.column for a in tree.questions[0].answers]
    counts = np.array([[int(r[c]) for c in columns] for r in rows], dtype=float)
    observed = counts / counts.sum(1, keepdims=True)
    predicted = expected_t01_fractions()
    metrics = json.loads((out / 'metrics.json').read_text())
    t01 = metrics['metrics']['questions']['t01_smooth_or_features']
    assert metrics['task'] == 'votes' and metrics['num_galaxies'] == 6 and metrics['num_left_out'] == 0
    assert t01['galaxies'] == 6
    assert t01['mae'] == pytest.approx(np.abs(observed - predicted).mean(), rel=1e-5)
    agreed = observed.max(1) > 0.8
    assert t01['agreed_galaxies'] == int(agreed.sum())
    if agreed.any():  # the constant prediction's top answer is 'smooth'
        assert t01['agreed_accuracy'] == pytest.approx(100 * (observed[agreed].argmax(1) == 0).mean())
    assert metrics['metrics']['mean_mae'] == pytest.approx(
        np.mean([q['mae'] for q in metrics['metrics']['questions'].values() if q['mae'] is not None]))
    assert metrics['metrics']['nll'] > 0

    with open(out / 'predictions.csv', newline='') as f:
        table = list(csv.DictReader(f))
    assert [r['id'] for r in table] == [r['file'] for r in rows]
    for row, obs in zip(table, observed):
        assert [float(row[f'fraction_{a.name}']) for a in tree.questions[0].answers] == \
            pytest.approx(predicted, abs=1e-6)
        assert [float(row[f'observed_{a.name}']) for a in tree.questions[0].answers] == pytest.approx(obs, abs=1e-6)
        assert 0 < float(row['std_t01_smooth_or_features_a01_smooth']) < 0.5
    assert [int(r['votes_t01_smooth_or_features']) for r in table] == counts.sum(1).astype(int).tolist()


def test_an_unreadable_image_is_left_out_and_listed(export: Path, vote_set: Path, tmp_path: Path, capsys):
    import shutil
    data = tmp_path / 'gz2'
    shutil.copytree(vote_set, data)
    broken = _manifest(data, 'test')[0]['file']
    (data / broken).write_bytes(b'not a jpeg')
    out = tmp_path / 'report'
    assert _evaluate(f'local-dir:{export}', str(data), '--split', 'test', '--output', str(out), '--no-plots') == 0
    captured = capsys.readouterr()
    assert '1 of 6 images could not be read' in captured.err and '5 galaxies (1 left out' in captured.out
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['left_out'][0]['id'] == broken and metrics['num_galaxies'] == 5
    assert metrics['metrics']['questions']['t01_smooth_or_features']['galaxies'] == 5


def _refused(capsys, *args: str) -> str:
    assert _evaluate(*args) != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_a_class_model_on_a_vote_set_is_refused(vote_set: Path, tmp_path: Path, capsys):
    model = tmp_path / 'classes.pth'
    torch.save(timm.create_model('test_resnet', num_classes=6).state_dict(), model)
    err = _refused(capsys, 'test_resnet', '--checkpoint', str(model), str(vote_set), '--split', 'test',
                   '--output', str(tmp_path / 'out'))
    assert 'a vote set' in err and 'is a class model (6 outputs' in err and 'train-votes' in err
    assert not (tmp_path / 'out').exists()


def test_a_votes_model_on_class_folders_is_refused(export: Path, tmp_path: Path, capsys):
    from PIL import Image
    for name in ('a', 'b'):
        (tmp_path / 'classes' / name).mkdir(parents=True)
        Image.new('RGB', (16, 16)).save(tmp_path / 'classes' / name / 'x.png')
    err = _refused(capsys, f'local-dir:{export}', str(tmp_path / 'classes'), '--output', str(tmp_path / 'out'))
    assert 'is a votes model (28 answers of the gz2 tree)' in err and 'is not a vote set' in err
    assert not (tmp_path / 'out').exists()


def test_a_split_folder_of_a_vote_set_names_the_vote_set(export: Path, tmp_path: Path, capsys):
    from PIL import Image
    data = tmp_path / 'gz2'
    (data / 'test' / '0_smooth_round').mkdir(parents=True)  # the import's class folders inside a split
    Image.new('RGB', (16, 16)).save(data / 'test' / '0_smooth_round' / 'x.jpg')
    (data / 'dataset.json').write_text(json.dumps({'kind': 'votes', 'tree': 'gz2'}))
    err = _refused(capsys, f'local-dir:{export}', str(data / 'test'), '--output', str(tmp_path / 'out'))
    assert f'give the vote set itself: {data} --split test' in err


def test_a_vote_set_needs_a_split_and_no_tta(export: Path, vote_set: Path, tmp_path: Path, capsys):
    err = _refused(capsys, f'local-dir:{export}', str(vote_set), '--output', str(tmp_path / 'out'))
    assert 'a vote set holds every split' in err
    err = _refused(capsys, f'local-dir:{export}', str(vote_set), '--split', 'test', '--tta', 'd4',
                   '--output', str(tmp_path / 'out'))
    assert '--tta d4' in err
    assert not (tmp_path / 'out').exists()


def test_a_vote_set_of_another_tree_is_refused(export: Path, tmp_path: Path, capsys):
    tree_file = tmp_path / 'decals_like.json'
    tree_file.write_text(json.dumps(DECALS_LIKE_TREE))
    data = write_vote_set(tmp_path / 'decals', tree=str(tree_file), per_split=(2, 2, 2))
    err = _refused(capsys, f'local-dir:{export}', str(data), '--split', 'test', '--output', str(tmp_path / 'out'))
    assert "gz2 tree has 28 answers" in err and "decals-like tree has 7" in err
    assert "model 't01_smooth_or_features_a01_smooth', data 'smooth-or-featured_smooth'" in err
    assert not (tmp_path / 'out').exists()


def test_a_tree_that_does_not_fit_the_head_is_refused(export: Path, vote_set: Path, tmp_path: Path, capsys):
    import shutil
    bad = tmp_path / 'bad_export'
    shutil.copytree(export, bad)
    config = json.loads((bad / 'config.json').read_text())
    config['tree']['questions'] = config['tree']['questions'][:-1]  # 25 answers for a head of 28
    (bad / 'config.json').write_text(json.dumps(config))
    err = _refused(capsys, f'local-dir:{bad}', str(vote_set), '--split', 'test', '--output', str(tmp_path / 'out'))
    assert 'its tree has 25 answers but the model has 28 outputs' in err
    assert not (tmp_path / 'out').exists()


def _as_votes_model(model: torch.nn.Module, tree_name: str = 'gz2') -> torch.nn.Module:
    """``model`` marked as load_votes_model marks an export: the task and the tree in its pretrained_cfg."""
    model.pretrained_cfg = {**model.pretrained_cfg, 'task': 'votes', 'tree': load_tree(tree_name).to_dict()}
    return model


def test_a_16_bit_image_is_read_alike_for_training_and_evaluation(tmp_path: Path):
    """train-votes (its training images, and its validation through predict_votes) and evaluate read a galaxy to
    the same pixels: a 16-bit PNG scaled to 8 bits by its depth, not clipped white."""
    from PIL import Image
    from timm.data import create_transform

    from timm_astro.data.images import read_image
    from timm_astro.data.votes import VotesDataset
    from timm_astro.evaluation.votes import evaluate_votes, predict_votes
    data = write_vote_set(tmp_path / 'gz2', per_split=(2, 1, 2), seed=3)
    manifest = data / 'manifest.csv'
    manifest.write_text(manifest.read_text().replace('test/000.jpg', 'test/000.png'))
    ramp = np.linspace(0, 65535, 16 * 16).round().astype(np.uint16).reshape(16, 16)
    Image.fromarray(ramp).save(data / 'test' / '000.png')
    assert Image.open(data / 'test' / '000.png').mode.startswith('I')

    model = _as_votes_model(constant_votes_model())
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    result = evaluate_votes(model, data, 'test', data_config={'input_size': (3, 16, 16), 'crop_pct': 1.0},
                            progress=False)
    evaluated, seen[:] = torch.cat(seen), []
    validation = VotesDataset(data, 'test', transform=create_transform(**result.data_config, is_training=False))
    predict_votes(model, validation)
    assert torch.equal(torch.cat(seen), evaluated)

    image, _ = VotesDataset(data, 'test')[0]  # what training's augmentation starts from
    expected = np.asarray(read_image(data / 'test' / '000.png'))
    assert np.array_equal(np.asarray(image), expected) and 100 < expected.mean() < 155


def test_a_one_band_votes_model_reads_one_band(vote_set: Path):
    """evaluate reads a votes model's images as the model takes them (reader_for_model: one band for in_chans=1)."""
    from timm_astro.evaluation.votes import evaluate_votes
    model = _as_votes_model(timm.create_model('test_resnet', num_classes=28, in_chans=1))
    result = evaluate_votes(model, vote_set, 'test', progress=False,
                            data_config={'input_size': (1, 16, 16), 'crop_pct': 1.0, 'mean': (0.5,), 'std': (0.5,)})
    assert len(result.item_ids) == 6 and result.data_config['input_size'] == (1, 16, 16)


def test_the_reading_options_reach_a_votes_model(export: Path, vote_set: Path, tmp_path: Path, capsys):
    err = _refused(capsys, f'local-dir:{export}', str(vote_set), '--split', 'test', '--bands', '1,2',
                   '--output', str(tmp_path / 'out'))
    assert '2 FITS bands (1, 2) for a model that takes 3 (in_chans)' in err
    assert not (tmp_path / 'out').exists()
