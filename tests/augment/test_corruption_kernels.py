"""The corruption kernels: exact values on tiny cases, and agreement with independent implementations."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from augment import functional_corruptions as FC


def test_disc_kernel_weights_are_the_clamped_coverage_normalised():
    k = FC.disc_kernels(torch.tensor([1.0]))[0]
    # Centre 1, edge neighbours clamp(1.5 - 1) = 0.5, corners clamp(1.5 - sqrt 2).
    corner = 1.5 - math.sqrt(2.0)
    raw = torch.tensor([[corner, 0.5, corner], [0.5, 1.0, 0.5], [corner, 0.5, corner]])
    torch.testing.assert_close(k, raw / raw.sum())


def test_disc_kernels_of_a_batch_share_a_side_and_radius_zero_is_the_identity():
    k = FC.disc_kernels(torch.tensor([0.0, 2.4]))
    assert k.shape == (2, 7, 7)
    assert k[0, 3, 3] == 1.0 and k[0].sum() == 1.0
    torch.testing.assert_close(k.sum(dim=(1, 2)), torch.ones(2))


def test_motion_kernel_is_a_segment_at_its_angle():
    horizontal = FC.motion_kernels(torch.tensor([2.0]), torch.tensor([0.0]))[0]
    torch.testing.assert_close(horizontal[1], torch.tensor([0.25, 0.5, 0.25]))
    assert horizontal[0].sum() == 0 and horizontal[2].sum() == 0
    vertical = FC.motion_kernels(torch.tensor([2.0]), torch.tensor([math.pi / 2]))[0]
    torch.testing.assert_close(vertical, horizontal.T, atol=1e-6, rtol=0)
    diagonal = FC.motion_kernels(torch.tensor([4.0 * math.sqrt(2.0)]), torch.tensor([math.pi / 4]))[0]
    # Mass lies on the diagonal and its neighbours (bilinear splats), symmetric under a half turn.
    near = sum(float(torch.diagonal(diagonal, offset).sum()) for offset in (-1, 0, 1))
    assert near == pytest.approx(1.0) and float(torch.diagonal(diagonal).sum()) > 0.6
    torch.testing.assert_close(diagonal, diagonal.flip(0, 1))


def test_motion_kernel_of_a_sample_does_not_depend_on_its_batch():
    alone = FC.motion_kernels(torch.tensor([3.0]), torch.tensor([0.3]))[0]
    batched = FC.motion_kernels(torch.tensor([3.0, 9.0]), torch.tensor([0.3, 1.0]))[0]
    pad = (batched.shape[0] - alone.shape[0]) // 2
    torch.testing.assert_close(batched[pad:-pad, pad:-pad], alone)
    assert batched.sum() == pytest.approx(1.0) and float(batched[:pad].abs().sum()) == 0.0


def test_filter_per_sample_gives_each_sample_its_impulse_response():
    x = torch.zeros(2, 2, 9, 9)
    x[:, :, 4, 4] = 1.0
    kernels = FC.disc_kernels(torch.tensor([1.0, 3.0]))
    y = FC.filter_per_sample(x, kernels)
    for b in range(2):
        r = kernels.shape[-1] // 2
        for c in range(2):
            torch.testing.assert_close(y[b, c, 4 - r:5 + r, 4 - r:5 + r], kernels[b])


def test_defocus_matches_scipy_convolution_with_the_same_disc():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.rand(1, 1, 12, 13, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    k = FC.disc_kernels(torch.tensor([2.0]))[0].double()
    ours = FC.filter_per_sample(x, k[None])[0, 0].numpy()
    theirs = ndimage.correlate(x[0, 0].numpy(), k.numpy(), mode="nearest")
    np.testing.assert_allclose(ours, theirs, atol=1e-12)


def test_blurs_keep_constant_images():
    x = torch.full((2, 3, 10, 10), 0.3)
    torch.testing.assert_close(FC.defocus_blur(x, torch.tensor([1.5, 3.0])), x)
    torch.testing.assert_close(FC.motion_blur(x, torch.tensor([4.0, 0.0]), torch.tensor([0.4, 2.0])), x)


def test_gaussian_noise_is_seeded_and_has_its_standard_deviation():
    x = torch.full((2, 1, 64, 64), 0.5)
    y = FC.gaussian_noise(x, torch.tensor([0.0, 0.2]), torch.tensor([1, 2]))
    assert torch.equal(y[0], x[0])
    assert float((y[1] - 0.5).std()) == pytest.approx(0.2, rel=0.05)
    assert torch.equal(y, FC.gaussian_noise(x, torch.tensor([0.0, 0.2]), torch.tensor([1, 2])))
    assert not torch.equal(y[1], FC.gaussian_noise(x, torch.tensor([0.0, 0.2]), torch.tensor([1, 3]))[1])


def test_exposure_kernels_exact_values():
    x = torch.tensor([[[[0.0, 0.25, 1.0]]]])
    assert FC.adjust_brightness(x, torch.tensor([0.5])).flatten().tolist() == [0.5, 0.75, 1.5]
    # Mean 5/12; factor 2 doubles every deviation from it.
    m = 5.0 / 12.0
    torch.testing.assert_close(FC.adjust_contrast(x, torch.tensor([2.0])),
                               torch.tensor([[[[m - 2 * m, m + 2 * (0.25 - m), m + 2 * (1 - m)]]]]))
    torch.testing.assert_close(FC.adjust_gamma(x, torch.tensor([2.0])), torch.tensor([[[[0.0, 0.0625, 1.0]]]]))
    # Gamma clamps first: values outside [0, 1] cannot give NaN.
    assert FC.adjust_gamma(torch.tensor([[[[-0.5, 1.5]]]]), torch.tensor([0.5])).flatten().tolist() == [0.0, 1.0]


def test_tint_haze_texture_and_blend_exact_values():
    x = torch.zeros(1, 3, 1, 1)
    assert FC.tint(x, torch.tensor([[0.1, 0.0, -0.1]])).flatten().tolist() == pytest.approx([0.1, 0.0, -0.1])
    hazy = FC.haze(torch.ones(1, 3, 1, 1), torch.tensor([0.25]), (0.0, 0.4, 0.8))
    assert hazy.flatten().tolist() == pytest.approx([0.75, 0.85, 0.95])
    tex = torch.tensor([[[[1.0, -1.0]]]])
    assert FC.texture_overlay(torch.zeros(1, 2, 1, 2), tex, torch.tensor([0.3])).flatten().tolist() == pytest.approx(
        [0.3, -0.3, 0.3, -0.3])
    assert FC.blend(torch.zeros(1, 1, 1, 3), torch.ones(1, 1, 1, 3), torch.tensor([[[[0.0, 0.25, 1.0]]]])
                    ).flatten().tolist() == [0.0, 0.25, 1.0]


def test_value_noise_spans_minus_one_to_one_is_seeded_and_smooth():
    t = FC.value_noise(torch.tensor([5, 6]), 32, 32)
    assert torch.equal(t, FC.value_noise(torch.tensor([5, 6]), 32, 32))
    assert not torch.equal(t[0], t[1])
    assert t.amin(dim=(1, 2, 3)).tolist() == [-1.0, -1.0] and t.amax(dim=(1, 2, 3)).tolist() == [1.0, 1.0]
    # Bilinear octaves: neighbouring pixels differ far less than the range.
    assert float((t[..., 1:] - t[..., :-1]).abs().mean()) < 0.2


def test_dct_matrix_is_orthonormal_and_matches_scipy():
    fft = pytest.importorskip("scipy.fft")
    d = FC.dct_matrix()
    torch.testing.assert_close(d @ d.T, torch.eye(8), atol=1e-6, rtol=0)
    x = np.random.default_rng(0).random(8)
    np.testing.assert_allclose(d.double().numpy() @ x, fft.dct(x, norm="ortho"), atol=1e-6)


def test_jpeg_tables_follow_the_ijg_quality_scaling():
    t = FC.jpeg_tables(torch.tensor([50.0, 100.0, 25.0]))
    assert t[0, 0, 0, 0] == 16 and t[0, 1, 0, 0] == 17  # quality 50 is the standard table
    assert bool((t[1] == 1).all())  # quality 100 quantises with step 1
    assert t[2, 0, 0, 0] == 32  # quality 25 doubles the steps


def test_jpeg_compress_is_close_to_libjpeg_at_the_same_quality():
    image = pytest.importorskip("PIL.Image")
    g = torch.Generator().manual_seed(0)
    # A smooth image with some texture, like a photograph.
    base = torch.nn.functional.interpolate(torch.rand(1, 3, 6, 6, generator=g), size=(48, 48), mode="bilinear")
    x = (base + 0.05 * torch.rand(1, 3, 48, 48, generator=g)).clamp(0, 1)
    x = torch.round(x * 255) / 255
    for quality in (20, 60):
        ours = FC.jpeg_compress(x, torch.tensor([float(quality)]))[0].permute(1, 2, 0).numpy()
        buf = io.BytesIO()
        arr = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        image.fromarray(arr).save(buf, format="JPEG", quality=quality, subsampling=0)
        theirs = np.asarray(image.open(buf)).astype(np.float64) / 255
        error_ours = np.abs(ours - arr / 255).mean()
        error_theirs = np.abs(theirs - arr / 255).mean()
        # Same tables and transform; libjpeg's integer DCT and rounding differ in the last grey levels.
        assert np.abs(ours - theirs).mean() < 0.25 * error_theirs + 1.5 / 255
        assert error_ours == pytest.approx(error_theirs, rel=0.35)


def test_jpeg_compress_keeps_flat_blocks_and_loses_more_at_lower_quality():
    flat = torch.full((1, 1, 8, 16), 0.5)
    torch.testing.assert_close(FC.jpeg_compress(flat, torch.tensor([5.0])), flat, atol=1 / 255, rtol=0)
    x = torch.rand(3, 3, 13, 21, generator=torch.Generator().manual_seed(1))
    y = FC.jpeg_compress(x, torch.tensor([90.0, 50.0, 10.0]))
    assert y.shape == x.shape
    errors = (y - x).abs().mean(dim=(1, 2, 3)).tolist()
    assert errors[0] < errors[1] < errors[2]
