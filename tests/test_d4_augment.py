"""D4 training augmentation: the 8 views, drawn uniformly, reachable from train.py through device_modules."""
import importlib

import numpy as np
import pytest
import torch
from PIL import Image

from timm_astro.errors import UserError


@pytest.fixture
def d4():
    module = importlib.import_module('timm_astro.data.d4_augment')
    module.install()
    yield module
    module.uninstall()


def _square_image(size=5):
    return Image.fromarray(np.arange(size * size * 3, dtype=np.uint8).reshape(size, size, 3))


def _all_views(array):
    """The 8 symmetries of a square array, computed independently with numpy."""
    views = []
    for flipped in (array, array[:, ::-1]):
        for k in range(4):
            views.append(np.rot90(flipped, k))
    return views


def test_the_eight_views_are_d4_and_equally_likely(d4):
    scipy_stats = pytest.importorskip('scipy.stats', reason='scipy checks the uniformity (dev extra)')
    image = _square_image()
    expected = [np.ascontiguousarray(v).tobytes() for v in _all_views(np.asarray(image))]
    assert len(set(expected)) == 8
    torch.manual_seed(0)
    counts = {}
    transform = d4.RandomD4()
    for _ in range(8000):
        view = np.asarray(transform(image)).tobytes()
        counts[view] = counts.get(view, 0) + 1
    assert set(counts) == set(expected)  # exactly the 8 symmetries, each reached
    # uniform: a chi-square test at the 0.1% level (fails when one view is missing, doubled or halved)
    assert scipy_stats.chisquare(list(counts.values())).pvalue > 1e-3
    assert min(counts.values()) > 850


def test_tensor_views_match_the_pil_views(d4):
    image = _square_image(4)
    tensor = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    for index, transpose in enumerate(d4.D4_TRANSPOSES):
        pil = np.asarray(image if transpose is None else image.transpose(transpose))
        assert np.array_equal(d4._tensor_view(tensor, index).permute(1, 2, 0).numpy(), pil), index


def test_timm_training_transform_gets_it_and_evaluation_does_not(d4):
    from timm.data import create_transform
    train = create_transform(32, is_training=True)
    names = [type(t).__name__ for t in train.transforms]
    assert names.index('RandomD4') == names.index('MaybeToTensor') - 1
    assert 'RandomD4' not in [type(t).__name__ for t in create_transform(32).transforms]
    out = train(_square_image(40))
    assert out.shape == (3, 32, 32)
    d4.install()  # idempotent: still one
    assert [type(t).__name__ for t in create_transform(32, is_training=True).transforms].count('RandomD4') == 1
    d4.uninstall()
    assert 'RandomD4' not in [type(t).__name__ for t in create_transform(32, is_training=True).transforms]


def test_non_square_crop_refused(d4):
    from timm.data import create_transform
    with pytest.raises(UserError, match=r'needs a square training crop.*\(32, 48\)'):
        create_transform((3, 32, 48), is_training=True)


def test_project_trainer_uses_it(d4, tmp_path):
    """timm_astro.training builds its loader with timm's create_loader, so the installed transform applies there."""
    from timm.data import create_loader
    from timm.data.dataset import ImageDataset
    folder = tmp_path / 'c0'
    folder.mkdir()
    _square_image(20).save(folder / 'a.png')
    loader = create_loader(ImageDataset(str(tmp_path)), input_size=(3, 16, 16), batch_size=1, is_training=True,
                           use_prefetcher=False, num_workers=0)
    assert 'RandomD4' in [type(t).__name__ for t in loader.dataset.transform.transforms]


@pytest.mark.parametrize('modules,expected', [(['timm_astro', 'timm_astro.data.d4_augment'], True),
                                              (['timm_astro'], False), (None, False)])
def test_a_recipes_device_modules_turn_it_on_for_the_in_process_trainer(d4, tmp_path, monkeypatch, modules,
                                                                         expected):
    """timm_astro.training honours a recipe's device_modules as train.py does: with d4_augment listed its loader
    has RandomD4, without it not (even after an earlier run installed it), and the install state is restored."""
    import timm.data
    from timm.data.dataset import ImageDataset
    from timm_astro.training import train_args, train_classifier
    folder = tmp_path / 'c0'
    folder.mkdir()
    for i in range(2):
        _square_image(20).save(folder / f'{i}.png')
    built = []

    class Built(Exception):
        pass

    def create_loader(*args, **kwargs):
        loader = original(*args, **kwargs)
        built.append([type(t).__name__ for t in loader.dataset.transform.transforms])
        raise Built  # the loader is what this test is about: no need to train

    original = timm.data.create_loader
    monkeypatch.setattr(timm.data, 'create_loader', create_loader)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, 1))
    with pytest.raises(Built):
        train_classifier(model, ImageDataset(str(tmp_path)), train_args({'device_modules': modules, 'batch_size': 1}),
                         data_config={'input_size': (3, 16, 16), 'mean': (0.5,) * 3, 'std': (0.5,) * 3},
                         num_classes=1)
    assert ('RandomD4' in built[0]) == expected
    assert d4.is_installed()  # the fixture installed it before; restored after the run
    d4.uninstall()  # a process where nothing turned it on: a recipe's run leaves it off afterwards
    built.clear()
    with pytest.raises(Built):
        train_classifier(model, ImageDataset(str(tmp_path)), train_args({'device_modules': modules, 'batch_size': 1}),
                         data_config={'input_size': (3, 16, 16), 'mean': (0.5,) * 3, 'std': (0.5,) * 3},
                         num_classes=1)
    assert ('RandomD4' in built[0]) == expected and not d4.is_installed()
