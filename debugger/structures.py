"""Value types shared across the engine: patches and concepts.

Kept apart from the algorithms that make them so that discovery, confusion, ranking and reports can
all speak of the same objects without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class PatchSet:
    """Patches cut from a set of probe images.

    Shape:
        - image_index: ``(P,)`` int64, which probe image each patch comes from
        - boxes: ``(P, 4)`` int64, ``x0, y0, x1, y1`` (exclusive end) in image pixels
        - masks: ``(P, H, W)`` bool, the patch's pixels (a window's mask is its box), or None
        - concept_overlap: ``(P, K)`` float, fraction of the patch's pixels inside each ground-truth
          concept mask, or None when the data has no concept masks
    """

    image_index: Tensor
    boxes: Tensor
    masks: Tensor | None = None
    concept_overlap: Tensor | None = None
    concept_names: tuple[str, ...] = ()
    method: str = ""

    def __len__(self) -> int:
        return int(self.image_index.shape[0])

    def take(self, index: Tensor) -> PatchSet:
        """The patches selected by ``index`` (indices or a boolean mask over the patches).

        Example:
            >>> ps = PatchSet(torch.tensor([0, 0, 1]), torch.tensor([[0, 0, 2, 2], [2, 0, 4, 2], [0, 0, 2, 2]]))
            >>> ps.take(torch.tensor([False, True, True])).image_index.tolist()
            [0, 1]
        """
        return PatchSet(
            image_index=self.image_index[index],
            boxes=self.boxes[index],
            masks=None if self.masks is None else self.masks[index],
            concept_overlap=None if self.concept_overlap is None else self.concept_overlap[index],
            concept_names=self.concept_names,
            method=self.method,
        )


@dataclass
class Concept:
    """A concept: a named set of patches with a score for every patch.

    ``scores`` covers every patch of the :class:`PatchSet` it was found on (higher = more of the concept);
    ``members`` are the patch indices assigned to it.

    Shape:
        - members: ``(M,)`` int64
        - scores: ``(P,)`` float
    """

    id: int
    name: str
    members: Tensor
    scores: Tensor
    coherence: float = float("nan")
    meta: dict[str, Any] = field(default_factory=dict)

    def top(self, k: int = 50) -> Tensor:
        """Indices of the ``k`` highest-scoring patches, best first."""
        if k < 1:
            raise ValueError(f"Expected `k` to be a positive integer, but got {k!r}.")
        k = min(k, int(self.scores.shape[0]))
        return torch.topk(self.scores, k).indices

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "members": self.members.tolist(),
            "scores": self.scores.tolist(),
            "coherence": self.coherence,
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Concept:
        return cls(
            id=int(d["id"]),
            name=str(d["name"]),
            members=torch.tensor(d["members"], dtype=torch.long),
            scores=torch.tensor(d["scores"], dtype=torch.float32),
            coherence=float(d["coherence"]),
            meta=dict(d.get("meta", {})),
        )
