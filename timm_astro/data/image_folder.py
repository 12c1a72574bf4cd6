"""The files that describe an ImageFolder our dataset tools write: ``manifest.csv``, ``class_names.json`` and
``dataset.json`` (counts per split and per class), so that ``galaxy10 prepare`` and ``import`` describe their
outputs the same way."""
import csv
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Sequence

import numpy as np

from timm_astro.data.splits import SPLITS
from timm_astro.outputs import write_json

__all__ = ['write_dataset_files']


def write_dataset_files(
        folder: Path,
        manifest_columns: Sequence[str],
        manifest_rows: Iterable[Sequence[Any]],
        class_names: Sequence[str],
        class_folders: Sequence[str],
        labels: np.ndarray,
        splits: np.ndarray,
        info: Mapping[str, Any],
) -> Dict[str, int]:
    """Write the three files into ``folder``; ``info`` opens dataset.json (who wrote it, from what, how split),
    which then gets the counts per split and per class. Returns the images per split (splits with none left out)."""
    with open(folder / 'manifest.csv', 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f, lineterminator='\n')
        writer.writerow(manifest_columns)
        writer.writerows(manifest_rows)
    write_json(folder / 'class_names.json', list(class_names))
    used = [split for split in SPLITS if (splits == split).any()]
    counts = {split: int((splits == split).sum()) for split in used}
    write_json(folder / 'dataset.json', {
        **info,
        'splits': counts,
        'classes': [
            {'label': label, 'name': name, 'folder': class_folders[label],
             **{split: int(((labels == label) & (splits == split)).sum()) for split in used}}
            for label, name in enumerate(class_names)],
    })
    return counts
