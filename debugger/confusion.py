"""Concept-conditioned confusion (ConceptExtract, seed 000 §5.3 and §7.1).

For each concept, the ``top_k`` patches by concept score point back to their source images; the model's
confusion matrix is computed on just those images (classification) or on just the pixels of those patches
(segmentation). Counting is batched: image-level slices sum per-image cell histograms with one ``(C, N) @
(N, K*K)`` product; pixel-level slices use one ``bincount`` over flat ``(concept, target * K + prediction)``
indices per chunk of concepts (chunks bound the index buffer). No Python loop over samples or pixels.

The pieces:

- :func:`concept_membership` turns concept scores into slices: a ``(C, N)`` bool matrix of which probe images
  each concept's top patches come from, or a ``(C, N, H, W)`` pixel region when patch masks are given.
- :func:`concept_confusion` counts ``(C, K, K)`` confusion matrices over those slices; :class:`ConceptConfusion`
  is the same thing as a torchmetrics ``Metric`` that accumulates over batches and syncs across processes.
- :func:`normalize_confusion`, :func:`confusion_iou`, :func:`confusion_difference` post-process counts.
- :func:`ensemble_check` answers the question of seed 000 §7.1: does averaging two models' class probabilities
  fix the errors each one makes on a concept's images?
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

Normalize = Literal["true", "pred", "all"]
_CHUNK_ELEMENTS = 1 << 22  # (concept, pixel) pairs per bincount: bounds the int64 index buffer to 32 MiB
_NORMALIZE = ("true", "pred", "all")


def concept_membership(
    scores: Tensor,
    image_index: Tensor,
    num_images: int,
    top_k: int = 50,
    masks: Tensor | None = None,
) -> Tensor:
    """Which probe images (or pixels) belong to each concept's slice: the sources of its ``top_k`` patches.

    Args:
        scores: concept score of every patch, higher = more of the concept.
        image_index: source probe image of every patch.
        num_images: number of probe images ``N``.
        top_k: patches taken per concept (all patches when fewer exist).
        masks: the patches' pixel masks; when given the slice is the union of the top patches' pixels
            (what segmentation confusion is counted on) instead of whole images.

    Returns:
        Bool membership, ``(C, N)`` without masks, ``(C, N, H, W)`` with masks.

    Shape:
        - scores: ``(C, P)``
        - image_index: ``(P,)`` int64 in ``[0, N)``
        - masks: ``(P, H, W)`` bool
        - output: ``(C, N)`` or ``(C, N, H, W)`` bool

    Raises:
        ValueError: if ``top_k`` is not positive, the shapes disagree or an image index is out of range.

    Example:
        >>> scores = torch.tensor([[0.9, 0.1, 0.8], [0.0, 1.0, 0.2]])
        >>> concept_membership(scores, torch.tensor([0, 1, 2]), num_images=3, top_k=2)
        tensor([[ True, False,  True],
                [False,  True,  True]])
    """
    if not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"Expected `top_k` to be a positive integer, but got {top_k!r}.")
    if scores.dim() != 2:
        raise ValueError(f"Expected `scores` to have shape (C, P), but got {tuple(scores.shape)!r}.")
    if image_index.dim() != 1 or image_index.shape[0] != scores.shape[1]:
        raise ValueError(
            f"Expected `image_index` to have shape ({scores.shape[1]},) like the patches in `scores`, "
            f"but got {tuple(image_index.shape)!r}."
        )
    if image_index.numel() and (int(image_index.min()) < 0 or int(image_index.max()) >= num_images):
        raise ValueError(
            f"Expected `image_index` to lie in [0, {num_images}), but got values in "
            f"[{int(image_index.min())}, {int(image_index.max())}]."
        )
    num_concepts, num_patches = scores.shape
    k = min(top_k, num_patches)
    top = torch.topk(scores, k, dim=1).indices  # (C, k)
    rows = torch.arange(num_concepts, device=scores.device).unsqueeze(1).expand(-1, k)
    src = image_index.to(scores.device)[top]  # (C, k)
    if masks is None:
        out = torch.zeros(num_concepts, num_images, dtype=torch.bool, device=scores.device)
        out[rows.reshape(-1), src.reshape(-1)] = True
        return out
    if masks.dim() != 3 or masks.shape[0] != num_patches:
        raise ValueError(
            f"Expected `masks` to have shape ({num_patches}, H, W), but got {tuple(masks.shape)!r}."
        )
    height, width = masks.shape[1:]
    flat = torch.zeros(num_concepts * num_images, height * width, dtype=torch.int32, device=scores.device)
    pixels = masks.to(scores.device)[top.reshape(-1)].reshape(k * num_concepts, -1).int()
    flat.index_add_(0, (rows * num_images + src).reshape(-1), pixels)
    return (flat > 0).view(num_concepts, num_images, height, width)


def concept_confusion(
    preds: Tensor,
    target: Tensor,
    membership: Tensor,
    num_classes: int,
    ignore_index: int | None = None,
) -> Tensor:
    """Confusion matrix of every concept's slice, all concepts at once.

    Rows are ground-truth classes, columns predicted classes (sklearn's convention).

    Args:
        preds: predicted labels, or scores/logits/probabilities with the class dimension at ``dim=1``
            (arg-maxed).
        target: ground-truth labels.
        membership: which samples (or pixels) belong to each concept's slice, e.g. from
            :func:`concept_membership`. An image-level ``(C, N)`` slice of a segmentation batch counts
            every pixel of those images.
        num_classes: number of classes ``K``.
        ignore_index: target value whose samples/pixels are not counted.

    Returns:
        int64 counts.

    Shape:
        - preds: ``(N,)``, ``(N, K)``, ``(N, H, W)`` or ``(N, K, H, W)``
        - target: ``(N,)`` or ``(N, H, W)``
        - membership: ``(C, N)`` or ``(C, N, H, W)`` bool
        - output: ``(C, K, K)``

    Raises:
        ValueError: if the shapes disagree, ``num_classes`` is not positive or a label is out of range.

    Example:
        >>> preds, target = torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1])
        >>> concept_confusion(preds, target, torch.tensor([[True, True, False]]), num_classes=2)
        tensor([[[1, 1],
                 [0, 0]]])
    """
    preds, target, membership = _check_inputs(preds, target, membership, num_classes)
    valid = torch.ones_like(target, dtype=torch.bool)
    if ignore_index is not None:
        valid = target != ignore_index
    _check_labels(preds, target, valid, num_classes)
    num_concepts, n, kk = membership.shape[0], target.shape[0], num_classes * num_classes
    # Each counted unit's cell of the K x K matrix; ignored units go to an extra bin that is dropped.
    code = torch.where(valid, target * num_classes + preds, torch.full_like(target, kk)).reshape(n, -1)
    if membership.dim() == 2:
        # Image-level slices: one histogram per image, then (C, N) @ (N, K*K) sums them per concept.
        offsets = torch.arange(n, device=code.device).unsqueeze(1) * (kk + 1)
        hist = torch.bincount((offsets + code).reshape(-1), minlength=n * (kk + 1)).view(n, kk + 1)[:, :kk]
        counts = membership.to(torch.float64) @ hist.to(torch.float64)
        return counts.round().long().view(num_concepts, num_classes, num_classes)
    # Pixel-level slices: one bincount over (concept, cell) per chunk of concepts, chunks bounded in memory.
    flat_code = code.reshape(1, -1)
    units = flat_code.shape[1]
    chunk = max(1, _CHUNK_ELEMENTS // max(units, 1))
    out = []
    for c0 in range(0, num_concepts, chunk):
        sel = membership[c0 : c0 + chunk].reshape(-1, units)
        offsets = torch.arange(sel.shape[0], device=code.device).unsqueeze(1) * (kk + 1)
        counts = torch.bincount((offsets + flat_code)[sel], minlength=sel.shape[0] * (kk + 1))
        out.append(counts.view(-1, kk + 1)[:, :kk])
    return torch.cat(out).view(num_concepts, num_classes, num_classes)


def normalize_confusion(confmat: Tensor, normalize: Normalize = "true") -> Tensor:
    """Turn counts into proportions: per ground-truth row (``"true"``, the seed's), per predicted column, or overall.

    Rows/columns/matrices without any sample become 0, as in sklearn.

    Shape:
        - confmat: ``(..., K, K)``
        - output: same, float

    Raises:
        ValueError: if ``normalize`` is not one of ``"true"``, ``"pred"``, ``"all"``.

    Example:
        >>> normalize_confusion(torch.tensor([[3, 1], [0, 0]]))
        tensor([[0.7500, 0.2500],
                [0.0000, 0.0000]])
    """
    if normalize not in _NORMALIZE:
        raise ValueError(f"Expected `normalize` to be one of {_NORMALIZE!r}, but got {normalize!r}.")
    cm = confmat.double()
    if normalize == "true":
        denom = cm.sum(dim=-1, keepdim=True)
    elif normalize == "pred":
        denom = cm.sum(dim=-2, keepdim=True)
    else:
        denom = cm.sum(dim=(-2, -1), keepdim=True)
    out = torch.where(denom > 0, cm / denom.clamp_min(1), torch.zeros_like(cm))
    return out.float()


def confusion_iou(confmat: Tensor) -> Tensor:
    """Per-class intersection over union from confusion counts; NaN for a class absent from both target and prediction.

    Shape:
        - confmat: ``(..., K, K)``
        - output: ``(..., K)`` float

    Example:
        >>> confusion_iou(torch.tensor([[2, 1], [0, 1]]))
        tensor([0.6667, 0.5000])
    """
    cm = confmat.double()
    tp = torch.diagonal(cm, dim1=-2, dim2=-1)
    union = cm.sum(dim=-1) + cm.sum(dim=-2) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan"))).float()


def confusion_accuracy(confmat: Tensor) -> Tensor:
    """Fraction of counted samples (or pixels) on the diagonal; NaN for an empty matrix.

    Shape:
        - confmat: ``(..., K, K)``
        - output: ``(...)`` float
    """
    cm = confmat.double()
    total = cm.sum(dim=(-2, -1))
    correct = torch.diagonal(cm, dim1=-2, dim2=-1).sum(dim=-1)
    return torch.where(total > 0, correct / total.clamp_min(1), torch.full_like(total, float("nan"))).float()


def confusion_difference(first: Tensor, second: Tensor, normalize: Normalize = "true") -> Tensor:
    """``second - first`` of the normalized confusion matrices of two models (or epochs) on the same concepts.

    Positive diagonal entries mean the second model is right more often on that concept's images (blue in
    the seed's diverging colour map), negative ones that it is worse.

    Shape:
        - first, second: ``(..., K, K)`` counts
        - output: ``(..., K, K)`` float in ``[-1, 1]``

    Raises:
        ValueError: if the two shapes differ.

    Example:
        >>> a, b = torch.tensor([[1, 1], [0, 2]]), torch.tensor([[2, 0], [0, 2]])
        >>> confusion_difference(a, b)
        tensor([[ 0.5000, -0.5000],
                [ 0.0000,  0.0000]])
    """
    if first.shape != second.shape:
        raise ValueError(
            f"Expected `second` to have the shape of `first` {tuple(first.shape)!r}, but got {tuple(second.shape)!r}."
        )
    return normalize_confusion(second, normalize) - normalize_confusion(first, normalize)


@dataclass(frozen=True)
class EnsembleCheck:
    """Per-concept outcome of averaging two models' probabilities (seed 000 §7.1).

    Counts are over each concept's slice (samples, or pixels for segmentation).

    Shape:
        - confusion_a, confusion_b, confusion_ensemble: ``(C, K, K)`` int64
        - accuracy_a, accuracy_b, accuracy_ensemble: ``(C,)`` float
        - fixed_a, fixed_b: ``(C,)`` int64, errors of model a (b) that the ensemble gets right
        - broken: ``(C,)`` int64, samples both models get right and the ensemble gets wrong
        - support: ``(C,)`` int64
    """

    confusion_a: Tensor
    confusion_b: Tensor
    confusion_ensemble: Tensor
    accuracy_a: Tensor
    accuracy_b: Tensor
    accuracy_ensemble: Tensor
    fixed_a: Tensor
    fixed_b: Tensor
    broken: Tensor
    support: Tensor

    @property
    def improves(self) -> Tensor:
        """``(C,)`` bool: the ensemble is at least as accurate as both models and strictly better than one."""
        best = torch.maximum(self.accuracy_a, self.accuracy_b)
        worst = torch.minimum(self.accuracy_a, self.accuracy_b)
        return (self.accuracy_ensemble >= best) & (self.accuracy_ensemble > worst)

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name).tolist() for name in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EnsembleCheck:
        ints = {"confusion_a", "confusion_b", "confusion_ensemble", "fixed_a", "fixed_b", "broken", "support"}
        return cls(**{
            name: torch.tensor(d[name], dtype=torch.long if name in ints else torch.float32)
            for name in cls.__dataclass_fields__
        })


def ensemble_check(
    probs_a: Tensor,
    probs_b: Tensor,
    target: Tensor,
    membership: Tensor,
    num_classes: int,
    ignore_index: int | None = None,
) -> EnsembleCheck:
    """Does averaging two models' class probabilities fix each one's errors on the concepts' images?

    Args:
        probs_a: class probabilities of the first model (pass softmax outputs, not logits: the seed averages
            probabilities).
        probs_b: class probabilities of the second model.
        target: ground-truth labels.
        membership: concept slices as for :func:`concept_confusion`.
        num_classes: number of classes ``K``.
        ignore_index: target value that is not counted.

    Shape:
        - probs_a, probs_b: ``(N, K)`` or ``(N, K, H, W)``
        - target: ``(N,)`` or ``(N, H, W)``
        - membership: ``(C, N)`` or ``(C, N, H, W)`` bool

    Raises:
        ValueError: if the two models' outputs differ in shape or are not class scores.

    Example:
        >>> pa = torch.tensor([[0.6, 0.4], [0.6, 0.4]])
        >>> pb = torch.tensor([[0.1, 0.9], [0.45, 0.55]])
        >>> check = ensemble_check(pa, pb, torch.tensor([1, 0]), torch.ones(1, 2, dtype=torch.bool), 2)
        >>> check.accuracy_a.item(), check.accuracy_b.item(), check.accuracy_ensemble.item()
        (0.5, 0.5, 1.0)
    """
    if probs_a.shape != probs_b.shape:
        raise ValueError(
            f"Expected `probs_b` to have the shape of `probs_a` {tuple(probs_a.shape)!r}, "
            f"but got {tuple(probs_b.shape)!r}."
        )
    if probs_a.dim() != target.dim() + 1 or not probs_a.is_floating_point():
        raise ValueError(
            "Expected `probs_a` and `probs_b` to be float class probabilities of shape (N, K) or (N, K, H, W), "
            f"but got {tuple(probs_a.shape)!r} of {probs_a.dtype}."
        )
    pred_a, pred_b = probs_a.argmax(1), probs_b.argmax(1)
    pred_e = ((probs_a + probs_b) / 2).argmax(1)
    cms = [concept_confusion(p, target, membership, num_classes, ignore_index) for p in (pred_a, pred_b, pred_e)]
    ok_a, ok_b, ok_e = (p == target for p in (pred_a, pred_b, pred_e))
    keep = membership if membership.dim() == target.dim() + 1 else _broadcast(membership, target)
    if ignore_index is not None:
        keep = keep & (target != ignore_index).unsqueeze(0)
    dims = tuple(range(1, keep.dim()))

    def count(flags: Tensor) -> Tensor:
        return (keep & flags.unsqueeze(0)).sum(dim=dims)

    return EnsembleCheck(
        confusion_a=cms[0],
        confusion_b=cms[1],
        confusion_ensemble=cms[2],
        accuracy_a=confusion_accuracy(cms[0]),
        accuracy_b=confusion_accuracy(cms[1]),
        accuracy_ensemble=confusion_accuracy(cms[2]),
        fixed_a=count(~ok_a & ok_e),
        fixed_b=count(~ok_b & ok_e),
        broken=count(ok_a & ok_b & ~ok_e),
        support=keep.sum(dim=dims),
    )


class ConceptConfusion(Metric):
    """Concept-conditioned confusion accumulated over batches; a torchmetrics ``Metric`` so DDP sync is free.

    ``update`` takes one batch and the batch's columns of the concept membership (slice the ``(C, N)`` or
    ``(C, N, H, W)`` membership of the whole probe set by the batch's sample indices). ``compute`` returns the
    counts, or proportions when ``normalize`` is set.

    Args:
        num_concepts: number of concepts ``C``.
        num_classes: number of classes ``K``.
        ignore_index: target value that is not counted.
        normalize: ``None`` for counts, else as in :func:`normalize_confusion`.

    Shape:
        - update: as :func:`concept_confusion`
        - compute: ``(C, K, K)``

    Raises:
        ValueError: if ``num_concepts``/``num_classes`` are not positive, ``normalize`` is not a valid option,
            or an update's membership does not have ``num_concepts`` rows.

    Example:
        >>> metric = ConceptConfusion(num_concepts=1, num_classes=2)
        >>> metric.update(torch.tensor([0, 1]), torch.tensor([0, 0]), torch.tensor([[True, True]]))
        >>> metric.update(torch.tensor([1]), torch.tensor([1]), torch.tensor([[True]]))
        >>> metric.compute()
        tensor([[[1, 1],
                 [0, 1]]])
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False
    confmat: Tensor

    def __init__(
        self,
        num_concepts: int,
        num_classes: int,
        ignore_index: int | None = None,
        normalize: Normalize | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(num_concepts, int) or num_concepts < 1:
            raise ValueError(f"Expected `num_concepts` to be a positive integer, but got {num_concepts!r}.")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"Expected `num_classes` to be a positive integer, but got {num_classes!r}.")
        if normalize is not None and normalize not in _NORMALIZE:
            raise ValueError(f"Expected `normalize` to be None or one of {_NORMALIZE!r}, but got {normalize!r}.")
        self.num_concepts = num_concepts
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.normalize = normalize
        self.add_state(
            "confmat",
            default=torch.zeros(num_concepts, num_classes, num_classes, dtype=torch.long),
            dist_reduce_fx="sum",
        )

    def update(self, preds: Tensor, target: Tensor, membership: Tensor) -> None:
        if membership.dim() < 1 or membership.shape[0] != self.num_concepts:
            raise ValueError(
                f"Expected `membership` to have {self.num_concepts} concept rows, but got {tuple(membership.shape)!r}."
            )
        self.confmat += concept_confusion(preds, target, membership, self.num_classes, self.ignore_index)

    def compute(self) -> Tensor:
        if self.normalize is None:
            return self.confmat
        return normalize_confusion(self.confmat, self.normalize)


def _check_inputs(preds: Tensor, target: Tensor, membership: Tensor, num_classes: int) -> tuple[Tensor, Tensor, Tensor]:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"Expected `num_classes` to be a positive integer, but got {num_classes!r}.")
    if target.dim() not in (1, 3):
        raise ValueError(f"Expected `target` to have shape (N,) or (N, H, W), but got {tuple(target.shape)!r}.")
    if preds.dim() == target.dim() + 1:
        if preds.shape[1] != num_classes:
            raise ValueError(
                f"Expected class scores in `preds` to have {num_classes} classes at dim 1, "
                f"but got shape {tuple(preds.shape)!r}."
            )
        preds = preds.argmax(1)
    if preds.shape != target.shape:
        raise ValueError(
            f"Expected `preds` to have shape {tuple(target.shape)!r} (labels) or with a class dimension at dim 1, "
            f"but got {tuple(preds.shape)!r}."
        )
    if membership.dtype != torch.bool:
        raise ValueError(f"Expected `membership` to be a bool tensor, but got {membership.dtype}.")
    n = target.shape[0]
    ok = (membership.dim() == 2 and membership.shape[1] == n) or (
        membership.dim() == target.dim() + 1 and membership.shape[1:] == target.shape
    )
    if not ok:
        raise ValueError(
            f"Expected `membership` to have shape (C, {n}) or (C, {', '.join(map(str, target.shape))}), "
            f"but got {tuple(membership.shape)!r}."
        )
    return preds.long(), target.long(), membership


def _check_labels(preds: Tensor, target: Tensor, valid: Tensor, num_classes: int) -> None:
    if not valid.any():
        return
    t, p = target[valid], preds[valid]
    lo, hi = int(torch.minimum(t.min(), p.min())), int(torch.maximum(t.max(), p.max()))
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"Expected labels in `preds` and `target` to lie in [0, {num_classes}), but got values in [{lo}, {hi}]."
        )


def _broadcast(membership: Tensor, target: Tensor) -> Tensor:
    """Image-level ``(C, N)`` membership over a ``(N, H, W)`` target: every pixel of a member image counts."""
    return membership.view(*membership.shape, *([1] * (target.dim() - 1))).expand(-1, *target.shape)
