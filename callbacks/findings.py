"""The one typed channel between callbacks: monitors publish findings, consumers look their producers up by type.

A **finding** is a frozen dataclass a monitor makes in one run: the :class:`ConceptReportFinding` of a
:class:`~callbacks.ConceptMonitor`, the :class:`SliceConfusion` of a :class:`~callbacks.ConfusionMonitor`, the
:class:`TCAVFinding` of a :class:`~callbacks.TCAVMonitor`, the :class:`PolicyFinding` of a
:class:`~callbacks.FailureDrivenAugmentation`.

A **producer** lists the types it publishes in ``publishes`` and keeps the latest of each
(:meth:`Publisher.publish`, :meth:`Publisher.finding`). A **consumer** lists what it reads as :class:`Need` s
and resolves them in ``setup()`` with :func:`find_producers`, over ``trainer.callbacks`` and by type only. The
lookup fails there, before any training step, when a required producer is missing or when a producer runs at the
same hook as the consumer but after it (the consumer would read the previous run's finding); the message names
the producer and says how to add it or where to move it.

Example:
    >>> class Source(Publisher):
    ...     publishes = (TCAVFinding,)
    >>> class Reader:
    ...     pass
    >>> source, reader = Source(), Reader()
    >>> find_producers([source, reader], reader, [Need(TCAVFinding)])[TCAVFinding] is source
    True
    >>> find_producers([reader, source], reader, [Need(TCAVFinding)])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Expected Source (it publishes TCAVFinding) before Reader in the trainer's `callbacks`, ...
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, TypeVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from augment.policy import AugmentationPolicy
    from debugger import TCAVResult
    from debugger.ranking import ConceptFailure
    from debugger.report import ConceptReport

SliceSource = Literal["annotated", "discovered"]

__all__ = [
    "ConceptReportFinding",
    "Finding",
    "Need",
    "PolicyFinding",
    "Publisher",
    "SliceConfusion",
    "SliceSource",
    "TCAVFinding",
    "consumers_of",
    "find_producers",
]


@dataclass(frozen=True)
class Finding:
    """What every finding says: the (0-based) epoch and the global step of the run that made it."""

    made_by: ClassVar[str] = "a producer"  # how a user adds the usual producer, for error messages

    epoch: int
    step: int


@dataclass(frozen=True, eq=False)  # tensors inside: compared by identity
class ConceptReportFinding(Finding):
    """A concept discovery run: its :class:`~debugger.report.ConceptReport` and the probe images it analysed.

    ``probe_indices``: dataset index of each of the report's images, in the report's order. ``path``: where the
    report was stored (None when it was not written).
    """

    made_by: ClassVar[str] = "ConceptMonitor(layer=...)"

    report: ConceptReport
    probe_indices: tuple[int, ...]
    path: str | None = None

    def slices(self, indices: Sequence[int]) -> tuple[list[str], Tensor, Tensor]:
        """The report's concept slices over other probe images, matched by dataset index.

        A concept's slice holds the images of its top patches; images the report did not analyse are in no
        slice, and the third output says which images it analysed.

        Shape:
            - output membership: ``(C, len(indices))`` bool; covered: ``(len(indices),)`` bool
        """
        position = {idx: j for j, idx in enumerate(self.probe_indices)}
        cols = torch.tensor([position.get(int(i), -1) for i in indices], dtype=torch.long)
        member = self.report.membership.bool().cpu()
        out = torch.zeros(member.shape[0], len(cols), dtype=torch.bool)
        covered = cols >= 0
        out[:, covered] = member[:, cols[covered]]
        return list(self.report.concept_names), out, covered


@dataclass(frozen=True, eq=False)  # tensors inside: compared by identity
class SliceConfusion(Finding):
    """Concept-conditioned confusion of one run: counts per slice, over the whole probe set, and the ranking.

    ``sources[i]`` says where slice ``i`` came from: the probe set's annotations (its concepts and ``clean``) or a
    discovery run's concepts. ``ranking`` rows index the slices by their ``concept`` field.

    Shape:
        - counts: ``(S, K, K)`` int64; overall: ``(K, K)`` int64
    """

    made_by: ClassVar[str] = "ConfusionMonitor()"

    names: tuple[str, ...]
    sources: tuple[SliceSource, ...]
    counts: Tensor
    overall: Tensor
    ranking: tuple[ConceptFailure, ...]


@dataclass(frozen=True, eq=False)  # tensors inside: compared by identity
class TCAVFinding(Finding):
    """A TCAV run: the :class:`~debugger.tcav.TCAVResult`, the class names shown, and the concepts skipped."""

    made_by: ClassVar[str] = "TCAVMonitor(layers=...)"

    result: TCAVResult
    class_names: Mapping[int, str] = field(default_factory=dict)
    concepts_skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class PolicyFinding(Finding):
    """The augmentation policies in force, one per transform name, and the evidence they came from."""

    made_by: ClassVar[str] = "FailureDrivenAugmentation()"

    policies: Mapping[str, AugmentationPolicy]
    evidence: str = ""


F = TypeVar("F", bound=Finding)


class Publisher:
    """What a producer has: the finding types it publishes and the latest finding of each.

    Example:
        >>> class Source(Publisher):
        ...     publishes = (TCAVFinding,)
        >>> s = Source()
        >>> s.finding(TCAVFinding) is None
        True
    """

    publishes: tuple[type[Finding], ...] = ()

    def publish(self, finding: Finding) -> None:
        """Make ``finding`` the latest of its type.

        Raises:
            TypeError: if this producer does not list the finding's type in ``publishes``.
        """
        if type(finding) not in self.publishes:
            names = [k.__name__ for k in self.publishes]
            raise TypeError(f"Expected a finding of a type {type(self).__name__} publishes ({names}), but got "
                            f"{type(finding).__name__}.")
        self.__dict__.setdefault("_findings", {})[type(finding)] = finding

    def finding(self, kind: type[F]) -> F | None:
        """The latest finding of type ``kind``, or None before the first."""
        found: F | None = self.__dict__.get("_findings", {}).get(kind)
        return found


@dataclass(frozen=True)
class Need:
    """One finding type a consumer reads.

    Args:
        kind: the finding type.
        required: fail in ``setup()`` when no callback publishes it (otherwise the consumer does without).
        before: the producer must come earlier in ``trainer.callbacks``: it runs at the same hooks as the
            consumer, whose run must read the finding of the same epoch.
    """

    kind: type[Finding]
    required: bool = True
    before: bool = True


def find_producers(callbacks: Sequence[Any], consumer: Any, needs: Sequence[Need]) -> dict[type[Finding], Any]:
    """The producer of each needed finding type among ``callbacks``: the first that publishes it.

    An optional need without a producer is left out of the result.

    Raises:
        ValueError: when a required producer is missing, or a producer of a ``before`` need comes after
            ``consumer`` (also for an optional need: it would silently read the previous run's finding).
    """
    callbacks = list(callbacks)
    me = next((i for i, cb in enumerate(callbacks) if cb is consumer), len(callbacks))
    who = type(consumer).__name__
    out: dict[type[Finding], Any] = {}
    for need in needs:
        kind = need.kind
        producers = [(i, cb) for i, cb in enumerate(callbacks) if cb is not consumer and kind in _publishes(cb)]
        if not producers:
            if need.required:
                raise ValueError(
                    f"Expected a callback that publishes {kind.__name__} on the trainer for {who}, but got none; "
                    f"add {kind.made_by} to the trainer's `callbacks`, before {who}."
                )
            continue
        i, producer = producers[0]
        if need.before and i > me:
            raise ValueError(
                f"Expected {type(producer).__name__} (it publishes {kind.__name__}) before {who} in the trainer's "
                f"`callbacks`, but it comes after it ({who} would read the previous run's finding); move it ahead."
            )
        out[kind] = producer
    return out


def consumers_of(callbacks: Sequence[Any], kind: type[Finding]) -> list[Any]:
    """The callbacks that declare a :class:`Need` of ``kind`` (through a ``needs()`` method)."""
    return [cb for cb in callbacks if any(n.kind is kind for n in _needs(cb))]


def _publishes(cb: Any) -> tuple[type[Finding], ...]:
    kinds = getattr(cb, "publishes", ())
    return tuple(kinds) if isinstance(kinds, tuple | list) else ()


def _needs(cb: Any) -> Sequence[Need]:
    needs = getattr(cb, "needs", None)
    return needs() if callable(needs) else ()
