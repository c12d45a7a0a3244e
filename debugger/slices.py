"""Concept slices from member patches, and merging near-duplicate failure concepts.

A concept's **slice** is the set of probe images (or pixels) it speaks about. Seed 000 takes the images of a
concept's top 50 patches (:func:`debugger.confusion.concept_membership`); that caps a slice at 50 images, so a
failure present in half of a 300-image probe set leaves most of its images *outside* its own slice, and the lift
measured against them collapses. :func:`member_slices` takes every image holding one of the concept's member
patches instead (the patches discovery assigned to it), so a common failure's slice grows with it.

Over-clustering (many more clusters than concepts, as ACE does) splits one failure into several clusters — a
shadow's edge and its core, one scale and the next. :func:`near_duplicate_groups` links failure concepts whose
slices are mostly the same images, and :func:`merge_concepts` makes one concept of each group: the union of the
members, every patch scored by the best of the group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from debugger.ranking import ConceptFailure
from debugger.structures import Concept

__all__ = ["mark_merged", "member_slices", "merge_concepts", "near_duplicate_groups", "slice_overlap"]


def member_slices(concepts: Sequence[Concept], image_index: Tensor, num_images: int, masks: Tensor | None = None
                  ) -> Tensor:
    """Which probe images (or pixels) each concept's member patches cover.

    Args:
        concepts: concepts whose ``members`` index the patches.
        image_index: source probe image of every patch.
        num_images: number of probe images ``N``.
        masks: the patches' pixel masks; when given a slice is the union of the members' pixels.

    Shape:
        - image_index: ``(P,)`` int64 in ``[0, N)``
        - masks: ``(P, H, W)`` bool
        - output: ``(C, N)`` or ``(C, N, H, W)`` bool

    Raises:
        ValueError: if a member is not a patch index or the masks do not hold one mask per patch.

    Example:
        >>> c = [Concept(0, "a", torch.tensor([0, 2]), torch.zeros(4)),
        ...      Concept(1, "b", torch.tensor([3]), torch.zeros(4))]
        >>> member_slices(c, torch.tensor([0, 0, 1, 2]), 3)
        tensor([[ True,  True, False],
                [False, False,  True]])
    """
    num_patches = int(image_index.shape[0])
    if masks is not None and (masks.dim() != 3 or masks.shape[0] != num_patches):
        shape = tuple(masks.shape)
        raise ValueError(f"Expected `masks` to have shape ({num_patches}, H, W), but got {shape!r}.")
    shape = (len(concepts), num_images) + (tuple(masks.shape[1:]) if masks is not None else ())
    out = torch.zeros(shape, dtype=torch.bool)
    index = image_index.long().cpu()
    for row, concept in enumerate(concepts):
        members = concept.members.long().cpu()
        if members.numel() and (int(members.min()) < 0 or int(members.max()) >= num_patches):
            raise ValueError(
                f"Expected the members of {concept.name!r} to index the {num_patches} patches, but got values in "
                f"[{int(members.min())}, {int(members.max())}]."
            )
        if masks is None:
            out[row, index[members]] = True
        else:
            covered = torch.zeros(num_images, masks[0].numel())
            covered.index_add_(0, index[members], masks[members].flatten(1).float().cpu())
            out[row] = (covered > 0).view(out.shape[1:])
    return out


def slice_overlap(membership: Tensor) -> Tensor:
    """Jaccard overlap of every pair of slices (images or pixels in both / in either).

    Shape:
        - membership: ``(C, N, ...)`` bool; output: ``(C, C)`` float, 1 on the diagonal of non-empty slices

    Example:
        >>> slice_overlap(torch.tensor([[True, True, False], [False, True, True]]))
        tensor([[1.0000, 0.3333],
                [0.3333, 1.0000]])
    """
    m = membership.flatten(1).float()
    both = m @ m.T
    size = m.sum(1)
    either = size.unsqueeze(0) + size.unsqueeze(1) - both
    return torch.where(either > 0, both / either.clamp_min(1), torch.zeros_like(both))


def near_duplicate_groups(membership: Tensor, candidates: Sequence[int], min_overlap: float = 0.5
                          ) -> list[list[int]]:
    """Groups of candidate concepts (e.g. the failures) linked by slices that overlap by at least ``min_overlap``.

    Single linkage: two concepts are in one group when a chain of pairs, each overlapping enough, joins them.
    Only groups of two or more are returned, each sorted, in the order of their first member.

    Shape:
        - membership: ``(C, N, ...)`` bool

    Raises:
        ValueError: if ``min_overlap`` is not in (0, 1] or a candidate is not a row of ``membership``.

    Example:
        >>> m = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 1]], dtype=torch.bool)
        >>> near_duplicate_groups(m, [0, 1, 2], min_overlap=0.7)
        [[0, 1]]
    """
    if not 0 < min_overlap <= 1:
        raise ValueError(f"Expected `min_overlap` to be in (0, 1], but got {min_overlap!r}.")
    rows = sorted({int(c) for c in candidates})
    if rows and (rows[0] < 0 or rows[-1] >= membership.shape[0]):
        raise ValueError(f"Expected `candidates` to be rows of the {membership.shape[0]} slices, but got {rows!r}.")
    if len(rows) < 2:
        return []
    overlap = slice_overlap(membership[rows])
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            if float(overlap[i, j]) >= min_overlap:
                parent[root(j)] = root(i)
    groups: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(root(i), []).append(row)
    return [g for g in groups.values() if len(g) > 1]


def merge_concepts(concepts: Sequence[Concept], groups: Sequence[Sequence[int]], first_id: int | None = None
                   ) -> list[Concept]:
    """One concept per group (positions in ``concepts``): members' union, each patch scored by the group's best.

    The new concepts get ids from ``first_id`` on (after the largest id when None), a name joining the group's
    names with ``+``, and ``meta["merged_from"]``: the ids they were made of. Scores of k-means concepts are
    negative distances to a centroid, so the best of a group is the distance to its nearest centroid.

    Raises:
        ValueError: if a group has fewer than two concepts or names a position outside ``concepts``.

    Example:
        >>> a = Concept(3, "cluster-3", torch.tensor([0]), torch.tensor([-1.0, -4.0, -3.0]))
        >>> b = Concept(7, "cluster-7", torch.tensor([2]), torch.tensor([-2.0, -5.0, -0.5]))
        >>> (m,) = merge_concepts([a, b], [[0, 1]])
        >>> m.id, m.name, m.members.tolist(), m.scores.tolist(), m.meta
        (8, 'cluster-3+cluster-7', [0, 2], [-1.0, -4.0, -0.5], {'merged_from': [3, 7]})
    """
    next_id = (max((c.id for c in concepts), default=-1) + 1) if first_id is None else first_id
    out = []
    for group in groups:
        if len(group) < 2 or any(not 0 <= i < len(concepts) for i in group):
            raise ValueError(
                f"Expected every group to hold two or more positions in the {len(concepts)} concepts, but got "
                f"{list(group)!r}."
            )
        parts = [concepts[i] for i in group]
        scores = torch.stack([torch.nan_to_num(c.scores.float(), nan=-torch.inf) for c in parts]).amax(0)
        members = torch.unique(torch.cat([c.members.long().cpu() for c in parts]))
        out.append(Concept(next_id, "+".join(c.name for c in parts), members, scores,
                           meta={"merged_from": [int(c.id) for c in parts]}))
        next_id += 1
    return out


def mark_merged(ranking: Sequence[ConceptFailure], merged: Sequence[Concept]) -> list[ConceptFailure]:
    """The ranking with every merged concept's row given its parts (``merged_from``) and every part's row the id
    it was merged into (``merged_into``), when the merged concept is a failure itself; rows re-ordered so that
    failures in their own right come first, ranks renumbered.

    Example:
        >>> from debugger.ranking import rank_failures
        >>> errors = torch.tensor([True] * 12 + [False] * 28)
        >>> m = torch.zeros(3, 40, dtype=torch.bool)
        >>> m[0, :10], m[1, 2:12], m[2, :12] = True, True, True
        >>> both = Concept(2, "a+b", torch.tensor([0]), torch.zeros(1), meta={"merged_from": [0, 1]})
        >>> rows = mark_merged(rank_failures(errors, m, names=["a", "b", "a+b"]), [both])
        >>> [(r.name, r.is_failure, r.merged_from, r.merged_into) for r in rows]
        [('a+b', True, (0, 1), None), ('a', True, (), 2), ('b', True, (), 2)]
    """
    into: dict[int, int] = {}
    parts: dict[int, tuple[int, ...]] = {}
    failing = {row.concept for row in ranking if row.is_failure}
    for concept in merged:
        ids = tuple(int(i) for i in concept.meta.get("merged_from", ()))
        parts[concept.id] = ids
        if concept.id in failing:
            into.update({i: concept.id for i in ids})
    rows = [replace(row, merged_from=parts.get(row.concept, row.merged_from),
                    merged_into=into.get(row.concept, row.merged_into)) for row in ranking]
    rows.sort(key=lambda row: (not row.reported, not row.is_failure, row.rank))
    return [replace(row, rank=i + 1) for i, row in enumerate(rows)]
