"""Choosing probe samples: the fixed, seeded validation subset an analysis looks at.

The callbacks pick their probe sets with it, and so do the recipes' one-off analyses, so a recipe and a monitor
with the same seed analyse the same images.
"""

from __future__ import annotations

import torch

__all__ = ["select_probe_indices"]


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
