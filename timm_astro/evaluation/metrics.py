"""Classification metrics from predicted probabilities, computed with torchmetrics.

``classification_metrics`` gives what a galaxy-morphology user reports per class and overall: top-1 (and top-5
where there are more than 5 classes), balanced accuracy (the mean per-class recall, which a dominant class cannot
inflate), macro F1, per-class precision / recall / F1 / support, log loss, the expected calibration error and the
confusion matrix. ``reliability_bins`` gives the per-bin figures behind the calibration error, for the diagram.
"""
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torchmetrics.functional.classification import (
    multiclass_accuracy, multiclass_calibration_error, multiclass_confusion_matrix, multiclass_f1_score,
    multiclass_precision, multiclass_recall,
)

__all__ = ['CALIBRATION_BINS', 'classification_metrics', 'reliability_bins', 'predictive_entropy']

CALIBRATION_BINS = 15  # torchmetrics' default, and the usual choice in the calibration literature


def _pct(value: torch.Tensor) -> float:
    return round(100.0 * float(value), 4)


def predictive_entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy of each row of probabilities, in nats (0 for a one-hot row, ln(classes) for a uniform one)."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def classification_metrics(
        probs: torch.Tensor,
        targets: torch.Tensor,
        label_names: Optional[Sequence[str]] = None,
) -> Dict[str, Any]:
    """Metrics of predictions ``probs`` ``[N, C]`` (rows sum to 1) against integer ``targets`` ``[N]``.

    Accuracies, F1 scores, precision and recall are in percent; ``log_loss`` is the mean negative log-probability of
    the true class (nats); ``ece`` the expected calibration error of the top-1 confidence over
    ``CALIBRATION_BINS`` equal-width bins (percent). Classes absent from ``targets`` have support 0 and are
    left out of the macro averages (torchmetrics' ``ignore`` of absent classes is not used: see ``per_class``).
    """
    if probs.ndim != 2 or targets.ndim != 1 or probs.shape[0] != targets.shape[0]:
        raise ValueError(f'expected probs [N, C] and targets [N], got {list(probs.shape)} and {list(targets.shape)}')
    if probs.shape[0] == 0:
        raise ValueError('no predictions to score (empty dataset)')
    probs, targets = probs.float(), targets.long()
    num_classes = probs.shape[1]
    names = list(label_names) if label_names is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f'{len(names)} label names for {num_classes} classes')
    kw = dict(num_classes=num_classes)
    support = torch.bincount(targets, minlength=num_classes)
    present = support > 0
    precision = multiclass_precision(probs, targets, average='none', **kw)
    recall = multiclass_recall(probs, targets, average='none', **kw)
    f1 = multiclass_f1_score(probs, targets, average='none', **kw)
    metrics: Dict[str, Any] = {
        'num_images': int(targets.numel()),
        'num_classes': num_classes,
        'top1': _pct(multiclass_accuracy(probs, targets, average='micro', **kw)),
    }
    if num_classes > 5:
        metrics['top5'] = _pct(multiclass_accuracy(probs, targets, average='micro', top_k=5, **kw))
    metrics.update(
        balanced_accuracy=_pct(recall[present].mean()),
        macro_f1=_pct(f1[present].mean()),
        log_loss=round(float(F.nll_loss(probs.clamp_min(1e-12).log(), targets)), 6),
        ece=_pct(multiclass_calibration_error(probs, targets, n_bins=CALIBRATION_BINS, norm='l1', **kw)),
        mean_entropy=round(float(predictive_entropy(probs).mean()), 6),
    )
    metrics['per_class'] = [
        {'label': i, 'name': names[i], 'precision': _pct(precision[i]), 'recall': _pct(recall[i]),
         'f1': _pct(f1[i]), 'support': int(support[i])}
        for i in range(num_classes)]
    metrics['confusion_matrix'] = multiclass_confusion_matrix(probs, targets, **kw).tolist()  # rows: true class
    return metrics


def reliability_bins(probs: torch.Tensor, targets: torch.Tensor, n_bins: int = CALIBRATION_BINS) -> Dict[str, List]:
    """Top-1 confidence against accuracy in ``n_bins`` equal-width confidence bins (the calibration error's bins).

    Returns the bin edges and, per bin, the mean confidence, the accuracy and the number of images (mean values
    are None for empty bins). ``sum(count * |accuracy - confidence|) / N`` is the expected calibration error.
    """
    confidence, predicted = probs.float().max(-1)
    correct = (predicted == targets).float()
    edges = torch.linspace(0, 1, n_bins + 1)
    # bin i holds confidences in (edges[i], edges[i + 1]], as torchmetrics bins them
    index = (torch.bucketize(confidence, edges, right=False) - 1).clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins)
    conf_sum = torch.zeros(n_bins).index_add_(0, index, confidence)
    acc_sum = torch.zeros(n_bins).index_add_(0, index, correct)
    nonzero = counts > 0
    return {
        'edges': edges.tolist(),
        'count': counts.tolist(),
        'confidence': [float(c / n) if z else None for c, n, z in zip(conf_sum, counts, nonzero)],
        'accuracy': [float(a / n) if z else None for a, n, z in zip(acc_sum, counts, nonzero)],
    }
