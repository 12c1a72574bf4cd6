"""The Dirichlet-multinomial loss for Galaxy Zoo vote counts (Walmsley et al. 2022, arXiv:2102.08414).

A model trained on votes has one output per answer of a decision tree (``timm_astro.data.decision_tree``). The
outputs are mapped to Dirichlet concentrations ``alpha``; for each question, the observed counts ``n`` (``N``
volunteers in all) have the Dirichlet-multinomial likelihood

    log p(n | alpha) = lgamma(N + 1) + lgamma(A) - lgamma(N + A)
                       + sum_k [lgamma(n_k + a_k) - lgamma(a_k) - lgamma(n_k + 1)]

with ``A = sum_k a_k``. The loss is its negative, summed over questions: a galaxy answered by many volunteers
constrains the prediction more than one answered by few, and a question nobody was asked (``N = 0``) contributes
exactly 0. The expected vote fractions are ``alpha / A`` per question (``timm_astro.evaluation.votes``).

Concentrations are ``1 + 99 * sigmoid(output)`` (``CONCENTRATION_MAP``), in [1, 100]: Zoobot-like, not Zoobot's
(``sigmoid(output) * 100 + 1``, in [1, 101]). Bounded, for two reasons: a lower bound of 1 keeps every answer's
marginal Beta(a_k, A - a_k) from piling its mass at fractions 0 and 1 (a U shape that says "certainly all or
certainly none", which votes of a few tens of volunteers cannot support), and an upper bound stops the fit from
sending concentrations to infinity: for any one galaxy the likelihood keeps rising as ``alpha`` grows along the
observed fractions (it tends to the multinomial's), so an unbounded map (``1 + softplus``) rewards ever more
confident predictions.
"""
from typing import Union

import torch
import torch.nn as nn

from timm_astro.data.decision_tree import DecisionTree, load_tree

__all__ = ['MIN_CONCENTRATION', 'MAX_CONCENTRATION', 'CONCENTRATION_MAP', 'to_concentrations',
           'dirichlet_multinomial_nll', 'mean_galaxy_nll', 'DirichletMultinomialLoss']

MIN_CONCENTRATION = 1.0
MAX_CONCENTRATION = 100.0
# to_concentrations in words, for a votes model's config.json (checked when it loads) and its model card
CONCENTRATION_MAP = f'{MIN_CONCENTRATION:g} + {MAX_CONCENTRATION - MIN_CONCENTRATION:g} * sigmoid(output)'


def to_concentrations(outputs: torch.Tensor) -> torch.Tensor:
    """A model's raw outputs (any real numbers) as Dirichlet concentrations in [1, 100] (float32 at least)."""
    outputs = outputs.float() if outputs.dtype in (torch.float16, torch.bfloat16) else outputs
    return MIN_CONCENTRATION + (MAX_CONCENTRATION - MIN_CONCENTRATION) * torch.sigmoid(outputs)


def dirichlet_multinomial_nll(concentrations: torch.Tensor, counts: torch.Tensor,
                              question_index: torch.Tensor, num_questions: int) -> torch.Tensor:
    """Negative log-likelihood of ``counts`` per galaxy and question, ``(batch, num_questions)``.

    Args:
        concentrations: ``(batch, answers)``, all > 0.
        counts: ``(batch, answers)``, vote counts (whole numbers >= 0, as floats).
        question_index: ``(answers,)``, the question of each answer (``DecisionTree.question_index``).
    """
    counts = counts.to(concentrations.dtype)
    index = question_index.to(concentrations.device)

    def per_question(values: torch.Tensor) -> torch.Tensor:
        return values.new_zeros(values.shape[0], num_questions).index_add_(1, index, values)

    total_votes, total_alpha = per_question(counts), per_question(concentrations)
    answer_terms = per_question(torch.lgamma(counts + concentrations) - torch.lgamma(concentrations)
                                - torch.lgamma(counts + 1))
    log_prob = (torch.lgamma(total_votes + 1) + torch.lgamma(total_alpha) - torch.lgamma(total_votes + total_alpha)
                + answer_terms)
    # nobody answered: the likelihood of no votes is 1; where() makes the term exactly 0 (and its gradient too)
    return torch.where(total_votes > 0, -log_prob, torch.zeros_like(log_prob))


def mean_galaxy_nll(concentrations: torch.Tensor, counts: torch.Tensor, tree: DecisionTree) -> torch.Tensor:
    """The loss of a set of galaxies from their concentrations: the NLL summed over each galaxy's questions,
    averaged over galaxies (``DirichletMultinomialLoss``'s value). train-votes validates on it and evaluate and the
    benchmarks report it, so their figures are the training loss's."""
    index = torch.tensor(tree.question_index)
    return dirichlet_multinomial_nll(concentrations, counts, index, len(tree.questions)).sum(dim=1).mean()


class DirichletMultinomialLoss(nn.Module):
    """``loss(outputs, counts)``: the per-question Dirichlet-multinomial NLL of the counts, summed over questions
    and averaged over the batch; ``outputs`` are the model's raw outputs, one per answer in the tree's order."""

    def __init__(self, tree: Union[DecisionTree, str]):
        super().__init__()
        self.tree = load_tree(tree)
        self.register_buffer('question_index', torch.tensor(self.tree.question_index), persistent=False)

    def per_question(self, outputs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """The NLL of each galaxy and question, ``(batch, questions)``."""
        if outputs.ndim != 2 or outputs.shape[1] != self.tree.n_answers or counts.shape != outputs.shape:
            raise ValueError(f'expected outputs and counts of shape (batch, {self.tree.n_answers}) for the '
                             f'{self.tree.name} tree, got {tuple(outputs.shape)} and {tuple(counts.shape)}')
        return dirichlet_multinomial_nll(to_concentrations(outputs), counts, self.question_index,
                                         len(self.tree.questions))

    def forward(self, outputs: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        return self.per_question(outputs, counts).sum(dim=1).mean()
