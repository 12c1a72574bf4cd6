"""Evaluation: metrics against hand-computed values, D4/flip test-time symmetry, `timm-astro evaluate` end to end."""
import csv
import json
import math
import os
from pathlib import Path
from unittest.mock import ANY

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import timm
from timm_astro.commands.evaluate import main
from timm_astro.evaluation import classification_metrics, reliability_bins, tta_views, view_probabilities
from timm_astro.evaluation.evaluate import evaluate, open_labelled_data
from timm_astro.errors import UserError

torch.manual_seed(0)


# ---- metrics ------------------------------------------------------------------------------------------------

def test_metrics_equal_hand_computed_values():
    # 3 classes; class 2 has a single image, predicted wrongly
    probs = torch.tensor([
        [0.7, 0.2, 0.1],  # t0 -> 0
        [0.6, 0.3, 0.1],  # t0 -> 0
        [0.2, 0.5, 0.3],  # t0 -> 1
        [0.1, 0.8, 0.1],  # t1 -> 1
        [0.3, 0.6, 0.1],  # t2 -> 1
    ])
    targets = torch.tensor([0, 0, 0, 1, 2])
    m = classification_metrics(probs, targets, ['a', 'b', 'c'])
    assert m['top1'] == pytest.approx(60.0) and 'top5' not in m  # 3 classes: no top-5
    recall = [2 / 3, 1.0, 0.0]
    precision = [1.0, 1 / 3, 0.0]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(precision, recall)]
    assert m['balanced_accuracy'] == pytest.approx(100 * sum(recall) / 3, abs=1e-3)
    assert m['macro_f1'] == pytest.approx(100 * sum(f1) / 3, abs=1e-3)
    assert [c['support'] for c in m['per_class']] == [3, 1, 1]
    assert [c['precision'] for c in m['per_class']] == pytest.approx([100 * p for p in precision], abs=1e-3)
    expected_loss = -sum(math.log(probs[i, t]) for i, t in enumerate(targets.tolist())) / 5
    assert m['log_loss'] == pytest.approx(expected_loss, abs=1e-5)
    assert m['confusion_matrix'] == [[2, 1, 0], [0, 1, 0], [0, 1, 0]]
    # ECE over 15 bins by hand: bins of width 1/15; confidences 0.7, 0.6, 0.5, 0.8, 0.6
    confidences, correct = [0.7, 0.6, 0.5, 0.8, 0.6], [1, 1, 0, 1, 0]
    bins = {}
    for c, ok in zip(confidences, correct):
        bins.setdefault(min(14, math.ceil(c * 15) - 1), []).append((c, ok))
    ece = sum(len(v) / 5 * abs(np.mean([o for _, o in v]) - np.mean([c for c, _ in v])) for v in bins.values())
    assert m['ece'] == pytest.approx(100 * ece, abs=1e-3)


def test_top5_only_with_more_than_five_classes_and_reliability_bins_give_the_ece():
    probs = torch.randn(400, 8).mul(2).softmax(-1)
    targets = torch.randint(0, 8, (400,))
    m = classification_metrics(probs, targets)
    ranks = (probs.argsort(-1, descending=True)[:, :5] == targets[:, None]).any(-1).float().mean()
    assert m['top5'] == pytest.approx(100 * float(ranks), abs=1e-3)
    bins = reliability_bins(probs, targets)
    assert sum(bins['count']) == 400 and len(bins['edges']) == 16
    gap = sum(n * abs(a - c) for n, a, c in zip(bins['count'], bins['accuracy'], bins['confidence']) if n) / 400
    assert 100 * gap == pytest.approx(m['ece'], abs=1e-3)


def test_metrics_refuse_mismatched_inputs():
    with pytest.raises(ValueError, match='expected probs'):
        classification_metrics(torch.rand(4, 3), torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match='2 label names for 3 classes'):
        classification_metrics(torch.rand(4, 3).softmax(-1), torch.zeros(4, dtype=torch.long), ['a', 'b'])


# ---- test-time symmetry -----------------------------------------------------------------------------------------

def _numpy_views(x: np.ndarray, mode: str):
    """The group elements written independently, with numpy, on the last two axes."""
    rotations = [np.rot90(x, k, axes=(-2, -1)) for k in range(4)]
    if mode == 'flip':
        return [x, x[..., ::-1], x[..., ::-1, :], x[..., ::-1, ::-1]]
    return rotations + [r[..., ::-1] for r in rotations]


@pytest.mark.parametrize('mode, count', [('d4', 8), ('flip', 4), ('none', 1)])
def test_views_are_the_whole_group_exactly(mode, count):
    x = torch.randn(2, 3, 5, 5)
    views = tta_views(x, mode)
    assert len(views) == count and torch.equal(views[0], x)
    expected = _numpy_views(x.numpy(), mode) if mode != 'none' else [x.numpy()]
    for view in expected:  # every element of the group appears, exactly (pixels permuted, nothing interpolated)
        assert any(np.array_equal(v.numpy(), view) for v in views)
    flat = {tuple(v.flatten().tolist()) for v in views}
    assert len(flat) == count, 'the views of a generic image are all different'


class InvariantByConstruction(nn.Module):
    """Global average pool then linear: any permutation of pixels, every D4 element included, leaves it unchanged."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.fc = nn.Linear(3, num_classes)
        self.num_classes = num_classes

    def forward(self, x):
        return self.fc(x.mean((-2, -1)))


class NotInvariant(nn.Module):
    """A linear map of the flattened pixels: rotating the image changes its output."""

    def __init__(self, size: int = 6, num_classes: int = 4):
        super().__init__()
        self.fc = nn.Linear(3 * size * size, num_classes)
        self.num_classes = num_classes

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_tta_averages_exactly_the_views():
    model = NotInvariant().eval()
    x = torch.randn(3, 3, 6, 6)
    probs = view_probabilities(model, x, 'd4')
    assert probs.shape == (8, 3, 4)
    by_hand = torch.stack([model(torch.from_numpy(np.ascontiguousarray(v))).softmax(-1)
                           for v in _numpy_views(x.numpy(), 'd4')])
    assert torch.allclose(probs.mean(0), by_hand.mean(0), atol=1e-6)
    assert not torch.allclose(probs.mean(0), probs[0], atol=1e-4), 'a non-invariant model changes under TTA'


def test_invariant_model_is_unchanged_by_tta():
    model = InvariantByConstruction().eval()
    x = torch.randn(3, 3, 6, 6)
    probs = view_probabilities(model, x, 'd4')
    assert torch.allclose(probs, probs[:1].expand_as(probs), atol=1e-6)


def test_non_square_inputs_run_each_orientation():
    model = InvariantByConstruction().eval()
    probs = view_probabilities(model, torch.randn(2, 3, 4, 6), 'd4')
    assert probs.shape == (8, 2, 4)


# ---- evaluate on data -------------------------------------------------------------------------------------------

CLASSES = ('0_round', '1_edge_on', '2_spiral')


@pytest.fixture(scope='module')
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('folder')
    rng = np.random.default_rng(0)
    for split, count in (('train', 4), ('test', 3)):
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f'{i}.png')
    return root


def test_evaluate_writes_the_report_with_and_without_tta(image_folder, tmp_path, capsys):
    out = tmp_path / 'report'
    code = main(['resnet18', str(image_folder), '--split', 'test', '--num-classes', '3', '--img-size', '16',
                 '--tta', 'd4', '--output', str(out), '--workers', '0', '--no-progress'])
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert 'plain' in printed and 'tta d4' in printed and 'balanced_accuracy' in printed
    assert 'resnet18 without --checkpoint has random weights' in captured.err, 'an untrained model is said'
    report = json.loads((out / 'metrics.json').read_text())
    assert set(report['metrics']) == {'plain', 'tta_d4'} and report['num_images'] == 9
    assert report['label_names'] == list(CLASSES) and report['data_config']['input_size'] == [3, 16, 16]
    for key in ('top1', 'balanced_accuracy', 'macro_f1', 'log_loss', 'ece', 'per_class', 'confusion_matrix'):
        assert key in report['metrics']['plain'] and key in report['metrics']['tta_d4']
    for name in ('confusion_matrix.png', 'reliability.png'):
        with Image.open(out / name) as img:
            assert img.format == 'PNG' and img.width > 200
    with open(out / 'predictions.csv', newline='') as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9 and {r['target_name'] for r in rows} == set(CLASSES)
    assert all(math.isclose(sum(float(r[f'prob_{c}']) for c in CLASSES), 1.0, abs_tol=1e-4) for r in rows)
    top1 = 100 * sum(int(r['correct']) for r in rows) / 9
    assert top1 == pytest.approx(report['metrics']['plain']['top1'], abs=1e-3)
    # the output folder is refused the second time, kept intact
    assert main(['resnet18', str(image_folder), '--split', 'test', '--num-classes', '3', '--output', str(out),
                 '--no-progress']) == 2
    assert 'not empty' in capsys.readouterr().err


def test_evaluate_a_model_with_a_wrong_class_count_is_refused_before_work(image_folder, tmp_path, capsys):
    out = tmp_path / 'never'
    assert main(['resnet18', str(image_folder), '--split', 'test', '--num-classes', '5', '--output', str(out),
                 '--no-progress']) == 2
    err = capsys.readouterr().err
    assert 'predicts 5 classes but the data has 3' in err and not out.exists()


@pytest.mark.parametrize('data, split, expected', [
    ('nowhere', None, 'no such file or folder'),
    ('.', None, 'pass --split'),
    ('.', 'val', 'no such split folder'),
])
def test_data_errors_name_what_was_expected(image_folder, data, split, expected):
    with pytest.raises(UserError, match=expected):
        open_labelled_data(image_folder / data, split)


def test_galaxy10_hdf5_test_split_matches_prepare(tmp_path):
    h5py = pytest.importorskip('h5py', reason="h5py is the optional 'data' extra")
    from timm_astro.commands.galaxy10 import main as galaxy10_main
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), 6).astype(np.uint8)
    with h5py.File(tmp_path / 'g.h5', 'w') as f:
        f['images'] = rng.integers(0, 255, (60, 69, 69, 3), dtype=np.uint8)
        f['ans'] = labels
        f['ra'] = np.arange(60, dtype=np.float64)
    assert galaxy10_main(['prepare', str(tmp_path / 'g.h5'), str(tmp_path / 'out'), '--test-fraction', '0.2',
                          '--no-progress']) == 0
    prepared = sorted(p.name for p in (tmp_path / 'out' / 'test').rglob('*.png'))
    data = open_labelled_data(tmp_path / 'g.h5', 'test', test_fraction=0.2)
    assert sorted(f'{int(i):05d}.png' for i in data.item_ids) == prepared
    assert data.columns['ra'] == [str(float(i)) for i in data.item_ids]
    model = InvariantByConstruction(num_classes=10)
    model.pretrained_cfg = {'input_size': (3, 32, 32), 'mean': (0.5,) * 3, 'std': (0.5,) * 3, 'crop_pct': 1.0,
                            'interpolation': 'bilinear'}
    result = evaluate(model, data, tta='flip', progress=False)
    assert result.metrics['none']['num_images'] == len(prepared) == 10  # round(0.2 x 6) = 1 per class
    assert result.metrics['none']['top1'] == pytest.approx(result.metrics['flip']['top1'])  # invariant model


def test_real_timm_models_score_the_same_with_the_library_and_by_hand(image_folder):
    model = timm.create_model('resnet18', num_classes=3).eval()
    data = open_labelled_data(image_folder / 'test')
    result = evaluate(model, data, data_config={'input_size': (3, 16, 16), 'crop_pct': 1.0}, progress=False)
    from timm.data import create_transform
    transform = create_transform(input_size=(3, 16, 16), crop_pct=1.0, interpolation='bicubic',
                                 mean=model.pretrained_cfg['mean'], std=model.pretrained_cfg['std'])
    with torch.no_grad():
        by_hand = torch.stack([model(transform(Image.open(image_folder / 'test' / i).convert('RGB'))[None])[0]
                               for i in data.item_ids]).softmax(-1)
    assert torch.allclose(result.probs('none'), by_hand, atol=1e-5)


# ---- reading the data: every image scored as itself or reported (issue 29) ----------------------------------------

def _random_png(path: Path, seed: int, size: int = 12) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture()
def folder_with_bad_files(tmp_path) -> Path:
    """test/<class>/: 3 good images per class, a JPEG named .png (good), a truncated PNG, a text file named .png and
    a 16-bit PNG (good)."""
    from image_files import write_16bit_png, write_truncated_png
    root = tmp_path / 'data' / 'test'
    for label, name in enumerate(CLASSES):
        for i in range(3):
            _random_png(root / name / f'{i}.png', 10 * label + i)
    Image.fromarray(np.full((12, 12, 3), 200, dtype=np.uint8)).save(root / CLASSES[0] / 'jpeg.png', format='JPEG')
    write_truncated_png(root / CLASSES[0] / 'cut.png')
    (root / CLASSES[1] / 'text.png').write_text('not an image')
    write_16bit_png(root / CLASSES[2] / 'deep.png')
    return root


LEFT_OUT = {f'{CLASSES[0]}/cut.png': 'truncated', f'{CLASSES[1]}/text.png': 'not an image Pillow can identify'}


def test_unreadable_images_are_left_out_and_listed_never_scored_with_another_image(folder_with_bad_files):
    from image_files import RAMP_16, expected_8bit
    model = timm.create_model('resnet18', num_classes=3).eval()
    data = open_labelled_data(folder_with_bad_files)
    deep = data.item_ids.index(f'{CLASSES[2]}/deep.png')
    image, _ = data.dataset[deep]  # no transform yet: the image as read, scaled by its bit depth
    assert np.array_equal(np.asarray(image)[..., 0], expected_8bit(RAMP_16))
    result = evaluate(model, data, data_config={'input_size': (3, 16, 16), 'crop_pct': 1.0}, progress=False)
    scored = [i for i in data.item_ids if i not in LEFT_OUT]
    assert result.data.item_ids == scored and len(scored) == 11
    assert [i for i, _ in result.left_out] == sorted(LEFT_OUT, key=data.item_ids.index)
    for item, reason in result.left_out:
        assert LEFT_OUT[item] in reason
    assert result.targets.tolist() == [data.targets[data.item_ids.index(i)] for i in scored]
    from timm.data import create_transform
    from timm_astro.data.images import read_image
    transform = create_transform(input_size=(3, 16, 16), crop_pct=1.0, interpolation='bicubic',
                                 mean=model.pretrained_cfg['mean'], std=model.pretrained_cfg['std'])
    with torch.no_grad():
        by_hand = torch.stack([model(transform(read_image(folder_with_bad_files / i))[None])[0]
                               for i in scored]).softmax(-1)
    assert torch.allclose(result.probs('none'), by_hand, atol=1e-5), 'each image is scored as itself'
    assert result.metrics['none']['num_images'] == 11


def test_evaluate_command_counts_and_lists_the_images_left_out(folder_with_bad_files, tmp_path, capsys):
    out = tmp_path / 'report'
    assert main(['resnet18', str(folder_with_bad_files), '--num-classes', '3', '--img-size', '16', '--output',
                 str(out), '--no-progress', '--no-plots']) == 0
    captured = capsys.readouterr()
    assert 'warning: 2 of 13 images could not be read and were left out (listed in metrics.json)' in captured.err
    report = json.loads((out / 'metrics.json').read_text())
    assert report['num_images'] == 11 and report['num_left_out'] == 2
    assert {entry['id'] for entry in report['left_out']} == set(LEFT_OUT)
    assert all(LEFT_OUT[e['id']] in e['reason'] for e in report['left_out'])
    with open(out / 'predictions.csv', newline='') as f:
        assert {r['id'] for r in csv.DictReader(f)}.isdisjoint(LEFT_OUT)


def test_when_no_image_can_be_read_the_error_says_so(tmp_path):
    (tmp_path / 'a').mkdir()
    (tmp_path / 'a' / 'x.png').write_text('text')
    data = open_labelled_data(tmp_path)
    with pytest.raises(UserError, match=r'none of the 1 images .* could be read \(a/x.png: not an image'):
        evaluate(InvariantByConstruction(num_classes=1), data, data_config={'input_size': (3, 8, 8)}, progress=False)


@pytest.mark.skipif(not hasattr(os, 'mkfifo'), reason='named pipes (os.mkfifo) are POSIX only')
def test_links_and_special_files_in_the_data_never_hang_and_are_reported(tmp_path):
    from image_files import fifo_unblocker
    root = tmp_path / 'data'
    for label, name in enumerate(CLASSES):
        for i in range(2):
            _random_png(root / name / f'{i}.png', 10 * label + i)
    outside = _random_png(tmp_path / 'elsewhere' / 'far.png', 99)
    (root / CLASSES[0] / 'far.png').symlink_to(outside)  # followed: a regular file
    (root / CLASSES[0] / 'near.png').symlink_to(root / CLASSES[1] / '0.png')  # followed, labelled by its folder
    (root / CLASSES[1] / 'dangling.png').symlink_to(root / 'gone.png')
    (root / CLASSES[1] / 'self.png').symlink_to(root / CLASSES[1] / 'self.png')
    os.mkfifo(root / CLASSES[2] / 'pipe.png')
    data = open_labelled_data(root)
    with fifo_unblocker(root / CLASSES[2] / 'pipe.png'):
        result = evaluate(InvariantByConstruction(num_classes=3), data, data_config={'input_size': (3, 8, 8)},
                          progress=False)
    assert dict(result.left_out) == {
        f'{CLASSES[1]}/dangling.png': 'a symbolic link to a missing file', f'{CLASSES[1]}/self.png':
            'a symbolic link loop', f'{CLASSES[2]}/pipe.png': 'a named pipe (FIFO), not a regular file: not opened'}
    assert sorted(result.data.item_ids) == sorted([f'{n}/{i}.png' for n in CLASSES for i in range(2)]
                                                  + [f'{CLASSES[0]}/far.png', f'{CLASSES[0]}/near.png'])


def test_a_folder_loop_in_the_data_is_refused_not_walked(tmp_path):
    root = tmp_path / 'data'
    _random_png(root / 'a' / '0.png', 0)
    (root / 'a' / 'up').symlink_to(root, target_is_directory=True)
    with pytest.raises(UserError, match='a/up: a symbolic link to a folder above it'):
        open_labelled_data(root)


def test_a_decompression_bomb_is_left_out_with_its_reason(tmp_path):
    from image_files import write_png_header
    root = tmp_path / 'data'
    _random_png(root / 'a' / '0.png', 0)
    _random_png(root / 'b' / '0.png', 1)
    write_png_header(root / 'a' / 'bomb.png', 20_000, 20_000)
    result = evaluate(InvariantByConstruction(num_classes=2), open_labelled_data(root),
                      data_config={'input_size': (3, 8, 8)}, progress=False)
    assert result.data.item_ids == ['a/0.png', 'b/0.png'] and result.left_out == [('a/bomb.png', ANY)]
    assert 'decompression bomb' in result.left_out[0][1]


# ---- which images are one split's, and what their classes are ---------------------------------------------------

def test_split_folders_need_split_whatever_lies_beside_them(tmp_path):
    from timm_astro.commands.import_images import main as import_main
    from timm_astro.data.galaxy10 import GALAXY10_DECALS_CLASSES
    from timm_astro.data.synthetic_galaxies import write_image_folder
    demo = tmp_path / 'demo_data'
    write_image_folder(demo, 1, image_size=32)  # the demo's data/: train/, validation/ and the output marker
    with pytest.raises(UserError, match='holds the splits train, validation: pass --split'):
        open_labelled_data(demo)
    source = tmp_path / 'sample' / 'galaxy_type_dataset'  # the galaxy10-decals-sample layout
    for label, name in enumerate(GALAXY10_DECALS_CLASSES):
        for i in range(10):
            path = source / name.replace(' ', '_').replace('-', '_') / f'image_{10 * label + i}_{label}.jpg'
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((8, 8, 3), 10 * label + i, dtype=np.uint8)).save(path)
    assert import_main(['galaxy10-decals-sample', str(source), str(tmp_path / 'imported')]) == 0
    assert {p.name for p in (tmp_path / 'imported').iterdir() if p.is_file()} >= {'manifest.csv', 'dataset.json'}
    with pytest.raises(UserError, match='holds the splits train, validation, test: pass --split'):
        open_labelled_data(tmp_path / 'imported')
    assert len(open_labelled_data(tmp_path / 'imported', 'test').item_ids) == 10


def test_a_split_lacking_a_class_keeps_the_class_indices_of_its_siblings(tmp_path):
    for split, names in (('train', CLASSES), ('validation', (CLASSES[0], CLASSES[2]))):
        for name in names:
            _random_png(tmp_path / split / name / '0.png', 0)
    (tmp_path / 'validation' / CLASSES[1]).mkdir()  # an empty class folder counts as the class it names
    for data in (open_labelled_data(tmp_path, 'validation'), open_labelled_data(tmp_path / 'validation')):
        assert data.class_names == list(CLASSES) and data.targets == [0, 2]
    result = evaluate(InvariantByConstruction(num_classes=3), open_labelled_data(tmp_path, 'validation'),
                      data_config={'input_size': (3, 8, 8)}, progress=False)
    assert any(f'no images of 1 class ({CLASSES[1]})' in w for w in result.warnings)


@pytest.mark.parametrize('layout, expected', [
    ('empty', 'no images found; expected'),
    ('loose', 'lie directly in .* not in class folders'),
])
def test_data_without_class_folders_is_one_clear_line(tmp_path, layout, expected):
    root = tmp_path / 'data'
    root.mkdir()
    if layout == 'loose':
        _random_png(root / '0.png', 0)
        _random_png(root / '1.png', 1)
    with pytest.raises(UserError, match=expected):
        open_labelled_data(root)


def test_output_inside_the_data_folder_is_refused(image_folder, tmp_path, capsys):
    out = image_folder / 'test' / 'report'
    assert main(['resnet18', str(image_folder / 'test'), '--num-classes', '3', '--output', str(out),
                 '--no-progress']) == 2
    err = capsys.readouterr().err
    assert err.count('\n') == 1 and 'inside the data folder' in err and not out.exists()


def test_a_folder_lacking_one_of_the_models_classes_is_told_what_it_lacks(tmp_path):
    for name in (CLASSES[0], CLASSES[2]):
        _random_png(tmp_path / 'validation' / name / '0.png', 0)
    model = InvariantByConstruction(num_classes=3)
    model.pretrained_cfg = {'label_names': ['round', 'edge on', 'spiral']}
    with pytest.raises(UserError, match='predicts 3 classes but the data has 2 .*lacks the classes edge on: pass the '
                                        'folder that holds the splits with --split'):
        evaluate(model, open_labelled_data(tmp_path / 'validation'), progress=False)
