"""Probe sets: the fixed, seeded validation subset an analysis looks at, and what a probe set of a size can show.

The callbacks pick their probe sets with :func:`select_probe_indices`, and so do the recipes' one-off analyses, so
a recipe and a monitor with the same seed analyse the same images. :func:`probe_coverage` says whether a probe set
can show a failure of a given prevalence at all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["ProbeCoverage", "detectable_rate", "probe_coverage", "select_probe_indices"]


def select_probe_indices(num_samples: int, size: int, seed: int) -> list[int]:
    """Pick ``min(size, num_samples)`` distinct sample indices with a seeded generator, in a seeded random order.

    The order matters: a time-budget subsample takes a prefix, which is then itself a uniform random subset.

    Raises:
        ValueError: for a negative ``num_samples`` or a ``size`` below 1.

    Example:
        >>> select_probe_indices(10, 4, seed=0) == select_probe_indices(10, 4, seed=0)
        True
        >>> sorted(select_probe_indices(3, 8, seed=1))
        [0, 1, 2]
    """
    if num_samples < 0:
        raise ValueError(f"Expected `num_samples` to be non-negative, but got {num_samples!r}.")
    if size < 1:
        raise ValueError(f"Expected `size` to be a positive integer, but got {size!r}.")
    g = torch.Generator().manual_seed(int(seed))
    return torch.randperm(num_samples, generator=g)[: min(size, num_samples)].tolist()


@dataclass(frozen=True)
class ProbeCoverage:
    """How many probe images a failure of a given prevalence can be expected to reach (:func:`probe_coverage`).

    ``enough``: the probe set holds ``min_support`` images of the failure with the asked confidence.
    """

    probe_size: int
    rate: float
    min_support: int
    expected: float
    p_enough: float
    needed: int
    enough: bool
    message: str


def probe_coverage(probe_size: int, rate: float, min_support: int = 10, confidence: float = 0.9) -> ProbeCoverage:
    """Can a probe set of ``probe_size`` images show a failure present in a fraction ``rate`` of images?

    A failure concept needs ``min_support`` images in its slice for a verdict
    (:func:`~debugger.ranking.rank_failures`). The number of probe images showing the failure is binomial;
    ``p_enough`` is the chance it reaches ``min_support``, and ``needed`` the smallest probe size reaching it with
    probability ``confidence``.

    Raises:
        ValueError: if ``probe_size`` is not positive, ``rate`` is not in (0, 1], ``min_support`` is negative or
            ``confidence`` is not in (0, 1).

    Example:
        >>> cover = probe_coverage(64, 0.03)
        >>> print(cover.message)  # doctest: +NORMALIZE_WHITESPACE
        64 probe images: a failure in 3% of images shows in ~2, fewer than the 10 a failure concept needs;
        471 probe images hold 10 with 90% probability.
        >>> probe_coverage(300, 0.5).enough
        True
        >>> print(probe_coverage(256, 0.05).message)  # doctest: +NORMALIZE_WHITESPACE
        256 probe images: a failure in 5% of images shows in ~13, but holds the 10 a failure concept needs only with
        83% probability; 282 probe images hold them with 90% probability.
    """
    if not isinstance(probe_size, int) or probe_size < 1:
        raise ValueError(f"Expected `probe_size` to be a positive integer, but got {probe_size!r}.")
    if not 0 < rate <= 1:
        raise ValueError(f"Expected `rate` to be in (0, 1], but got {rate!r}.")
    if not isinstance(min_support, int) or min_support < 0:
        raise ValueError(f"Expected `min_support` to be a non-negative integer, but got {min_support!r}.")
    if not 0 < confidence < 1:
        raise ValueError(f"Expected `confidence` to be in (0, 1), but got {confidence!r}.")
    p_enough = _binomial_at_least(probe_size, rate, min_support)
    needed = max(min_support, 1)
    step = 1
    while _binomial_at_least(needed, rate, min_support) < confidence:  # doubling, then bisection
        needed += step
        step *= 2
    low = max(needed - step // 2, min_support, 1)
    while low < needed:
        mid = (low + needed) // 2
        low, needed = (low, mid) if _binomial_at_least(mid, rate, min_support) >= confidence else (mid + 1, needed)
    expected = probe_size * rate
    shown = f"{expected:.0f}" if expected >= 1 else f"{expected:.1f}"
    message = f"{probe_size} probe images: a failure in {100 * rate:.3g}% of images shows in ~{shown}"
    if p_enough >= confidence:
        message += f", enough for the {min_support} a failure concept needs."
    elif expected < min_support:
        message += (f", fewer than the {min_support} a failure concept needs; {needed} probe images hold "
                    f"{min_support} with {100 * confidence:.0f}% probability.")
    else:
        message += (f", but holds the {min_support} a failure concept needs only with {100 * p_enough:.0f}% "
                    f"probability; {needed} probe images hold them with {100 * confidence:.0f}% probability.")
    return ProbeCoverage(probe_size, float(rate), min_support, float(expected), p_enough, needed,
                         p_enough >= confidence, message)


def detectable_rate(probe_size: int, min_support: int = 10, confidence: float = 0.9) -> float:
    """The smallest prevalence of a failure that ``probe_size`` probe images show in ``min_support`` images with
    probability ``confidence``; ``inf`` when fewer than ``min_support`` images make the whole probe set.

    Raises:
        ValueError: as :func:`probe_coverage`.

    Example:
        >>> round(detectable_rate(128), 3), round(detectable_rate(500), 3)
        (0.109, 0.028)
    """
    probe_coverage(probe_size, 1.0, min_support, confidence)  # validates the arguments
    if _binomial_at_least(probe_size, 1.0, min_support) < confidence:
        return math.inf
    low, high = 0.0, 1.0
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (mid, high) if _binomial_at_least(probe_size, mid, min_support) < confidence else (low, mid)
    return high


def _binomial_at_least(n: int, p: float, m: int) -> float:
    """P(Binomial(n, p) >= m), summed in log space."""
    if m <= 0:
        return 1.0
    if m > n:
        return 0.0
    if p >= 1:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    below = sum(math.exp(math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) + k * log_p
                         + (n - k) * log_q) for k in range(m))
    return max(0.0, 1.0 - below)
