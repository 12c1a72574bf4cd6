"""Split an imported folder's training galaxies into a pretraining set and a disjoint fine-tuning pool.

Pretraining on a survey's labels and then fine-tuning on a few of the *same* survey's labels measures nothing when
the pretraining has already seen the fine-tuning galaxies (and every other training label). This holds out a
fixed number of training galaxies per class, drawn with a seed, as the fine-tuning pool, and writes two folders of
symbolic links to the imported images (nothing is copied):

    PRETRAIN_DIR/{train,validation}/<class>/   train: the import's train split minus the pool; no test/ at all
    FINETUNE_DIR/{train,validation,test}/<class>/   train: the pool only; validation and test: the import's

Each gets a ``dataset.json`` with its own counts, so a model card made from the pretraining (``timm-astro export``)
says which galaxies it trained on and that the pool and the test split were held out. Usage:

    python benchmarks/holdout_pool.py DATA_DIR --per-class 120 --pretrain-dir PRE --finetune-dir FT
"""
import argparse
import contextlib
import json
import random
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

from timm_astro.errors import UserError
from timm_astro.outputs import atomic_output_dir

CREATED_BY = 'benchmarks/holdout_pool.py'

IMAGE_SUFFIXES = {'.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp'}


def _class_images(split_dir: Path) -> Dict[str, List[Path]]:
    return {d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            for d in sorted(split_dir.iterdir()) if d.is_dir()}


def _link_tree(images: Dict[str, Sequence[Path]], out: Path) -> None:
    for folder, paths in images.items():
        (out / folder).mkdir(parents=True, exist_ok=True)
        for path in paths:
            (out / folder / path.name).symlink_to(path.resolve())


def _dataset_json(info: Dict[str, Any], counts: Dict[str, Dict[str, int]], note: str) -> Dict[str, Any]:
    """The import's dataset.json with this folder's counts (per class and per split) and what was done to it."""
    out = {k: v for k, v in info.items() if k not in ('unclassified', 'num_images')}
    classes = []
    for entry in info.get('classes') or []:
        entry = dict(entry)
        for split, per_folder in counts.items():
            entry[split] = per_folder.get(entry['folder'], 0)
        classes.append(entry)
    out['classes'] = classes
    out['splits'] = {split: sum(per_folder.values()) for split, per_folder in counts.items()}
    out['num_images'] = sum(out['splits'].values())
    out['derived'] = note
    return out


def split_pool(data_dir: Path, per_class: int, seed: int, pretrain_dir: Path, finetune_dir: Path) -> Dict[str, int]:
    """Write the two folders, each complete or not at all; returns the number of galaxies in each part."""
    meta = data_dir / 'dataset.json'
    if not meta.is_file():
        raise SystemExit(f'{data_dir}: no dataset.json; expected a folder written by `timm-astro import`')
    for out in (pretrain_dir, finetune_dir):  # before any work (atomic_output_dir's own message names an --overwrite)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise SystemExit(f'{out}: exists and is not an empty folder; expected a new folder')
    info = json.loads(meta.read_text(encoding='utf-8'))
    train = _class_images(data_dir / 'train')
    short = {folder: len(paths) for folder, paths in train.items() if len(paths) <= per_class}
    if short:
        raise SystemExit(f'--per-class {per_class}: these classes have no more training images than that, and '
                         f'pretraining would see none of them: {short}')
    rng = random.Random(seed)
    pool = {folder: sorted(rng.sample(list(paths), per_class)) for folder, paths in train.items()}
    held = {path for paths in pool.values() for path in paths}
    rest = {folder: [p for p in paths if p not in held] for folder, paths in train.items()}
    validation = _class_images(data_dir / 'validation')
    test = _class_images(data_dir / 'test')

    def count(images: Dict[str, Sequence[Path]]) -> Dict[str, int]:
        return {folder: len(paths) for folder, paths in images.items()}

    note = (f'benchmarks/holdout_pool.py --per-class {per_class} --seed {seed}: the import\'s train split less a '
            f'fine-tuning pool of {per_class} per class')
    pre_counts = {'train': count(rest), 'validation': count(validation), 'finetune_pool': count(pool),
                  'test': count(test)}
    ft_counts = {'train': count(pool), 'validation': count(validation), 'test': count(test)}
    with contextlib.ExitStack() as stack:
        pre = stack.enter_context(atomic_output_dir(pretrain_dir, CREATED_BY))
        ft = stack.enter_context(atomic_output_dir(finetune_dir, CREATED_BY))
        _link_tree(rest, pre / 'train')
        _link_tree(validation, pre / 'validation')
        (pre / 'dataset.json').write_text(json.dumps(_dataset_json(
            info, pre_counts, note + '; test/ and the pool are not in this folder'), indent=2) + '\n')
        _link_tree(pool, ft / 'train')
        _link_tree(validation, ft / 'validation')
        _link_tree(test, ft / 'test')
        (ft / 'dataset.json').write_text(json.dumps(_dataset_json(
            info, ft_counts, note + ': this folder\'s train split is that pool'), indent=2) + '\n')
        if (data_dir / 'class_names.json').is_file():
            for out in (pre, ft):
                shutil.copyfile(data_dir / 'class_names.json', out / 'class_names.json')
    return {'pretrain': sum(pre_counts['train'].values()), 'pool': sum(ft_counts['train'].values())}


def main(argv: Sequence[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('data_dir', type=Path, metavar='DATA_DIR', help='a folder written by `timm-astro import`')
    parser.add_argument('--per-class', type=int, required=True, help='training galaxies per class to hold out')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--pretrain-dir', type=Path, required=True)
    parser.add_argument('--finetune-dir', type=Path, required=True)
    args = parser.parse_args(argv)
    if args.per_class < 1:
        raise SystemExit(f'--per-class {args.per_class}: expected a positive number of galaxies')
    try:
        sizes = split_pool(args.data_dir, args.per_class, args.seed, args.pretrain_dir, args.finetune_dir)
    except UserError as e:  # an output folder that cannot be written
        raise SystemExit(str(e)) from None
    print(f"{args.data_dir}: pretraining set {sizes['pretrain']} galaxies -> {args.pretrain_dir}; "
          f"fine-tuning pool {sizes['pool']} -> {args.finetune_dir} (validation and test as imported)",
          file=sys.stderr)


if __name__ == '__main__':
    main()
