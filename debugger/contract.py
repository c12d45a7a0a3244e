"""The one sample contract every conceptfix dataset follows, and the adapter for users' own batches.

A **sample** is a dict:

- ``image``: float tensor ``(C, H, W)``.
- ``target``: class index (int64 scalar) for classification, or an ``(H, W)`` int64 class map for
  segmentation. Batches of one-hot (or probability) targets, ``(B, K)`` or ``(B, K, H, W)``, are read as the
  class with the largest value.
- ``concepts`` (optional): float tensor ``(K,)``, 1 where the named concept is present.
- ``concept_masks`` (optional): bool tensor ``(K, H, W)``, the exact pixels of each concept; a mask is
  non-empty iff the concept is present.

Datasets that plant concepts expose the concept names, in order, as ``dataset.concept_names``.
A **batch** is what ``torch.utils.data.default_collate`` makes of samples (the same keys with a leading
batch dimension), or a user's plain ``(x, y)`` / ``[x, y, ...]`` sequence. :func:`unpack_batch` is the
only place that tells the two apart; :func:`repack_batch` puts new tensors back in the caller's layout.
Integer images (``uint8``) are read as float with their values kept, so a model that scales its own input
sees the numbers it was trained on.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

import torch
from torch import Tensor

IMAGE = "image"
TARGET = "target"
CONCEPTS = "concepts"
CONCEPT_MASKS = "concept_masks"


class Sample(TypedDict, total=False):
    """One sample of the contract (``image`` and ``target`` are always present)."""

    image: Tensor
    target: Tensor
    concepts: Tensor
    concept_masks: Tensor


@dataclass(frozen=True)
class Batch:
    """A batch in the contract's terms.

    Shape:
        - images: ``(B, C, H, W)``
        - targets: ``(B,)`` or ``(B, H, W)``
        - concepts: ``(B, K)`` or None
        - concept_masks: ``(B, K, H, W)`` or None
    """

    images: Tensor
    targets: Tensor
    concepts: Tensor | None = None
    concept_masks: Tensor | None = None

    @property
    def is_segmentation(self) -> bool:
        return self.targets.dim() == 3


def unpack_batch(batch: Any) -> Batch:
    """Read a contract dict batch or a plain ``(x, y)`` sequence into a :class:`Batch`.

    Raises:
        ValueError: if the batch is neither layout, or its tensors do not agree in shape.

    Example:
        >>> b = unpack_batch((torch.zeros(2, 3, 8, 8), torch.tensor([0, 1])))
        >>> tuple(b.images.shape), b.concepts is None
        ((2, 3, 8, 8), True)
    """
    if isinstance(batch, Mapping):
        missing = [k for k in (IMAGE, TARGET) if k not in batch]
        if missing:
            raise ValueError(
                f"Expected a batch dict to hold the keys 'image' and 'target', but got keys {sorted(batch)!r}."
            )
        out = Batch(batch[IMAGE], batch[TARGET], batch.get(CONCEPTS), batch.get(CONCEPT_MASKS))
    elif isinstance(batch, Sequence) and not isinstance(batch, str | bytes) and len(batch) >= 2:
        out = Batch(batch[0], batch[1])
    else:
        raise ValueError(
            "Expected a batch to be a dict with 'image' and 'target' or a sequence (x, y, ...), "
            f"but got {type(batch).__name__}."
        )
    out = _as_floats_and_indices(out)
    _check(out)
    return out


def _as_floats_and_indices(b: Batch) -> Batch:
    """Integer images as float; one-hot / probability targets and integral float labels as class indices."""
    images, targets = b.images, b.targets
    if isinstance(images, Tensor) and images.dim() == 4 and not images.is_floating_point() and not images.is_complex():
        images = images.float()
    if isinstance(targets, Tensor) and isinstance(images, Tensor) and images.dim() == 4:
        per_class = targets.dim() == 2 or (targets.dim() == 4 and targets.shape[2:] == images.shape[2:])
        if per_class and _is_distribution(targets):
            targets = targets.argmax(1)
        elif targets.dim() in (1, 3) and targets.is_floating_point() and bool((targets == targets.round()).all()):
            targets = targets.long()
    if images is b.images and targets is b.targets:
        return b
    return Batch(images, targets, b.concepts, b.concept_masks)


def _is_distribution(targets: Tensor) -> bool:
    """Non-negative values summing to 1 along dim 1 (one-hot or class probabilities)."""
    if targets.numel() == 0 or targets.shape[1] < 2:
        return False
    t = targets.detach().double()
    return bool((t >= 0).all()) and bool(((t.sum(1) - 1).abs() <= 1e-3).all())


def repack_batch(like: Any, images: Tensor, targets: Tensor, **extra: Tensor | None) -> Any:
    """Return ``images``/``targets`` (and optional contract fields) in the same layout as ``like``.

    Dict batches keep their other keys only when they are given again in ``extra`` (a batch whose
    size changed cannot reuse them); sequence batches become ``(images, targets)`` of the same type.
    """
    if isinstance(like, Mapping):
        out: dict[str, Any] = {IMAGE: images, TARGET: targets}
        out.update({k: v for k, v in extra.items() if v is not None})
        return out
    if isinstance(like, tuple):
        return (images, targets)
    return [images, targets]


def _check(b: Batch) -> None:
    if not isinstance(b.images, Tensor) or b.images.dim() != 4:
        shape = tuple(b.images.shape) if isinstance(b.images, Tensor) else type(b.images).__name__
        raise ValueError(f"Expected `images` to be a float tensor of shape (B, C, H, W), but got {shape!r}.")
    if not b.images.is_floating_point():
        raise ValueError(f"Expected `images` to be a real-valued tensor, but got dtype {b.images.dtype}.")
    if not isinstance(b.targets, Tensor) or b.targets.dim() not in (1, 3):
        shape = tuple(b.targets.shape) if isinstance(b.targets, Tensor) else type(b.targets).__name__
        raise ValueError(f"Expected `targets` to be class indices of shape (B,) or (B, H, W), or one-hot / class "
                         f"probabilities of shape (B, K) or (B, K, H, W), but got {shape!r}.")
    if b.targets.is_floating_point():
        raise ValueError("Expected `targets` to hold whole class indices, but got fractional values of dtype "
                         f"{b.targets.dtype}.")
    n = b.images.shape[0]
    if b.targets.shape[0] != n:
        raise ValueError(f"Expected `targets` to have batch size {n} like the images, but got {b.targets.shape[0]}.")
    if b.targets.dim() == 3 and b.targets.shape[1:] != b.images.shape[2:]:
        raise ValueError(
            f"Expected a segmentation target of size {tuple(b.images.shape[2:])}, but got {tuple(b.targets.shape[1:])}."
        )
    if b.concept_masks is not None and (
        b.concept_masks.dim() != 4 or b.concept_masks.shape[0] != n or b.concept_masks.shape[2:] != b.images.shape[2:]
    ):
        raise ValueError(
            f"Expected `concept_masks` of shape ({n}, K, {b.images.shape[2]}, {b.images.shape[3]}), "
            f"but got {tuple(b.concept_masks.shape)}."
        )


def as_sample(image: Tensor, target: Tensor | int, concepts: Tensor | None = None,
              concept_masks: Tensor | None = None) -> Sample:
    """Build one contract sample, leaving out the optional fields that are unknown."""
    s: Sample = {"image": image, "target": torch.as_tensor(target, dtype=torch.long)}
    if concepts is not None:
        s["concepts"] = concepts
    if concept_masks is not None:
        s["concept_masks"] = concept_masks
    return s
