import pytest
import torch

from debugger.ranking import rank_failures
from debugger.slices import mark_merged, member_slices, merge_concepts, near_duplicate_groups, slice_overlap
from debugger.structures import Concept


def _concept(i, members, num_patches=6):
    return Concept(i, f"cluster-{i}", torch.tensor(members, dtype=torch.long), -torch.arange(num_patches).float() - i)


def test_member_slices_are_the_members_source_images_or_pixels():
    image_index = torch.tensor([0, 0, 1, 1, 2, 2])
    concepts = [_concept(0, [0, 1]), _concept(1, [3, 4]), _concept(2, [])]
    assert member_slices(concepts, image_index, 3).tolist() == [[True, False, False], [False, True, True],
                                                               [False, False, False]]
    masks = torch.zeros(6, 2, 2, dtype=torch.bool)
    masks[0, 0, 0] = masks[1, 1, 1] = masks[3, 0, 1] = masks[4, 1, 0] = True
    pixels = member_slices(concepts, image_index, 3, masks=masks)
    assert pixels.shape == (3, 3, 2, 2)
    assert pixels[0, 0].tolist() == [[True, False], [False, True]] and not pixels[0, 1:].any()
    assert pixels[1, 1].tolist() == [[False, True], [False, False]] and pixels[1, 2].tolist() == [[False, False],
                                                                                                  [True, False]]


def test_member_slices_reject_bad_members_and_masks():
    with pytest.raises(ValueError, match="Expected the members of 'cluster-0' to index the 2 patches"):
        member_slices([_concept(0, [5])], torch.tensor([0, 1]), 2)
    with pytest.raises(ValueError, match=r"Expected `masks` to have shape \(2, H, W\)"):
        member_slices([_concept(0, [1])], torch.tensor([0, 1]), 2, masks=torch.zeros(3, 2, 2, dtype=torch.bool))


def test_groups_link_overlapping_candidates_in_chains_only():
    m = torch.zeros(4, 10, dtype=torch.bool)
    m[0, :4], m[1, 2:6], m[2, 4:8], m[3, :8] = True, True, True, True
    assert slice_overlap(m)[0, 1].item() == pytest.approx(2 / 6)
    assert near_duplicate_groups(m, [0, 1, 2], 0.3) == [[0, 1, 2]]  # 0–1 and 1–2 overlap, 0–2 do not
    assert near_duplicate_groups(m, [0, 2], 0.3) == []  # non-candidates do not link
    assert near_duplicate_groups(m, [0, 1, 2], 0.5) == []
    with pytest.raises(ValueError, match="Expected `min_overlap` to be in"):
        near_duplicate_groups(m, [0, 1], 0.0)
    with pytest.raises(ValueError, match="Expected `candidates` to be rows"):
        near_duplicate_groups(m, [0, 7])


def test_merged_concept_takes_the_union_and_the_best_score():
    a, b = _concept(4, [0, 1]), _concept(9, [1, 5])
    (m,) = merge_concepts([a, b], [[0, 1]])
    assert m.id == 10 and m.members.tolist() == [0, 1, 5] and m.meta == {"merged_from": [4, 9]}
    assert torch.equal(m.scores, torch.maximum(a.scores, b.scores))
    assert merge_concepts([a, b], [[0, 1]], first_id=50)[0].id == 50
    with pytest.raises(ValueError, match="two or more positions"):
        merge_concepts([a, b], [[0]])


def test_parts_are_not_marked_when_the_merged_concept_is_no_failure():
    errors = torch.tensor([True] * 12 + [False] * 28)
    m = torch.zeros(3, 40, dtype=torch.bool)
    m[0, :10], m[1, 2:12], m[2] = True, True, True  # the "merged" concept covers everything: lift undefined
    merged = Concept(2, "a+b", torch.tensor([0]), torch.zeros(1), meta={"merged_from": [0, 1]})
    rows = mark_merged(rank_failures(errors, m), [merged])
    assert all(r.merged_into is None for r in rows)
    assert {r.concept: r.merged_from for r in rows}[2] == (0, 1)
