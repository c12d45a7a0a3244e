from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from debugger.saliency.extremal import (
    ExtremalPerturbation,
    ExtremalResult,
    SmoothMaskGenerator,
    _area_loss,
    extremal_perturbation,
)
from debugger.saliency.perturbation import (
    MeaningfulPerturbation,
    Occlusion,
    blur_pyramid,
    gaussian_blur,
    meaningful_perturbation,
    occlusion,
    perturb_with_pyramid,
)

TARGETS = torch.tensor([0, 3, 1, 4])
SPOTS = [(4, 4), (18, 8), (6, 20), (20, 20)]


class Energy(nn.Module):
    """Class 0 scores the image's energy Σx²: blurring a bright spot lowers it, so the spot is the evidence."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = (x**2).flatten(1).sum(1, keepdim=True)
        return torch.cat([s, -s], 1)


def spot_images(size: int = 28) -> torch.Tensor:
    x = torch.zeros(len(SPOTS), 1, size, size)
    for i, (r, c) in enumerate(SPOTS):
        x[i, 0, r : r + 5, c : c + 5] = 1.0
    return x


def in_spot(i: int, flat_index: int, size: int = 28, slack: int = 1) -> bool:
    r, c = divmod(flat_index, size)
    r0, c0 = SPOTS[i]
    return r0 - slack <= r < r0 + 5 + slack and c0 - slack <= c < c0 + 5 + slack


# ------------------------------------------------------------------------------------------- occlusion


@pytest.mark.parametrize(("window", "stride"), [(3, 2), ((4, 2), (3, 1)), (8, 8)])
def test_occlusion_matches_captum(net, images, window, stride):
    captum = pytest.importorskip("captum.attr")
    ours = Occlusion(net, window, stride, baseline=0.1, batch_size=16).attribute(images, TARGETS)
    net.eval()
    w = (window, window) if isinstance(window, int) else window
    s = (stride, stride) if isinstance(stride, int) else stride
    theirs = captum.Occlusion(net).attribute(
        images, sliding_window_shapes=(3, *w), strides=(3, *s), baselines=0.1, target=TARGETS
    )
    assert ours.shape == (4, 1, 8, 8)
    assert torch.allclose(ours, theirs[:, :1], atol=1e-5)


def test_occlusion_argument_errors(net, images):
    with pytest.raises(ValueError, match="Expected `stride` to be at most the window"):
        occlusion(net, images, 0, window=2, stride=3)
    with pytest.raises(ValueError, match="Expected `window` to fit"):
        occlusion(net, images, 0, window=9, stride=1)
    with pytest.raises(ValueError, match="Expected `window` to be a positive int"):
        occlusion(net, images, 0, window=0)


# ---------------------------------------------------------------------------------------- blur pyramid


def test_gaussian_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = torch.randn(2, 3, 12, 10, dtype=torch.float64)
    ours = gaussian_blur(x, 1.0)
    theirs = ndimage.gaussian_filter(x.numpy(), sigma=(0, 0, 1.0, 1.0), mode="mirror", truncate=3.0)
    assert torch.allclose(ours, torch.from_numpy(theirs), atol=1e-10)


def test_pyramid_perturbation_levels():
    x = torch.randn(1, 2, 9, 9)
    pyr = blur_pyramid(x, 2.0, levels=4)
    assert pyr.shape == (1, 5, 2, 9, 9)
    assert torch.equal(perturb_with_pyramid(pyr, torch.ones(1, 1, 9, 9)), x)
    assert torch.allclose(perturb_with_pyramid(pyr, torch.zeros(1, 1, 9, 9)), gaussian_blur(x, 2.0))
    assert torch.allclose(perturb_with_pyramid(pyr, torch.full((1, 1, 9, 9), 0.5)), gaussian_blur(x, 1.0))
    mid = perturb_with_pyramid(pyr, torch.full((1, 1, 9, 9), 0.875))  # halfway between levels 0 and 1
    assert torch.allclose(mid, 0.5 * (pyr[:, 0] + pyr[:, 1]), atol=1e-6)


def test_pyramid_perturbation_has_gradient_at_fully_kept_mask():
    x = spot_images()[:1]
    m = torch.ones(1, 1, 28, 28, requires_grad=True)
    (g,) = torch.autograd.grad((perturb_with_pyramid(blur_pyramid(x, 2.5), m) ** 2).sum(), m)
    assert g[0, 0, 4, 6] > 0  # the spot's edge: the first blur level dims it, so keeping it raises the energy


def _blend_reference(pyramid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The floor/frac blend written with plain autograd ops (the floor is a constant)."""
    levels = pyramid.shape[1] - 1
    t = ((1 - mask) * levels).clamp(0, levels)
    lo = t.detach().floor().clamp(max=levels - 1).long()
    frac = t - lo.to(t.dtype)
    index = lo.unsqueeze(2).expand(-1, -1, pyramid.shape[2], -1, -1)
    below = pyramid.gather(1, index).squeeze(1)
    above = pyramid.gather(1, index + 1).squeeze(1)
    return below + (above - below) * frac


@pytest.mark.parametrize("channels_last", [False, True])
def test_pyramid_blend_matches_plain_autograd_in_value_and_gradients(channels_last):
    from debugger.saliency.perturbation import _level_pairs, _perturb_pairs

    g = torch.Generator().manual_seed(0)
    pyramid = torch.randn(3, 5, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(3, 1, 6, 7, generator=g, dtype=torch.float64)
    mask[0, 0, :2] = 1.0  # the interval ends, where clamp's gradient still passes
    mask[1, 0, :2] = 0.0
    mask.requires_grad_(True)
    ours = _perturb_pairs(_level_pairs(pyramid), mask, channels_last)
    ref = _blend_reference(pyramid, mask)
    assert ours.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    assert torch.allclose(ours, ref, atol=1e-12)
    weights = torch.randn(ours.shape, generator=g, dtype=torch.float64)
    ours_grads = torch.autograd.grad((ours * weights).sum(), [pyramid, mask])
    ref_grads = torch.autograd.grad((ref * weights).sum(), [pyramid, mask])
    for a, b in zip(ours_grads, ref_grads, strict=True):
        assert torch.allclose(a, b, atol=1e-10)
    assert ours_grads[1][0, 0, 0].abs().min() > 0 and ours_grads[1][1, 0, 0].abs().min() > 0


def test_gaussian_blur_does_not_depend_on_the_batch_size():
    x = torch.rand(5, 3, 17, 13, generator=torch.Generator().manual_seed(1))
    together = gaussian_blur(x, 1.7)
    assert torch.equal(together, torch.cat([gaussian_blur(x[i : i + 1], 1.7) for i in range(5)]))


# ------------------------------------------------------------------------------------- mask generator


def test_mask_generator_keeps_full_mask_and_places_bumps():
    gen = SmoothMaskGenerator((20, 24), step=3, sigma=3.0)
    assert gen.lattice_shape == (8, 9)
    assert gen(torch.ones(1, 1, 8, 9)).min() > 0.95
    p = torch.zeros(1, 1, 8, 9)
    p[0, 0, 2, 5] = 1.0
    m = gen(p)[0, 0]
    assert m[6, 15] == pytest.approx(1.0, abs=1e-4)
    assert torch.allclose(m[6, 15 - 3 : 15], m[6, 16 : 16 + 3].flip(0), atol=1e-5)  # symmetric bump
    assert m[6, 0] < 1e-3 and m[19, 15] < 1e-3


def test_mask_generator_with_low_temperature_is_the_hard_max_convolution():
    torch.manual_seed(0)
    step, sigma, size = 2, 2.5, (9, 7)
    gen = SmoothMaskGenerator(size, step, sigma, temperature=1e-3, dtype=torch.float64)
    p = torch.rand(1, 1, *gen.lattice_shape, dtype=torch.float64)
    ours = gen(p)[0, 0]

    def k1(t):
        v = math.exp(-2 * (abs(t) / sigma - 0.5) ** 2) if abs(t) / sigma > 0.5 else 1.0
        return float(v) if float(v) >= 1e-2 else 0.0

    ref = torch.zeros(size, dtype=torch.float64)
    for y in range(size[0]):
        for x in range(size[1]):
            ref[y, x] = max(
                k1(y - i * step) * k1(x - j * step) * float(p[0, 0, i, j])
                for i in range(gen.lattice_shape[0])
                for j in range(gen.lattice_shape[1])
            )
    assert torch.allclose(ours, ref, atol=1e-2)


def test_area_loss_is_distance_of_sorted_mask_to_reference():
    m = torch.tensor([[0.0, 1.0, 0.5, 0.2]])
    # sorted (0, .2, .5, 1) vs reference for a = 0.5: (0, 0, 1, 1)
    assert _area_loss(m, torch.tensor([0.5])).item() == pytest.approx((0.04 + 0.25) / 4)


# ----------------------------------------------------------------------------------- extremal masks


def test_extremal_perturbation_finds_the_evidence_and_meets_the_area():
    x = spot_images()
    res = extremal_perturbation(Energy(), x, 0, areas=[0.05, 0.2], iterations=60)
    assert res.masks.shape == (4, 2, 28, 28) and res.scores.shape == (4, 2)
    point = res.saliency().flatten(1).argmax(1)
    assert all(in_spot(i, int(point[i])) for i in range(4))
    kept = res.masks.flatten(2).mean(2)
    assert torch.allclose(kept, torch.tensor([0.05, 0.2]).expand(4, 2), atol=0.03)
    assert (res.scores >= 0.8 * res.clean_scores.unsqueeze(1)).all()


def test_extremal_perturbation_batched_equals_one_at_a_time_and_chunked():
    # Energy's per-sample arithmetic does not depend on the batch size and neither does any step of the method,
    # so batching reproduces one-at-a-time runs bit for bit, even over many iterations (where the area
    # constraint's ranking would amplify any last-bit difference).
    x = spot_images()
    kw = {"areas": [0.05, 0.1, 0.3], "iterations": 40}
    together = extremal_perturbation(Energy(), x, 0, **kw)
    chunked = extremal_perturbation(Energy(), x, 0, batch_size=4, **kw)
    alone = [extremal_perturbation(Energy(), x[i : i + 1], 0, **kw) for i in range(4)]
    assert torch.equal(together.masks, chunked.masks)
    assert torch.equal(together.masks, torch.cat([r.masks for r in alone]))
    assert torch.equal(together.scores, torch.cat([r.scores for r in alone]))


@pytest.mark.parametrize("variant", ["preserve", "dual"])
def test_extremal_perturbation_on_a_network_batched_and_channels_last_agree(net, images, variant):
    kw = {"areas": (0.1, 0.3), "iterations": 5, "variant": variant}
    together = extremal_perturbation(net, images, TARGETS, **kw)
    alone = [extremal_perturbation(net, images[i : i + 1], TARGETS[i : i + 1], **kw) for i in range(4)]
    last = extremal_perturbation(net, images, TARGETS, channels_last=True, **kw)
    # a convolution's last bits may depend on the batch size and the layout; few iterations keep it small
    assert torch.allclose(together.masks, torch.cat([r.masks for r in alone]), atol=1e-4)
    assert torch.allclose(together.masks, last.masks, atol=1e-4)
    assert torch.allclose(together.scores, last.scores, atol=1e-4)


@pytest.mark.parametrize("variant", ["delete", "dual"])
def test_extremal_deletion_variants_find_the_evidence(variant):
    x = spot_images()
    sal = ExtremalPerturbation(Energy(), areas=(0.05, 0.1), iterations=60, variant=variant).attribute(x, 0)
    point = sal.flatten(1).argmax(1)
    assert all(in_spot(i, int(point[i])) for i in range(4))


def test_extremal_perturbation_per_sample_targets_on_a_network(net, images):
    res = ExtremalPerturbation(net, areas=(0.1, 0.3), iterations=3, batch_size=8).explain(images, TARGETS)
    assert res.masks.shape == (4, 2, 8, 8)
    net.eval()
    assert torch.allclose(res.clean_scores, net(images).gather(1, TARGETS.view(-1, 1)).squeeze(1).detach())


def test_extremal_area_picks_the_smallest_sufficient_area():
    res = ExtremalResult(
        masks=torch.zeros(2, 3, 4, 4),
        areas=torch.tensor([0.1, 0.2, 0.4]),
        scores=torch.tensor([[1.0, 3.0, 5.0], [0.0, 1.0, 2.0]]),
        clean_scores=torch.tensor([2.5, 4.0]),
    )
    a = res.extremal_area()
    assert a[0].item() == pytest.approx(0.2) and torch.isnan(a[1])
    assert res.extremal_area(0.5)[1].item() == pytest.approx(0.4)


def test_extremal_argument_errors():
    x = spot_images()
    with pytest.raises(ValueError, match=r"Expected `areas` to be fractions in \(0, 1\)"):
        extremal_perturbation(Energy(), x, 0, areas=[0.0, 0.5])
    with pytest.raises(ValueError, match="Expected `variant` to be one of"):
        extremal_perturbation(Energy(), x, 0, variant="hybrid")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected `iterations` to be a positive integer"):
        extremal_perturbation(Energy(), x, 0, iterations=0)
    with pytest.raises(ValueError, match="Expected a positive `step`"):
        SmoothMaskGenerator((8, 8), 0, 1.0)


# ------------------------------------------------------------------------------- meaningful perturbation


def test_meaningful_perturbation_deletes_the_evidence():
    x = spot_images()
    sal = meaningful_perturbation(Energy(), x, 0, iterations=40, score="logit", l1=0.05, tv=0.01)
    assert sal.shape == (4, 1, 28, 28) and sal.min() >= 0 and sal.max() <= 1
    point = sal.flatten(1).argmax(1)
    assert all(in_spot(i, int(point[i]), slack=3) for i in range(4))
    # deleting the spot region is cheaper than deleting the background
    assert all(sal[i, 0, SPOTS[i][0] + 2, SPOTS[i][1] + 2] > sal[i].mean() for i in range(4))


def test_meaningful_perturbation_batched_equals_one_at_a_time_with_jitter():
    x = spot_images()
    mp = MeaningfulPerturbation(Energy(), iterations=10, score="logit", jitter=3, seed=5)
    together = mp.attribute(x, 0)
    alone = torch.cat([mp.attribute(x[i : i + 1], 0) for i in range(4)])
    assert torch.allclose(together, alone, atol=1e-5)


@pytest.mark.parametrize("perturbation", ["constant", "fade"])
def test_meaningful_perturbation_other_perturbations_also_delete_the_evidence(perturbation):
    sal = meaningful_perturbation(Energy(), spot_images(), 0, iterations=5, perturbation=perturbation, score="logit")
    assert torch.isfinite(sal).all()
    point = sal.flatten(1).argmax(1)
    assert all(in_spot(i, int(point[i]), slack=3) for i in range(4))
    assert all(sal[i, 0, SPOTS[i][0] + 2, SPOTS[i][1] + 2] > sal[i].mean() + 0.1 for i in range(4))


def test_meaningful_perturbation_argument_errors():
    x = spot_images()
    with pytest.raises(ValueError, match="Expected `iterations` to be a positive integer"):
        meaningful_perturbation(Energy(), x, 0, iterations=0)
    with pytest.raises(ValueError, match="Expected `perturbation` to be one of"):
        meaningful_perturbation(Energy(), x, 0, perturbation="noise")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected `mask_scale` to be a positive integer"):
        meaningful_perturbation(Energy(), x, 0, mask_scale=0)


def test_area_loss_equals_sorted_definition_with_ties_and_gradient():
    g = torch.Generator().manual_seed(0)
    m = torch.rand(6, 1, 5, 5, generator=g)
    m[0, 0, :2] = 1.0  # ties at the top
    m[1] = 0.5  # all tied
    m.requires_grad_(True)
    areas = torch.tensor([0.2, 0.2, 0.4, 0.4, 0.6, 0.04])
    ours = _area_loss(m, areas)
    flat = m.flatten(1)
    n = flat.shape[1]
    keep = (areas * n).round().long()
    ref_target = (torch.arange(n).view(1, -1) >= (n - keep).view(-1, 1)).float()
    ref = ((flat.sort(1).values - ref_target) ** 2).mean(1)
    assert torch.allclose(ours, ref, atol=1e-6)
    (g_ours,) = torch.autograd.grad(ours[2:].sum(), m)  # no ties in these rows: gradients agree exactly
    (g_ref,) = torch.autograd.grad(ref[2:].sum(), m)
    assert torch.allclose(g_ours, g_ref, atol=1e-6)


def _smooth_max_generator_reference(gen: SmoothMaskGenerator, param: torch.Tensor) -> torch.Tensor:
    """The two separable smooth-max passes written out over explicit, replicate-padded neighbourhoods."""
    temperature = gen.temperature

    def upsample_last(t: torch.Tensor, size: int) -> torch.Tensor:
        n = t.shape[-1]
        padded = torch.nn.functional.pad(t.unsqueeze(1), gen.pad, mode="replicate").squeeze(1)
        neigh = torch.stack([padded[:, o : o + n] for o in range(gen.window)])  # (O, M, n)
        values = neigh.unsqueeze(-1) * gen.kernel.t().reshape(gen.window, 1, 1, gen.step)  # (O, M, n, step)
        out = (values * torch.softmax(values / temperature, 0)).sum(0)
        return out.reshape(t.shape[0], n * gen.step)[:, :size]

    b = param.shape[0]
    (hb, wb), (h, w) = gen.lattice_shape, gen.size
    cols = param[:, 0].transpose(1, 2).reshape(b * wb, hb)
    rows = upsample_last(cols, h).view(b, wb, h).transpose(1, 2).reshape(b * h, wb)
    return upsample_last(rows, w).view(b, 1, h, w)


@pytest.mark.parametrize(("size", "step", "sigma"), [((9, 7), 2, 2.5), ((12, 13), 3, 2.0), ((6, 6), 1, 1.5)])
def test_mask_generator_closed_form_gradient_matches_autograd(size, step, sigma):
    gen = SmoothMaskGenerator(size, step, sigma, temperature=0.1, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    param = torch.rand(3, 1, *gen.lattice_shape, generator=g, dtype=torch.float64, requires_grad=True)
    ref = _smooth_max_generator_reference(gen, param)
    assert torch.allclose(gen(param), ref, atol=1e-12)
    assert torch.autograd.gradcheck(gen, (param,))
    weights = torch.randn(ref.shape, generator=g, dtype=torch.float64)
    (ours,) = torch.autograd.grad((gen(param) * weights).sum(), param)
    (theirs,) = torch.autograd.grad((ref * weights).sum(), param)
    assert torch.allclose(ours, theirs, atol=1e-10)


def test_mask_generator_rejects_a_wrong_lattice():
    gen = SmoothMaskGenerator((8, 8), step=2, sigma=2.0)
    with pytest.raises(ValueError, match=r"Expected the lattice parameters to have shape \(N, 1, 5, 5\)"):
        gen(torch.ones(1, 1, 4, 5))


def test_monotonicity_is_checked_up_to_the_extremal_area():
    res = ExtremalResult(
        masks=torch.zeros(3, 3, 2, 2),
        areas=torch.tensor([0.4, 0.1, 0.2]),  # unsorted on purpose
        scores=torch.tensor([[5.0, 1.0, 3.0], [3.0, 2.0, 1.0], [0.5, 1.0, 2.0]]),
        clean_scores=torch.tensor([3.0, 2.5, 10.0]),
    )
    # image 0: 1 -> 3 (a* = 0.2) -> 5: monotone; image 1: 2 -> 1 -> 3 (a* = 0.4): a drop before a*;
    # image 2: no a*, 1 -> 2 -> 0.5 drops: not monotone
    assert res.is_monotone().tolist() == [True, False, False]
    assert res.is_monotone(tolerance=1.5).tolist() == [True, True, True]
