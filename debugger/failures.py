"""Failure evidence: which concepts the model fails on, with the counts and measurements a policy is built from.

A :class:`FailureEvidence` is one failure concept — its name, the ground-truth concept it shows (if any), its
lift, the confusion counts inside its slice and over the whole probe set, and, when concept masks allow it, how
much brightness it removes (:class:`Darkening`). It is what :func:`augment.policy.derive_policies` turns into
augmentation policies; this module builds it from a :class:`~debugger.report.ConceptReport`
(:func:`evidence_from_report`) or from a failure ranking over annotated slices (:func:`evidence_from_ranking`).

Slices from annotations (:func:`annotated_membership`) and their quality (:func:`slice_quality`) live here too:
the confusion monitor and the recipes' one-off analyses share them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from debugger.confusion import confusion_accuracy, confusion_iou

if TYPE_CHECKING:
    from debugger.ranking import ConceptFailure
    from debugger.report import ConceptReport

__all__ = [
    "Darkening",
    "FailureEvidence",
    "annotated_membership",
    "concept_darkening",
    "evidence_from_ranking",
    "evidence_from_report",
    "slice_quality",
]


def concept_darkening(
    images: Tensor,
    concept_masks: Tensor,
    object_masks: Tensor | None = None,
    quantile: float = 0.9,
    min_pixels: int = 4,
) -> Tensor:
    """Per image, the fraction of brightness a concept removes inside its mask.

    ``1 - q(lum inside) / q(lum outside)``, with ``q`` the ``quantile`` of the luminance (channel mean) over the
    object's pixels inside and outside the concept's mask (the whole image without ``object_masks``). An upper
    quantile rather than the mean, because the region inside a shadow's mask also holds background and
    half-covered edge pixels; the brightest pixels inside are the shadowed object itself (on Fashion-MNIST with
    black backgrounds and without object masks, the median would read the background). The ratio assumes that 0
    is black (images in ``[0, 1]`` or ``[0, 255]``, not mean/std-normalised ones).

    Shape:
        - images: ``(B, C, H, W)``; concept_masks, object_masks: ``(B, H, W)``, non-zero inside
        - output: ``(B,)``, NaN where either region has fewer than ``min_pixels`` pixels or the outside is black

    Raises:
        ValueError: for masks whose shape does not match the images, or ``quantile`` outside ``[0, 1]``.

    Example:
        >>> x = torch.full((1, 1, 4, 4), 0.8)
        >>> x[..., :2] *= 0.25  # the left half loses 75% of its brightness
        >>> mask = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> mask[..., :2] = True
        >>> round(float(concept_darkening(x, mask)[0]), 3)
        0.75
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"Expected `images` to have shape (B, C, H, W), but got {got!r}.")
    b, _, h, w = images.shape
    for name, m in (("concept_masks", concept_masks), ("object_masks", object_masks)):
        if m is not None and tuple(m.shape) != (b, h, w):
            raise ValueError(f"Expected `{name}` to have shape ({b}, {h}, {w}), but got {tuple(m.shape)}.")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"Expected `quantile` to be in [0, 1], but got {quantile!r}.")
    lum = images.detach().float().mean(1).cpu()
    inside = concept_masks.detach().cpu() != 0
    obj = torch.ones_like(inside) if object_masks is None else object_masks.detach().cpu() != 0
    out = torch.full((b,), float("nan"))
    for i in range(b):
        r_in, r_out = inside[i] & obj[i], ~inside[i] & obj[i]
        if int(r_in.sum()) < min_pixels or int(r_out.sum()) < min_pixels:
            continue
        lit = torch.quantile(lum[i][r_out], quantile)
        if float(lit) <= 1e-3:
            continue
        out[i] = (1 - torch.quantile(lum[i][r_in], quantile) / lit).clamp(0, 1)
    return out


@dataclass(frozen=True)
class Darkening:
    """How much brightness a concept removes over the images of its slice: median and 10th–90th percentiles.

    Example:
        >>> d = Darkening.from_values(torch.tensor([0.6, 0.7, 0.65, float("nan"), 0.62, 0.68]))
        >>> d.n, round(d.median, 2)
        (5, 0.65)
    """

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def from_values(cls, values: Tensor, min_images: int = 5) -> Darkening | None:
        """Summarise per-image values (NaN ignored); None when fewer than ``min_images`` were measured."""
        v = values[~torch.isnan(values)].double()
        if len(v) < min_images:
            return None
        q = torch.quantile(v, torch.tensor([0.5, 0.1, 0.9], dtype=torch.float64)).tolist()
        return cls(round(q[0], 4), round(q[1], 4), round(q[2], 4), len(v))

    def describe(self, concept: str) -> str:
        return (f"'{concept}' removes {self.median:.0%} of the brightness under its mask (median of {self.n} "
                f"images; 10th–90th percentile {self.low:.0%}–{self.high:.0%})")

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "low": self.low, "high": self.high, "n": self.n}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Darkening:
        return cls(float(d["median"]), float(d["low"]), float(d["high"]), int(d["n"]))


@dataclass(frozen=True)
class FailureEvidence:
    """One failure concept and the confusion counts a policy is derived from.

    ``matches``: the ground-truth concept the failure shows (its own name for an annotated slice), or None.
    ``darkening``: how much brightness the concept removes in its slice, when it was measured (concept masks);
    it sets the strength of the transform (see :func:`augment.policy.derive_policies`).

    Shape:
        - confusion_in: ``(K, K)`` counts inside the concept's slice
        - confusion_all: ``(K, K)`` counts over the whole probe set (the slice included; outside the slice is
          ``confusion_all - confusion_in``)
    """

    name: str
    matches: str | None
    lift: float
    confusion_in: Tensor
    confusion_all: Tensor
    darkening: Darkening | None = None


def evidence_from_report(report: ConceptReport, min_precision: float = 0.5
                         ) -> tuple[list[FailureEvidence], list[str] | None]:
    """The report's failure concepts as evidence, and its class names (None when it has none).

    A discovered concept ``matches`` the ground-truth concept that at least ``min_precision`` of its top patches
    show (the report's ``ground_truth_precision``); otherwise ``matches`` is None. A report without an overall
    confusion matrix gives no evidence.

    Raises:
        ValueError: for ``min_precision`` outside ``[0, 1]``.
    """
    if not 0.0 <= min_precision <= 1.0:
        raise ValueError(f"Expected `min_precision` to be in [0, 1], but got {min_precision!r}.")
    if report.overall_confusion is None:
        return [], None
    gt_names = list(report.patches.concept_names)
    out = []
    for row in report.failures:
        i = next(j for j, c in enumerate(report.concepts) if c.id == row.concept)
        matches = None
        if report.ground_truth_precision is not None and gt_names:
            prec = report.ground_truth_precision[i]
            if prec.numel() and float(prec.max()) >= min_precision:
                matches = gt_names[int(prec.argmax())]
        out.append(FailureEvidence(row.name, matches, row.lift, report.confusion[i], report.overall_confusion))
    return out, list(report.class_names) or None


def evidence_from_ranking(
    ranking: Sequence[ConceptFailure],
    counts: Tensor,
    overall: Tensor,
    annotated: bool = True,
) -> list[FailureEvidence]:
    """The failing slices of a failure ranking as evidence (the ``clean`` slice and merged parts never count).

    ``ranking`` rows index ``counts`` by their ``concept`` field. Annotated slices are ground-truth concepts, so
    each ``matches`` its own name; discovered ones (``annotated=False``) match nothing.

    Shape:
        - counts: ``(S, K, K)`` confusion counts per slice; overall: ``(K, K)`` over the whole probe set

    Example:
        >>> from debugger.ranking import rank_failures
        >>> errors = torch.tensor([True, True, True, False, False, False])
        >>> member = torch.tensor([[True, True, True, False, False, False]])
        >>> rows = rank_failures(errors, member, names=["shadow"], min_support=2)
        >>> counts, overall = torch.tensor([[[0, 3], [0, 0]]]), torch.tensor([[3, 3], [0, 0]])
        >>> [(e.name, e.matches) for e in evidence_from_ranking(rows, counts, overall)]
        [('shadow', 'shadow')]
    """
    out = []
    for row in ranking:
        # a part merged into another failure concept is counted once, through the merged concept
        if not row.reported or row.name == "clean":
            continue
        out.append(FailureEvidence(row.name, row.name if annotated else None, float(row.lift),
                                   counts[row.concept], overall))
    return out


def annotated_membership(concepts: Tensor | None, concept_masks: Tensor | None, segmentation: bool) -> Tensor | None:
    """Slices from annotations: ``(K + 1, N)`` (per concept, then ``clean``) or pixel slices for segmentation.

    For segmentation with masks, a concept's slice is its mask pixels and ``clean`` is the pixels of images
    without any concept; otherwise whole images.

    Shape:
        - concepts: ``(N, K)``; concept_masks: ``(N, K, H, W)`` bool
        - output: ``(K + 1, N)`` or ``(K + 1, N, H, W)`` bool, None without annotations

    Example:
        >>> annotated_membership(torch.tensor([[1.0, 0.0], [0.0, 0.0]]), None, False).tolist()
        [[True, False], [False, False], [False, True]]
    """
    if concepts is None and concept_masks is None:
        return None
    if concepts is not None:
        present = concepts.bool().T  # (K, N)
    else:
        present = concept_masks.flatten(2).any(2).T  # type: ignore[union-attr]
    clean = ~present.any(0, keepdim=True)
    if segmentation and concept_masks is not None:
        masks = concept_masks.bool().transpose(0, 1)  # (K, N, H, W)
        clean_px = clean.view(1, -1, 1, 1).expand(1, *masks.shape[1:])
        return torch.cat([masks, clean_px])
    return torch.cat([present, clean])


def slice_quality(confmats: Tensor, segmentation: bool) -> Tensor:
    """Accuracy (classification) or mean IoU over classes that occur (segmentation) of each slice.

    Shape:
        - confmats: ``(C, K, K)``; output: ``(C,)`` float, NaN for an empty slice

    Example:
        >>> slice_quality(torch.tensor([[[3, 1], [0, 4]], [[0, 0], [0, 0]]]), segmentation=False).tolist()[0]
        0.875
    """
    if not segmentation:
        return confusion_accuracy(confmats)
    return torch.nanmean(confusion_iou(confmats), dim=-1)
