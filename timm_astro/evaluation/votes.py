"""Vote fractions from a votes model, and how well they match the volunteers' (the library half of evaluating and
predicting on Galaxy Zoo votes).

* ``expected_fractions`` / ``fraction_std``: a model's Dirichlet concentrations per question become the expected
  vote fraction of every answer (``alpha_k / A``) and its spread (the standard deviation of the Dirichlet's marginal,
  Beta(alpha_k, A - alpha_k): ``sqrt(alpha_k (A - alpha_k) / (A^2 (A + 1)))``).
* ``vote_metrics``: per question, the mean absolute error of the predicted against the observed fractions, and
  the accuracy of the predicted top answer on galaxies where the volunteers agree (observed top fraction > 0.8).
* ``calibration_bins`` / ``plot_vote_calibration``: predicted against observed fraction, binned, per question.
* ``predict_votes``: a model's concentrations over a ``VotesDataset`` (and the observed counts), batched.
* ``check_task`` / ``evaluate_votes`` / ``write_vote_report``: what ``timm-astro evaluate`` does with a votes model
  and a vote set: every galaxy of one split read as class evaluate reads images (an unreadable one is left out and
  listed), the metrics above, ``calibration.png`` and ``predictions.csv``; a class model on a vote set, a votes model
  on class folders and a model whose tree is not the vote set's are refused in one line.
* ``fraction_columns`` / ``fraction_rows``: the per-galaxy CSV columns shared by evaluate and predict.
* ``predict_votes_to_csv``: ``timm-astro predict`` with a votes model: those columns per image, through class
  predict's streaming, resumable writer (``timm_astro.evaluation.predict.stream_rows``).

The mean absolute error is unweighted: every galaxy that has at least ``min_votes`` votes on a question counts
once, whatever its number of votes, so it is the error a catalogue user sees per galaxy. Its observed fractions
are themselves noisy (a few votes give coarse fractions); raise ``min_votes`` to measure against well-sampled
galaxies only. The loss, not this metric, is where the number of volunteers weights a galaxy.
"""
import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from timm_astro.data.decision_tree import DecisionTree
from timm_astro.data.stretch import Stretch
from timm_astro.errors import UserError

__all__ = ['AGREEMENT_THRESHOLD', 'expected_fractions', 'fraction_std', 'observed_fractions', 'vote_metrics',
           'calibration_bins', 'plot_vote_calibration', 'predict_votes', 'model_tree', 'check_task', 'VoteEvaluation',
           'evaluate_votes', 'vote_summary_table', 'write_vote_report', 'fraction_columns', 'fraction_rows',
           'predict_votes_to_csv']

PathLike = Union[str, os.PathLike]
CREATED_BY = 'timm-astro evaluate'

AGREEMENT_THRESHOLD = 0.8  # volunteers agree: the top answer's observed fraction is above this


def _per_question_sum(values: torch.Tensor, tree: DecisionTree) -> torch.Tensor:
    """For each answer, the sum of ``values`` over the answers of its question (same shape as ``values``)."""
    index = torch.tensor(tree.question_index, device=values.device)
    sums = values.new_zeros(*values.shape[:-1], len(tree.questions)).index_add_(-1, index, values)
    return sums.index_select(-1, index)


def _check_width(values: torch.Tensor, tree: DecisionTree, what: str) -> None:
    if values.ndim != 2 or values.shape[1] != tree.n_answers:
        raise UserError(f'{what} have shape {tuple(values.shape)}; expected (galaxies, {tree.n_answers}), one '
                        f'column per answer of the {tree.name} tree')


def expected_fractions(concentrations: torch.Tensor, tree: DecisionTree) -> torch.Tensor:
    """``alpha_k / sum(alpha)`` over each question's answers: the expected vote fractions, ``(galaxies, answers)``."""
    concentrations = torch.as_tensor(concentrations)
    _check_width(concentrations, tree, 'concentrations')
    return concentrations / _per_question_sum(concentrations, tree)


def fraction_std(concentrations: torch.Tensor, tree: DecisionTree) -> torch.Tensor:
    """The standard deviation of each answer's fraction under the predicted Dirichlet (its Beta marginal)."""
    concentrations = torch.as_tensor(concentrations)
    _check_width(concentrations, tree, 'concentrations')
    total = _per_question_sum(concentrations, tree)
    return (concentrations * (total - concentrations) / (total ** 2 * (total + 1))).sqrt()


def observed_fractions(counts: np.ndarray, tree: DecisionTree) -> np.ndarray:
    """The volunteers' vote fractions per question; NaN for a question nobody answered."""
    counts = np.asarray(counts, dtype=np.float64)
    _check_width(torch.from_numpy(counts), tree, 'counts')
    totals = _per_question_sum(torch.from_numpy(counts), tree).numpy()
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(totals > 0, counts / np.where(totals > 0, totals, 1), np.nan)


def vote_metrics(
        predicted: np.ndarray,
        counts: np.ndarray,
        tree: DecisionTree,
        min_votes: int = 1,
        agreement: float = AGREEMENT_THRESHOLD,
) -> Dict[str, Any]:
    """Per question: ``galaxies`` (with >= ``min_votes`` votes on it), ``mae`` (mean over those galaxies and the
    question's answers of |predicted - observed fraction|, unweighted), ``mae_per_answer``, ``agreed_galaxies``
    (observed top fraction > ``agreement``) and ``agreed_accuracy`` (% of those whose predicted top answer is the
    volunteers'); a metric with no galaxy to measure is None. ``mean_mae``: the mean of the questions' ``mae``.

    Args:
        predicted: ``(galaxies, answers)`` predicted fractions (``expected_fractions``).
        counts: ``(galaxies, answers)`` observed vote counts.
    """
    predicted = np.asarray(predicted, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    if predicted.shape != counts.shape:
        raise UserError(f'predicted fractions {predicted.shape} and vote counts {counts.shape} differ in shape')
    if min_votes < 1:
        raise UserError(f'min_votes must be at least 1 (a question with no votes has no fractions), got {min_votes}')
    observed = observed_fractions(counts, tree)
    questions: Dict[str, Dict[str, Any]] = {}
    for question, columns in zip(tree.questions, tree.slices):
        votes = counts[:, columns].sum(axis=1)
        used = votes >= min_votes
        pred, obs = predicted[used, columns], observed[used, columns]
        errors = np.abs(pred - obs)
        agreed = obs.max(axis=1) > agreement if len(obs) else np.zeros(0, dtype=bool)
        correct = pred[agreed].argmax(axis=1) == obs[agreed].argmax(axis=1)
        questions[question.name] = {
            'galaxies': int(used.sum()),
            'mae': float(errors.mean()) if len(errors) else None,
            'mae_per_answer': {a.name: float(e) for a, e in zip(question.answers, errors.mean(axis=0))}
            if len(errors) else None,
            'agreed_galaxies': int(agreed.sum()),
            'agreed_accuracy': float(100.0 * correct.mean()) if agreed.any() else None,
        }
    maes = [q['mae'] for q in questions.values() if q['mae'] is not None]
    return {'questions': questions, 'mean_mae': float(np.mean(maes)) if maes else None, 'min_votes': min_votes,
            'agreement_threshold': agreement}


def calibration_bins(predicted: np.ndarray, observed: np.ndarray, bins: int = 10) -> Dict[str, np.ndarray]:
    """Pairs of predicted and observed fractions (NaN observed ones left out) in ``bins`` equal bins of the
    predicted fraction over [0, 1]: per bin, ``count``, ``mean_predicted`` and ``mean_observed`` (NaN if empty)."""
    predicted, observed = np.asarray(predicted, dtype=np.float64).ravel(), np.asarray(observed, np.float64).ravel()
    keep = ~np.isnan(observed)
    predicted, observed = predicted[keep], observed[keep]
    which = np.clip((predicted * bins).astype(int), 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid='ignore', divide='ignore'):
        mean_predicted = np.bincount(which, predicted, minlength=bins) / count
        mean_observed = np.bincount(which, observed, minlength=bins) / count
    return {'count': count, 'mean_predicted': mean_predicted, 'mean_observed': mean_observed,
            'edges': np.linspace(0.0, 1.0, bins + 1)}


def plot_vote_calibration(
        predicted: np.ndarray,
        counts: np.ndarray,
        tree: DecisionTree,
        path: Path,
        bins: int = 10,
        title: Optional[str] = None,
) -> None:
    """One panel per question: mean observed against mean predicted fraction in bins of the predicted one, all of
    the question's answers pooled over the galaxies that answered it; the diagonal is perfect calibration."""
    from timm_astro.evaluation.plots import pyplot
    plt = pyplot()
    observed = observed_fractions(counts, tree)
    predicted = np.asarray(predicted, dtype=np.float64)
    n = len(tree.questions)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, question, columns in zip(axes.flat, tree.questions, tree.slices):
        binned = calibration_bins(predicted[:, columns], observed[:, columns], bins)
        full = binned['count'] > 0
        ax.plot([0, 1], [0, 1], ls='--', color='grey', lw=1)
        ax.plot(binned['mean_predicted'][full], binned['mean_observed'][full], marker='o', ms=3)
        answered = int((~np.isnan(observed[:, columns][:, 0])).sum())
        ax.set_title(f'{question.name}\n({answered} galaxies)', fontsize=8)
        ax.set_xlim(0, 1), ax.set_ylim(0, 1)
        ax.set_xlabel('predicted fraction', fontsize=7), ax.set_ylabel('observed fraction', fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis('off')
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def predict_votes(
        model: torch.nn.Module,
        dataset: Sequence,
        *,
        batch_size: int = 64,
        device: torch.device = torch.device('cpu'),
        workers: int = 0,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The model's concentrations (``timm_astro.losses.to_concentrations`` of its outputs) and the observed counts
    over ``dataset`` (``(image, counts)`` items, its transform already set), on the CPU, in the dataset's order."""
    from timm_astro.losses import to_concentrations
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    was_training = model.training
    model.eval()
    outputs, counts = [], []
    try:
        for images, targets in loader:
            outputs.append(to_concentrations(model(images.to(device))).float().cpu())
            counts.append(targets)
    finally:
        model.train(was_training)
    return torch.cat(outputs), torch.cat(counts)


# ---------------------------------------------------------------------------------------------------------------
# evaluate on a vote set


def model_tree(model: torch.nn.Module) -> DecisionTree:
    """The decision tree a votes model (``timm_astro.votes_model.load_votes_model``) predicts the answers of."""
    from timm_astro.data.decision_tree import tree_from_dict
    from timm_astro.votes_model import is_votes_model
    if not is_votes_model(model):
        raise UserError('not a votes model: its config has no "task": "votes" (load it with load_votes_model)')
    return tree_from_dict(model.pretrained_cfg['tree'], "the model's tree")


def _answers(tree: DecisionTree) -> List[Tuple[str, str]]:
    return [(a.name, a.column) for a in tree.answers]


def check_task(model: torch.nn.Module, data: PathLike, split: Optional[str], model_spec: str) -> bool:
    """True when ``model`` is a votes model and ``data`` a vote set that ``split`` of it can be scored on, False
    when both are about classes; a model and data of different tasks, a vote set without ``split`` or one whose
    tree is not the model's are refused in one line each, before any image is read."""
    from timm_astro.data.decision_tree import load_tree
    from timm_astro.data.votes import is_vote_set, read_vote_set_info
    from timm_astro.votes_model import is_votes_model
    data_path = Path(data)
    if not is_votes_model(model):
        if is_vote_set(data_path):
            classes = getattr(model, 'num_classes', '?')
            raise UserError(f'{data}: a vote set (dataset.json "kind": "votes") but {model_spec} is a class model '
                            f'({classes} outputs, no "task": "votes" in its config); score vote fractions with a '
                            f'model from `timm-astro train-votes`, or its classes on one split folder '
                            f'({data_path / "test"})')
        return False
    tree = model_tree(model)
    if not is_vote_set(data_path):
        hint = ''
        if is_vote_set(data_path.parent) and split is None:  # the split folder of a vote set
            hint = f'; give the vote set itself: {data_path.parent} --split {data_path.name}'
        raise UserError(f'{model_spec} is a votes model ({tree.n_answers} answers of the {tree.name} tree) but {data} '
                        f'is not a vote set (no dataset.json with "kind": "votes"); it is scored on the vote counts '
                        f'of a `timm-astro import gz2-votes` folder{hint}')
    if split is None:
        raise UserError(f'{data}: a vote set holds every split; say which with --split train|validation|test')
    info = read_vote_set_info(data_path)
    if info.get('tree'):
        data_tree = load_tree(info['tree'])
        if _answers(data_tree) != _answers(tree):
            ours, theirs = _answers(tree), _answers(data_tree)
            first = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            where = (f'answer {first}: model {ours[first][0]!r}, data {theirs[first][0]!r}'
                     if first < min(len(ours), len(theirs)) else 'the first answers agree, the counts do not')
            raise UserError(f"{model_spec}'s {tree.name} tree has {len(ours)} answers but {data}'s "
                            f"{data_tree.name} tree has {len(theirs)} ({where}); the model's outputs are its own "
                            f"tree's answers: score it on a vote set of that tree")
    return True


@dataclass
class VoteEvaluation:
    """A votes model scored on one split of a vote set: per galaxy read (``item_ids``, the manifest's file names)
    the concentrations and the observed counts; ``left_out`` the images that could not be read, with the reason."""
    model_name: str
    source: str
    tree: DecisionTree
    item_ids: List[str]
    concentrations: torch.Tensor  # [galaxies, answers]
    counts: np.ndarray  # [galaxies, answers]
    metrics: Dict[str, Any]
    data_config: Dict[str, Any]
    warnings: List[str] = field(default_factory=list)
    left_out: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def fractions(self) -> np.ndarray:
        return expected_fractions(self.concentrations, self.tree).numpy()


@torch.no_grad()
def evaluate_votes(
        model: torch.nn.Module,
        data: PathLike,
        split: str,
        *,
        data_config: Optional[Dict[str, Any]] = None,
        batch_size: int = 64,
        workers: int = 0,
        device: Union[str, torch.device] = 'cpu',
        progress: bool = True,
        min_votes: int = 1,
        stretch: Union[None, str, Stretch] = None,
        hdu: Union[None, int, str] = None,
        bands: Optional[Sequence[Union[int, str]]] = None,
) -> VoteEvaluation:
    """Score a votes model on ``split`` of the vote set ``data`` (``check_task`` first): ``vote_metrics`` of its
    expected fractions, and ``nll``, the mean Dirichlet-multinomial loss per galaxy (what train-votes validates on).

    Images are read as class evaluate reads them: ``reader_for_model(model, stretch, hdu, bands)``, timm's eval
    transform with the model's data config (which ``data_config`` overrides) for its band count; an unreadable one is
    left out, listed and warned about, and data of another band count than the model's are refused.
    """
    from timm.data import create_loader, resolve_model_data_config
    from tqdm import tqdm

    from timm_astro.data.images import ImageFiles, band_data_config, collate_readable, reader_for_model
    from timm_astro.data.votes import VotesDataset
    from timm_astro.losses import mean_galaxy_nll, to_concentrations
    tree = model_tree(model)
    votes = VotesDataset(data, split, tree)  # the counts in the model's answer order, every row checked
    reader = reader_for_model(model, stretch, hdu, bands)
    files = ImageFiles([(str(votes.root / name), i) for i, name in enumerate(votes.files)], reader=reader)
    reader.check(path for path, _ in files.samples)  # data that do not fit the model: one line, now
    config = resolve_model_data_config(model)
    config.update(data_config or {})
    config = band_data_config(config, reader.in_chans)
    loader = create_loader(
        files, input_size=config['input_size'], batch_size=batch_size, is_training=False,
        interpolation=config['interpolation'], mean=config['mean'], std=config['std'], crop_pct=config['crop_pct'],
        crop_mode=config.get('crop_mode'), num_workers=workers, use_prefetcher=False, device=torch.device(device),
        collate_fn=collate_readable)
    model = model.to(device).eval()
    chunks, rows, reasons = [], [], []
    with tqdm(total=len(files), unit='img', desc='evaluate votes', disable=None if progress else True,
              leave=False) as bar:
        for images, targets, batch_reasons in loader:
            if images is not None:
                chunks.append(to_concentrations(model(images.to(device))).float().cpu())
                rows.append(targets.cpu())
            reasons += batch_reasons
            bar.update(len(batch_reasons))
    left_out = [(votes.files[i], reason) for i, reason in enumerate(reasons) if reason is not None]
    source = f'{data} [{split}]'
    if not chunks:
        raise UserError(f'none of the {len(reasons)} images of {source} could be read ({left_out[0][0]}: '
                        f'{left_out[0][1]}{"; ..." if len(left_out) > 1 else ""})')
    warnings = []
    if left_out:
        warnings.append(f'{len(left_out)} of {len(reasons)} images could not be read and were left out (listed in '
                        f'metrics.json): {left_out[0][0]}: {left_out[0][1]}{"; ..." if len(left_out) > 1 else ""}')
    concentrations, kept = torch.cat(chunks), torch.cat(rows).numpy()
    counts = votes.counts[kept].astype(np.float64)
    metrics = vote_metrics(expected_fractions(concentrations, tree).numpy(), counts, tree, min_votes=min_votes)
    metrics['nll'] = float(mean_galaxy_nll(concentrations.double(), torch.from_numpy(counts), tree))
    silent = [name for name, q in metrics['questions'].items() if q['galaxies'] == 0]
    if silent:
        warnings.append(f'{len(silent)} question(s) have no galaxy with at least {min_votes} vote(s) in this split '
                        f'({", ".join(silent[:3])}): no error measured for them')
    name = model.pretrained_cfg.get('architecture') or type(model).__name__
    return VoteEvaluation(name, source, tree, [votes.files[i] for i in kept], concentrations, counts, metrics,
                          config, warnings, left_out)


def _fmt(value: Optional[float], spec: str) -> str:
    return 'n/a' if value is None else format(value, spec)


def vote_summary_table(evaluation: VoteEvaluation) -> str:
    """Per question: galaxies, fraction MAE, galaxies where volunteers agree and the accuracy there; then the mean."""
    header = ['question', 'galaxies', 'MAE', f'agreed (>{evaluation.metrics["agreement_threshold"]:g})',
              'accuracy %']
    rows = [[name, str(q['galaxies']), _fmt(q['mae'], '.4f'), str(q['agreed_galaxies']),
             _fmt(q['agreed_accuracy'], '.1f')] for name, q in evaluation.metrics['questions'].items()]
    rows.append(['mean over questions', '', _fmt(evaluation.metrics['mean_mae'], '.4f'), '', ''])
    width = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    return '\n'.join('  '.join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, width)))
                     for r in [header] + rows)


def fraction_columns(tree: DecisionTree, observed: bool = False) -> List[str]:
    """CSV columns of one galaxy's prediction: ``fraction_<answer>`` and ``std_<answer>`` per answer, then (for an
    evaluation) ``observed_<answer>`` and ``votes_<question>``."""
    columns = [f'fraction_{a}' for a in tree.answer_names] + [f'std_{a}' for a in tree.answer_names]
    if observed:
        columns += [f'observed_{a}' for a in tree.answer_names] + [f'votes_{q.name}' for q in tree.questions]
    return columns


def fraction_rows(concentrations: torch.Tensor, tree: DecisionTree,
                  counts: Optional[np.ndarray] = None) -> List[List[str]]:
    """The ``fraction_columns`` values of each galaxy of a batch of concentrations ``[galaxies, answers]`` (and, with
    ``counts``, the observed fractions, '' for a question nobody answered, and each question's votes)."""
    concentrations = torch.as_tensor(concentrations).float()
    fractions, spread = expected_fractions(concentrations, tree), fraction_std(concentrations, tree)
    rows = [[f'{float(v):.6f}' for v in f] + [f'{float(v):.6f}' for v in s] for f, s in zip(fractions, spread)]
    if counts is not None:
        observed = observed_fractions(counts, tree)
        votes = np.stack([np.asarray(counts)[:, c].sum(1) for c in tree.slices], 1)
        for row, obs, n in zip(rows, observed, votes):
            row += ['' if np.isnan(v) else f'{v:.6f}' for v in obs] + [str(int(v)) for v in n]
    return rows


def write_vote_report(evaluation: VoteEvaluation, out_dir: PathLike, *, overwrite: bool = False,
                      extra: Optional[Dict[str, Any]] = None, plots: bool = True) -> Path:
    """Write ``metrics.json``, ``predictions.csv`` and (``plots``, needs matplotlib) ``calibration.png`` into
    ``out_dir``, all or nothing."""
    from timm_astro.outputs import atomic_output_dir, write_json
    if plots:
        from timm_astro.evaluation.plots import pyplot
        pyplot()  # a missing matplotlib is reported before anything is written
    tree = evaluation.tree
    with atomic_output_dir(out_dir, CREATED_BY, overwrite=overwrite) as tmp:
        report = {
            'task': 'votes',
            'model': evaluation.model_name,
            'data': evaluation.source,
            'tree': tree.name,
            'num_galaxies': len(evaluation.item_ids),
            'num_left_out': len(evaluation.left_out),
            'left_out': [{'id': item, 'reason': reason} for item, reason in evaluation.left_out],
            'answers': tree.answer_names,
            'data_config': {k: list(v) if isinstance(v, tuple) else v for k, v in evaluation.data_config.items()},
            'metrics': evaluation.metrics,
            'warnings': evaluation.warnings,
            **(extra or {}),
        }
        write_json(tmp / 'metrics.json', report)
        with open(tmp / 'predictions.csv', 'w', newline='', encoding='utf-8') as f:
            writer = csv.writer(f, lineterminator='\n')
            writer.writerow(['id'] + fraction_columns(tree, observed=True))
            for item, values in zip(evaluation.item_ids, fraction_rows(evaluation.concentrations, tree,
                                                                      evaluation.counts)):
                writer.writerow([item] + values)
        if plots:
            title = (f"{evaluation.model_name} on {'/'.join(Path(evaluation.source).parts[-2:])}: fraction MAE "
                     f"{_fmt(evaluation.metrics['mean_mae'], '.4f')}")
            plot_vote_calibration(evaluation.fractions, evaluation.counts, tree, tmp / 'calibration.png', title=title)
    return Path(out_dir)


# ---------------------------------------------------------------------------------------------------------------
# predict a catalogue


@torch.no_grad()
def predict_votes_to_csv(
        model: torch.nn.Module,
        inputs,
        out: PathLike,
        *,
        data_config: Optional[Dict[str, Any]] = None,
        tta: str = 'none',
        label_names: Optional[Sequence[str]] = None,
        batch_size: int = 64,
        workers: int = 0,
        device: Union[str, torch.device] = 'cpu',
        resume: bool = False,
        overwrite: bool = False,
        strict: bool = False,
        progress: bool = True,
        log=print,
        reading: Optional[Dict[str, Any]] = None,
):
    """``timm_astro.evaluation.predict.predict_to_csv`` for a votes model: per image of ``inputs`` (a
    ``PredictionInputs``), its id columns then ``fraction_columns(tree)`` (the expected fraction and the Dirichlet
    spread of every answer), through the same ``stream_rows``: constant memory, a partial file renamed into place,
    ``resume`` checked against the run's record (the tree's answers are its label names), one writer at a time.

    The answers are the model's own tree's, so ``label_names`` is refused; so is test-time symmetry (``tta``),
    which here averages softmax probabilities, not concentrations. ``reading``: as for ``predict_to_csv``.
    """
    from timm_astro.evaluation.predict import COMMAND, RowStream, check_header, stream_rows
    from timm_astro.losses import to_concentrations
    tree = model_tree(model)
    if label_names is not None:
        raise UserError(f'--label-names: a votes model names its own outputs, the {tree.n_answers} answers of its '
                        f'{tree.name} tree; leave it out')
    if tta != 'none':
        raise UserError(f'--tta {tta}: test-time symmetry is for class models here; a votes model predicts from the '
                        f'plain view (leave out --tta)')
    header = list(inputs.id_columns) + fraction_columns(tree)
    check_header(header, list(inputs.id_columns))
    model = model.to(device).eval()

    def cells(images: torch.Tensor) -> List[List[str]]:
        return fraction_rows(to_concentrations(model(images)).float().cpu(), tree)
    stream = RowStream(COMMAND, 'predictions', header, cells, model)
    return stream_rows(model, inputs, out, stream, data_config=data_config, tta='none', label_names=tree.answer_names,
                       batch_size=batch_size, workers=workers, device=device, resume=resume, overwrite=overwrite,
                       strict=strict, progress=progress, log=log, reading=reading)
