"""Classify a catalogue: a folder of images, a list of paths or a Galaxy10-schema HDF5 file, streamed to a CSV.

One row per image: its path (or its HDF5 row and sky coordinates), the predicted label and its probability, one
probability column per class, the predictive entropy and, with test-time symmetry (``tta='d4'``), how much the
views disagree: the fraction of the 8 views whose own top-1 differs from the averaged prediction, and the mutual
information between the prediction and the view (entropy of the mean minus the mean entropy of the views). Both
are 0 for a prediction that no rotation or reflection changes; sort by them to find galaxies a person should see.

Memory stays constant however long the catalogue: images stream through a DataLoader and rows are appended to a
partial file beside the output (``.NAME.partial``), renamed into place at the end. After an interruption,
``resume=True`` keeps the rows already written and predicts only the rest, so no image is predicted twice and none
is missed. An image that cannot be read is reported and counted (listed in ``NAME.errors.csv``) and the run goes
on, or stops at once with ``strict=True``.
"""
import csv
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from PIL import Image
from tqdm import tqdm

from timm_astro.data.images import read_image
from timm_astro.errors import OutputExistsError, UserError
from timm_astro.evaluation.evaluate import H5_SUFFIXES
from timm_astro.evaluation.metrics import predictive_entropy
from timm_astro.evaluation.tta import TTA_MODES, view_probabilities
from timm_astro.outputs import atomic_file, check_output_location, write_json

__all__ = ['PredictionInputs', 'open_prediction_inputs', 'predict_to_csv', 'PredictSummary', 'read_label_names']

PathLike = Union[str, os.PathLike]
LIST_SUFFIXES = ('.txt', '.lst', '.list')


def _image_extensions() -> Tuple[str, ...]:
    from timm.data.readers.img_extensions import get_img_extensions
    return tuple(get_img_extensions())


class PredictionInputs(torch.utils.data.Dataset):
    """The images to classify, in a fixed order; items are ``(image tensor or None, position, error text)``.

    An image that cannot be opened or decoded yields ``None`` and the reason instead of raising, so that one bad
    file never stops a DataLoader worker.
    """

    def __init__(self, ids: List[str], id_columns: Dict[str, List[str]], load: Callable[[int], Image.Image],
                 source: str, transform: Optional[Callable] = None):
        self.ids, self.id_columns, self.load, self.source, self.transform = ids, id_columns, load, source, transform

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, position: int):
        try:
            image = self.load(position)
            return (self.transform(image) if self.transform is not None else image), position, ''
        except Exception as e:  # noqa: BLE001  any failure to read one image is that image's error, not the run's
            return None, position, f'{type(e).__name__}: {e}'.replace('\n', ' ')


def _load_file(path: str) -> Image.Image:
    return read_image(path)  # evaluate's reader and rules: 16-bit pixels scaled, special files never opened, ...


def open_prediction_inputs(source: PathLike) -> PredictionInputs:
    """A folder (searched recursively for images), a text file of image paths (one a line; relative paths are
    relative to the text file; blank lines and '#' comments skipped) or a Galaxy10-schema HDF5 file."""
    path = Path(source)
    if not path.exists():
        raise UserError(f'{path}: no such file or folder; expected a folder of images, a text file of image paths '
                        f'or a Galaxy10-schema HDF5 file')
    if path.is_dir():
        extensions = _image_extensions()
        files = sorted(p for p in path.rglob('*') if p.suffix.lower() in extensions and p.is_file())
        if not files:
            raise UserError(f'{path}: no images found (looked for {", ".join(extensions)} at any depth)')
        ids = [p.relative_to(path).as_posix() for p in files]
        return PredictionInputs(ids, {'path': ids}, lambda i: _load_file(str(files[i])), str(path))
    suffix = path.suffix.lower()
    if suffix in H5_SUFFIXES:
        from timm_astro.data.galaxy10 import Galaxy10Dataset
        dataset = Galaxy10Dataset(path)
        columns = dataset.metadata()
        columns = {k: v for k, v in columns.items() if k == 'index' or any(v)}  # drop columns the file lacks
        return PredictionInputs(columns['index'], columns, lambda i: dataset[i][0], str(path))
    if suffix in LIST_SUFFIXES:
        lines = [line.strip() for line in path.read_text(encoding='utf-8').splitlines()]
        entries = [line for line in lines if line and not line.startswith('#')]
        if not entries:
            raise UserError(f'{path}: the list names no images (one path a line expected)')
        files = [str(Path(e) if Path(e).is_absolute() else path.parent / e) for e in entries]
        return PredictionInputs(entries, {'path': entries}, lambda i: _load_file(files[i]), str(path))
    raise UserError(f'{path}: expected a folder, a list of paths ({", ".join(LIST_SUFFIXES)}) or an HDF5 file '
                    f'({", ".join(H5_SUFFIXES)}); got a {suffix or "suffix-less"} file')


def read_label_names(value: str) -> List[str]:
    """Label names from a JSON list file (``class_names.json``), a text file (one a line) or 'a,b,c'."""
    import json
    path = Path(value)
    if path.is_file():
        text = path.read_text(encoding='utf-8')
        if path.suffix.lower() == '.json':
            try:
                names = json.loads(text)
            except ValueError as e:
                raise UserError(f'{path}: not valid JSON ({e}); expected a list of class names') from None
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise UserError(f'{path}: expected a JSON list of class names')
            return names
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [name.strip() for name in value.split(',') if name.strip()]


def _collate(items):
    images = [image for image, _, _ in items if image is not None]
    ok = [position for image, position, _ in items if image is not None]
    failed = [(position, error) for image, position, error in items if image is None]
    return (torch.stack(images) if images else None), ok, failed


def _partial_paths(out: Path) -> Tuple[Path, Path]:
    partial = out.with_name(f'.{out.name}.partial')
    return partial, partial.with_name(partial.name + '.owner')


def _read_partial(partial: Path, header: List[str]) -> List[str]:
    """Ids already written to ``partial``; a last line cut off mid-write is dropped from the file first."""
    with open(partial, 'rb+') as f:
        data = f.read()
        complete = data[:data.rfind(b'\n') + 1]
        if len(complete) != len(data):
            f.truncate(len(complete))
    rows = list(csv.reader(complete.decode('utf-8').splitlines()))
    if not rows or rows[0] != header:
        raise UserError(f'{partial}: written with other columns (another model, label names or --tta?); pass '
                        f'--overwrite to start again')
    return [row[0] for row in rows[1:]]


@dataclass
class PredictSummary:
    out: Path
    predicted: int
    resumed: int
    errors: int
    seconds: float

    @property
    def images_per_second(self) -> float:
        return self.predicted / self.seconds if self.seconds > 0 else math.nan


def _header(id_columns: Sequence[str], label_names: Sequence[str], tta: str) -> List[str]:
    header = list(id_columns) + ['prediction', 'probability'] + [f'prob_{n}' for n in label_names] + ['entropy']
    if tta != 'none':
        header += ['tta_disagreement', 'tta_mutual_information']
    return header


def _rows(view_probs: torch.Tensor, label_names: Sequence[str]) -> Iterator[List[Any]]:
    """CSV cells per image from ``[views, B, C]`` probabilities."""
    mean = view_probs.mean(0)
    confidence, predicted = mean.max(-1)
    entropy = predictive_entropy(mean)
    views = view_probs.shape[0]
    if views > 1:
        disagreement = (view_probs.argmax(-1) != predicted).float().mean(0)
        mutual_information = entropy - predictive_entropy(view_probs).mean(0)
    for b in range(mean.shape[0]):
        row = [label_names[int(predicted[b])], f'{float(confidence[b]):.6f}']
        row += [f'{float(p):.6f}' for p in mean[b]] + [f'{float(entropy[b]):.6f}']
        if views > 1:
            row += [f'{float(disagreement[b]):.4f}', f'{max(0.0, float(mutual_information[b])):.6f}']
        yield row


@torch.no_grad()
def predict_to_csv(
        model: nn.Module,
        inputs: PredictionInputs,
        out: PathLike,
        *,
        label_names: Optional[Sequence[str]] = None,
        data_config: Optional[Dict[str, Any]] = None,
        tta: str = 'none',
        batch_size: int = 64,
        workers: int = 0,
        device: Union[str, torch.device] = 'cpu',
        resume: bool = False,
        overwrite: bool = False,
        strict: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
) -> PredictSummary:
    """Predict every image of ``inputs`` into the CSV ``out`` (see the module docstring for its columns)."""
    from timm.data import create_transform, resolve_model_data_config
    if tta not in TTA_MODES:
        raise UserError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    for name, value in (('batch_size', batch_size), ('workers', workers + 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f'{name} must be a whole number of at least {1 if name == "batch_size" else 0}')
    num_classes = getattr(model, 'num_classes', None)
    if not num_classes:
        raise UserError('the model has no classifier (num_classes=0): predict needs class probabilities')
    if label_names is None:
        names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
        label_names = [str(n) for n in names] if names else [str(i) for i in range(num_classes)]
    if len(label_names) != num_classes:
        raise UserError(f'{len(label_names)} label names for a model that predicts {num_classes} classes')
    if len(set(label_names)) != len(label_names):
        raise UserError('the label names repeat; each class needs its own probability column')
    out = Path(out)
    partial, owner = _partial_paths(out)
    header = _header(list(inputs.id_columns), label_names, tta)
    if partial.exists() and not resume and not overwrite:
        raise OutputExistsError(f'{partial}: an interrupted run of this prediction is there; pass --resume to '
                                f'continue it, or --overwrite to start again')
    check_output_location(out, overwrite=overwrite or resume, kind='file')
    done: set = set()
    if resume and partial.exists():
        done = set(_read_partial(partial, header))
    elif partial.exists():
        partial.unlink()
    todo = [i for i, item in enumerate(inputs.ids) if item not in done]

    config = resolve_model_data_config(model)
    config.update(data_config or {})
    inputs.transform = create_transform(**{k: v for k, v in config.items() if k != 'first_conv'}, is_training=False)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(inputs, todo), batch_size=batch_size, num_workers=workers, collate_fn=_collate,
        persistent_workers=False)
    model = model.to(device).eval()
    errors: List[Tuple[str, str]] = []
    predicted = 0
    write_json(owner, {'host': socket.gethostname(), 'pid': os.getpid()})
    start = time.perf_counter()
    try:
        with open(partial, 'a', newline='', encoding='utf-8') as f:
            writer = csv.writer(f, lineterminator='\n')
            if f.tell() == 0:
                writer.writerow(header)
            with tqdm(total=len(todo), unit='img', desc='predict', disable=None if progress else True) as bar:
                for images, positions, failed in loader:
                    for position, error in failed:
                        if strict:
                            raise UserError(f'{inputs.ids[position]}: cannot be read ({error}); stopped (--strict). '
                                            f'{predicted} predictions so far are kept in {partial} for --resume')
                        errors.append((inputs.ids[position], error))
                    if images is not None:
                        probs = view_probabilities(model, images.to(device), tta)
                        for position, cells in zip(positions, _rows(probs.cpu(), label_names)):
                            writer.writerow([inputs.id_columns[c][position] for c in inputs.id_columns] + cells)
                        predicted += len(positions)
                    f.flush()
                    bar.update(len(positions) + len(failed))
    except KeyboardInterrupt as e:  # the partial file is kept on purpose: say where, and how to go on
        raise KeyboardInterrupt(
            f'{predicted + len(done)} predictions so far are kept in {partial}; run the same command with --resume '
            f'to continue, or --overwrite to start again') from e
    seconds = time.perf_counter() - start
    if errors:
        with atomic_file(out.with_name(out.stem + '.errors.csv'), newline='') as f:
            csv.writer(f, lineterminator='\n').writerows([['id', 'error'], *errors])
        log(f'{len(errors)} image(s) could not be read and were skipped: see {out.stem}.errors.csv')
    if predicted + len(done) == 0:
        partial.unlink()
        owner.unlink()
        raise UserError(f'{inputs.source}: none of the {len(inputs)} images could be read; nothing was written')
    os.replace(partial, out)
    owner.unlink()
    return PredictSummary(out, predicted, len(done), len(errors), seconds)
