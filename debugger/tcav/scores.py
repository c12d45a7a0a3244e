"""TCAV scores and their significance: pure functions on derivatives and on per-run scores.

Example:
    >>> s, n = tcav_scores(torch.tensor([[1.0], [-1.0]]), torch.tensor([0, 0]), [0])
    >>> s.item(), n.tolist()
    (0.5, [2])
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["tcav_concept_significance", "tcav_scores", "tcav_significance"]


def tcav_scores(derivatives: Tensor, labels: Tensor, classes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Fraction of each class's samples whose directional derivative is positive, for every CAV.

    Samples whose label is not in ``classes`` (e.g. ``-1`` for unused pixel slots) are ignored.

    Shape:
        - derivatives: ``(N, K)`` (or ``(N, P, K)`` with ``labels`` ``(N, P)``)
        - labels: ``(N,)`` (or ``(N, P)``) int
        - output: scores ``(C, K)`` (NaN for a class without samples) and sample counts ``(C,)``

    Example:
        >>> d = torch.tensor([[1.0], [-1.0], [2.0]])
        >>> s, n = tcav_scores(d, torch.tensor([0, 0, 1]), [0, 1])
        >>> s.flatten().tolist(), n.tolist()
        ([0.5, 1.0], [2, 1])
    """
    d = derivatives.reshape(-1, derivatives.shape[-1])
    lab = labels.reshape(-1).to(d.device)
    if lab.shape[0] != d.shape[0]:
        raise ValueError(
            f"Expected one label per sample ({d.shape[0]}), but got labels of shape {tuple(labels.shape)!r}."
        )
    cls = torch.as_tensor(list(classes), dtype=torch.long, device=d.device)
    member = (lab[None, :] == cls[:, None]).double()  # (C, N)
    counts = member.sum(1)
    positive = member @ (d > 0).double()  # (C, K)
    return positive / counts[:, None], counts.long()


def tcav_significance(concept_scores: Tensor, random_scores: Tensor) -> Tensor:
    """Two-sided Student t-test p-values (:func:`scipy.stats.ttest_ind`, pooled variance) over the last axis.

    Two sets of identical constant scores (e.g. both saturated at 1) differ by nothing: p = 1, where scipy gives
    NaN. NaN remains where a side has fewer than 2 runs.

    Shape:
        - concept_scores: ``(..., R)``; random_scores: broadcastable to it
        - output: ``(...)`` float64

    Example:
        >>> p = tcav_significance(torch.tensor([0.9, 0.8, 0.95]), torch.tensor([0.5, 0.4, 0.6]))
        >>> bool(p < 0.01)
        True
    """
    from scipy.stats import ttest_ind

    a, b = torch.broadcast_tensors(concept_scores.double().cpu(), random_scores.double().cpu())
    # Identical runs (a saturated score) make scipy warn about precision; their p-value is NaN or 1 either way.
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = ttest_ind(a.numpy(), b.numpy(), axis=-1)
    p = torch.as_tensor(np.asarray(res.pvalue, dtype=np.float64))
    same = (a == a[..., :1]).all(-1) & (b == a[..., :1]).all(-1) & (a.shape[-1] >= 2)
    return torch.where(torch.isnan(p) & same, torch.ones_like(p), p)


def tcav_concept_significance(concept_scores: Tensor, null_scores: Tensor) -> Tensor:
    """Two-sided p-value of a concept's mean score against the mean scores of ``M`` random "concepts".

    Each null concept is a random example set of the concept's size, scored against the same random sets as the
    concept; their means are a sample of what a concept made of random examples scores. The concept's mean is
    tested as one new draw from that sample: ``t = (s - mean) / (sd · sqrt(1 + 1/M))`` with ``M − 1`` degrees of
    freedom (a pooled-variance t-test with a sample of one). Unlike the test over runs
    (:func:`tcav_significance`), whose runs all share the one concept set, this accounts for how much a score
    depends on which examples were drawn, and is calibrated when the concept is itself a random set.

    Shape:
        - concept_scores: ``(..., R)``; null_scores: ``(..., M, R)`` with ``M >= 2``
        - output: ``(...)`` float64

    Example:
        >>> null = torch.tensor([[0.4, 0.5], [0.5, 0.6], [0.6, 0.5], [0.45, 0.55]])
        >>> bool(tcav_concept_significance(torch.tensor([0.95, 1.0]), null) < 0.01)
        True
    """
    from scipy.stats import t as student_t

    if null_scores.dim() < 2 or null_scores.shape[-2] < 2:
        raise ValueError(
            f"Expected null scores of shape (..., M >= 2, R), but got {tuple(null_scores.shape)!r}."
        )
    m = null_scores.shape[-2]
    c = concept_scores.double().cpu().mean(-1)
    null = null_scores.double().cpu().mean(-1)  # (..., M)
    mu, sd = null.mean(-1), null.std(-1)
    stat = (c - mu) / (sd * math.sqrt(1.0 + 1.0 / m))
    p = torch.as_tensor(2.0 * student_t.sf(stat.abs().numpy(), m - 1), dtype=torch.float64)
    flat = sd == 0  # every null concept scored the same: the concept either matches it or not
    p = torch.where(flat, (c == mu).double(), p)
    return torch.where(torch.isnan(c) | torch.isnan(mu), torch.full_like(p, float("nan")), p)
