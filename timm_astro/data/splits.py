"""Deterministic, stratified train / validation / test splits, shared by every dataset tool.

Each item is ranked by a hash of ``(seed, key)`` (the key is its index, or a stable name such as a file path), so a
split depends only on the labels, the keys and the seed: not on the numpy version, the platform or the order files
are listed in. Within each class the first items by rank go to validation, the next to test, the rest to train;
so adding a test split never changes which images are in validation.
"""
import hashlib
from typing import Optional, Sequence

import numpy as np

from timm_astro.errors import UserError

__all__ = ['SPLITS', 'stratified_split', 'split_counts']

SPLITS = ('train', 'validation', 'test')


def _rank(keys: Sequence, seed: int) -> np.ndarray:
    return np.array([
        int.from_bytes(hashlib.blake2b(f'{seed}:{key}'.encode(), digest_size=8).digest(), 'big') for key in keys],
        dtype=np.uint64)


def split_counts(class_size: int, val_fraction: float, test_fraction: float) -> tuple:
    """``(validation, test)`` images of a class of ``class_size``: each fraction rounded, at least one image for a
    non-zero fraction while the class has enough images, and always at least one image left for training."""
    counts = []
    left = class_size - 1  # one image always stays in train
    for fraction in (val_fraction, test_fraction):
        n = int(np.floor(fraction * class_size + 0.5))
        if fraction > 0:
            n = max(n, 1)
        n = max(0, min(n, left))
        counts.append(n)
        left -= n
    return tuple(counts)


def stratified_split(
        labels: Sequence[int],
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        seed: int = 0,
        keys: Optional[Sequence] = None,
) -> np.ndarray:
    """The split (``'train'``, ``'validation'`` or ``'test'``) of every item, as a numpy array of strings.

    Args:
        labels: Class label of each item.
        val_fraction: Fraction of each class for validation, in (0, 1).
        test_fraction: Fraction of each class for test, in [0, 1); 0 gives no test split.
        seed: Same seed, same split.
        keys: A stable key per item (default: its index).
    """
    for name, value, low_ok in (('val_fraction', val_fraction, False), ('test_fraction', test_fraction, True)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                (0.0 <= value if low_ok else 0.0 < value) and value < 1.0):
            interval = '[0, 1)' if low_ok else 'between 0 and 1 (exclusive)'
            raise UserError(f'{name} must be {interval}, got {value!r}')
    if val_fraction + test_fraction >= 1.0:
        raise UserError(f'val_fraction + test_fraction must be below 1 (something must be left for training), '
                        f'got {val_fraction} + {test_fraction}')
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise UserError(f'seed must be an integer, got {seed!r}')
    labels = np.asarray(labels)
    keys = range(len(labels)) if keys is None else keys
    if len(keys) != len(labels):
        raise UserError(f'{len(keys)} keys for {len(labels)} labels')
    rank = _rank(keys, int(seed))
    split = np.full(len(labels), 'train', dtype='<U10')
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_val, n_test = split_counts(len(members), val_fraction, test_fraction)
        order = members[np.lexsort((members, rank[members]))]
        split[order[:n_val]] = 'validation'
        split[order[n_val:n_val + n_test]] = 'test'
    return split
