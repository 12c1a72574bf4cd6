"""The synthetic galaxy generator: deterministic, ImageFolder layout timm reads, classes that differ."""
import hashlib

import numpy as np
import pytest
import timm.data

from timm_astro.data.synthetic_galaxies import CLASS_NAMES, image_rng, render_galaxy, write_image_folder


def _digest(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob('*.png'))}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    write_image_folder(tmp_path / 'a', 2, seed=3, image_size=32)
    write_image_folder(tmp_path / 'b', 2, seed=3, image_size=32)
    write_image_folder(tmp_path / 'c', 2, seed=4, image_size=32)
    assert _digest(tmp_path / 'a') == _digest(tmp_path / 'b')
    assert _digest(tmp_path / 'a') != _digest(tmp_path / 'c')


def test_layout_is_read_by_timm_with_the_class_ids(tmp_path):
    counts = write_image_folder(tmp_path, 3, num_val_per_class=2, image_size=16)
    assert counts == {'train': 3 * len(CLASS_NAMES), 'validation': 2 * len(CLASS_NAMES)}
    dataset = timm.data.create_dataset('', root=str(tmp_path), split='validation')
    assert len(dataset) == 2 * len(CLASS_NAMES)
    image, label = dataset[0]
    assert image.size == (16, 16) and label == 0
    assert sorted({dataset[i][1] for i in range(len(dataset))}) == list(range(len(CLASS_NAMES)))


def test_render_shape_dtype_and_elongation_differs_by_class():
    """Edge-on disks and cigars are elongated, round smooth galaxies are not (second moments of the light)."""
    def elongation(class_id):
        ratios = []
        for i in range(12):
            img = render_galaxy(class_id, image_rng(0, 'train', class_id, i), 48).astype(float).mean(-1)
            assert img.dtype == float and img.shape == (48, 48)
            w = np.clip(img - np.median(img), 0, None)
            ys, xs = np.mgrid[:48, :48]
            m = w.sum()
            cy, cx = (w * ys).sum() / m, (w * xs).sum() / m
            cov = np.cov(np.stack([(ys - cy).ravel(), (xs - cx).ravel()]), aweights=w.ravel())
            ev = np.linalg.eigvalsh(cov)
            ratios.append(ev[1] / ev[0])
        return np.median(ratios)
    assert render_galaxy(0, image_rng(0, 'train', 0, 0), 32).dtype == np.uint8
    assert elongation(4) > 1.25 * elongation(0)
    assert elongation(1) > 1.1 * elongation(0)


@pytest.mark.parametrize('kwargs, message', [
    (dict(num_per_class=0), 'num_per_class must be a positive integer'),
    (dict(num_per_class=1, image_size=8), r'image_size must be an integer in \[16, 512\]'),
])
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        write_image_folder(tmp_path, **kwargs)


def test_refuses_to_overwrite(tmp_path):
    write_image_folder(tmp_path, 1, image_size=16)
    with pytest.raises(FileExistsError, match='not empty'):
        write_image_folder(tmp_path, 1, image_size=16)
    write_image_folder(tmp_path, 1, image_size=16, overwrite=True)
