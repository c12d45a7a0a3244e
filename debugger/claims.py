"""The claims of failure concepts on transformed patches, and the matches chosen from them.

The pure half of :mod:`debugger.matching`: which patches a transform changed (:func:`changed_fraction`), which
concept claims an embedding (:func:`centroid_claims`, :func:`threshold_claims`), the strength range of a best
match (:func:`strength_range`), and the records a match is reported in (:class:`ClaimTable`,
:class:`TransformMatch`, :class:`MatchResult`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from debugger.structures import PatchSet

Source = Literal["matched", "bound", "none"]


# -- pure functions ----------------------------------------------------------------------------------------------


def changed_fraction(patches: PatchSet, changed: Tensor) -> Tensor:
    """Fraction of each patch's pixels that a transform changed.

    Shape:
        - changed: ``(N, H, W)`` bool, the changed pixels of the images the patches were cut from
        - output: ``(P,)`` float in ``[0, 1]``

    Raises:
        ValueError: if ``changed`` is not ``(N, H, W)`` for the patches' images.

    Example:
        >>> from debugger.patches import sliding_windows
        >>> changed = torch.zeros(1, 4, 4, dtype=torch.bool); changed[0, :, :1] = True
        >>> changed_fraction(sliding_windows(torch.zeros(1, 1, 4, 4), sizes=(2,), strides=(2,)), changed).tolist()
        [0.5, 0.0, 0.5, 0.0]
    """
    from debugger.patches import box_concept_overlap, mask_concept_overlap

    if changed.dim() != 3 or (len(patches) and int(patches.image_index.max()) >= changed.shape[0]):
        raise ValueError(
            f"Expected `changed` of shape (N, H, W) covering the patches' images, but got {tuple(changed.shape)!r}."
        )
    masks = changed.detach().cpu().bool()[:, None]
    if patches.masks is not None:
        return mask_concept_overlap(patches.masks, patches.image_index, masks)[:, 0]
    return box_concept_overlap(patches.boxes, patches.image_index, masks)[:, 0]


def centroid_claims(embeddings: Tensor, centroids: Tensor, radii: Tensor | None = None) -> Tensor:
    """Assign each embedding to the concept with the nearest centroid (Euclidean; NaN centroids never win).

    With ``radii``, the nearest concept claims the embedding only when it lies within that concept's radius: a
    patch unlike every concept is claimed by none, instead of by whichever is least unlike it.

    Shape:
        - embeddings: ``(n, D)`` (more dims are flattened); centroids: ``(C, D)``; radii: ``(C,)``
        - output: ``(C, n)`` bool, at most one True per column

    Raises:
        ValueError: if the embedding and centroid dimensions differ.

    Example:
        >>> centroid_claims(torch.tensor([[0.1], [0.9], [2.0]]), torch.tensor([[0.0], [1.0]])).tolist()
        [[True, False, False], [False, True, True]]
    """
    x = embeddings.detach().float().flatten(1)
    c = centroids.detach().float().flatten(1).to(x.device)
    if x.shape[1] != c.shape[1]:
        raise ValueError(
            f"Expected embeddings of dimension {c.shape[1]} like the concept centroids, but got {x.shape[1]}; embed "
            "with the layer and embedding mode of the analysis that found the concepts."
        )
    valid = ~torch.isnan(c).any(1)
    out = torch.zeros(c.shape[0], x.shape[0], dtype=torch.bool, device=x.device)
    if x.shape[0] == 0 or not bool(valid.any()):
        return out
    d = torch.cdist(x, c.nan_to_num(0.0))
    d[:, ~valid] = torch.inf
    nearest = d.argmin(1)
    cols = torch.arange(x.shape[0], device=x.device)
    inside = torch.ones_like(nearest, dtype=torch.bool)
    if radii is not None:
        inside = d[cols, nearest] <= radii.float().to(x.device).nan_to_num(torch.inf)[nearest]
    out[nearest[inside], cols[inside]] = True
    return out


def threshold_claims(scores: Tensor, thresholds: Tensor) -> Tensor:
    """A concept claims every patch whose score reaches its threshold (NaN scores claim nothing); not exclusive.

    Shape:
        - scores: ``(C, n)``; thresholds: ``(C,)``; output: ``(C, n)`` bool

    Example:
        >>> threshold_claims(torch.tensor([[0.2, 0.9], [float("nan"), 1.0]]), torch.tensor([0.5, 0.5])).tolist()
        [[False, True], [False, True]]
    """
    return scores >= thresholds.to(scores.device, scores.dtype)[:, None]


def strength_range(contrast: Tensor, strengths: Sequence[float], best: int, fraction: float = 0.5
                   ) -> tuple[float, float]:
    """The neighbouring strengths around ``best`` whose contrast is at least ``fraction`` of the best one's.

    Shape:
        - contrast: ``(S,)`` over ascending ``strengths`` (NaN: not measured, ends the run)

    Example:
        >>> strength_range(torch.tensor([0.05, 0.3, 0.6, 0.5, 0.1]), (0.2, 0.4, 0.6, 0.8, 1.0), best=2)
        (0.4, 0.8)
    """
    keep = (contrast >= fraction * contrast[best]).tolist()
    lo = hi = best
    while lo > 0 and keep[lo - 1]:
        lo -= 1
    while hi < len(keep) - 1 and keep[hi + 1]:
        hi += 1
    return float(strengths[lo]), float(strengths[hi])


# -- results ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimTable:
    """How strongly every concept claims the patches of every transform at every strength.

    Shape:
        - changed: ``(C, T, S)`` share of a transform's changed patches assigned to each concept (NaN: none)
        - clean: ``(C, T, S)`` share of the same patches, on the clean images, assigned to each concept
        - counts: ``(T, S)`` int64, changed patches at each strength
    """

    concepts: tuple[str, ...]
    transforms: tuple[str, ...]
    strengths: tuple[float, ...]
    changed: Tensor
    clean: Tensor
    counts: Tensor
    rule: str = "centroid"
    min_changed: float = 0.5

    @property
    def contrast(self) -> Tensor:
        """``(C, T, S)`` ``changed - clean``."""
        return self.changed - self.clean

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: names and nested lists (``None`` for unmeasured shares)."""
        return {
            "concepts": list(self.concepts),
            "transforms": list(self.transforms),
            "strengths": list(self.strengths),
            "changed": _nested(self.changed),
            "clean": _nested(self.clean),
            "counts": self.counts.tolist(),
            "rule": self.rule,
            "min_changed": self.min_changed,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ClaimTable:
        def floats(v: Any) -> Tensor:
            return torch.tensor(_unnest(v), dtype=torch.float32)

        return cls(tuple(d["concepts"]), tuple(d["transforms"]), tuple(float(s) for s in d["strengths"]),
                   floats(d["changed"]), floats(d["clean"]), torch.tensor(d["counts"], dtype=torch.long),
                   str(d.get("rule", "centroid")), float(d.get("min_changed", 0.5)))


@dataclass(frozen=True)
class TransformMatch:
    """The transform a concept chose (or that a person bound to it), its strength range and why.

    ``transform`` is None when nothing matched: the policy's fallback applies, and ``evidence`` says so.
    ``claim_changed`` / ``claim_clean`` are read at ``strength`` of the chosen transform (of the best, rejected
    one when nothing matched). ``shows``: the ground-truth concept the concept's top patches show, where the data
    has annotations (scores the choice; never made it).
    """

    concept: str
    transform: str | None
    strength_range: tuple[float, float] | None
    claim_changed: float
    claim_clean: float
    evidence: str
    concept_id: int = -1
    strength: float | None = None
    n_changed: int = 0
    source: Source = "matched"
    lift: float = float("nan")
    shows: str | None = None
    shows_precision: float = float("nan")

    @property
    def contrast(self) -> float:
        return self.claim_changed - self.claim_clean

    def to_dict(self) -> dict[str, Any]:
        return {
            "concept": self.concept,
            "concept_id": self.concept_id,
            "transform": self.transform,
            "strength_range": None if self.strength_range is None else list(self.strength_range),
            "strength": self.strength,
            "claim_changed": _finite_or_none(self.claim_changed),
            "claim_clean": _finite_or_none(self.claim_clean),
            "n_changed": self.n_changed,
            "source": self.source,
            "lift": _finite_or_none(self.lift),
            "shows": self.shows,
            "shows_precision": _finite_or_none(self.shows_precision),
            "evidence": self.evidence,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TransformMatch:
        r = d.get("strength_range")
        return cls(
            concept=str(d["concept"]),
            transform=d.get("transform"),
            strength_range=None if r is None else (float(r[0]), float(r[1])),
            claim_changed=_nan_if_none(d.get("claim_changed")),
            claim_clean=_nan_if_none(d.get("claim_clean")),
            evidence=str(d.get("evidence", "")),
            concept_id=int(d.get("concept_id", -1)),
            strength=None if d.get("strength") is None else float(d["strength"]),
            n_changed=int(d.get("n_changed", 0)),
            source=d.get("source", "matched"),
            lift=_nan_if_none(d.get("lift")),
            shows=d.get("shows"),
            shows_precision=_nan_if_none(d.get("shows_precision")),
        )


@dataclass(frozen=True)
class MatchResult:
    """One :class:`TransformMatch` per concept acted on, and the :class:`ClaimTable` they were read from."""

    matches: tuple[TransformMatch, ...]
    table: ClaimTable
    settings: dict[str, Any] = field(default_factory=dict)

    def transform_for(self, concept: str) -> TransformMatch:
        """The match of a concept by name.

        Raises:
            KeyError: if the concept was not matched.
        """
        for m in self.matches:
            if m.concept == concept:
                return m
        raise KeyError(f"Expected one of the matched concepts {[m.concept for m in self.matches]!r}, but got "
                       f"{concept!r}.")

    def to_dict(self) -> dict[str, Any]:
        return {"matches": [m.to_dict() for m in self.matches], "table": self.table.to_dict(),
                "settings": dict(self.settings)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MatchResult:
        return cls(tuple(TransformMatch.from_dict(m) for m in d["matches"]), ClaimTable.from_dict(d["table"]),
                   dict(d.get("settings", {})))

    def to_markdown(self) -> str:
        """The evidence, one line per concept, then each matched concept's contrast per transform at its best
        strength (for ``report.md`` and a TensorBoard text tag)."""
        lines = ["## Failure concept → transform", ""]
        if not self.matches:
            return "\n".join([*lines, "No failure concepts to match.", ""])
        lines += [f"- {m.evidence}" for m in self.matches]
        t = self.table
        lines += ["", "Share of each transform's changed patches the concept claims vs the same patches clean, at "
                  "the transform's best strength for that concept:", "",
                  "| concept | " + " | ".join(t.transforms) + " |", "|---|" + "---:|" * len(t.transforms)]
        contrast = t.contrast
        for m in self.matches:
            if m.concept not in t.concepts:
                continue
            i = t.concepts.index(m.concept)
            cells = []
            for j in range(len(t.transforms)):
                row = torch.nan_to_num(contrast[i, j], nan=-math.inf)
                s = int(row.argmax())
                if not math.isfinite(float(row[s])):
                    cells.append("—")
                    continue
                cells.append(f"{float(t.changed[i, j, s]):.0%} vs {float(t.clean[i, j, s]):.0%} "
                             f"@{t.strengths[s]:g}")
            lines.append(f"| {m.concept} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def _nested(t: Tensor) -> Any:
    if t.dim() == 0:
        return _finite_or_none(float(t))
    return [_nested(x) for x in t]


def _unnest(v: Any) -> Any:
    if isinstance(v, list):
        return [_unnest(x) for x in v]
    return float("nan") if v is None else float(v)


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _nan_if_none(x: Any) -> float:
    return float("nan") if x is None else float(x)
