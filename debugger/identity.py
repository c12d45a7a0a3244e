"""Concept identity across analyses: the concept found at epoch 3 and the one found at epoch 4 are the same one.

Concepts are re-discovered at every analysis, so their indices (and k-means' order) change from run to run. To
follow one concept over time, consecutive analyses are matched: the similarity of two concepts is the mean of
the cosine of their centroids (the mean member embedding, centred on the mean of both analyses' centroids, so
what all concepts share, e.g. the positive offset of ReLU features, does not make them alike) and the Jaccard
overlap of their member patches (patches are keyed by image and box, so the overlap is meaningful whenever the
probe set and patch method stay the same); a Hungarian assignment pairs concepts one to one, and pairs below
``min_similarity`` are new concepts.

- :func:`concept_similarity`: the ``(previous, current)`` similarity matrix.
- :func:`match_concepts`: the one-to-one assignment over it.
- :class:`ConceptTracker`: keeps the ids across runs (``update`` per analysis), so a monitor can key its
  TensorBoard tags by a concept id that lasts.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import torch
from torch import Tensor

MemberKeys = Sequence[frozenset[Hashable]]


def concept_similarity(
    previous_centroids: Tensor | None,
    current_centroids: Tensor | None,
    previous_members: MemberKeys | None = None,
    current_members: MemberKeys | None = None,
) -> Tensor:
    """Similarity of every previous concept to every current one, in ``[0, 1]``.

    The mean of the available measures: the centroids' cosine after centring both sides on the mean of all
    their centroids (clamped at 0; only when both sides have centroids of the same width) and the member sets'
    Jaccard overlap (only when both sides have member keys).

    Shape:
        - previous_centroids: ``(A, D)``; current_centroids: ``(B, D)``
        - output: ``(A, B)`` float32

    Raises:
        ValueError: if neither measure is available, or the two sides disagree on the number of concepts.

    Example:
        >>> prev = torch.tensor([[5.0, 1.0], [1.0, 5.0]])
        >>> concept_similarity(prev, torch.tensor([[1.0, 5.0], [5.0, 1.0]])).round(decimals=3).tolist()
        [[0.0, 1.0], [1.0, 0.0]]
        >>> concept_similarity(None, None, [frozenset({1, 2})], [frozenset({2, 3}), frozenset({1, 2})]).tolist()
        [[0.3333333432674408, 1.0]]
    """
    measures: list[Tensor] = []
    sizes: set[tuple[int, int]] = set()
    if previous_centroids is not None and current_centroids is not None:
        a, b = previous_centroids.detach().float().cpu(), current_centroids.detach().float().cpu()
        if a.dim() != 2 or b.dim() != 2:
            raise ValueError(f"Expected centroids of shape (C, D), but got {tuple(a.shape)!r} and {tuple(b.shape)!r}.")
        if a.shape[1] == b.shape[1]:
            centre = torch.cat([a, b]).mean(0, keepdim=True)
            a, b = a - centre, b - centre
            cos = torch.nn.functional.normalize(a, dim=1) @ torch.nn.functional.normalize(b, dim=1).T
            measures.append(cos.clamp(min=0.0))
            sizes.add((a.shape[0], b.shape[0]))
    if previous_members is not None and current_members is not None:
        jac = torch.zeros(len(previous_members), len(current_members))
        for i, p in enumerate(previous_members):
            for j, c in enumerate(current_members):
                union = len(p | c)
                jac[i, j] = len(p & c) / union if union else 0.0
        measures.append(jac)
        sizes.add((len(previous_members), len(current_members)))
    if not measures:
        raise ValueError("Expected centroids of the same width or member keys on both sides, but got neither.")
    if len(sizes) > 1:
        raise ValueError(
            f"Expected centroids and members to agree on the number of concepts, but got {sorted(sizes)!r}."
        )
    return torch.stack(measures).mean(0)


def match_concepts(similarity: Tensor, min_similarity: float = 0.3) -> list[int | None]:
    """For each current concept (column), the previous concept (row) it continues, or None for a new concept.

    A Hungarian assignment maximizing the total similarity, one to one; pairs below ``min_similarity`` are
    not matched.

    Shape:
        - similarity: ``(A, B)``; output: ``B`` entries

    Example:
        >>> match_concepts(torch.tensor([[0.9, 0.8], [0.85, 0.1]]))
        [1, 0]
        >>> match_concepts(torch.tensor([[0.9, 0.2]]))
        [0, None]
    """
    from scipy.optimize import linear_sum_assignment

    if similarity.dim() != 2:
        raise ValueError(f"Expected `similarity` of shape (A, B), but got {tuple(similarity.shape)!r}.")
    out: list[int | None] = [None] * similarity.shape[1]
    if similarity.numel() == 0:
        return out
    s = torch.nan_to_num(similarity.detach().double().cpu(), nan=0.0).numpy()
    rows, cols = linear_sum_assignment(s, maximize=True)
    for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
        if s[r, c] >= min_similarity:
            out[c] = r
    return out


def member_keys(report: Any) -> list[frozenset[Hashable]]:
    """Each concept's member patches of a :class:`~debugger.report.ConceptReport` as ``(image, x0, y0, x1, y1)``
    keys, comparable across analyses of the same probe images (patch indices are not)."""
    image = report.patches.image_index.tolist()
    boxes = report.patches.boxes.tolist()
    return [frozenset((image[p], *boxes[p]) for p in c.members.long().tolist()) for c in report.concepts]


class ConceptTracker:
    """Gives concepts ids that last across analyses: a concept matched to one of the previous analysis keeps
    its id, an unmatched one gets the next unused id.

    Args:
        min_similarity: least :func:`concept_similarity` for two concepts to be the same one.

    Example:
        >>> tracker = ConceptTracker()
        >>> tracker.update(torch.eye(3), [frozenset({0}), frozenset({1}), frozenset({2})])
        [0, 1, 2]
        >>> tracker.update(torch.eye(3)[[2, 0]], [frozenset({2}), frozenset({0})])
        [2, 0]
        >>> tracker.update(-torch.eye(3)[:1], [frozenset({9})])
        [3]
    """

    def __init__(self, min_similarity: float = 0.3) -> None:
        if not 0.0 <= min_similarity <= 1.0:
            raise ValueError(f"Expected `min_similarity` to be in [0, 1], but got {min_similarity!r}.")
        self.min_similarity = min_similarity
        self.ids: list[int] = []
        self.next_id = 0
        self._centroids: Tensor | None = None
        self._members: MemberKeys | None = None

    def update(self, centroids: Tensor | None, members: MemberKeys | None) -> list[int]:
        """The ids of this analysis's concepts (in their order), matched against the previous analysis."""
        count = len(members) if members is not None else (0 if centroids is None else int(centroids.shape[0]))
        matches: list[int | None] = [None] * count
        if self.ids and count:
            try:
                sim = concept_similarity(self._centroids, centroids, self._members, members)
            except ValueError:
                sim = None  # nothing comparable (e.g. another layer's width and no members): all new
            if sim is not None:
                matches = match_concepts(sim, self.min_similarity)
        ids = []
        for m in matches:
            if m is None:
                ids.append(self.next_id)
                self.next_id += 1
            else:
                ids.append(self.ids[m])
        self.ids = ids
        self._centroids = None if centroids is None else centroids.detach().float().cpu()
        self._members = None if members is None else list(members)
        return list(ids)

    def restore(self, ids: Sequence[int], next_id: int, centroids: Tensor | None, members: MemberKeys | None) -> None:
        """Continue from a previous analysis (e.g. a report re-read after a resume)."""
        self.ids = [int(i) for i in ids]
        self.next_id = max([int(next_id), *(i + 1 for i in self.ids)])
        self._centroids = None if centroids is None else centroids.detach().float().cpu()
        self._members = None if members is None else list(members)
