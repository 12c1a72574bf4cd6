"""Classify a catalogue: a folder of images, a list of paths or a Galaxy10-schema HDF5 file, streamed to a CSV.

One row per image: its path (or its HDF5 row and sky coordinates), the predicted label and its probability, one
probability column per class, the predictive entropy and, with test-time symmetry (``tta='d4'``), how much the
views disagree: the fraction of the 8 views whose own top-1 differs from the averaged prediction, and the mutual
information between the prediction and the view (entropy of the mean minus the mean entropy of the views). Both
are 0 for a prediction that no rotation or reflection changes; sort by them to find galaxies a person should see.

Memory stays constant however long the catalogue: images stream through a DataLoader and rows are appended to a
partial file beside the output (``.NAME.partial``), renamed into place at the end. After an interruption,
``resume=True`` keeps the rows already written and predicts only the rest, so no image is predicted twice and none
is missed. A resume must continue the same run: the partial file has a record beside it (``.NAME.partial.json``:
the input's absolute path, a digest of its ids and one of where each image is read from (its file, or HDF5 file
and row), the model and a digest of its weights, the TTA, label names and data config), and a resume whose record
differs is refused, saying what differs. One run writes an output at a time (``timm_astro.outputs.output_lock``),
and ``out`` is checked again once it holds the lock. Rows are written and read back with the csv module only, so a file
name holding a line break (legal on Linux) stays one record. An image that cannot be read is reported and counted
(listed in ``NAME.errors.csv``) and the run goes on, or stops at once with ``strict=True``.

That machinery is ``stream_rows``, shared with ``timm-astro embed`` (``timm_astro.evaluation.embed``): a command gives
a ``RowStream`` (its CSV columns and how a batch of images becomes their cells) and, for an output other than the
CSV itself, what to build from the finished partial file.
"""
import csv
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from PIL import Image
from tqdm import tqdm

from timm_astro.data.catalogue import CATALOGUE_SUFFIXES, read_catalogue
from timm_astro.data.fits import is_fits
from timm_astro.data.images import ImageReader, band_data_config, reader_for_model
from timm_astro.errors import OutputExistsError, UserError, describe_os_error
from timm_astro.evaluation.evaluate import H5_SUFFIXES
from timm_astro.evaluation.metrics import predictive_entropy
from timm_astro.evaluation.tta import TTA_MODES, view_probabilities
from timm_astro.outputs import (
    atomic_file, check_output_location, make_parent_folders, output_lock, remove_made_folders, write_json)
from timm_astro.version import __version__

__all__ = ['PredictionInputs', 'open_prediction_inputs', 'predict_to_csv', 'PredictSummary', 'read_label_names',
           'RowStream', 'stream_rows']

PathLike = Union[str, os.PathLike]
LIST_SUFFIXES = ('.txt', '.lst', '.list')


def _image_extensions() -> Tuple[str, ...]:
    from timm.data.readers.img_extensions import get_img_extensions
    return tuple(get_img_extensions())


class PredictionInputs(torch.utils.data.Dataset):
    """The images to classify, in a fixed order; items are ``(image tensor or None, position, error text)``.

    An image that cannot be opened or decoded yields ``None`` and the reason instead of raising, so that one bad
    file never stops a DataLoader worker. The images are files (``paths``), read by ``reader`` (set by
    ``stream_rows`` from the model: its stretch and band count, ``timm_astro.data.images.reader_for_model``), or
    HDF5 rows read by ``load``, with ``origins`` naming each ('FILE:ROW') for the run's record.
    """

    def __init__(self, ids: List[str], id_columns: Dict[str, List[str]], source: str, *,
                 paths: Optional[List[str]] = None, load: Optional[Callable[[int], Image.Image]] = None,
                 origins: Optional[List[str]] = None, transform: Optional[Callable] = None):
        if (paths is None) == (load is None) or (load is not None and origins is None):
            raise TypeError('PredictionInputs takes paths, or load with the origins of what it loads')
        self.ids, self.id_columns, self.source, self.transform = ids, id_columns, source, transform
        self.paths, self.load, self.origins, self.reader = paths, load, origins, ImageReader()

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, position: int):
        try:
            image = self.reader(self.paths[position]) if self.paths is not None else self.load(position)
            return (self.transform(image) if self.transform is not None else image), position, ''
        except Exception as e:  # noqa: BLE001  any failure to read one image is that image's error, not the run's
            return None, position, f'{type(e).__name__}: {e}'.replace('\n', ' ')


def open_prediction_inputs(source: PathLike, catalogue: Optional[Dict[str, Any]] = None) -> PredictionInputs:
    """A folder (searched recursively for images), a text file of image paths (one a line; relative paths are
    relative to the text file; blank lines and '#' comments skipped), a Galaxy10-schema HDF5 file, or a catalogue
    CSV (``timm_astro.data.catalogue.read_catalogue``, with ``catalogue`` as its options: the columns it names are
    carried into every row)."""
    path = Path(source)
    if path.suffix.lower() in CATALOGUE_SUFFIXES:
        table = read_catalogue(path, **(catalogue or {}))
        if table.hdf5 is None:  # read as a folder's files are; HDF5 rows as an HDF5 input's
            return PredictionInputs(table.ids, table.columns, str(path), paths=[str(p) for p in table.paths])
        return PredictionInputs(table.ids, table.columns, str(path), load=table.load,
                                origins=[f'{table.hdf5.resolve()}:{row}' for row in table.rows])
    if not path.exists():
        raise UserError(f'{path}: no such file or folder; expected a folder of images, a text file of image paths, '
                        f'a Galaxy10-schema HDF5 file or a catalogue CSV')
    if path.is_dir():
        extensions = _image_extensions()
        files = sorted(p for p in path.rglob('*') if (p.suffix.lower() in extensions or is_fits(p)) and p.is_file())
        if not files:
            raise UserError(f'{path}: no images found (looked for {", ".join(extensions)}, .fits at any depth)')
        ids = [p.relative_to(path).as_posix() for p in files]
        return PredictionInputs(ids, {'path': ids}, str(path), paths=[str(p) for p in files])
    suffix = path.suffix.lower()
    if suffix in H5_SUFFIXES:
        from timm_astro.data.galaxy10 import Galaxy10Dataset
        dataset = Galaxy10Dataset(path)
        columns = dataset.metadata()
        columns = {k: v for k, v in columns.items() if k == 'index' or any(v)}  # drop columns the file lacks
        return PredictionInputs(columns['index'], columns, str(path), load=lambda i: dataset[i][0],
                                origins=[f'{path.resolve()}:{row}' for row in columns['index']])
    if suffix in LIST_SUFFIXES:
        try:
            text = path.read_text(encoding='utf-8')
        except UnicodeDecodeError as e:
            raise UserError(f'{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); expected '
                            f'a UTF-8 list of image paths') from None
        # split at '\n' only: U+2028 and NEL, line breaks to str.splitlines, are legal in a file name
        lines = [line.strip(' \t\r') for line in text.split('\n')]
        entries = [line for line in lines if line and not line.startswith('#')]
        if not entries:
            raise UserError(f'{path}: the list names no images (one path a line expected)')
        files = [str(Path(e) if Path(e).is_absolute() else path.parent / e) for e in entries]
        return PredictionInputs(entries, {'path': entries}, str(path), paths=files)
    raise UserError(f'{path}: expected a folder, a list of paths ({", ".join(LIST_SUFFIXES)}), an HDF5 file '
                    f'({", ".join(H5_SUFFIXES)}) or a catalogue ({", ".join(CATALOGUE_SUFFIXES)}); got a '
                    f'{suffix or "suffix-less"} file')


def read_label_names(value: str) -> List[str]:
    """Label names from a JSON list file (``class_names.json``), a UTF-8 text file (one a line) or 'a,b,c'."""
    path = Path(value)
    if path.is_dir():
        raise UserError(f'{path}: is a folder; expected a JSON list file (class_names.json), a text file with one name '
                        f'a line, or names separated by commas')
    if not path.is_file():
        if ',' not in value and (os.sep in value or path.suffix.lower() in ('.json',) + LIST_SUFFIXES):
            raise UserError(f'{path}: no such file; expected a JSON list file, a text file with one name a line, or '
                            f'names separated by commas')
        return [name.strip() for name in value.split(',') if name.strip()]
    try:
        text = path.read_text(encoding='utf-8')
    except UnicodeDecodeError as e:
        raise UserError(f'{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); expected a '
                        f'UTF-8 file of class names') from None
    if path.suffix.lower() == '.json':
        try:
            names = json.loads(text)
        except ValueError as e:
            raise UserError(f'{path}: not valid JSON ({e}); expected a list of class names') from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise UserError(f'{path}: expected a JSON list of class names')
        return names
    return [line.strip() for line in text.split('\n') if line.strip()]


def _collate(items):
    images = [image for image, _, _ in items if image is not None]
    ok = [position for image, position, _ in items if image is not None]
    failed = [(position, error) for image, position, error in items if image is None]
    return (torch.stack(images) if images else None), ok, failed


COMMAND = 'timm-astro predict'


def _partial_paths(out: Path) -> Tuple[Path, Path]:
    """The partial CSV beside ``out`` and the record of the run that writes it (``.NAME.partial.json``)."""
    partial = out.with_name(f'.{out.name}.partial')
    return partial, partial.with_name(partial.name + '.json')


def _remove_partial(partial: Path, record: Path) -> None:
    # .tmp: a record being written; .owner: left by earlier versions
    for path in (partial, record, record.with_name(record.name + '.tmp'), partial.with_name(partial.name + '.owner')):
        path.unlink(missing_ok=True)


def _weights_sha256(model: nn.Module) -> str:
    """A digest of every tensor of the state dict (names, dtypes, shapes, bytes): the model's identity in a record."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        if not isinstance(value, torch.Tensor):  # a module's extra state
            digest.update(f'{name} {value!r}\n'.encode())
            continue
        value = value.detach().cpu().contiguous()
        digest.update(f'{name} {value.dtype} {tuple(value.shape)}\n'.encode())
        digest.update(value.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _run_record(model: nn.Module, inputs: PredictionInputs, label_names: Sequence[str], tta: str,
                config: Dict[str, Any], header: List[str], command: str = COMMAND) -> Dict[str, Any]:
    """What decides the rows of a prediction: which images, which model and weights, which options. A resume must
    find the same, or it would append another run's rows to this one's (two folders with the same file names, a
    catalogue read with another images root or HDF5 file: the same ids, other images)."""
    origins = [os.path.abspath(p) for p in inputs.paths] if inputs.paths is not None else inputs.origins
    return {
        'created_by': command, 'version': __version__,
        'input': str(Path(inputs.source).resolve()), 'images': len(inputs.ids),
        'images_sha256': _digest(inputs.ids), 'origins_sha256': _digest(origins),
        'model': (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__,
        'weights_sha256': _weights_sha256(model),
        'tta': tta, 'label_names': list(label_names),
        'data_config': json.loads(json.dumps({k: v for k, v in sorted(config.items())}, default=str)),
        'columns': header,
    }


def _digest(texts: Sequence[str]) -> str:
    return hashlib.sha256('\0'.join(texts).encode('utf-8', 'surrogateescape')).hexdigest()


def _short(value: Any) -> str:
    return f'{value[:12]}...' if isinstance(value, str) and len(value) == 64 else json.dumps(value)


def _record_difference(old: Dict[str, Any], new: Dict[str, Any]) -> Optional[str]:
    """How the interrupted run ``old`` differs from this one, in words; None if it is the same run."""
    if old.get('input') != new['input']:
        return f'read other images ({old.get("input")} there, {new["input"]} now)'
    if old.get('images_sha256') != new['images_sha256']:
        if old.get('images') != new['images']:
            return f'read another list of images ({old.get("images")} images there, {new["images"]} now)'
        return f'read another list of images (as many, {new["images"]}, with other names or order)'
    if 'origins_sha256' not in old:
        return (f'was written by timm-astro {old.get("version")}, whose record does not say where its images were '
                f'read from')
    if old['origins_sha256'] != new['origins_sha256']:
        return ('read the same ids from other images (other files or HDF5 rows: another --images-root, --path-column '
                'or --hdf5?)')
    if old.get('model') != new['model']:
        return f'used another model ({old.get("model")} there, {new["model"]} now)'
    if old.get('weights_sha256') != new['weights_sha256']:
        return (f'used other weights (sha256 {_short(old.get("weights_sha256"))} there, '
                f'{_short(new["weights_sha256"])} now)')
    if old.get('tta') != new['tta']:
        return f'used another --tta ({old.get("tta")} there, {new["tta"]} now)'
    if old.get('label_names') != new['label_names']:
        return f'used other label names ({_short(old.get("label_names"))} there, {_short(new["label_names"])} now)'
    old_config = old.get('data_config') or {}
    changed = [key for key in sorted(set(old_config) | set(new['data_config']))
               if old_config.get(key) != new['data_config'].get(key)]
    if changed:
        return 'used another preprocessing ({})'.format('; '.join(
            f'{key} {_short(old_config.get(key))} there, {_short(new["data_config"].get(key))} now' for key in changed))
    if old.get('columns') != new['columns']:
        return 'wrote other columns'
    return None


def _complete_records(partial: Path) -> Iterator[str]:
    """The complete CSV records of ``partial``, each with its line breaks; a last record cut off mid-write (a kill,
    a full disk) is dropped from the file. A line break inside quotes (a file name may hold one) belongs to its
    record: a record ends at a newline after an even number of quote characters, as the csv module writes them."""
    with open(partial, 'rb+') as f:
        pending: List[bytes] = []
        quotes = end = offset = 0
        for line in f:  # a binary file splits at b'\n' only, never at '\r', U+2028 or NEL
            offset += len(line)
            pending.append(line)
            quotes += line.count(b'"')
            if line.endswith(b'\n') and quotes % 2 == 0:
                yield b''.join(pending).decode('utf-8', 'surrogateescape')
                pending, quotes, end = [], 0, offset
        if end != offset:
            f.truncate(end)


def _read_partial(partial: Path, header: List[str]) -> List[str]:
    """Ids already written to ``partial`` (an empty one, killed before its header was written, has none)."""
    ids: List[str] = []
    for number, row in enumerate(csv.reader(_complete_records(partial))):
        if number == 0 and row != header:
            raise UserError(f'{partial}: its first line is not the header this run writes; the file was changed. '
                            f'Pass --overwrite to start again')
        if number and len(row) != len(header):
            raise UserError(f'{partial}: record {number + 1} has {len(row)} fields, expected {len(header)}; the file '
                            f'was changed. Pass --overwrite to start again')
        if number:
            ids.append(row[0])
    return ids


def _read_record(path: Path) -> Optional[Dict[str, Any]]:
    try:
        value = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _finished_differs(out: Path, header: List[str], ids: Sequence[str]) -> str:
    """What ``out`` (a finished CSV) is, next to what this run would write: for the refusal of a --resume."""
    try:
        with open(out, newline='', encoding='utf-8', errors='surrogateescape') as f:
            reader = csv.reader(f)
            written_header = next(reader, None)
            written = {row[0] for row in reader if row}
    except (OSError, csv.Error):
        return 'is not a prediction CSV'
    if written_header != header:
        return 'is a finished prediction with other columns'
    if written != set(ids):
        return f'is a finished prediction of other images ({len(written)} images there, {len(set(ids))} now)'
    return 'is already finished (with images of the same names)'


def _start_or_resume(out: Path, record: Dict[str, Any], ids: Sequence[str], resume: bool, overwrite: bool) -> set:
    """Make ready the partial file for this run, under the output lock; returns the ids it already holds."""
    partial, record_path = _partial_paths(out)
    if not partial.exists():
        record_path.unlink(missing_ok=True)  # a run killed between renaming its partial and removing its record
        if resume and out.exists():
            finished = 'is already finished' if out.is_dir() else _finished_differs(out, record['columns'], ids)
            raise OutputExistsError(f'{out}: {finished}; --resume continues only an interrupted run: pass '
                                    f'--overwrite to write it again')
    elif resume:
        old = _read_record(record_path)
        if old is None:
            raise UserError(f'{partial}: has no readable record of the run that wrote it ({record_path.name}), so it '
                            f'cannot be shown to continue this one; pass --overwrite to start again')
        difference = _record_difference(old, record)
        if difference:
            raise UserError(f'{out}: the interrupted run kept in {partial} {difference}; resume it with its own '
                            f'command, or pass --overwrite to start again')
        return set(_read_partial(partial, record['columns']))
    elif overwrite:
        _remove_partial(partial, record_path)
    else:
        raise OutputExistsError(f'{partial}: an interrupted run of {record["created_by"]} for {out.name} is there; '
                                f'pass --resume to continue it, or --overwrite to start again')
    tmp = record_path.with_name(record_path.name + '.tmp')  # the record first, then the partial: never one without
    write_json(tmp, record)
    os.replace(tmp, record_path)
    return set()


def _check_model_runs(model: Callable[[torch.Tensor], Any], input_size: Sequence[int],
                      device: Union[str, torch.device]) -> None:
    """One forward pass (``model``: the module or the forward a stream uses) on a blank image, so that a size the
    model refuses is said before any file is made."""
    try:
        model(torch.zeros((1, *input_size), device=device))
    except (torch.cuda.OutOfMemoryError, UserError):  # a UserError already says what is wrong
        raise
    except (ValueError, RuntimeError, AssertionError, TypeError) as e:
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f'input size {"x".join(map(str, input_size))} does not fit the model: {detail}') from None


def _csv_text(rows: Sequence[Sequence[str]]) -> str:
    """``rows`` as CSV records ending in '\\n'. The csv module quotes a field holding '\\n' or a quote, but with this
    line end not one holding a lone '\\r', which every CSV reader takes for a line end: a row with a '\\r' anywhere
    (a file name may hold one) is written with every field quoted. Readers see the same cells either way."""
    text = io.StringIO()
    minimal = csv.writer(text, lineterminator='\n')
    quote_all = csv.writer(text, lineterminator='\n', quoting=csv.QUOTE_ALL)
    for row in rows:
        (quote_all if any('\r' in str(cell) for cell in row) else minimal).writerow(row)
    return text.getvalue()


class _WriteFailed(Exception):
    """An OSError while appending to the partial file (a full disk), told apart from one while reading images."""


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


@dataclass
class RowStream:
    """What a streaming command writes: its CSV ``header`` (the input's id columns first) and ``cells``, which turns
    a batch of images (on the device) into the cells after the id columns, one list per image. ``forward`` is what
    is run once on a blank image before any file is made; ``command`` and ``noun`` ('predictions') name the output
    in the run's record and in messages."""
    command: str
    noun: str
    header: List[str]
    cells: Callable[[torch.Tensor], List[List[str]]]
    forward: Callable[[torch.Tensor], Any]


def check_header(header: Sequence[str], id_columns: Sequence[str]) -> None:
    """Refuse an input column (a catalogue's) named like a column the command writes: the CSV would hold two."""
    clash = [name for name in header[len(id_columns):] if name in id_columns]
    if clash:
        raise UserError(f'the input column {clash[0]!r} has the name of an output column; rename it in the catalogue '
                        f'or carry other columns (--columns)')


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
        reading: Optional[Dict[str, Any]] = None,
) -> PredictSummary:
    """Predict every image of ``inputs`` into the CSV ``out`` (see the module docstring for its columns).
    ``reading`` (``stretch``, ``hdu``, ``bands``) is for a model that records no stretch (``reader_for_model``).

    Everything that can be refused is checked before any file is made: the arguments, the output location, and that
    the model runs at the input size. A second run on the same ``out`` while one writes it fails at once.
    """
    if tta not in TTA_MODES:
        raise UserError(f"tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
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
    header = _header(list(inputs.id_columns), label_names, tta)
    check_header(header, list(inputs.id_columns))
    model = model.to(device).eval()

    def cells(images: torch.Tensor) -> List[List[str]]:
        return list(_rows(view_probabilities(model, images, tta).cpu(), label_names))
    stream = RowStream(COMMAND, 'predictions', header, cells, model)
    return stream_rows(model, inputs, out, stream, data_config=data_config, tta=tta, label_names=label_names,
                       batch_size=batch_size, workers=workers, device=device, resume=resume, overwrite=overwrite,
                       strict=strict, progress=progress, log=log, reading=reading)


def _finish_csv(partial: Path, out: Path, errors: List[Tuple[str, str]], log: Callable[[str], None]) -> None:
    """predict's output: the partial file renamed to ``out``, with the list of unreadable images beside it."""
    errors_path = out.with_name(out.stem + '.errors.csv')
    if errors:  # the list of unreadable images is renamed into place with the CSV, an earlier one removed with it
        with atomic_file(errors_path, newline='') as f:
            f.write(_csv_text([['id', 'error'], *errors]))
            os.replace(partial, out)
        log(f'{len(errors)} image(s) could not be read and were skipped: see {errors_path.name}')
    else:
        os.replace(partial, out)
        errors_path.unlink(missing_ok=True)


@torch.no_grad()
def stream_rows(
        model: nn.Module,
        inputs: PredictionInputs,
        out: PathLike,
        stream: RowStream,
        *,
        data_config: Optional[Dict[str, Any]] = None,
        tta: str = 'none',
        label_names: Sequence[str] = (),
        batch_size: int = 64,
        workers: int = 0,
        device: Union[str, torch.device] = 'cpu',
        resume: bool = False,
        overwrite: bool = False,
        strict: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
        finish: Optional[Callable[[Path, List[Tuple[str, str]], int], None]] = None,
        reading: Optional[Dict[str, Any]] = None,
) -> PredictSummary:
    """Stream the rows of ``stream`` for every image of ``inputs`` into a partial file beside ``out`` (resumable,
    locked, fingerprinted: see the module docstring), then ``finish(partial, errors, rows)`` builds ``out`` from it
    (``rows``: how many it holds); by default the partial CSV becomes ``out``. ``out`` is checked here (again once
    locked) as a file or, with ``finish``, as a folder of ``stream.command``'s; a caller checks it before loading
    the model."""
    from timm.data import create_transform, resolve_model_data_config
    for name, value in (('batch_size', batch_size), ('workers', workers + 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f'{name} must be a whole number of at least {1 if name == "batch_size" else 0}')
    out = Path(out)
    kind = 'file' if finish is None else 'folder'
    check_output_location(out, overwrite=overwrite or resume, kind=kind, created_by=stream.command)
    if finish is None:
        def finish(partial: Path, errors: List[Tuple[str, str]], rows: int) -> None:
            _finish_csv(partial, out, errors, log)
    # files through the model's reader (its stretch and band count): data that do not fit it are one line, here
    reader = reader_for_model(model, **(reading or {}))
    if inputs.paths is not None:
        inputs.reader = reader
        reader.check(inputs.paths)
    elif reader.stretch is not None:
        raise UserError(f'{inputs.source}: holds 8-bit images, but the model reads its input through the stretch '
                        f'{reader.stretch}: give it files of the kind it was trained on (FITS, N bands)')
    config = resolve_model_data_config(model)
    config.update(data_config or {})
    config = band_data_config(config, reader.in_chans)
    inputs.transform = create_transform(**{k: v for k, v in config.items() if k != 'first_conv'}, is_training=False)
    _check_model_runs(stream.forward, config['input_size'], device)
    recorded = {**config, **({'stretch': reader.stretch.to_config()} if reader.stretch is not None else {}),
                **({'fits_hdu': reader.hdu} if reader.hdu is not None else {}),
                **({'fits_bands': list(reader.bands)} if reader.bands is not None else {})}
    record = _run_record(model, inputs, label_names, tta, recorded, stream.header, stream.command)

    partial = _partial_paths(out)[0]
    try:
        made = make_parent_folders(out)
    except OSError as e:
        raise UserError(f'{out}: cannot be written: {describe_os_error(e)}') from None
    try:
        with output_lock(out, stream.command):
            # again: another run may have finished ``out`` since the check above, and would be replaced
            check_output_location(out, overwrite=overwrite or resume, kind=kind, created_by=stream.command)
            done = _start_or_resume(out, record, inputs.ids, resume, overwrite)
            return _stream_rows(inputs, out, done, stream, batch_size, workers, device, strict, progress, log, finish)
    finally:
        if not partial.exists() and not out.exists():  # nothing kept: no folder made for it either
            remove_made_folders(made)


def _stream_rows(inputs: PredictionInputs, out: Path, done: set, stream: RowStream, batch_size: int, workers: int,
                 device: Union[str, torch.device], strict: bool, progress: bool, log: Callable[[str], None],
                 finish: Callable[[Path, List[Tuple[str, str]], int], None]) -> PredictSummary:
    """Append the rows of the images not in ``done`` to the partial file, then ``finish`` the output from it."""
    partial, record_path = _partial_paths(out)
    noun = stream.noun
    todo = [i for i, item in enumerate(inputs.ids) if item not in done]
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(inputs, todo), batch_size=batch_size, num_workers=workers, collate_fn=_collate,
        persistent_workers=False)
    errors: List[Tuple[str, str]] = []
    predicted = 0
    start = time.perf_counter()
    try:
        # unbuffered: each batch goes to the file whole or fails there, and closing has nothing left to write
        with open(partial, 'ab', buffering=0) as f:

            def write(rows: List[List[str]]) -> None:
                try:
                    data = memoryview(_csv_text(rows).encode('utf-8', 'surrogateescape'))
                    while data:
                        data = data[f.write(data):]
                except OSError as e:
                    raise _WriteFailed(e) from e

            if f.tell() == 0:  # new, or left empty by a run killed before its first batch
                write([stream.header])
            desc = stream.command.split()[-1]
            with tqdm(total=len(todo), unit='img', desc=desc, disable=None if progress else True) as bar:
                for images, positions, failed in loader:
                    for position, error in failed:
                        if strict:
                            raise UserError(f'{inputs.ids[position]}: cannot be read ({error}); stopped (--strict). '
                                            f'{predicted + len(done)} {noun} so far are kept in {partial} for '
                                            f'--resume')
                        errors.append((inputs.ids[position], error))
                    if images is not None:
                        write([[inputs.id_columns[c][position] for c in inputs.id_columns] + cells
                               for position, cells in zip(positions, stream.cells(images.to(device)))])
                        predicted += len(positions)
                    bar.update(len(positions) + len(failed))
    except KeyboardInterrupt as e:  # the partial file is kept on purpose: say where, and how to go on
        raise KeyboardInterrupt(
            f'{predicted + len(done)} {noun} so far are kept in {partial}; run the same command with --resume '
            f'to continue, or --overwrite to start again') from e
    except _WriteFailed as e:
        what = describe_os_error(e.args[0]).split('; ')[0]  # what went wrong; the remedy here is --resume
        raise UserError(f'{out}: cannot be written: {what}; {predicted + len(done)} {noun} so far are kept in '
                        f'{partial}: run the same command with --resume to continue') from None
    seconds = time.perf_counter() - start
    if predicted + len(done) == 0:
        _remove_partial(partial, record_path)
        raise UserError(f'{inputs.source}: none of the {len(inputs)} images could be read; nothing was written')
    finish(partial, errors, predicted + len(done))
    _remove_partial(partial, record_path)
    return PredictSummary(out, predicted, len(done), len(errors), seconds)
