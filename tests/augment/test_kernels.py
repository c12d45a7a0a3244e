"""The batched torch kernels: exact values, and agreement with independent implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from augment import functional as AF


def test_soft_edge_is_the_gaussian_blur_of_a_hard_edge():
    ndimage = pytest.importorskip("scipy.ndimage")
    sigma, dt = 2.0, 0.01
    # A hard vertical edge at x = 20, blurred on a 100x finer grid (the continuous reference), sampled at
    # the pixel centres 0..39.
    t = np.arange(-20.0, 60.0, dt)
    fine = ndimage.gaussian_filter1d((t >= 20).astype(np.float64), sigma / dt, mode="nearest", truncate=6.0)
    blurred = fine[np.rint((np.arange(40) + 20.0) / dt).astype(int)]
    ours = AF.line_shadow_region(torch.tensor([[20.0, 0.0, 0.0]]), torch.tensor([sigma]), 1, 40)[0, 0, 0]
    np.testing.assert_allclose(ours.numpy(), blurred, atol=2e-3)


def test_hard_line_shadow_splits_the_image_on_the_normal_side():
    r = AF.line_shadow_region(torch.tensor([[0.0, 3.5, math.pi / 2]]), torch.zeros(1), 8, 4)[0, 0]
    assert r[:4].sum() == 0 and bool((r[4:] == 1).all())


def test_polygon_inside_matches_matplotlib_path():
    mpath = pytest.importorskip("matplotlib.path")
    verts = torch.tensor([[[2.3, 1.1], [17.6, 3.2], [12.2, 9.7], [15.1, 18.4], [3.3, 14.9]]])
    region = AF.polygon_shadow_region(verts, torch.zeros(1), 20, 20)[0, 0]
    ys, xs = np.mgrid[0:20, 0:20]
    inside = mpath.Path(verts[0].numpy()).contains_points(np.stack([xs.ravel(), ys.ravel()], 1)).reshape(20, 20)
    np.testing.assert_array_equal(region.numpy() > 0.5, inside)


def test_polygon_shadow_matches_albumentations_add_shadow_away_from_edges():
    fpixel = pytest.importorskip("albumentations.augmentations.pixel.functional")
    verts = np.array([[3, 2], [26, 5], [20, 27], [6, 22]], dtype=np.int32)
    rng = np.random.default_rng(0)
    img = rng.uniform(0.2, 1.0, (32, 32, 3)).astype(np.float32)
    theirs = fpixel.add_shadow(img, [verts], np.array([0.6]))
    x = torch.from_numpy(img).permute(2, 0, 1)[None]
    region = AF.polygon_shadow_region(torch.from_numpy(verts).float()[None], torch.zeros(1), 32, 32)
    ours = AF.darken(x, region, torch.tensor([0.6]))[0].permute(1, 2, 0).numpy()
    # Rasterisation conventions differ on the boundary itself (cv2 fills edge pixels), so compare the pixels
    # at least one pixel away from every edge.
    soft = AF.polygon_shadow_region(torch.from_numpy(verts).float()[None], torch.tensor([0.25]), 32, 32)[0, 0]
    interior = ((soft < 1e-4) | (soft > 1 - 1e-4)).numpy()
    # albumentations routes float images through uint8, so allow one grey level.
    np.testing.assert_allclose(ours[interior], theirs[interior], atol=1.5 / 255)
    assert interior.sum() > 700


def test_canopy_is_a_union_of_discs_for_circles():
    blobs = torch.tensor([[[4.0, 4.0, 2.0, 2.0, 0.0], [12.0, 10.0, 3.0, 3.0, 1.0]]])
    r = AF.canopy_shadow_region(blobs, torch.zeros(1), 16, 16)[0, 0]
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    d1 = torch.sqrt((xs - 4) ** 2 + (ys - 4) ** 2)
    d2 = torch.sqrt((xs - 12) ** 2 + (ys - 10) ** 2)
    expected = (d1 < 2) | (d2 < 3)
    assert torch.equal(r > 0.5, expected)


def test_darken_moves_towards_the_per_channel_floor():
    x = torch.ones(1, 2, 1, 1)
    out = AF.darken(x, torch.ones(1, 1, 1, 1), torch.tensor([0.25]), floor=(0.0, -1.0))
    assert out.flatten().tolist() == [0.75, 0.5]


def test_boxes_region_clips_overflow_and_ignores_invalid_boxes():
    boxes = torch.tensor([[[-2, -2, 2, 2], [3, 3, 9, 9], [0, 0, 5, 5]]])
    valid = torch.tensor([[True, True, False]])
    r = AF.boxes_region(boxes, valid, 5, 5)[0, 0]
    expected = torch.zeros(5, 5)
    expected[:2, :2] = 1
    expected[3:, 3:] = 1
    assert torch.equal(r, expected)


def test_gaussian_blur_matches_scipy_on_both_paths():
    ndimage = pytest.importorskip("scipy.ndimage")
    from augment import functional_numpy as NF

    x = torch.rand(1, 2, 12, 15, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for sigma in (1.0, 2.0):
        ours = AF.gaussian_blur(x, sigma)[0].numpy()
        theirs = np.stack([ndimage.gaussian_filter(c, sigma, mode="nearest", truncate=3.0) for c in x[0].numpy()])
        np.testing.assert_allclose(ours, theirs, atol=1e-10)
        hwc = NF.gaussian_blur(x[0].permute(1, 2, 0).numpy(), sigma).transpose(2, 0, 1)
        np.testing.assert_allclose(hwc, theirs, atol=1e-10)


def test_occlude_fills():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    region = torch.zeros(1, 1, 4, 4)
    region[..., 1:3, 1:3] = 1
    mean = AF.occlude(x, region, "mean", value=-1.0)
    assert mean[0, 0, 1, 1] == -1 and mean[0, 0, 0, 0] == 0
    noise_a = AF.occlude(x, region, "noise", noise_seeds=torch.tensor([7]))
    noise_b = AF.occlude(x, region, "noise", noise_seeds=torch.tensor([7]))
    assert torch.equal(noise_a, noise_b) and not torch.equal(noise_a, x)
    assert torch.equal(noise_a * (1 - region), x * (1 - region))
    blur = AF.occlude(x, region, "blur", blur_sigma=1.0)
    assert torch.allclose(blur[..., 1:3, 1:3], AF.gaussian_blur(x, 1.0)[..., 1:3, 1:3])


def test_occlude_errors():
    x, r = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="Expected `fill` to be one of"):
        AF.occlude(x, r, "zeros")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected `noise_seeds`"):
        AF.occlude(x, r, "noise")


def test_box_sums_match_brute_force():
    m = torch.rand(2, 7, 9, generator=torch.Generator().manual_seed(1))
    s = AF.box_sums(m, 3)
    brute = torch.nn.functional.avg_pool2d(m[:, None].double(), 3, stride=1)[:, 0] * 9
    assert torch.allclose(s, brute)


def test_saliency_boxes_are_disjoint_inside_and_ranked():
    sal = torch.zeros(1, 12, 12)
    sal[0, 2, 2] = 3.0
    sal[0, 9, 9] = 2.0
    sal[0, 2, 10] = 1.0
    boxes, valid = AF.saliency_boxes(sal, 12, 12, 3, torch.zeros(1, 3, 2, dtype=torch.long))
    assert valid.all()
    b = boxes[0]
    assert b[0, 0] <= 2 < b[0, 2] and b[0, 1] <= 2 < b[0, 3]
    assert b[1, 0] <= 9 < b[1, 2] and b[1, 1] <= 9 < b[1, 3]
    assert (b[:, :2] >= 0).all() and (b[:, 2:] <= 12).all()
    for i in range(3):
        for j in range(i):
            overlap_x = min(b[i, 2], b[j, 2]) > max(b[i, 0], b[j, 0])
            overlap_y = min(b[i, 3], b[j, 3]) > max(b[i, 1], b[j, 1])
            assert not (overlap_x and overlap_y)


def test_saliency_boxes_jitter_stays_inside_and_disjoint():
    sal = torch.rand(4, 6, 6, generator=torch.Generator().manual_seed(0))
    jitter = torch.randint(-5, 6, (4, 3, 2), generator=torch.Generator().manual_seed(1))
    boxes, valid = AF.saliency_boxes(sal, 24, 24, 6, jitter)
    assert valid.all()
    assert (boxes[..., :2] >= 0).all() and (boxes[..., 2:] <= 24).all()
    region_sum = AF.boxes_region(boxes, valid, 24, 24).sum((1, 2, 3))
    assert torch.equal(region_sum, torch.full((4,), 3 * 36.0))  # disjoint: areas add up


def test_saliency_boxes_mark_boxes_that_do_not_fit_invalid():
    boxes, valid = AF.saliency_boxes(torch.rand(1, 4, 4), 4, 4, 3, torch.zeros(1, 2, 2, dtype=torch.long))
    assert valid.tolist() == [[True, False]]


def test_saliency_boxes_reject_a_size_larger_than_the_image():
    with pytest.raises(ValueError, match="Expected `size` to be in"):
        AF.saliency_boxes(torch.rand(1, 4, 4), 4, 4, 5, torch.zeros(1, 1, 2, dtype=torch.long))


def test_shadow_region_rejects_unknown_kind():
    with pytest.raises(ValueError, match="Expected `kind` to be one of"):
        AF.shadow_region("cloud", torch.zeros(1, 3), torch.zeros(1), 2, 2)  # type: ignore[arg-type]


def test_mask_bounding_boxes_and_empty_masks():
    m = torch.zeros(2, 5, 6, dtype=torch.bool)
    m[0, 1:4, 2:5] = True
    assert AF.mask_bounding_boxes(m).tolist() == [[2.0, 1.0, 5.0, 4.0], [0.0, 0.0, 6.0, 5.0]]


def test_samplers_and_numpy_kernels_reject_bad_input():
    from augment import functional_numpy as NF
    from augment import params as AP

    g = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="Expected `kind` to be one of"):
        AP.sample_shadow(1, 4, 4, g, kind="cloud")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Expected `saliency` to be a tensor of shape \(B, h, w\)"):
        AP.sample_saliency_occlusion(torch.zeros(4, 4), 4, 4, g)
    with pytest.raises(ValueError, match="Expected `kind` to be one of"):
        NF.shadow_region("cloud", np.zeros(3), 0.0, 4, 4)
    with pytest.raises(ValueError, match="Expected `fill` to be one of"):
        NF.occlude(np.zeros((4, 4, 1)), np.zeros((4, 4)), "zeros")
    with pytest.raises(ValueError, match="Expected `intensity` to be a pair"):
        AP.check_range("intensity", (0.1, 0.2, 0.3), 0, 1)
    with pytest.raises(ValueError, match="Expected `value` to be a number or one number per channel"):
        AP.check_value("value", "abc")
