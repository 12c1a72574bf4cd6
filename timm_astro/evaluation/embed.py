"""Embeddings: one pooled feature vector per image, and each object's nearest neighbours in that space.

The vector is timm's pre-logits feature, ``model.forward_head(model.forward_features(x), pre_logits=True)``: the
pooled (and, where the model has one, pre-logits-projected) features its classifier reads. Similarity search,
anomaly hunting and active learning are built on it. ``embed_to_folder`` writes a folder:

* ``embeddings.npy``: float32, ``[N, D]``, row ``i`` the image of row ``i`` of ``ids.csv``;
* ``ids.csv``: the input's id columns (path, or a catalogue's id, path and carried columns such as ra and dec);
* ``neighbours.csv`` (``neighbours=K``): each object's K nearest other objects by cosine distance, found by
  scikit-learn's ``NearestNeighbors`` (exact, brute force), and ``outlier_score``: the mean cosine distance to those
  K. A galaxy far from even its nearest neighbours is unlike the rest of the catalogue; the mean over K (rather
  than the distance to the K-th alone) is steadier when K is small, and is a standard k-NN outlier score. It is
  relative to this catalogue, not an absolute measure;
* ``errors.csv`` when some images could not be read, and the ``.timm-astro.json`` marker (the model, a digest of its
  weights, the input and which features were taken).

It is written by predict's machinery (``timm_astro.evaluation.predict.stream_rows``): rows stream to a partial CSV
beside the folder, each holding the ids and the vector (base64 of its float32 bytes, exact), so a row is written
whole or not at all and a ``resume`` continues the same run; the run is locked and fingerprinted as predict's.
At the end the folder is built from the partial file in chunks (``np.lib.format.open_memmap``) and renamed into
place: memory stays flat however long the catalogue (the neighbour search reads the memory-mapped array).
"""
import base64
import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import torch.nn as nn

from timm_astro.errors import MissingDependency, UserError
from timm_astro.evaluation.predict import (
    PredictionInputs, PredictSummary, RowStream, _complete_records, _csv_text, _weights_sha256, check_header,
    stream_rows)
from timm_astro.outputs import atomic_output_dir, check_output_location

__all__ = ['embed_to_folder', 'pooled_features', 'check_neighbours', 'read_embeddings', 'EmbedSummary', 'EMBEDDINGS',
           'IDS', 'NEIGHBOURS']

COMMAND = 'timm-astro embed'
EMBEDDINGS, IDS, NEIGHBOURS, ERRORS = 'embeddings.npy', 'ids.csv', 'neighbours.csv', 'errors.csv'
EMBEDDING_COLUMN = 'embedding'
CHUNK = 4096  # rows per chunk when building the .npy and querying neighbours


@dataclass
class EmbedSummary(PredictSummary):
    dim: int = 0
    neighbours: int = 0
    outliers: List[Tuple[str, float]] = field(default_factory=list)  # the most isolated objects, highest first


def pooled_features(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """timm's pre-logits features ``[B, D]`` of ``images``."""
    features = model.forward_head(model.forward_features(images), pre_logits=True)
    if features.ndim != 2:
        raise UserError(f'the model\'s pre-logits features have shape {tuple(features.shape)}, not [batch, features]: '
                        f'it does not pool (global_pool=\'\'?); embed needs one vector per image')
    return features


def _encode(vector: np.ndarray) -> str:
    return base64.b64encode(vector.astype('<f4').tobytes()).decode('ascii')


def _decode(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype='<f4')


def check_neighbours(neighbours: int, count: int) -> None:
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 0:
        raise UserError(f'neighbours must be a whole number of at least 1 (0: none), got {neighbours!r}')
    if not neighbours:
        return
    try:
        import sklearn.neighbors  # noqa: F401
    except ImportError:
        raise MissingDependency('--neighbours needs scikit-learn: pip install "timm-astro[embed]" (or pip install '
                                'scikit-learn)') from None
    if neighbours >= count:
        raise UserError(f'--neighbours {neighbours} needs more than {neighbours} images; the input has {count}')


def _write_embeddings(partial: Path, folder: Path, ids_width: int, count: int) -> int:
    """``embeddings.npy`` and ``ids.csv`` in ``folder`` from the partial CSV of ``count`` rows, read once a chunk at
    a time; returns the number of features."""
    rows = csv.reader(_complete_records(partial))
    header = next(rows)
    array, dim, read = None, 0, 0
    with open(folder / IDS, 'w', encoding='utf-8', errors='surrogateescape', newline='') as ids:
        ids.write(_csv_text([header[:ids_width]]))
        chunk: List[List[str]] = []
        for i, row in enumerate(rows):
            vector = _decode(row[ids_width])
            if array is None:
                dim = len(vector)
                array = np.lib.format.open_memmap(folder / EMBEDDINGS, mode='w+', dtype=np.float32,
                                                  shape=(count, dim))
            if len(vector) != dim or i >= count:
                what = f'holds {len(vector)} values, the first {dim}' if len(vector) != dim else f'is past {count}'
                raise UserError(f'{partial}: row {i + 2} {what}; the file was changed. Pass --overwrite to start '
                                f'again')
            array[i] = vector
            read = i + 1
            chunk.append(row[:ids_width])
            if len(chunk) == CHUNK:
                ids.write(_csv_text(chunk))
                chunk = []
        ids.write(_csv_text(chunk))
    if read != count:
        raise UserError(f'{partial}: holds {read} rows, {count} were written; the file was changed. Pass --overwrite '
                        f'to start again')
    array.flush()
    del array
    return dim


def _write_neighbours(folder: Path, k: int) -> List[Tuple[str, float]]:
    """``neighbours.csv``: each object's ``k`` nearest others (cosine, exact) and their mean distance."""
    from sklearn.neighbors import NearestNeighbors
    embeddings = np.load(folder / EMBEDDINGS, mmap_mode='r')
    with open(folder / IDS, encoding='utf-8', errors='surrogateescape', newline='') as f:
        ids = [row[0] for row in list(csv.reader(f))[1:]]
    search = NearestNeighbors(n_neighbors=k + 1, metric='cosine', algorithm='brute').fit(embeddings)
    header = ['id', 'outlier_score'] + [name for j in range(1, k + 1) for name in (f'neighbour_{j}', f'distance_{j}')]
    scores = np.empty(len(ids), dtype=np.float64)
    with open(folder / NEIGHBOURS, 'w', encoding='utf-8', errors='surrogateescape', newline='') as out:
        out.write(_csv_text([header]))
        for start in range(0, len(ids), CHUNK):
            distances, indices = search.kneighbors(embeddings[start:start + CHUNK])
            rows = []
            for r, (dist, idx) in enumerate(zip(distances, indices)):
                i = start + r
                # the object itself is its own nearest; a duplicate image may tie with it, so drop it by index
                kept = [(j, max(0.0, float(d))) for j, d in zip(idx, dist) if j != i][:k]
                scores[i] = sum(d for _, d in kept) / k
                rows.append([ids[i], f'{scores[i]:.6f}'] + [c for j, d in kept for c in (ids[j], f'{d:.6f}')])
            out.write(_csv_text(rows))
    top = np.argsort(-scores, kind='stable')[:5]
    return [(ids[i], float(scores[i])) for i in top]


@torch.no_grad()
def embed_to_folder(
        model: nn.Module,
        inputs: PredictionInputs,
        out: Union[str, Path],
        *,
        neighbours: int = 0,
        data_config: Optional[Dict[str, Any]] = None,
        batch_size: int = 64,
        workers: int = 0,
        device: Union[str, torch.device] = 'cpu',
        resume: bool = False,
        overwrite: bool = False,
        strict: bool = False,
        progress: bool = True,
        log: Callable[[str], None] = print,
        reading: Optional[Dict[str, Any]] = None,
) -> EmbedSummary:
    """Embed every image of ``inputs`` into the folder ``out`` (see the module docstring), with each object's
    ``neighbours`` nearest neighbours if asked. ``reading`` (``stretch``, ``hdu``, ``bands``): as for
    ``timm_astro.evaluation.predict.predict_to_csv``. Everything that can be refused is checked before any file is
    made."""
    for method in ('forward_features', 'forward_head'):
        if not callable(getattr(model, method, None)):
            raise UserError(f'{type(model).__name__} has no {method}(): embed needs a timm model (its pre-logits '
                            f'features)')
    check_neighbours(neighbours, len(inputs))
    out = check_output_location(out, overwrite=overwrite or resume, created_by=COMMAND)
    id_columns = list(inputs.id_columns)
    header = id_columns + [EMBEDDING_COLUMN]
    check_header(header, id_columns)
    model = model.to(device).eval()

    def cells(images: torch.Tensor) -> List[List[str]]:
        return [[_encode(vector)] for vector in pooled_features(model, images).float().cpu().numpy()]
    stream = RowStream(COMMAND, 'embeddings', header, cells, lambda images: pooled_features(model, images))
    built: Dict[str, Any] = {}

    def finish(partial: Path, errors: List[Tuple[str, str]], rows: int) -> None:
        info = {'model': (getattr(model, 'pretrained_cfg', None) or {}).get('architecture') or type(model).__name__,
                'weights_sha256': _weights_sha256(model), 'input': inputs.source,
                'features': 'forward_head(forward_features(x), pre_logits=True)'}
        with atomic_output_dir(out, COMMAND, overwrite=overwrite or resume, marker_info=info) as tmp:
            built['count'], built['dim'] = rows, _write_embeddings(partial, tmp, len(id_columns), rows)
            k = min(neighbours, built['count'] - 1)
            if neighbours and k < neighbours:
                log(f'only {built["count"]} images could be read: {k} neighbours each instead of {neighbours}')
            if k > 0:
                built['outliers'] = _write_neighbours(tmp, k)
                built['k'] = k
            if errors:
                (tmp / ERRORS).write_text(_csv_text([['id', 'error'], *errors]), encoding='utf-8',
                                          errors='surrogateescape')
                log(f'{len(errors)} image(s) could not be read and were skipped: see {ERRORS}')
    summary = stream_rows(model, inputs, out, stream, data_config=data_config, batch_size=batch_size,
                          workers=workers, device=device, resume=resume, overwrite=overwrite, strict=strict,
                          progress=progress, log=log, finish=finish, reading=reading)
    return EmbedSummary(summary.out, summary.predicted, summary.resumed, summary.errors, summary.seconds,
                        dim=built['dim'], neighbours=built.get('k', 0), outliers=built.get('outliers', []))


def read_embeddings(folder: Union[str, Path]) -> Tuple[np.ndarray, List[Dict[str, str]]]:
    """The embeddings (memory-mapped) and the id rows of an ``embed`` output folder."""
    folder = Path(folder)
    with open(folder / IDS, encoding='utf-8', newline='') as f:
        rows = list(csv.DictReader(f))
    return np.load(folder / EMBEDDINGS, mmap_mode='r'), rows

