"""Is one model better than another on the same test images? Paired bootstrap intervals over images and seeds.

Two models scored on the same images, each trained with the same seeds (the same training subsets), give 0/1
correctness arrays shaped ``[seeds, images]``. Their accuracy difference varies for two reasons: which images were
drawn for the test set, and which seed (subset, initialisation, augmentation) a run got. ``paired_bootstrap``
resamples both levels with replacement, seeds and images, the same draws for both models (a paired, two-level
bootstrap), and gives the percentile interval of the difference. The standard deviation over seeds alone leaves
out the first source, which dominates on a test split of a few hundred images.

``paired_bootstrap_mean`` is the same resampling for any per-image score (a galaxy's vote-fraction error), in the
score's own units; ``paired_bootstrap`` is it for 0/1 correctness, in percentage points.
"""
from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import numpy as np

__all__ = ['Interval', 'paired_bootstrap', 'paired_bootstrap_mean', 'correct_matrix']

ArrayLike = Union[np.ndarray, Sequence[Sequence[int]]]


@dataclass(frozen=True)
class Interval:
    """A difference (a minus b; percentage points from ``paired_bootstrap``) with its bootstrap percentile
    interval."""
    mean: float
    low: float
    high: float
    level: float = 0.95

    @property
    def contains_zero(self) -> bool:
        """True when the interval cannot tell the two apart: 'no measurable difference'."""
        return self.low <= 0.0 <= self.high

    def __str__(self) -> str:
        return f'{self.mean:+.1f} [{self.low:+.1f}, {self.high:+.1f}]'


def correct_matrix(predictions: ArrayLike, labels: Sequence[int]) -> np.ndarray:
    """``[seeds, images]`` 0/1 array from per-seed predicted classes and the true labels."""
    predictions = np.asarray(predictions)
    labels = np.asarray(labels)
    if predictions.ndim != 2 or predictions.shape[1] != labels.shape[0]:
        raise ValueError(f'expected predictions [seeds, {labels.shape[0]}], got {list(predictions.shape)}')
    return (predictions == labels[None, :]).astype(np.int8)


def paired_bootstrap(correct_a: ArrayLike, correct_b: ArrayLike, n_boot: int = 10000, seed: int = 0,
                     level: float = 0.95, chunk: int = 500) -> Interval:
    """Mean accuracy difference of a over b (percentage points) and its paired two-level bootstrap interval.

    ``correct_a`` and ``correct_b`` are 0/1 arrays ``[seeds, images]``, row s of both from runs with seed s. Each
    bootstrap replicate draws seeds with replacement and images with replacement, the same seeds and images for
    both models, and takes the difference of the two mean accuracies over the drawn seeds and images; the
    interval is the ``level`` percentile interval of the replicates. With one seed only the images are resampled.
    """
    a, b = _pair(correct_a, correct_b, np.float32)  # float32 as before: earlier reports' intervals recompute
    if not (np.isin(a, (0, 1)).all() and np.isin(b, (0, 1)).all()):
        raise ValueError('expected 0/1 correctness arrays')
    interval = _bootstrap(a - b, n_boot, seed, level, chunk)
    return Interval(interval.mean * 100, interval.low * 100, interval.high * 100, level)


def paired_bootstrap_mean(values_a: ArrayLike, values_b: ArrayLike, n_boot: int = 10000, seed: int = 0,
                          level: float = 0.95, chunk: int = 500) -> Interval:
    """``paired_bootstrap`` for any finite per-image score ``[seeds, images]`` (an error, a loss): the mean
    difference of a over b, in the score's units, and its paired two-level bootstrap interval."""
    a, b = _pair(values_a, values_b, np.float64)
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError('expected finite scores (leave out the images a score is not defined for)')
    return _bootstrap(a - b, n_boot, seed, level, chunk)


def _pair(a: ArrayLike, b: ArrayLike, dtype: type) -> Tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=dtype)
    b = np.asarray(b, dtype=dtype)
    if a.ndim == 1 and b.ndim == 1:  # one seed
        a, b = a[None], b[None]
    if a.shape != b.shape or a.ndim != 2 or 0 in a.shape:
        raise ValueError(f'expected two non-empty arrays [seeds, images] of the same shape, got {list(a.shape)} and '
                         f'{list(b.shape)}')
    return a, b


def _bootstrap(diff: np.ndarray, n_boot: int, seed: int, level: float, chunk: int) -> Interval:
    """The mean of ``diff`` ``[seeds, images]`` and its percentile interval over replicates that draw seeds and
    images with replacement (the same images for every seed of a replicate)."""
    if n_boot < 1 or not 0 < level < 1:
        raise ValueError(f'n_boot must be at least 1 and level in (0, 1), got {n_boot} and {level}')
    seeds, images = diff.shape
    rng = np.random.default_rng(seed)
    replicates = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, chunk):
        size = min(chunk, n_boot - start)
        image_draws = rng.integers(0, images, size=(size, images))  # the same images for every seed of a replicate
        seed_draws = rng.integers(0, seeds, size=(size, seeds))
        per_seed = diff[:, image_draws].mean(-1)  # [seeds, size]: each seed's difference on the drawn images
        replicates[start:start + size] = np.take_along_axis(per_seed.T, seed_draws, axis=1).mean(1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return Interval(float(diff.mean()), float(low), float(high), level)
