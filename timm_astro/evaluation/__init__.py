"""Evaluation and prediction: metrics per class, calibration, test-time symmetry (D4), catalogue prediction."""
from timm_astro.evaluation.evaluate import Evaluation, LabelledData, evaluate, open_labelled_data, write_report
from timm_astro.evaluation.metrics import classification_metrics, predictive_entropy, reliability_bins
from timm_astro.evaluation.tta import TTA_MODES, tta_views, view_probabilities
