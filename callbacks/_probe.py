"""The monitors' probe set (the fixed validation samples an analysis looks at), what one run of an analysis gets
(:class:`RunContext`), and how a bad probe image is named in the user's terms."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import default_collate

from debugger.contract import Batch, unpack_batch


class AnalysisSkipped(Exception):
    """Raised by an analysis that cannot run on what it was given; the message says why in the user's terms
    (``"3 probe images, need ≥ 8 for 8 concepts"``) and is shown as is, without an exception type."""


def non_finite_images(images: Tensor) -> list[tuple[int, str]]:
    """``(row, "NaN" | "infinite values")`` for every image of the batch holding NaN or infinite values.

    Shape:
        - images: ``(N, C, H, W)``

    Example:
        >>> x = torch.zeros(3, 1, 2, 2)
        >>> x[1, 0, 0, 0], x[2, 0, 1, 1] = float("nan"), float("inf")
        >>> non_finite_images(x)
        [(1, 'NaN'), (2, 'infinite values')]
    """
    if not images.is_floating_point() or images.numel() == 0:
        return []
    flat = images.detach().flatten(1)
    nan, inf = flat.isnan().any(1), flat.isinf().any(1)
    return [(int(i), "NaN" if bool(nan[i]) else "infinite values") for i in torch.nonzero(nan | inf).flatten()]


def describe_rows(rows: Sequence[tuple[int, str]], limit: int = 5) -> str:
    """``"NaN in validation image 17"``-style text for ``(dataset index, what)`` pairs, the first ``limit`` named.

    Example:
        >>> describe_rows([(17, "NaN")])
        'NaN in validation image 17'
        >>> describe_rows([(3, "NaN"), (5, "infinite values"), (9, "NaN")], limit=2)
        'NaN in validation image 3, infinite values in validation image 5 and 1 more'
    """
    named = [f"{what} in validation image {index}" for index, what in rows[:limit]]
    more = len(rows) - len(named)
    return ", ".join(named) + (f" and {more} more" if more else "")


@dataclass
class ProbeSet:
    """The fixed validation samples a monitor analyses.

    Shape:
        - batch.images: ``(N, C, H, W)``; batch.targets: ``(N,)`` or ``(N, H, W)``
    """

    indices: list[int]
    batch: Batch
    concept_names: tuple[str, ...] = ()
    extras: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)

    def take(self, n: int) -> ProbeSet:
        """The first ``n`` samples (a uniform random subset, as the probe order is random)."""
        return self._select(list(range(min(n, len(self)))))

    def shard(self, rank: int, world_size: int) -> ProbeSet:
        """Every ``world_size``-th sample starting at ``rank`` (the shards of all ranks partition the set)."""
        return self._select(list(range(rank, len(self), world_size)))

    def chunks(self, size: int) -> Iterator[tuple[int, Batch]]:
        """``(offset, batch)`` pairs of at most ``size`` samples."""
        for s in range(0, len(self), size):
            yield s, self._select(list(range(s, min(s + size, len(self))))).batch

    def to(self, device: torch.device | str) -> ProbeSet:
        return self._map(lambda t: t.to(device))

    def _select(self, rows: list[int]) -> ProbeSet:
        out = self._map(lambda t: t[torch.tensor(rows, dtype=torch.long, device=t.device)])
        out.indices = [self.indices[i] for i in rows]
        return out

    def _map(self, fn: Callable[[Tensor], Tensor]) -> ProbeSet:
        b = self.batch
        return ProbeSet(
            list(self.indices),
            Batch(fn(b.images), fn(b.targets), _maybe(fn, b.concepts), _maybe(fn, b.concept_masks)),
            self.concept_names,
            {k: fn(v) for k, v in self.extras.items()},
        )


def _maybe(fn: Callable[[Tensor], Tensor], t: Tensor | None) -> Tensor | None:
    return None if t is None else fn(t)


@dataclass
class RunContext:
    """What a monitor's :meth:`Monitor.analyse` gets for one scheduled run."""

    trainer: Any
    pl_module: Any  # a LightningModule of either flavour
    probe: ProbeSet
    epoch: int
    global_step: int
    run_index: int
    deadline: float
    run_dir: Path | None  # None: the trainer has no logger and no default_root_dir of its own (nothing written)
    writer: Any | None
    is_global_zero: bool
    rank: int
    world_size: int
    full_size: int = 0  # probe samples this run covers over all ranks (``len(probe)`` without sharding)

    def out_of_time(self) -> bool:
        return time.perf_counter() > self.deadline


def _unwrap_dataset(ds: Any) -> Any:
    """The innermost dataset under ``Subset``/wrappers (for attributes like ``concept_names``)."""
    seen = 0
    while hasattr(ds, "dataset") and seen < 8:
        if hasattr(ds, "concept_names"):
            return ds
        ds = ds.dataset
        seen += 1
    return ds


def _first_loader(loaders: Any) -> Any:
    if isinstance(loaders, Mapping):
        return next(iter(loaders.values()), None)
    if isinstance(loaders, Sequence) and not isinstance(loaders, str | bytes):
        return loaders[0] if loaders else None
    return loaders


def materialise_probe(dataset: Any, indices: Sequence[int], image_key_extras: Sequence[str] = ()) -> ProbeSet:
    """Read ``dataset[i]`` for the probe indices and collate them in the sample contract.

    Raises:
        ValueError: if the samples are neither contract dicts nor ``(x, y)`` pairs.
    """
    samples = [dataset[int(i)] for i in indices]
    batch = default_collate(samples)
    extras: dict[str, Tensor] = {}
    if isinstance(batch, Mapping):
        extras = {k: batch[k] for k in image_key_extras if k in batch and isinstance(batch[k], Tensor)}
    b = unpack_batch(batch)
    names = tuple(getattr(_unwrap_dataset(dataset), "concept_names", ()) or ())
    return ProbeSet(list(map(int, indices)), b, names, extras)


def _empty_probe(device: torch.device | str) -> ProbeSet:
    return ProbeSet([], Batch(torch.zeros(0, 1, 1, 1, device=device), torch.zeros(0, dtype=torch.long, device=device)))
