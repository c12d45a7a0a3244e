"""Concept identity across analyses: similarity, the one-to-one assignment and lasting ids."""

from __future__ import annotations

import pytest
import torch

from debugger.identity import ConceptTracker, concept_similarity, match_concepts


def test_similarity_averages_centred_centroid_cosine_and_member_jaccard() -> None:
    prev = torch.tensor([[4.0, 1.0], [1.0, 4.0]])
    cur = torch.tensor([[4.0, 1.0], [4.0, 4.0]])  # the centre of all four is (3.25, 2.5)
    members_prev = [frozenset({1, 2, 3}), frozenset({4})]
    members_cur = [frozenset({2, 3, 4}), frozenset()]
    sim = concept_similarity(prev, cur, members_prev, members_cur)
    centred_prev, centred_cur = prev - torch.tensor([3.25, 2.5]), cur - torch.tensor([3.25, 2.5])
    cos = torch.nn.functional.cosine_similarity(centred_prev.unsqueeze(1), centred_cur.unsqueeze(0), dim=2)
    jaccard = torch.tensor([[0.5, 0.0], [1 / 3, 0.0]])
    torch.testing.assert_close(sim, (cos.clamp(min=0) + jaccard) / 2)
    # features all concepts share (a common positive offset) do not make two different concepts alike
    offset = torch.tensor([[100.0, 100.0]])
    assert float(concept_similarity(prev[:1] + offset, prev[1:] + offset)) == 0.0


def test_similarity_without_anything_comparable_says_so() -> None:
    with pytest.raises(ValueError, match="Expected centroids of the same width or member keys"):
        concept_similarity(torch.ones(2, 3), torch.ones(2, 4))
    with pytest.raises(ValueError, match="Expected centroids and members to agree"):
        concept_similarity(torch.ones(2, 3), torch.ones(2, 3), [frozenset()], [frozenset()] * 2)


def test_matching_is_one_to_one_maximizes_the_total_and_leaves_weak_pairs_new() -> None:
    # greedy would pair current 0 with previous 0 (0.9) and leave 0.1 for current 1; Hungarian gives 0.8 + 0.85
    sim = torch.tensor([[0.9, 0.8], [0.85, 0.1]])
    assert match_concepts(sim) == [1, 0]
    assert match_concepts(torch.tensor([[0.2, 0.25]]), min_similarity=0.3) == [None, None]
    assert match_concepts(torch.zeros(0, 3)) == [None, None, None]


def test_tracker_keeps_ids_of_matched_concepts_and_never_reuses_a_retired_id() -> None:
    tracker = ConceptTracker()
    eye = torch.eye(4)
    assert tracker.update(eye[:3], None) == [0, 1, 2]
    assert tracker.update(eye[[1, 3]], None) == [1, 3]  # concept 1 again; a new one
    assert tracker.update(eye[[0, 3]], None) == [4, 3]  # concept 0 retired one run ago: a new number
    restored = ConceptTracker()
    restored.restore([4, 3], 5, eye[[0, 3]], None)
    assert restored.update(eye[[3, 2]], None) == [3, 5]
