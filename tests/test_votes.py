"""Galaxy Zoo votes: the decision tree as data, the Dirichlet-multinomial loss (against scipy and a direct formula),
the vote-set reader and its refusals, and the fraction metrics."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import gammaln
from scipy.stats import beta, dirichlet_multinomial

from timm_astro.data.decision_tree import DecisionTree, load_tree, tree_from_dict
from timm_astro.data.votes import VotesDataset, is_vote_set, read_vote_set_info
from timm_astro.errors import UserError
from timm_astro.evaluation.votes import (calibration_bins, expected_fractions, fraction_std, observed_fractions,
                                         plot_vote_calibration, vote_metrics)
from timm_astro.losses import DirichletMultinomialLoss, dirichlet_multinomial_nll, to_concentrations

from votes_helpers import DECALS_LIKE_TREE, write_vote_set

# the vote-count columns of the Galaxy Zoo 2 table (Willett et al. 2013), t01-t09, as the import writes them
GZ2_COLUMNS = """
t01_smooth_or_features_a01_smooth_count t01_smooth_or_features_a02_features_or_disk_count
t01_smooth_or_features_a03_star_or_artifact_count t02_edgeon_a04_yes_count t02_edgeon_a05_no_count
t03_bar_a06_bar_count t03_bar_a07_no_bar_count t04_spiral_a08_spiral_count t04_spiral_a09_no_spiral_count
t05_bulge_prominence_a10_no_bulge_count t05_bulge_prominence_a11_just_noticeable_count
t05_bulge_prominence_a12_obvious_count t05_bulge_prominence_a13_dominant_count t06_odd_a14_yes_count
t06_odd_a15_no_count t07_rounded_a16_completely_round_count t07_rounded_a17_in_between_count
t07_rounded_a18_cigar_shaped_count t08_odd_feature_a19_ring_count t08_odd_feature_a20_lens_or_arc_count
t08_odd_feature_a21_disturbed_count t08_odd_feature_a22_irregular_count t08_odd_feature_a23_other_count
t08_odd_feature_a24_merger_count t08_odd_feature_a38_dust_lane_count t09_bulge_shape_a25_rounded_count
t09_bulge_shape_a26_boxy_count t09_bulge_shape_a27_no_bulge_count""".split()


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert '\n' not in message
    return message


# ---------------------------------------------------------------------------------------------------------------
# the tree


def test_gz2_tree_has_the_gz2_columns_and_parents():
    tree = load_tree('gz2')
    assert tree.columns == GZ2_COLUMNS and tree.n_answers == 28 and len(tree.questions) == 9
    parents = {q.name.split('_')[0]: q.parent for q in tree.questions}
    assert parents == {
        't01': None, 't02': 't01_smooth_or_features_a02_features_or_disk', 't03': 't02_edgeon_a05_no',
        't04': 't02_edgeon_a05_no', 't05': 't02_edgeon_a05_no', 't06': None,
        't07': 't01_smooth_or_features_a01_smooth', 't08': 't06_odd_a14_yes', 't09': 't02_edgeon_a04_yes'}
    # the slices cover the outputs in order, one question after another
    assert [tree.columns[s] for s in tree.slices][4] == GZ2_COLUMNS[9:13]
    assert tree.question_index[:5] == (0, 0, 0, 1, 1) and tree.question_index[-1] == 8
    assert all(q.text.endswith('?') for q in tree.questions)
    assert tree_from_dict(tree.to_dict()) == tree  # what config.json and checkpoints record reads back the same


def test_a_users_tree_file_replaces_gz2_without_code(tmp_path: Path):
    path = tmp_path / 'decals_like.json'
    path.write_text(json.dumps(DECALS_LIKE_TREE))
    tree = load_tree(path)
    assert tree.name == 'decals-like' and tree.n_answers == 7
    assert tree.question_index == (0, 0, 0, 1, 1, 2, 2)
    assert tree.questions[2].parent == 'disk-edge-on_no'
    assert load_tree(str(path)) == tree and load_tree(tree) is tree
    # and the rest of the pipeline takes it as it takes GZ2's: the loss and the reader
    loss = DirichletMultinomialLoss(tree)
    assert loss(torch.zeros(2, 7), torch.tensor([[3., 5, 0, 1, 4, 2, 2]] * 2)).item() > 0
    data = write_vote_set(tmp_path / 'votes', tree=str(path), per_split=(3, 2, 0))
    dataset = VotesDataset(data, 'validation')
    assert dataset.tree == tree and dataset[0][1].shape == (7,)


def _bad(**changes):
    tree = json.loads(json.dumps(DECALS_LIKE_TREE))
    for where, value in changes.items():
        target, key = tree, where.split('.')
        for part in key[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(key[-1]) if key[-1].isdigit() else key[-1]] = value
    return tree


@pytest.mark.parametrize('tree, expected', [
    (_bad(**{'questions.1.parent': 'smooth-or-featured_spiral'}),
     "the parent of question 'disk-edge-on' is 'smooth-or-featured_spiral', which is no answer of this tree"),
    (_bad(**{'questions.2.name': 'disk-edge-on'}), 'duplicate question names: disk-edge-on'),
    (_bad(**{'questions.2.answers.0.name': 'disk-edge-on_yes'}), 'duplicate answer names: disk-edge-on_yes'),
    (_bad(**{'questions.2.answers.0.column': 'disk-edge-on_yes'}), 'duplicate answer columns: disk-edge-on_yes'),
    (_bad(**{'questions.1.answers': [{'name': 'only', 'column': 'only'}]}),
     "question 'disk-edge-on' has 1 answers; expected a list of at least 2"),
    (_bad(**{'questions.0.parent': 'has-spiral-arms_no'}),
     r'the questions form a cycle \(smooth-or-featured -> has-spiral-arms -> disk-edge-on -> smooth-or-featured'),
    (_bad(**{'questions.1.parent': 'disk-edge-on_no'}), r'cycle \(disk-edge-on -> disk-edge-on'),
    (_bad(**{'questions.1.parent_answer': 'x'}), 'question 2 has unknown keys parent_answer'),
    (_bad(**{'questions': []}), 'expected a non-empty list of questions'),
    (_bad(**{'questions.0.answers.1.column': ''}), 'expected a non-empty string'),
    ([1, 2], 'the tree is a list; expected a JSON object'),
])
def test_bad_trees_are_refused_in_one_line(tmp_path: Path, tree, expected):
    path = tmp_path / 'tree.json'
    path.write_text(json.dumps(tree))
    with pytest.raises(UserError, match=expected) as excinfo:
        load_tree(path)
    assert _one_line(excinfo).startswith(str(path))


def test_unknown_tree_names_and_unreadable_files(tmp_path: Path):
    with pytest.raises(UserError, match=r"tree 'gz3': no such file; expected a shipped tree \(gz2\)") as excinfo:
        load_tree('gz3')
    _one_line(excinfo)
    (tmp_path / 'broken.json').write_text('{"name": ')
    with pytest.raises(UserError, match='broken.json: not valid JSON'):
        load_tree(tmp_path / 'broken.json')


# ---------------------------------------------------------------------------------------------------------------
# the loss


def _scipy_nll(concentrations: np.ndarray, counts: np.ndarray, tree: DecisionTree) -> np.ndarray:
    """scipy's Dirichlet-multinomial, galaxy by galaxy and question by question (0 where nobody answered)."""
    out = np.zeros((len(counts), len(tree.questions)))
    for i in range(len(counts)):
        for j, columns in enumerate(tree.slices):
            n = counts[i, columns]
            if n.sum() > 0:
                out[i, j] = -dirichlet_multinomial.logpmf(n, concentrations[i, columns], n.sum())
    return out


def _random_counts(rng: np.random.Generator, shape, high: int, zero_question=None, tree=None) -> np.ndarray:
    counts = rng.integers(0, high, shape).astype(np.float64)
    if zero_question is not None:
        counts[:, tree.slices[zero_question]] = 0
    return counts


def test_loss_equals_scipy_dirichlet_multinomial():
    tree = load_tree('gz2')
    rng = np.random.default_rng(0)
    concentrations = rng.uniform(0.2, 120.0, (16, tree.n_answers))
    counts = _random_counts(rng, (16, tree.n_answers), 40)
    counts[3, tree.slices[7]] = 0  # t08 asked of nobody in this galaxy
    nll = dirichlet_multinomial_nll(torch.from_numpy(concentrations), torch.from_numpy(counts),
                                    torch.tensor(tree.question_index), len(tree.questions)).numpy()
    np.testing.assert_allclose(nll, _scipy_nll(concentrations, counts, tree), rtol=1e-10, atol=1e-10)


def test_loss_equals_the_direct_gammaln_formula():
    tree = load_tree('gz2')
    rng = np.random.default_rng(1)
    outputs = rng.normal(0, 3, (8, tree.n_answers))
    counts = _random_counts(rng, (8, tree.n_answers), 30)
    alpha = 1 + 99 / (1 + np.exp(-outputs))  # the documented map, written independently
    expected = np.zeros(8)
    for columns in tree.slices:
        n, a = counts[:, columns], alpha[:, columns]
        total, total_alpha = n.sum(1), a.sum(1)
        log_p = (gammaln(total + 1) + gammaln(total_alpha) - gammaln(total + total_alpha)
                 + (gammaln(n + a) - gammaln(a) - gammaln(n + 1)).sum(1))
        expected -= log_p
    loss = DirichletMultinomialLoss(tree)(torch.from_numpy(outputs), torch.from_numpy(counts))
    assert loss.item() == pytest.approx(expected.mean(), rel=1e-10)


def test_a_question_nobody_answered_contributes_exactly_nothing():
    tree = load_tree('gz2')
    loss_fn = DirichletMultinomialLoss(tree)
    rng = np.random.default_rng(2)
    outputs = torch.tensor(rng.normal(0, 2, (4, tree.n_answers)), dtype=torch.float32, requires_grad=True)
    counts = torch.tensor(_random_counts(rng, (4, tree.n_answers), 25, zero_question=2, tree=tree),
                          dtype=torch.float32)
    per_question = loss_fn.per_question(outputs, counts)
    assert torch.all(per_question[:, 2] == 0) and torch.all(per_question[:, [0, 1, 3]] > 0)
    per_question.sum().backward()
    assert torch.all(outputs.grad[:, tree.slices[2]] == 0), 'an unasked question must not pull its outputs'
    assert torch.all(outputs.grad[:, tree.slices[0]] != 0)
    # ... so changing the outputs of the unasked question changes nothing
    moved = outputs.detach().clone()
    moved[:, tree.slices[2]] += 5
    assert torch.equal(loss_fn(moved, counts), loss_fn(outputs.detach(), counts))


def test_large_counts_match_scipy_and_gradients_stay_finite():
    tree = load_tree('gz2')
    rng = np.random.default_rng(3)
    concentrations = rng.uniform(1.0, 100.0, (4, tree.n_answers))
    counts = _random_counts(rng, (4, tree.n_answers), 200_000)
    nll = dirichlet_multinomial_nll(torch.from_numpy(concentrations), torch.from_numpy(counts),
                                    torch.tensor(tree.question_index), len(tree.questions)).numpy()
    np.testing.assert_allclose(nll, _scipy_nll(concentrations, counts, tree), rtol=1e-9)
    # float32, saturated outputs, huge and zero counts: finite loss and gradients
    outputs = torch.tensor(rng.choice([-80.0, 0.0, 80.0], (4, tree.n_answers)), dtype=torch.float32,
                           requires_grad=True)
    big = torch.tensor(counts, dtype=torch.float32)
    big[0] = 0
    loss = DirichletMultinomialLoss(tree)(outputs, big)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(outputs.grad).all()


def test_concentrations_are_bounded_and_the_loss_prefers_the_observed_fractions():
    assert to_concentrations(torch.tensor([-1e4, 0.0, 1e4])).tolist() == [1.0, 50.5, 100.0]
    tree = load_tree('gz2')
    loss_fn = DirichletMultinomialLoss(tree)
    counts = torch.zeros(1, tree.n_answers)
    counts[0, :3] = torch.tensor([30., 2., 0.])  # t01 only: clearly smooth
    towards_smooth, towards_disk = torch.zeros(1, tree.n_answers), torch.zeros(1, tree.n_answers)
    towards_smooth[0, :3] = torch.tensor([4., -2., -4.])
    towards_disk[0, :3] = torch.tensor([-2., 4., -4.])
    assert loss_fn(towards_smooth, counts) < loss_fn(towards_disk, counts)
    with pytest.raises(ValueError, match=r'expected outputs and counts of shape \(batch, 28\)'):
        loss_fn(torch.zeros(2, 10), torch.zeros(2, 10))


def test_the_concentration_map_is_written_from_the_bounds(tmp_path: Path):
    """The text that config.json and the model card give for the map is the one to_concentrations applies."""
    import re

    import timm
    from timm_astro import losses, votes_model
    found = re.fullmatch(r'(\S+) \+ (\S+) \* sigmoid\(output\)', losses.CONCENTRATION_MAP)
    assert found, losses.CONCENTRATION_MAP
    outputs = torch.linspace(-8, 8, 17)
    low, scale = float(found.group(1)), float(found.group(2))
    assert torch.allclose(low + scale * torch.sigmoid(outputs), to_concentrations(outputs))
    assert votes_model.CONCENTRATION_MAP == losses.CONCENTRATION_MAP
    export = votes_model.export_votes_model(timm.create_model('test_resnet', num_classes=28), tmp_path / 'export',
                                            load_tree('gz2'))
    assert f'`{losses.CONCENTRATION_MAP}` is a Dirichlet concentration' in (export / 'README.md').read_text()


def test_one_loss_per_galaxy_for_training_evaluation_and_benchmarks():
    """mean_galaxy_nll (concentrations in) is the training loss (raw outputs in): the NLL summed over questions,
    averaged over galaxies."""
    from timm_astro.losses import mean_galaxy_nll
    tree = load_tree('gz2')
    rng = np.random.default_rng(1)
    outputs = torch.from_numpy(rng.normal(0, 2, (5, tree.n_answers)))
    counts = torch.from_numpy(rng.integers(0, 20, (5, tree.n_answers)).astype(np.float64))
    expected = dirichlet_multinomial_nll(to_concentrations(outputs), counts, torch.tensor(tree.question_index),
                                         len(tree.questions)).sum(1).mean()
    assert mean_galaxy_nll(to_concentrations(outputs), counts, tree) == pytest.approx(float(expected), rel=1e-12)
    assert mean_galaxy_nll(to_concentrations(outputs), counts, tree) == \
        pytest.approx(float(DirichletMultinomialLoss(tree)(outputs, counts)), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------------
# the vote-set reader


@pytest.fixture(scope='module')
def vote_set(tmp_path_factory) -> Path:
    return write_vote_set(tmp_path_factory.mktemp('votes') / 'gz2', per_split=(5, 3, 2))


def test_reader_yields_images_and_counts_in_the_trees_order(vote_set: Path):
    assert is_vote_set(vote_set) and read_vote_set_info(vote_set)['tree'] == 'gz2'
    dataset = VotesDataset(vote_set, 'validation')
    assert len(dataset) == 3 and dataset.tree == load_tree('gz2')
    with open(vote_set / 'manifest.csv', newline='') as f:
        rows = [r for r in csv.DictReader(f) if r['split'] == 'validation']
    image, counts = dataset[1]
    assert image.mode == 'RGB' and image.size == (16, 16)
    assert counts.dtype == torch.float32 and counts.tolist() == [float(rows[1][c]) for c in GZ2_COLUMNS]
    assert dataset.filename(1) == rows[1]['file']


def _edit_manifest(folder: Path, edit) -> None:
    with open(folder / 'manifest.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    rows, header = edit(rows, header)
    with open(folder / 'manifest.csv', 'w', newline='') as f:
        writer = csv.DictWriter(f, header, lineterminator='\n')
        writer.writeheader()
        writer.writerows(rows)


def _set(index, column, value):
    def edit(rows, header):
        rows[index][column] = value
        return rows, header
    return edit


@pytest.mark.parametrize('edit, expected', [
    (_set(1, 't03_bar_a06_bar_count', '-2'),
     r"manifest.csv: line 3 \(train/001.jpg\): t03_bar_a06_bar_count is '-2'; expected a whole number of votes"),
    (_set(0, 't06_odd_a14_yes_count', '2.5'),
     r"line 2 \(train/000.jpg\): t06_odd_a14_yes_count is '2.5'; expected a whole number"),
    (_set(2, 't06_odd_a14_yes_count', ''), r"line 4 \(train/002.jpg\): t06_odd_a14_yes_count is ''"),
    (lambda rows, header: ([{k: v for k, v in r.items() if k != 't09_bulge_shape_a26_boxy_count'} for r in rows],
                           [h for h in header if h != 't09_bulge_shape_a26_boxy_count']),
     'no column t09_bulge_shape_a26_boxy_count; the gz2 tree needs file, split and a vote-count column per answer'),
])
def test_bad_counts_and_missing_columns_are_refused_naming_them(tmp_path: Path, edit, expected):
    folder = write_vote_set(tmp_path / 'votes', per_split=(4, 2, 0))
    _edit_manifest(folder, edit)
    with pytest.raises(UserError, match=expected) as excinfo:
        VotesDataset(folder, 'train')
    _one_line(excinfo)


def test_folders_that_are_not_vote_sets_are_refused(tmp_path: Path, vote_set: Path):
    classes = tmp_path / 'classes'
    classes.mkdir()
    (classes / 'dataset.json').write_text(json.dumps({'created_by': 'timm-astro import', 'splits': {'train': 4}}))
    assert not is_vote_set(classes) and not is_vote_set(tmp_path / 'nowhere') and is_vote_set(vote_set)
    with pytest.raises(UserError, match=r'not a vote set \(its dataset.json has no "kind"') as excinfo:
        VotesDataset(classes, 'train')
    _one_line(excinfo)
    with pytest.raises(UserError, match='no readable dataset.json'):
        VotesDataset(tmp_path, 'train')
    with pytest.raises(UserError, match="no galaxies in the 'test' split"):
        VotesDataset(write_vote_set(tmp_path / 'no_test', per_split=(2, 1, 0)), 'test')
    with pytest.raises(UserError, match="split 'valid': expected one of train, validation, test"):
        VotesDataset(vote_set, 'valid')


def test_a_missing_image_is_named(tmp_path: Path):
    folder = write_vote_set(tmp_path / 'votes', per_split=(3, 1, 0))
    (folder / 'train' / '001.jpg').unlink()
    with pytest.raises(UserError, match=r'train/001.jpg: no such file \(named in .*manifest.csv; 1 of the 3'):
        VotesDataset(folder, 'train')


# ---------------------------------------------------------------------------------------------------------------
# fractions and metrics


def test_expected_fractions_and_spread_are_the_dirichlets():
    tree = load_tree('gz2')
    alpha = torch.tensor(np.random.default_rng(4).uniform(1, 100, (3, tree.n_answers)))
    fractions = expected_fractions(alpha, tree)
    for columns in tree.slices:
        torch.testing.assert_close(fractions[:, columns].sum(1), torch.ones(3, dtype=torch.float64))
    a, total = alpha[1, 5].item(), alpha[1, 5:7].sum().item()  # t03: two answers
    assert fractions[1, 5].item() == pytest.approx(a / total)
    assert fraction_std(alpha, tree)[1, 5].item() == pytest.approx(beta(a, total - a).std())
    with pytest.raises(UserError, match=r'concentrations have shape \(3, 5\); expected \(galaxies, 28\)'):
        expected_fractions(alpha[:, :5], tree)


def test_vote_metrics_by_hand(tmp_path: Path):
    tree = tree_from_dict(DECALS_LIKE_TREE)
    counts = np.array([[8, 2, 0, 0, 2, 0, 0],    # smooth-ish; the edge-on question not reached, spiral not either
                       [1, 9, 0, 1, 8, 8, 0],    # disk: agreed on t01 (0.9), edge-on no (8/9), spiral yes (1.0)
                       [5, 5, 0, 2, 3, 1, 2]])   # split votes everywhere
    counts[0, 3:5] = 0
    predicted = np.array([[0.7, 0.2, 0.1, 0.5, 0.5, 0.5, 0.5],
                          [0.2, 0.7, 0.1, 0.3, 0.7, 0.4, 0.6],
                          [0.5, 0.5, 0.0, 0.4, 0.6, 0.5, 0.5]])
    metrics = vote_metrics(predicted, counts, tree)
    first = metrics['questions']['smooth-or-featured']
    errors = np.abs(predicted[:, :3] - counts[:, :3] / counts[:, :3].sum(1, keepdims=True))
    assert first['galaxies'] == 3 and first['mae'] == pytest.approx(errors.mean())
    assert first['agreed_galaxies'] == 1 and first['agreed_accuracy'] == 100.0  # galaxy 2: 0.9 disk, predicted disk
    edge = metrics['questions']['disk-edge-on']
    assert edge['galaxies'] == 2  # the first galaxy was never asked
    assert edge['mae'] == pytest.approx((abs(0.3 - 1 / 9) * 2 + 0.0) / 4)  # the third: predicted as observed
    spiral = metrics['questions']['has-spiral-arms']
    assert spiral['agreed_galaxies'] == 1 and spiral['agreed_accuracy'] == 0.0  # all 8 said yes; predicted no
    assert metrics['mean_mae'] == pytest.approx(np.mean([first['mae'], edge['mae'], spiral['mae']]))
    assert vote_metrics(predicted, counts, tree, min_votes=9)['questions']['disk-edge-on']['galaxies'] == 1
    assert vote_metrics(predicted, counts, tree, min_votes=100)['questions']['disk-edge-on']['mae'] is None
    nan = observed_fractions(counts, tree)
    assert np.isnan(nan[0, 3:5]).all() and nan[1, 5] == 1.0


def test_calibration_bins_and_plot(tmp_path: Path):
    binned = calibration_bins(np.array([0.05, 0.08, 0.55, 0.95, 1.0, 0.5]),
                              np.array([0.0, 0.2, 0.4, 1.0, 0.8, np.nan]), bins=10)
    assert binned['count'].tolist() == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    assert binned['mean_predicted'][0] == pytest.approx(0.065) and binned['mean_observed'][0] == pytest.approx(0.1)
    assert np.isnan(binned['mean_observed'][1]) and binned['mean_observed'][9] == pytest.approx(0.9)
    pytest.importorskip('matplotlib', reason='the calibration plot needs matplotlib')
    tree = load_tree('gz2')
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 20, (30, tree.n_answers))
    path = tmp_path / 'calibration.png'
    plot_vote_calibration(rng.uniform(0, 1, (30, tree.n_answers)), counts, tree, path)
    assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_a_votes_export_needs_one_output_per_answer(tmp_path: Path):
    import timm
    from timm_astro.votes_model import export_votes_model, is_votes_model
    model = timm.create_model('astroformer_small', num_classes=10)
    assert not is_votes_model(model)
    with pytest.raises(UserError, match='the model has 10 outputs but the gz2 tree has 28 answers'):
        export_votes_model(model, tmp_path / 'export', load_tree('gz2'))
    assert not any(tmp_path.iterdir()), 'nothing is written for a refused export'
