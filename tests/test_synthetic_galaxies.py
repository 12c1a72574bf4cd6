"""The synthetic galaxy generator: deterministic, ImageFolder layout timm reads, classes that differ."""
import hashlib

import numpy as np
import pytest
import timm.data

from timm_astro.data.synthetic_galaxies import CLASS_NAMES, LABEL_NAMES, image_rng, render_galaxy, write_image_folder


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*.png'))}


def _shape_and_colour(image):
    """Elongation (ratio of the principal second moments) and (B - R) / total of the brightest 10% of pixels."""
    pixels = image.astype(float)
    luminance = pixels.mean(-1)
    bright = luminance >= np.quantile(luminance, 0.9)  # the galaxy, not the sky
    ys, xs = np.nonzero(bright)
    low, high = np.linalg.eigvalsh(np.cov(np.stack([ys, xs]), aweights=luminance[bright]))
    colour = (pixels[bright, 2].sum() - pixels[bright, 0].sum()) / pixels[bright].sum()
    return high / low, colour


def _class_medians(class_id, count=24, size=32):
    stats = np.array([_shape_and_colour(render_galaxy(class_id, image_rng(0, 'train', class_id, i), size))
                      for i in range(count)])
    return np.median(stats, axis=0), stats


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    write_image_folder(tmp_path / 'a', 2, seed=3, image_size=32)
    write_image_folder(tmp_path / 'b', 2, seed=3, image_size=32)
    write_image_folder(tmp_path / 'c', 2, seed=4, image_size=32)
    assert _digest(tmp_path / 'a') == _digest(tmp_path / 'b')
    assert _digest(tmp_path / 'a') != _digest(tmp_path / 'c')


def test_each_image_has_its_own_stream():
    """An image does not depend on how many others were rendered, and train/validation never share a stream."""
    alone = render_galaxy(2, image_rng(7, 'train', 2, 5), 32)
    assert np.array_equal(alone, render_galaxy(2, image_rng(7, 'train', 2, 5), 32))
    assert not np.array_equal(alone, render_galaxy(2, image_rng(7, 'validation', 2, 5), 32))
    assert not np.array_equal(alone, render_galaxy(2, image_rng(7, 'train', 2, 6), 32))


def test_layout_is_read_by_timm_with_the_class_ids(tmp_path):
    counts = write_image_folder(tmp_path, 3, num_val_per_class=2, image_size=16)
    assert counts == {'train': 3 * len(CLASS_NAMES), 'validation': 2 * len(CLASS_NAMES)}
    assert sorted(p.name for p in (tmp_path / 'train').iterdir()) == list(CLASS_NAMES)
    assert len(LABEL_NAMES) == len(CLASS_NAMES) == 6
    dataset = timm.data.create_dataset('', root=str(tmp_path), split='validation')
    assert len(dataset) == 2 * len(CLASS_NAMES)
    image, label = dataset[0]
    assert image.size == (16, 16) and image.mode == 'RGB' and label == 0
    assert sorted({dataset[i][1] for i in range(len(dataset))}) == list(range(len(CLASS_NAMES)))
    train = timm.data.create_dataset('', root=str(tmp_path), split='train')
    assert len(train) == 3 * len(CLASS_NAMES)


@pytest.mark.parametrize('size', [16, 32, 64])
def test_render_shape_dtype_and_range(size):
    image = render_galaxy(5, image_rng(0, 'train', 5, 0), size)
    assert image.shape == (size, size, 3) and image.dtype == np.uint8
    assert image.max() > 200 and np.median(image) < 60  # a bright galaxy on a dark sky, not saturated everywhere


def test_classes_differ_in_shape_and_colour():
    """Cigars and edge-on disks are elongated, round smooth galaxies are not; smooth galaxies are redder than disks."""
    (round_elong, round_colour), _ = _class_medians(0)
    (cigar_elong, cigar_colour), _ = _class_medians(1)
    (spiral_elong, spiral_colour), _ = _class_medians(2)
    (edge_on_elong, edge_on_colour), _ = _class_medians(4)
    assert cigar_elong > 1.5 * round_elong and edge_on_elong > 1.5 * round_elong
    assert max(round_colour, cigar_colour) + 0.1 < min(spiral_colour, edge_on_colour)


def test_classes_vary_within():
    """Real variety inside a class: orientation, size, profile and noise change from image to image."""
    _, stats = _class_medians(1)
    assert stats[:, 0].std() > 0.3  # cigars of different axis ratios
    images = np.stack([render_galaxy(0, image_rng(0, 'train', 0, i), 32) for i in range(8)]).astype(float)
    assert np.abs(images[1:] - images[:1]).mean() > 5


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_per_class=0), 'num_per_class must be a positive integer'),
    (dict(num_per_class=2.5), 'num_per_class must be a positive integer'),
    (dict(num_per_class=1, num_val_per_class=0), 'num_val_per_class must be a positive integer'),
    (dict(num_per_class=1, image_size=8), r'image_size must be an integer in \[16, 512\]'),
    (dict(num_per_class=1, image_size=32.0), r'image_size must be an integer in \[16, 512\]'),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_image_folder(tmp_path, **kwargs)
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize('class_id, size, message', [
    (6, 32, r'class_id must be in \[0, 5\]'),
    (-1, 32, r'class_id must be in \[0, 5\]'),
    (0, 15, r'image_size must be in \[16, 512\]'),
])
def test_render_bad_arguments(class_id, size, message):
    with pytest.raises(ValueError, match=message):
        render_galaxy(class_id, np.random.default_rng(0), size)


def test_root_that_is_a_file(tmp_path):
    from timm_astro.errors import UserError
    (tmp_path / 'file').write_text('x')
    with pytest.raises(UserError, match='exists and is a file'):
        write_image_folder(tmp_path / 'file', 1, image_size=16)


def test_test_split_is_new_images(tmp_path):
    counts = write_image_folder(tmp_path / 'd', 2, num_val_per_class=1, num_test_per_class=2, image_size=16)
    assert counts == {'train': 12, 'validation': 6, 'test': 12}
    digests = {p.read_bytes() for p in (tmp_path / 'd').rglob('*.png')}
    assert len(digests) == 30, 'no image repeats across splits'


def test_refuses_to_overwrite(tmp_path):
    write_image_folder(tmp_path, 1, image_size=16, seed=0)
    before = _digest(tmp_path)
    with pytest.raises(FileExistsError, match='not empty'):
        write_image_folder(tmp_path, 1, image_size=16, seed=1)
    assert _digest(tmp_path) == before
    (tmp_path / 'train' / CLASS_NAMES[0] / 'stale.png').write_bytes(b'')
    write_image_folder(tmp_path, 1, image_size=16, seed=1, overwrite=True)
    assert _digest(tmp_path) != before and not (tmp_path / 'train' / CLASS_NAMES[0] / 'stale.png').exists()
