"""Evaluation pictures with matplotlib: the row-normalised confusion matrix and the reliability diagram."""
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from timm_astro.errors import MissingDependency

__all__ = ['pyplot', 'plot_confusion_matrix', 'plot_reliability']


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend, or a MissingDependency saying what to install."""
    try:
        import matplotlib
    except ImportError as e:
        raise MissingDependency(
            "matplotlib is needed for the plots: pip install 'timm-astro[plot]' (or: pip install matplotlib)") from e
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_confusion_matrix(
        matrix: Sequence[Sequence[int]],
        label_names: Sequence[str],
        path: Path,
        title: Optional[str] = None,
) -> None:
    """Rows are true classes, normalised to sum to 1 (each row: where that class's images went); the counts of
    the diagonal and of off-diagonal cells with any images are written in the cells."""
    import numpy as np
    plt = pyplot()
    counts = np.asarray(matrix, dtype=float)
    rows = counts.sum(1, keepdims=True)
    normalised = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    n = len(label_names)
    size = max(5.0, 0.55 * n + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    image = ax.imshow(normalised, cmap='Blues', vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label='fraction of the true class')
    ax.set_xticks(range(n), label_names, rotation=45, ha='right', fontsize=8)
    ax.set_yticks(range(n), label_names, fontsize=8)
    ax.set_xlabel('predicted class')
    ax.set_ylabel('true class')
    for i in range(n):
        for j in range(n):
            if counts[i, j] or i == j:
                ax.text(j, i, f'{normalised[i, j]:.2f}\n({int(counts[i, j])})', ha='center', va='center', fontsize=6,
                        color='white' if normalised[i, j] > 0.5 else 'black')
    ax.set_title(title or 'confusion matrix (rows normalised)', fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(bins_by_name: Dict[str, Dict[str, List]], path: Path, title: Optional[str] = None) -> None:
    """Accuracy against top-1 confidence per bin (one curve per entry, e.g. without and with TTA), the diagonal
    being perfect calibration, and how many images each bin holds."""
    plt = pyplot()
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5.5, 6.5), sharex=True, gridspec_kw={'height_ratios': [3, 1]})
    ax.plot([0, 1], [0, 1], ls='--', color='grey', lw=1, label='perfectly calibrated')
    for k, (name, bins) in enumerate(bins_by_name.items()):
        edges = bins['edges']
        centres = [(a + b) / 2 for a, b in zip(edges[:-1], edges[1:])]
        points = [(c, a) for c, a in zip(bins['confidence'], bins['accuracy']) if c is not None]
        if points:
            ax.plot(*zip(*points), marker='o', label=name, color=f'C{k}')
        width = (edges[1] - edges[0]) / (len(bins_by_name) + 0.5)
        ax_count.bar([c + (k - (len(bins_by_name) - 1) / 2) * width for c in centres], bins['count'], width=width,
                     color=f'C{k}', label=name)
    ax.set_ylabel('accuracy')
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc='upper left')
    ax.set_title(title or 'reliability (top-1 confidence)', fontsize=9)
    ax_count.set_xlabel('top-1 confidence')
    ax_count.set_ylabel('images')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
