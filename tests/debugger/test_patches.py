import pytest
import torch

from debugger.patches import (
    box_concept_overlap,
    extract_patches,
    mask_concept_overlap,
    masks_to_boxes,
    patch_masks,
    quickshift_superpixels,
    slic_superpixels,
    sliding_windows,
)


def test_sliding_windows_exact_boxes_and_masks():
    ps = sliding_windows(torch.zeros(2, 3, 6, 6), sizes=(4,), strides=(2,))
    # positions 0, 2 per axis -> 4 windows per image, the border is already covered
    assert ps.boxes[:4].tolist() == [[0, 0, 4, 4], [2, 0, 6, 4], [0, 2, 4, 6], [2, 2, 6, 6]]
    assert ps.image_index.tolist() == [0] * 4 + [1] * 4
    assert ps.masks.shape == (8, 6, 6)
    assert ps.masks.flatten(1).sum(1).tolist() == [16] * 8
    assert bool(ps.masks[1, 0:4, 2:6].all()) and not bool(ps.masks[1, :, :2].any())
    assert ps.method == "windows"


def test_sliding_windows_cover_border_and_multiple_scales():
    ps = sliding_windows(torch.zeros(1, 1, 7, 7), sizes=(4, (2, 7)), strides=(2, (7, 7)))
    xs = sorted({b[0] for b in ps.boxes[:9].tolist()})
    assert xs == [0, 2, 3]  # 0, 2 and the border-touching 3
    # 2-high, 7-wide windows with stride 7: row 0 and the border-touching row 5, one column
    assert ps.boxes[9:].tolist() == [[0, 0, 7, 2], [0, 5, 7, 7]]
    assert len(ps) == 9 + 2
    union = patch_masks(ps, (7, 7)).any(0)
    assert bool(union.all())


def test_window_overlap_integral_equals_mask_overlap():
    torch.manual_seed(0)
    cm = torch.rand(3, 2, 12, 12) > 0.6
    ps = sliding_windows(torch.zeros(3, 3, 12, 12), sizes=(4, 8), concept_masks=cm, concept_names=("a", "b"))
    exact = mask_concept_overlap(ps.masks, ps.image_index, cm)
    torch.testing.assert_close(ps.concept_overlap, exact)
    manual = cm[ps.image_index[5], :, ps.boxes[5, 1] : ps.boxes[5, 3], ps.boxes[5, 0] : ps.boxes[5, 2]]
    torch.testing.assert_close(ps.concept_overlap[5], manual.float().mean((1, 2)))
    assert ps.concept_names == ("a", "b")


def test_box_overlap_exact_value():
    cm = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    cm[0, 0, :2, :2] = True
    out = box_concept_overlap(torch.tensor([[0, 0, 4, 2], [2, 2, 4, 4]]), torch.tensor([0, 0]), cm)
    assert out.tolist() == [[0.5], [0.0]]


def test_masks_to_boxes_and_patch_masks_round_trip():
    m = torch.zeros(2, 5, 6, dtype=torch.bool)
    m[0, 1:3, 2:5] = True
    m[1, 4, 0] = True
    boxes = masks_to_boxes(m)
    assert boxes.tolist() == [[2, 1, 5, 3], [0, 4, 1, 5]]
    ps = sliding_windows(torch.zeros(1, 1, 5, 6), sizes=(2,), with_masks=False)
    assert ps.masks is None
    assert torch.equal(masks_to_boxes(patch_masks(ps, (5, 6))), ps.boxes)


def test_slic_segments_follow_a_colour_edge():
    img = torch.zeros(1, 3, 16, 16)
    img[:, 0, :, 8:] = 1.0
    cm = torch.zeros(1, 1, 16, 16, dtype=torch.bool)
    cm[0, 0, :, 8:] = True
    ps = slic_superpixels(img, n_segments=(4,), concept_masks=cm, concept_names=("red",))
    assert len(ps) == 4
    # no segment straddles the edge: each is wholly inside or wholly outside the red half
    assert sorted(ps.concept_overlap[:, 0].tolist()) == [0.0, 0.0, 1.0, 1.0]
    red = ps.concept_overlap[:, 0] == 1.0
    assert bool((ps.boxes[red, 0] >= 8).all()) and bool((ps.boxes[~red, 2] <= 8).all())
    assert ps.method == "slic"


def test_superpixel_dedup_across_scales_and_partition():
    torch.manual_seed(0)
    img = torch.zeros(1, 3, 16, 16)
    img[:, 1, :8] = 1.0
    dup = slic_superpixels(img, n_segments=(4, 4), dedup_iou=0.5)
    nodup = slic_superpixels(img, n_segments=(4, 4), dedup_iou=1.0)
    assert len(nodup) == 2 * len(dup)
    # within one scale, superpixels partition the image
    assert int(dup.masks.sum()) == 16 * 16


def test_quickshift_multi_scale_and_grey():
    torch.manual_seed(0)
    img = torch.rand(2, 3, 16, 16)
    ps = quickshift_superpixels(img, min_pixels=1, dedup_iou=1.0)
    assert ps.method == "quickshift"
    assert set(ps.image_index.tolist()) == {0, 1}
    # each scale partitions each image: 3 scales -> every pixel covered 3 times
    assert int(ps.masks[ps.image_index == 0].sum()) == 3 * 16 * 16
    again = quickshift_superpixels(img, min_pixels=1, dedup_iou=1.0)
    assert torch.equal(ps.masks, again.masks)
    grey = quickshift_superpixels(torch.rand(1, 1, 12, 12), scales=((2, 6.0),), min_pixels=1)
    assert int(grey.masks.sum()) == 144


def test_superpixel_count_near_twelve_on_planted_like_images():
    # smooth blobs stand in for textures; the mid scale should give roughly a dozen segments
    g = torch.Generator().manual_seed(0)
    img = torch.nn.functional.interpolate(torch.rand(4, 3, 4, 4, generator=g), size=32, mode="bilinear")
    ps = slic_superpixels(img, n_segments=(12,), dedup_iou=1.0, min_pixels=1)
    per_image = torch.bincount(ps.image_index).float().mean()
    assert 6 <= float(per_image) <= 18


def test_errors():
    with pytest.raises(ValueError, match="empty probe set"):
        sliding_windows(torch.zeros(0, 3, 8, 8))
    with pytest.raises(ValueError, match="shape \\(N, C, H, W\\)"):
        slic_superpixels(torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match="concept_masks"):
        sliding_windows(torch.zeros(2, 3, 8, 8), concept_masks=torch.zeros(2, 1, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="fit images"):
        sliding_windows(torch.zeros(1, 3, 8, 8), sizes=(9,))
    with pytest.raises(ValueError, match="one stride per window size"):
        sliding_windows(torch.zeros(1, 3, 8, 8), sizes=(4, 2), strides=(2,))
    with pytest.raises(ValueError, match="1- or 3-channel"):
        quickshift_superpixels(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="Expected `method`"):
        extract_patches(torch.zeros(1, 3, 8, 8), "grid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="concept_names"):
        sliding_windows(torch.zeros(1, 3, 8, 8), concept_masks=torch.zeros(1, 2, 8, 8, dtype=torch.bool),
                        concept_names=("a",))
    with pytest.raises(ValueError, match="Expected `masks` of shape"):
        mask_concept_overlap(torch.zeros(2, 4, 4, dtype=torch.bool), torch.zeros(2, dtype=torch.long),
                             torch.zeros(1, 1, 5, 5, dtype=torch.bool))
