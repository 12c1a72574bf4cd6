"""Vote fractions from a votes model, and how well they match the volunteers' (the library half of evaluating and
predicting on Galaxy Zoo votes).

* ``expected_fractions`` / ``fraction_std``: a model's Dirichlet concentrations per question become the expected
  vote fraction of every answer (``alpha_k / A``) and its spread (the standard deviation of the Dirichlet's marginal,
  Beta(alpha_k, A - alpha_k): ``sqrt(alpha_k (A - alpha_k) / (A^2 (A + 1)))``).
* ``vote_metrics``: per question, the mean absolute error of the predicted against the observed fractions, and
  the accuracy of the predicted top answer on galaxies where the volunteers agree (observed top fraction > 0.8).
* ``calibration_bins`` / ``plot_vote_calibration``: predicted against observed fraction, binned, per question.
* ``predict_votes``: a model's concentrations over a ``VotesDataset`` (and the observed counts), batched.

The mean absolute error is unweighted: every galaxy that has at least ``min_votes`` votes on a question counts
once, whatever its number of votes, so it is the error a catalogue user sees per galaxy. Its observed fractions
are themselves noisy (a few votes give coarse fractions); raise ``min_votes`` to measure against well-sampled
galaxies only. The loss, not this metric, is where the number of volunteers weights a galaxy.
"""
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch

from timm_astro.data.decision_tree import DecisionTree
from timm_astro.errors import UserError

__all__ = ['AGREEMENT_THRESHOLD', 'expected_fractions', 'fraction_std', 'observed_fractions', 'vote_metrics',
           'calibration_bins', 'plot_vote_calibration', 'predict_votes']

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
