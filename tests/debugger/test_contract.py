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
        ((torch.zeros(2, 1, 4, 4), torch.zeros(2, 2)), r"\(B,\) or \(B, H, W\), or one-hot .* got \(2, 2\)"),
        ((torch.zeros(2, 1, 4, 4), torch.tensor([0.5, 1.0])), "whole class indices.*torch.float32"),
        ((torch.zeros(2, 1, 4, 4, dtype=torch.complex64), torch.zeros(2)), "real-valued.*complex64"),
        ({"image": torch.zeros(2, 1, 4, 4), "target": torch.zeros(2), "concept_masks": torch.zeros(2, 3, 3, 3)},
         "concept_masks"),
    ],
)
def test_bad_batches_are_rejected_with_what_was_expected(batch, match):
    with pytest.raises(ValueError, match=match):
        unpack_batch(batch)


def test_uint8_images_are_read_as_float_with_their_values_kept():
    x = torch.tensor([0, 7, 255], dtype=torch.uint8).reshape(1, 1, 1, 3).expand(2, 1, 1, 3)
    b = unpack_batch((x, torch.tensor([0, 1])))
    assert b.images.dtype == torch.float32 and b.images[0, 0, 0].tolist() == [0.0, 7.0, 255.0]


def test_one_hot_and_probability_targets_become_class_indices():
    x = torch.rand(3, 1, 2, 2)
    one_hot = torch.eye(4)[torch.tensor([2, 0, 3])]
    assert unpack_batch((x, one_hot)).targets.tolist() == [2, 0, 3]
    soft = torch.tensor([[0.1, 0.9], [0.7, 0.3], [0.4, 0.6]])
    assert unpack_batch({"image": x, "target": soft}).targets.tolist() == [1, 0, 1]
    seg = torch.nn.functional.one_hot(torch.tensor([[[1, 0], [2, 2]]] * 3), 3).permute(0, 3, 1, 2).float()
    b = unpack_batch((x, seg))
    assert b.is_segmentation and b.targets[0].tolist() == [[1, 0], [2, 2]]
    assert unpack_batch((x, torch.tensor([2.0, 0.0, 1.0]))).targets.dtype == torch.long
