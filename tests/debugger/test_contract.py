import pytest
import torch

from debugger.contract import as_sample, repack_batch, unpack_batch


def test_plain_pair_and_dict_unpack_to_the_same_batch():
    x, y = torch.rand(3, 1, 4, 4), torch.tensor([0, 1, 2])
    a = unpack_batch((x, y))
    b = unpack_batch({"image": x, "target": y, "concepts": torch.ones(3, 2)})
    assert a.images is b.images and a.targets is b.targets
    assert a.concepts is None and b.concepts.shape == (3, 2)
    assert not a.is_segmentation


def test_segmentation_targets_are_recognised():
    b = unpack_batch([torch.rand(2, 3, 8, 8), torch.zeros(2, 8, 8, dtype=torch.long)])
    assert b.is_segmentation


def test_repack_keeps_the_callers_layout():
    x, y = torch.rand(2, 1, 4, 4), torch.tensor([0, 1])
    assert isinstance(repack_batch((x, y), x, y), tuple)
    assert isinstance(repack_batch([x, y], x, y), list)
    d = repack_batch({"image": x, "target": y}, x, y, concepts=None)
    assert set(d) == {"image", "target"}


def test_as_sample_leaves_out_unknown_fields():
    s = as_sample(torch.zeros(1, 2, 2), 3)
    assert set(s) == {"image", "target"} and s["target"].dtype == torch.long


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ({"image": torch.zeros(1, 1, 2, 2)}, "keys 'image' and 'target'"),
        (torch.zeros(2, 2), "dict with 'image'"),
        ((torch.zeros(2, 4, 4), torch.zeros(2)), r"\(B, C, H, W\)"),
        ((torch.zeros(2, 1, 4, 4), torch.zeros(3)), "batch size 2"),
        ((torch.zeros(2, 1, 4, 4), torch.zeros(2, 5, 5)), "segmentation target"),
        ((torch.zeros(2, 1, 4, 4), torch.zeros(2, 2)), r"\(B,\) or \(B, H, W\)"),
        ({"image": torch.zeros(2, 1, 4, 4), "target": torch.zeros(2), "concept_masks": torch.zeros(2, 3, 3, 3)},
         "concept_masks"),
    ],
)
def test_bad_batches_are_rejected_with_what_was_expected(batch, match):
    with pytest.raises(ValueError, match=match):
        unpack_batch(batch)
