"""Reading a Galaxy Zoo vote set: images with each answer's volunteer vote counts, for training on votes.

A vote set is an import folder whose ``dataset.json`` says ``"kind": "votes"`` and names its decision tree
(``"tree": "gz2"``), and whose ``manifest.csv`` has one row per galaxy: ``file`` (relative to the folder), ``split``
(train / validation / test) and one whole-number column of votes per answer, named as the tree's ``column``s.
``VotesDataset`` yields ``(image, counts)``, counts a float tensor in the tree's answer order; every count is
checked when the dataset is opened, so a bad row is named before any training starts. Images are read by the rules
of ``timm_astro.data.images`` (``read_image``, or the model's ``ImageReader``), as evaluate and predict read them:
16-bit pixels scaled by their depth, only regular files opened; ``check_images`` reads them all once, so that an
unreadable one is named before training rather than in the middle of it. ``manifest_sha256`` identifies a vote
set's content (its galaxies, splits and votes) for a resumed run.

Class tools (evaluate, predict on labels) call ``is_vote_set`` to refuse such a folder with a message rather than
reading its ``label`` column as if it were the task.
"""
import csv
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch

from timm_astro.data.decision_tree import DecisionTree, load_tree
from timm_astro.data.images import ImageReader, UnreadableImage, read_image
from timm_astro.data.splits import SPLITS
from timm_astro.errors import UserError

__all__ = ['VOTES_KIND', 'is_vote_set', 'read_vote_set_info', 'manifest_sha256', 'VotesDataset']

PathLike = Union[str, os.PathLike]
VOTES_KIND = 'votes'
_WHOLE_NUMBER = re.compile(r'^\s*[+-]?\d+\s*$')


def _dataset_json(folder: Path) -> Optional[Dict[str, Any]]:
    try:
        info = json.loads((folder / 'dataset.json').read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def is_vote_set(folder: PathLike) -> bool:
    """True if ``folder`` is a vote set (its dataset.json says ``"kind": "votes"``): train on it with
    ``timm-astro train-votes``, not with a class tool."""
    info = _dataset_json(Path(folder))
    return info is not None and info.get('kind') == VOTES_KIND


def read_vote_set_info(folder: PathLike) -> Dict[str, Any]:
    """The dataset.json of a vote set; a folder that is not one is refused with what it is instead."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f'{folder}: {"is a file" if folder.exists() else "no such folder"}; expected a vote set '
                        f'(an import folder with dataset.json "kind": "votes" and manifest.csv)')
    info = _dataset_json(folder)
    if info is None:
        raise UserError(f'{folder}: no readable dataset.json; expected a vote set written by `timm-astro import` '
                        f'(dataset.json with "kind": "votes", manifest.csv with vote counts)')
    if info.get('kind') != VOTES_KIND:
        kind = f'its dataset.json has "kind": {info["kind"]!r}' if 'kind' in info else \
            'its dataset.json has no "kind" (a class-labelled image set)'
        raise UserError(f'{folder}: not a vote set ({kind}); expected "kind": "votes", an import of Galaxy Zoo '
                        f'vote counts (class-labelled sets train with timm\'s train.py or `timm-astro demo`)')
    return info


def manifest_sha256(folder: PathLike) -> str:
    """The sha256 of a vote set's manifest.csv: which galaxies, splits and vote counts it holds, wherever it lies."""
    with open(Path(folder) / 'manifest.csv', 'rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


class VotesDataset(torch.utils.data.Dataset):
    """``(image, counts)`` for the galaxies of one split of a vote set; ``counts`` is a float32 tensor
    ``[n_answers]`` in the tree's answer order.

    Args:
        folder: The vote set.
        split: ``'train'``, ``'validation'`` or ``'test'``.
        tree: A DecisionTree, a shipped tree's name or a JSON file; by default the one its dataset.json names.
        transform: Applied to the image read (timm's ``create_loader`` sets it for training).
        reader: How a file becomes the image (``timm_astro.data.images.reader_for_model``); by default
            ``read_image``'s 8-bit RGB.
    """

    def __init__(self, folder: PathLike, split: str, tree: Union[DecisionTree, str, os.PathLike, None] = None,
                 transform: Optional[Callable] = None, reader: Optional[ImageReader] = None):
        self.root = Path(folder)
        self.info = read_vote_set_info(self.root)
        if split not in SPLITS:
            raise UserError(f'split {split!r}: expected one of {", ".join(SPLITS)}')
        if tree is None:
            if not self.info.get('tree'):
                raise UserError(f'{self.root / "dataset.json"}: names no "tree"; give the decision tree (a shipped '
                                f'name or a JSON file)')
            tree = self.info['tree']
        self.tree = load_tree(tree)
        self.split, self.transform, self.reader = split, transform, reader
        self.files, self.counts = self._read_manifest()

    def _read_manifest(self) -> Tuple[List[str], np.ndarray]:
        manifest = self.root / 'manifest.csv'
        if not manifest.is_file():
            raise UserError(f'{manifest}: no such file; expected the manifest of a vote set (file, split and one '
                            f'vote-count column per answer)')
        columns = self.tree.columns
        files: List[str] = []
        rows: List[List[int]] = []
        splits_seen = set()
        try:
            with open(manifest, newline='', encoding='utf-8') as f:
                reader = csv.DictReader(f)
                header = reader.fieldnames or []
                missing = [c for c in ['file', 'split'] + columns if c not in header]
                if missing:
                    shown = ', '.join(missing[:3]) + (f' and {len(missing) - 3} more' if len(missing) > 3 else '')
                    raise UserError(f'{manifest}: no column {shown}; the {self.tree.name} tree needs file, split and '
                                    f'a vote-count column per answer ({len(columns)} in all)')
                for line, row in enumerate(reader, start=2):
                    splits_seen.add(row['split'])
                    if row['split'] != self.split:
                        continue
                    values = []
                    for column in columns:
                        text = row[column] if row[column] is not None else ''
                        if not _WHOLE_NUMBER.match(text) or int(text) < 0:
                            raise UserError(f'{manifest}: line {line} ({row["file"]}): {column} is {text!r}; '
                                            f'expected a whole number of votes, 0 or more')
                        values.append(int(text))
                    files.append(row['file'])
                    rows.append(values)
        except (UnicodeDecodeError, csv.Error) as e:
            raise UserError(f'{manifest}: not a readable CSV file ({e}); expected the manifest of a vote set') \
                from None
        if not files:
            present = ', '.join(s for s in SPLITS if s in splits_seen) or 'none'
            raise UserError(f'{manifest}: no galaxies in the {self.split!r} split (splits present: {present})')
        absent = [f for f in files if not (self.root / f).is_file()]
        if absent:
            raise UserError(f'{self.root / absent[0]}: no such file (named in {manifest}; {len(absent)} of the '
                            f'{len(files)} {self.split} images are missing)')
        return files, np.asarray(rows, dtype=np.int64).reshape(len(files), len(columns))

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, index: int) -> Any:
        path = self.root / self.files[index]
        return self.reader(path) if self.reader is not None else read_image(path)

    def check_images(self) -> None:
        """Read every image once; the first that cannot be read is refused in one line, with how many cannot.
        A training batch has no room for a missing image, and the vote set's import read them all."""
        unreadable = []
        for index in range(len(self.files)):
            try:
                self._read(index)
            except UnreadableImage as e:
                unreadable.append(e)
        if unreadable:
            raise UserError(f'{unreadable[0]}; {len(unreadable)} of the {len(self.files)} {self.split} images cannot '
                            f'be read, and training needs every one: import the vote set again')

    def __getitem__(self, index: int) -> Tuple[Any, torch.Tensor]:
        image = self._read(index)  # UnreadableImage, one line naming the file
        if self.transform is not None:
            image = self.transform(image)
        return image, torch.from_numpy(self.counts[index].astype(np.float32))

    def filename(self, index: int, basename: bool = False, absolute: bool = False) -> str:
        """timm's ImageDataset interface: the image's path as the manifest names it."""
        name = self.files[index]
        return os.path.basename(name) if basename else str(self.root / name) if absolute else name
