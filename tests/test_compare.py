"""timm_astro.evaluation.compare: the paired two-level bootstrap gives the known answers and covers a known
difference about as often as it says."""
import numpy as np
import pytest

from timm_astro.evaluation.compare import correct_matrix, paired_bootstrap


def test_identical_models_differ_by_exactly_nothing():
    rng = np.random.default_rng(1)
    correct = rng.integers(0, 2, size=(3, 200))
    interval = paired_bootstrap(correct, correct.copy(), n_boot=2000)
    assert (interval.mean, interval.low, interval.high) == (0.0, 0.0, 0.0) and interval.contains_zero


def test_always_right_against_always_wrong_is_100_points_either_way():
    right, wrong = np.ones((3, 50), dtype=int), np.zeros((3, 50), dtype=int)
    interval = paired_bootstrap(right, wrong, n_boot=500)
    assert (interval.mean, interval.low, interval.high) == (100.0, 100.0, 100.0) and not interval.contains_zero
    flipped = paired_bootstrap(wrong, right, n_boot=500)
    assert (flipped.low, flipped.high) == (-100.0, -100.0)


def test_pairing_removes_the_image_difficulty_both_models_share():
    """Two models right on the same images except 10 of 200: the paired interval is about +-(10 / 200) wide, far
    narrower than either model's own accuracy interval would be; an unpaired comparison could not see it."""
    rng = np.random.default_rng(2)
    base = rng.integers(0, 2, size=200)
    a = np.tile(base, (3, 1))
    b = a.copy()
    b[:, np.flatnonzero(base == 1)[:10]] = 0  # b misses 10 images a gets right, in every seed
    interval = paired_bootstrap(a, b, n_boot=4000)
    assert interval.mean == pytest.approx(5.0)
    assert 0 < interval.low < 5 < interval.high < 10


def test_seeds_are_resampled_too():
    """A difference that changes sign between seeds is not measurable, however many images agree within a seed."""
    a = np.array([[1] * 100, [0] * 100, [1] * 100, [0] * 100])
    b = 1 - a
    interval = paired_bootstrap(a, b, n_boot=4000)
    assert interval.mean == 0.0 and interval.low == -100.0 and interval.high == 100.0


def test_the_interval_covers_a_simulated_true_difference_about_95_percent_of_the_time():
    """Images of random difficulty drawn from a population; model a is 6 points better on average; seeds add their
    own noise. Over 200 simulated studies the 95% interval should hold the true 6 points in roughly 95% of them
    (a percentile bootstrap with 3 seeds runs a little narrow: accept 85-99%)."""
    rng = np.random.default_rng(3)
    true_difference, covered, trials = 6.0, 0, 200
    for trial in range(trials):
        difficulty = rng.uniform(0.2, 0.9, size=300)  # each image's chance that model b gets it right
        seed_shift = rng.normal(0, 0.02, size=(3, 1))
        p_b = np.clip(difficulty + seed_shift, 0, 1)
        p_a = np.clip(difficulty + true_difference / 100 + rng.normal(0, 0.02, size=(3, 1)), 0, 1)
        a = rng.random((3, 300)) < p_a
        b = rng.random((3, 300)) < p_b
        interval = paired_bootstrap(a.astype(int), b.astype(int), n_boot=1000, seed=trial)
        covered += interval.low <= true_difference <= interval.high
    assert 0.85 <= covered / trials <= 0.99, covered


def test_bad_shapes_and_values_are_refused():
    with pytest.raises(ValueError, match='same shape'):
        paired_bootstrap(np.ones((3, 10)), np.ones((2, 10)))
    with pytest.raises(ValueError, match='0/1'):
        paired_bootstrap(np.full((1, 3), 2), np.ones((1, 3)))
    assert correct_matrix([[0, 1, 2], [2, 1, 0]], [0, 1, 0]).tolist() == [[1, 1, 0], [0, 1, 1]]
    with pytest.raises(ValueError, match=r'expected predictions \[seeds, 3\]'):
        correct_matrix([0, 1, 2], [0, 1, 0])
