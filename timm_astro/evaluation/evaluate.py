"""Evaluate a classifier on a labelled split: per-class metrics, calibration, and the same with test-time symmetry.

``open_labelled_data`` reads an ImageFolder split (``DATA/test`` or ``DATA`` with ``split='test'``) or a
Galaxy10-schema HDF5 file; ``evaluate`` runs the model over it once per symmetry view and scores both the plain
prediction (the identity view) and the view average; ``write_report`` writes ``metrics.json``,
``confusion_matrix.png``, ``reliability.png`` and ``predictions.csv`` into a folder, atomically.

Images are read by ``timm_astro.data.images`` (its rules: which files are opened, how 16-bit pixels become 8 bits;
FITS files and N-band data through the stretch the model records, ``reader_for_model``, or ``stretch`` for a model
that records none; data whose band count differs from the model's are refused in one line before any work).
Every image is scored as itself or left out as unreadable: ``Evaluation.left_out`` and ``metrics.json`` list each
one with its reason, and the metrics cover the rest. A folder holding split folders needs ``split``; the classes of
one split are those of all its sibling splits, so a split that lacks a class keeps the class indices of the others.
"""
import csv
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from tqdm import tqdm

from timm_astro.data.images import (
    ImageFiles, ImageReader, band_data_config, collate_readable, list_image_folder, reader_for_model)
from timm_astro.data.stretch import Stretch
from timm_astro.data.catalogue import CATALOGUE_SUFFIXES, class_key
from timm_astro.errors import UserError
from timm_astro.evaluation.metrics import classification_metrics, predictive_entropy, reliability_bins
from timm_astro.evaluation.tta import TTA_MODES, view_probabilities
from timm_astro.outputs import OUTPUT_MARKER, atomic_output_dir, write_json

__all__ = [
    'LabelledData', 'Evaluation', 'open_labelled_data', 'collect_view_probabilities', 'evaluate', 'write_report',
    'label_names_for',
]

PathLike = Union[str, os.PathLike]
H5_SUFFIXES = ('.h5', '.hdf5')
SPLIT_FOLDERS = ('train', 'validation', 'val', 'test')
CREATED_BY = 'timm-astro evaluate'


@dataclass
class LabelledData:
    """A labelled dataset and what a report needs about it: where it came from, its class names, item ids."""
    dataset: torch.utils.data.Dataset
    source: str
    class_names: List[str]
    item_ids: List[str]  # file path (relative to the data folder) or HDF5 row, one per item
    targets: List[int]
    columns: Dict[str, List[str]] = field(default_factory=dict)  # extra per-item columns (sky coordinates)
    labels: Optional[List[str]] = None  # a catalogue's labels as written: ``evaluate`` numbers them as the model does


def _has_split_folders(root: Path) -> List[str]:
    return [name for name in SPLIT_FOLDERS if (root / name).is_dir()]


def _refuse_outputs_inside(root: Path, samples: Sequence[Tuple[str, int]]) -> None:
    """An earlier output of ours below ``root`` (a report's PNGs) would be read as a class of images: refuse it."""
    checked = set()
    for path, _ in samples:
        for folder in Path(path).parents:
            if folder == root or root not in folder.parents or folder in checked:
                break
            checked.add(folder)
            if (folder / OUTPUT_MARKER).is_file():
                raise UserError(f'{folder}: an earlier timm-astro output (it holds {OUTPUT_MARKER}) inside the data, '
                                f'whose images would be read as a class; move it out of {root}')


def _split_classes(root: Path) -> Optional[Dict[str, int]]:
    """The class index of all the splits beside ``root`` when it is one split of a folder of splits, else None."""
    from timm.utils.misc import natural_key
    if root.name not in SPLIT_FOLDERS:
        return None
    siblings = _has_split_folders(root.parent)
    if len(siblings) < 2:
        return None
    names = set()
    for split in siblings:
        names.update(list_image_folder(root.parent / split)[1])
    names.discard('')
    return {name: i for i, name in enumerate(sorted(names, key=natural_key))}


def _open_image_folder(root: Path) -> LabelledData:
    from timm.data.readers.img_extensions import get_img_extensions
    samples, class_to_idx = list_image_folder(root)
    if not samples:
        raise UserError(f'{root}: no images found; expected {root}/<class name>/<image files> '
                        f'({", ".join(get_img_extensions())}, .fits)')
    names = {index: name for name, index in class_to_idx.items()}
    loose = [Path(p).name for p, t in samples if names[t] == '']
    if loose:
        raise UserError(f'{root}: {len(loose)} image(s) lie directly in it (e.g. {loose[0]}), not in class folders; '
                        f'expected {root}/<class name>/<image files>')
    _refuse_outputs_inside(root, samples)
    class_to_idx = _split_classes(root) or class_to_idx
    samples = [(p, class_to_idx[names[t]]) for p, t in samples]
    class_names = sorted(class_to_idx, key=class_to_idx.get)
    ids = [Path(p).relative_to(root).as_posix() for p, _ in samples]
    return LabelledData(ImageFiles(samples), str(root), class_names, ids, [t for _, t in samples])


def open_labelled_data(
        data: PathLike,
        split: Optional[str] = None,
        *,
        val_fraction: float = 0.1,
        test_fraction: float = 0.0,
        seed: int = 0,
        catalogue: Optional[Dict[str, Any]] = None,
) -> LabelledData:
    """An ImageFolder (``data`` itself, or its ``split`` sub-folder), a Galaxy10-schema HDF5 file's ``split``, or a
    catalogue CSV with a label column (``catalogue``: ``read_catalogue``'s options; its columns go into the rows).

    A folder that holds split folders (train, validation, val, test) needs ``split``, whatever else lies beside them.
    Images lying directly in the folder (no class folders) and earlier timm-astro outputs inside it are refused.
    """
    path = Path(data)
    if path.suffix.lower() in CATALOGUE_SUFFIXES:
        if split:
            raise UserError(f'{path}: a catalogue is one set of objects, with no splits; drop --split, or pass a '
                            f'catalogue of the split')
        return _open_catalogue(path, catalogue or {})
    if not path.exists():
        raise UserError(f'{path}: no such file or folder; expected an ImageFolder split (DATA/test/<class>/...) or '
                        f'a Galaxy10-schema HDF5 file')
    if path.is_file():
        if path.suffix.lower() not in H5_SUFFIXES:
            raise UserError(f'{path}: a file that is not HDF5 ({", ".join(H5_SUFFIXES)}); expected an ImageFolder '
                            f'folder or a Galaxy10-schema HDF5 file')
        from timm_astro.data.galaxy10 import Galaxy10Dataset
        if split is None:
            raise UserError(f'{path}: an HDF5 file holds every split; say which with --split train|validation|test '
                            f'(and the --val-fraction / --test-fraction / --seed it was split with)')
        dataset = Galaxy10Dataset(path, split=split, val_fraction=val_fraction, test_fraction=test_fraction,
                                  seed=seed)
        meta = dataset.metadata()
        return LabelledData(dataset, f'{path} [{split}]', list(dataset.classes), meta.pop('index'),
                            list(dataset.targets), meta)
    root = path / split if split else path
    if split and not root.is_dir():
        found = _has_split_folders(path)
        raise UserError(f'{root}: no such split folder in {path} (found: {", ".join(found) or "none"})')
    if not split and _has_split_folders(root):  # whatever lies beside them (our own manifest.csv, a marker, ...)
        raise UserError(f'{root} holds the splits {", ".join(_has_split_folders(root))}: pass --split (e.g. test), '
                        f'or the split folder itself')
    return _open_image_folder(root)


def _open_catalogue(path: Path, options: Dict[str, Any]) -> LabelledData:
    """A catalogue's objects, scored against its label column (class indices or names, ``class_indices``): numbered
    here as if for a model without class names, and again by ``evaluate`` for the model scored."""
    from timm_astro.data.catalogue import CatalogueImages, class_indices, read_catalogue
    table = read_catalogue(path, **{'label_column': 'label', **options})
    class_names, targets = class_indices(table.labels)
    dataset = (ImageFiles([(str(p), t) for p, t in zip(table.paths, targets)]) if table.hdf5 is None
               else CatalogueImages(table, targets))  # files through the one reader evaluate uses for a folder
    columns = dict(list(table.columns.items())[1:])  # the id column is the rows' own id
    return LabelledData(dataset, str(path), class_names, table.ids, targets, columns, table.labels)


def _catalogue_for_model(model: nn.Module, data: LabelledData) -> LabelledData:
    """``data`` (a catalogue) with its labels numbered as ``model``'s classes: by its label names where it records
    them, so that a model trained in another class order is scored against the right targets."""
    from timm_astro.data.catalogue import CatalogueImages, class_indices
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    names = [str(n) for n in (names.values() if isinstance(names, dict) else names)] if names else None
    try:
        class_names, targets = class_indices(data.labels, names, getattr(model, 'num_classes', None))
    except UserError as e:
        raise UserError(f'{data.source}: {e}') from None
    dataset = (ImageFiles([(path, t) for (path, _), t in zip(data.dataset.samples, targets)])
               if isinstance(data.dataset, ImageFiles) else CatalogueImages(data.dataset.catalogue, targets))
    return dataclasses.replace(data, dataset=dataset, class_names=class_names, targets=targets)


def label_names_for(model: nn.Module, data_class_names: Sequence[str]) -> List[str]:
    """The model's own label names (config ``label_names``), else the data's class names; raises if the class
    counts differ, since every index would then be wrong."""
    num_classes = getattr(model, 'num_classes', None)
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    if num_classes is not None and num_classes != len(data_class_names):
        hint = ''
        if num_classes > len(data_class_names):  # a split without some class: its indices would all shift
            found = {_slug(n) for n in data_class_names}
            lacking = [str(n) for n in (names.values() if isinstance(names, dict) else names or [])
                       if _slug(str(n)) not in found]
            hint = (f"; the data lacks {'the classes ' + ', '.join(lacking[:5]) if lacking else 'some classes'}: "
                    'pass the folder that holds the splits with --split, which takes the classes of every split')
        raise UserError(f'the model predicts {num_classes} classes but the data has {len(data_class_names)} '
                        f'({", ".join(list(data_class_names)[:5])}{", ..." if len(data_class_names) > 5 else ""})'
                        f'{hint}')
    if names and len(names) == len(data_class_names):
        return [str(n) for n in (names.values() if isinstance(names, dict) else names)]
    return list(data_class_names)


_slug = class_key  # how a model's label names and the data's class names are matched


def label_mismatches(label_names: Sequence[str], data_class_names: Sequence[str]) -> List[str]:
    """Class positions where the model's label name and the data's class folder name plainly disagree."""
    return [f'{i}: model {a!r}, data {b!r}' for i, (a, b) in enumerate(zip(label_names, data_class_names))
            if _slug(a) != _slug(b)]


@torch.no_grad()
def collect_view_probabilities(
        model: nn.Module,
        loader,
        tta: str = 'none',
        device: Union[str, torch.device] = 'cpu',
        progress: bool = True,
        desc: str = 'evaluate',
) -> Tuple[torch.Tensor, List[Optional[str]]]:
    """Probabilities of every image read under every view, ``[N read, views, classes]``, in the loader's order, and
    one reason per item of the loader (None for an image read): batches are ``(images, targets)`` or, collated by
    ``collate_readable``, ``(images or None, targets or None, reasons)``."""
    model.eval()
    chunks, reasons = [], []
    total = len(loader.dataset) if hasattr(loader, 'dataset') else None
    with tqdm(total=total, unit='img', desc=desc, disable=None if progress else True, leave=False) as bar:
        for batch in loader:
            images, batch_reasons = batch[0], (batch[2] if len(batch) > 2 else [None] * len(batch[0]))
            if images is not None:
                chunks.append(view_probabilities(model, images.to(device), tta).transpose(0, 1).cpu())
            reasons += batch_reasons
            bar.update(len(batch_reasons))
    if not reasons:
        raise UserError('the data loader yielded no images')
    views = len(TTA_MODES[tta])
    return (torch.cat(chunks) if chunks else torch.empty(0, views, 0)), reasons


def _subset(data: LabelledData, keep: Sequence[int]) -> LabelledData:
    """``data`` reduced to the items ``keep`` (its dataset unchanged: positions refer to the whole)."""
    return dataclasses.replace(data, item_ids=[data.item_ids[i] for i in keep], targets=[data.targets[i] for i in keep],
                               columns={k: [v[i] for i in keep] for k, v in data.columns.items()})


@dataclass
class Evaluation:
    """Scores of one model on one split: ``metrics[mode]`` for 'none' and (with TTA) the TTA mode; ``data`` holds
    the images scored, ``left_out`` those that could not be read, with the reason."""
    model_name: str
    data: LabelledData
    label_names: List[str]
    tta: str
    view_probs: torch.Tensor  # [N, views, C]
    targets: torch.Tensor
    metrics: Dict[str, Dict[str, Any]]
    data_config: Dict[str, Any]
    warnings: List[str] = field(default_factory=list)
    left_out: List[Tuple[str, str]] = field(default_factory=list)  # (item id, reason) of each image not read
    reader: ImageReader = field(default_factory=ImageReader)  # how files became input (stretch, FITS bands)

    def probs(self, mode: str) -> torch.Tensor:
        return self.view_probs[:, 0] if mode == 'none' else self.view_probs.mean(1)


def evaluate(
        model: nn.Module,
        data: LabelledData,
        *,
        data_config: Optional[Dict[str, Any]] = None,
        tta: str = 'none',
        batch_size: int = 64,
        workers: int = 0,
        device: Union[str, torch.device] = 'cpu',
        progress: bool = True,
        stretch: Union[None, str, Stretch] = None,
        hdu: Union[None, int, str] = None,
        bands: Optional[Sequence[Union[int, str]]] = None,
) -> Evaluation:
    """Score ``model`` on ``data`` without and (``tta`` 'flip' or 'd4') with test-time symmetry averaging.

    ``data_config`` defaults to ``timm.data.resolve_model_data_config(model)`` (the model's own input size,
    interpolation, crop and normalisation); the same eval transform as timm's validate.py is used. Files are read
    as ``timm_astro.data.images.reader_for_model(model, stretch, hdu, bands)`` says (FITS and N-band data through the
    model's stretch). An image that cannot be read is left out, listed in ``left_out`` and warned about; none
    readable, or data of another band count than the model's, raises ``UserError``.
    """
    from timm.data import create_loader, resolve_model_data_config
    if tta not in TTA_MODES:
        raise UserError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    if data.labels is not None:  # a catalogue's class names: the model's order, not their own
        data = _catalogue_for_model(model, data)
    label_names = label_names_for(model, data.class_names)
    warnings = []
    mismatched = label_mismatches(label_names, data.class_names)
    if mismatched and label_names != data.class_names:
        warnings.append(f"the model's label names and the data's class folders differ at {len(mismatched)} "
                        f"position(s) ({'; '.join(mismatched[:3])}): check that both use the same class order")
    reader = reader_for_model(model, stretch, hdu, bands)
    if isinstance(data.dataset, ImageFiles):
        data.dataset.reader = reader
        reader.check(path for path, _ in data.dataset.samples)  # data that do not fit the model: one line, now
    elif reader.stretch is not None or reader.hdu is not None or reader.bands is not None:
        raise UserError(f'{data.source}: holds 8-bit images, but the model reads its input through the stretch '
                        f'{reader.stretch}: evaluate it on data of the kind it was trained on (FITS, N bands)')
    config = resolve_model_data_config(model)
    config.update(data_config or {})
    config = band_data_config(config, reader.in_chans)
    loader = create_loader(
        data.dataset, input_size=config['input_size'], batch_size=batch_size, is_training=False,
        interpolation=config['interpolation'], mean=config['mean'], std=config['std'], crop_pct=config['crop_pct'],
        crop_mode=config.get('crop_mode'), num_workers=workers, use_prefetcher=False, device=torch.device(device),
        collate_fn=collate_readable)
    view_probs, reasons = collect_view_probabilities(
        model.to(device), loader, tta, device, progress,
        desc=f'evaluate ({len(TTA_MODES[tta])} view{"s" if tta != "none" else ""})')
    left_out = [(data.item_ids[i], reason) for i, reason in enumerate(reasons) if reason is not None]
    if len(left_out) == len(reasons):
        raise UserError(f'none of the {len(reasons)} images of {data.source} could be read ({left_out[0][0]}: '
                        f'{left_out[0][1]}{"; ..." if len(left_out) > 1 else ""})')
    if left_out:
        warnings.append(f'{len(left_out)} of {len(reasons)} images could not be read and were left out (listed in '
                        f'metrics.json): {left_out[0][0]}: {left_out[0][1]}{"; ..." if len(left_out) > 1 else ""}')
        data = _subset(data, [i for i, reason in enumerate(reasons) if reason is None])
    present = set(data.targets)
    missing = [name for i, name in enumerate(data.class_names) if i not in present]
    if missing:
        warnings.append(f'the data has no images of {len(missing)} class{"es" if len(missing) > 1 else ""} '
                        f'({", ".join(missing[:5])}{", ..." if len(missing) > 5 else ""}): support 0, left out of '
                        f'the macro averages')
    targets = torch.tensor(data.targets)
    metrics = {'none': classification_metrics(view_probs[:, 0], targets, label_names)}
    if tta != 'none':
        metrics[tta] = classification_metrics(view_probs.mean(1), targets, label_names)
    name = getattr(model, 'pretrained_cfg', {}).get('architecture') or type(model).__name__
    return Evaluation(name, data, label_names, tta, view_probs, targets, metrics, config, warnings, left_out, reader)


SUMMARY_KEYS = ('top1', 'top5', 'balanced_accuracy', 'macro_f1', 'log_loss', 'ece')


def summary_table(evaluation: Evaluation) -> str:
    """The headline metrics as a small text table, one column per mode (plain, and TTA when used)."""
    modes = list(evaluation.metrics)
    header = ['metric'] + ['plain' if m == 'none' else f'tta {m}' for m in modes]
    rows = [[key] + [f"{evaluation.metrics[m][key]:.2f}" if key != 'log_loss' else f"{evaluation.metrics[m][key]:.4f}"
                     for m in modes]
            for key in SUMMARY_KEYS if key in evaluation.metrics['none']]
    width = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ['  '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, width)))
             for r in [header] + rows]
    return '\n'.join(lines)


def _csv_rows(evaluation: Evaluation) -> List[List[Any]]:
    names, modes = evaluation.label_names, list(evaluation.metrics)
    header = ['id', 'target', 'target_name']
    for mode in modes:
        prefix = '' if mode == 'none' else f'{mode}_'
        header += [f'{prefix}prediction', f'{prefix}prediction_name', f'{prefix}confidence', f'{prefix}correct']
    shown = modes[-1]
    header += [f'prob_{n}' for n in names] + ['entropy'] + list(evaluation.data.columns)
    rows = [header]
    probs = {m: evaluation.probs(m) for m in modes}
    entropy = predictive_entropy(probs[shown])
    for i, item in enumerate(evaluation.data.item_ids):
        target = int(evaluation.targets[i])
        row = [item, target, names[target]]
        for mode in modes:
            confidence, predicted = probs[mode][i].max(-1)
            row += [int(predicted), names[int(predicted)], f'{float(confidence):.6f}', int(int(predicted) == target)]
        row += [f'{float(p):.6f}' for p in probs[shown][i]] + [f'{float(entropy[i]):.6f}']
        row += [values[i] for values in evaluation.data.columns.values()]
        rows.append(row)
    return rows


def _reader_entries(reader: ImageReader) -> Dict[str, Any]:
    """How files became input, for metrics.json: the stretch and FITS bands, when there were any."""
    entries: Dict[str, Any] = {}
    if reader.stretch is not None:
        entries['stretch'] = reader.stretch.to_config()
    if reader.hdu is not None:
        entries['fits_hdu'] = reader.hdu
    if reader.bands is not None:
        entries['fits_bands'] = list(reader.bands)
    return entries


def write_report(evaluation: Evaluation, out_dir: PathLike, *, overwrite: bool = False,
                 extra: Optional[Dict[str, Any]] = None, plots: bool = True) -> Path:
    """Write ``metrics.json``, ``predictions.csv`` and (``plots``, needs matplotlib) ``confusion_matrix.png`` and
    ``reliability.png`` into ``out_dir``, all or nothing."""
    from timm_astro.evaluation.plots import plot_confusion_matrix, plot_reliability, pyplot
    if plots:
        pyplot()  # a missing matplotlib is reported before anything is written
    modes = list(evaluation.metrics)
    shown = modes[-1]
    with atomic_output_dir(out_dir, CREATED_BY, overwrite=overwrite) as tmp:
        report = {
            'model': evaluation.model_name,
            'data': evaluation.data.source,
            'num_images': len(evaluation.data.item_ids),
            'num_left_out': len(evaluation.left_out),
            'left_out': [{'id': item, 'reason': reason} for item, reason in evaluation.left_out],
            'label_names': evaluation.label_names,
            'tta': evaluation.tta,
            'data_config': {k: list(v) if isinstance(v, tuple) else v for k, v in evaluation.data_config.items()},
            **_reader_entries(evaluation.reader),
            'metrics': {('plain' if m == 'none' else f'tta_{m}'): v for m, v in evaluation.metrics.items()},
            'warnings': evaluation.warnings,
            **(extra or {}),
        }
        write_json(tmp / 'metrics.json', report)
        with open(tmp / 'predictions.csv', 'w', newline='', encoding='utf-8') as f:
            csv.writer(f, lineterminator='\n').writerows(_csv_rows(evaluation))
        if plots:
            title = f"{evaluation.model_name} on {'/'.join(Path(evaluation.data.source).parts[-2:])}"
            tta_note = '' if shown == 'none' else f', {shown} TTA'
            top1 = evaluation.metrics[shown]['top1']
            plot_confusion_matrix(evaluation.metrics[shown]['confusion_matrix'], evaluation.label_names,
                                  tmp / 'confusion_matrix.png', title=f'{title}{tta_note}: top-1 {top1:.1f}%')
            bins = {('plain' if m == 'none' else f'tta {m}'): reliability_bins(evaluation.probs(m), evaluation.targets)
                    for m in modes}
            plot_reliability(bins, tmp / 'reliability.png', title=f'{title}: reliability')
    return Path(out_dir)
