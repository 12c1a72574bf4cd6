"""Small Galaxy Zoo vote sets written by the tests: tiny JPEGs with made-up counts that follow the tree."""
import csv
import json
from pathlib import Path
from typing import Dict, Sequence

import numpy as np
from PIL import Image

from timm_astro.data.decision_tree import DecisionTree, load_tree


def made_up_counts(tree: DecisionTree, rng: np.random.Generator, volunteers: int) -> Dict[str, int]:
    """Counts that follow the tree: a question gets as many votes as its parent answer got (every volunteer
    answers a question asked of every galaxy)."""
    counts: Dict[str, int] = {}
    by_answer: Dict[str, int] = {}
    pending = list(tree.questions)
    while pending:  # parents first, whatever the file's order
        question = next(q for q in pending if q.parent is None or q.parent in by_answer)
        pending.remove(question)
        total = volunteers if question.parent is None else by_answer[question.parent]
        split = rng.multinomial(total, rng.dirichlet(np.ones(len(question.answers))))
        for answer, n in zip(question.answers, split):
            counts[answer.column], by_answer[answer.name] = int(n), int(n)
    return counts


def write_vote_set(root: Path, tree: str = 'gz2', per_split: Sequence[int] = (12, 6, 4), size: int = 16,
                   seed: int = 0) -> Path:
    """A vote set as the import writes it: dataset.json ("kind": "votes"), manifest.csv with the tree's count
    columns (in reverse order, so that readers must go by name), and JPEGs whose brightness follows the smooth
    vote fraction of the tree's first question; ``tree`` is a shipped tree's name or a JSON file's path."""
    loaded = load_tree(tree)
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = []
    for split, n in zip(('train', 'validation', 'test'), per_split):
        (root / split).mkdir()
        for i in range(n):
            counts = made_up_counts(loaded, rng, int(rng.integers(5, 40)))
            first = loaded.questions[0].answers[0].column
            level = int(40 + 180 * counts[first] / max(1, sum(counts[a.column] for a in loaded.questions[0].answers)))
            pixels = np.clip(rng.normal(level, 10, (size, size, 3)), 0, 255).astype(np.uint8)
            file = f'{split}/{i:03d}.jpg'
            Image.fromarray(pixels).save(root / file, quality=90)
            rows.append({'file': file, 'split': split, 'label': -1, 'class_name': '', 'source_file': f'src/{i}.jpg',
                         'ra': 150.0 + i, 'dec': 2.0, **counts})
    columns = ['file', 'split', 'label', 'class_name', 'source_file', 'ra', 'dec'] + loaded.columns[::-1]
    with open(root / 'manifest.csv', 'w', newline='', encoding='utf-8') as f:
        writer = csv.DictWriter(f, columns, lineterminator='\n')
        writer.writeheader()
        writer.writerows(rows)
    (root / 'dataset.json').write_text(json.dumps({'kind': 'votes', 'tree': tree}), encoding='utf-8')
    return root


# A small tree in the style of GZ DECaLS (Walmsley et al. 2022), written by the tests to show that another survey's
# tree needs a JSON file and no code.
DECALS_LIKE_TREE = {
    'name': 'decals-like',
    'description': 'three GZ DECaLS-style questions, for tests',
    'questions': [
        {'name': 'smooth-or-featured', 'text': 'Is the galaxy simply smooth and rounded?', 'parent': None,
         'answers': [{'name': 'smooth-or-featured_smooth', 'column': 'smooth-or-featured_smooth'},
                     {'name': 'smooth-or-featured_featured-or-disk', 'column': 'smooth-or-featured_featured-or-disk'},
                     {'name': 'smooth-or-featured_artifact', 'column': 'smooth-or-featured_artifact'}]},
        {'name': 'disk-edge-on', 'text': 'Could this be a disk viewed edge-on?',
         'parent': 'smooth-or-featured_featured-or-disk',
         'answers': [{'name': 'disk-edge-on_yes', 'column': 'disk-edge-on_yes'},
                     {'name': 'disk-edge-on_no', 'column': 'disk-edge-on_no'}]},
        {'name': 'has-spiral-arms', 'text': 'Does the galaxy have spiral arms?', 'parent': 'disk-edge-on_no',
         'answers': [{'name': 'has-spiral-arms_yes', 'column': 'has-spiral-arms_yes'},
                     {'name': 'has-spiral-arms_no', 'column': 'has-spiral-arms_no'}]},
    ],
}
