from __future__ import annotations

import pytest
import torch

from debugger.saliency.cam import GradCAM, NormGrad
from debugger.saliency.gradient import gradient
from debugger.saliency.targets import ClassTarget, PixelTarget, RegionTarget, resolve_target


def test_class_target_scores():
    out = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    assert ClassTarget(torch.tensor([1, 0]))(out).tolist() == [3.0, 2.0]
    assert torch.allclose(ClassTarget(1, score="log_softmax")(out), torch.log_softmax(out, 1)[:, 1])
    assert torch.allclose(ClassTarget(0, score="softmax")(out), torch.softmax(out, 1)[:, 0])


def test_class_target_errors():
    with pytest.raises(ValueError, match="Expected `score` to be one of"):
        ClassTarget(0, score="prob")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Expected `index` to lie in \[0, 2\)"):
        ClassTarget(2)(torch.zeros(1, 2))
    with pytest.raises(ValueError, match=r"Expected `index` to have shape \(3,\)"):
        ClassTarget(torch.tensor([0, 1]))(torch.zeros(3, 2))


def test_class_target_on_segmentation_is_mean_over_pixels():
    out = torch.arange(12.0).view(1, 3, 2, 2)
    assert ClassTarget(2)(out).item() == pytest.approx(9.5)


def test_region_target_with_mask_and_predicted_region():
    out = torch.zeros(2, 3, 2, 2)
    out[0, 1, 0, 0] = 6.0
    out[1, 2] = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    mask = torch.tensor([[True, False], [True, False]])
    assert RegionTarget(torch.tensor([1, 2]), mask)(out).tolist() == pytest.approx([3.0, 2.0])
    # no mask: the pixels predicted as that class (sample 0: one pixel; sample 1: all four)
    assert RegionTarget(torch.tensor([1, 2]))(out).tolist() == pytest.approx([6.0, 2.5])
    with pytest.raises(ValueError, match="Expected a segmentation output"):
        RegionTarget(0)(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="Expected `mask` of shape"):
        RegionTarget(0, torch.ones(3, 3, dtype=torch.bool))(out)


def test_pixel_target_and_predicted_for_segmentation():
    out = torch.randn(2, 3, 4, 4)
    cls = out.argmax(1)
    expected = out.max(1).values.flatten(1).mean(1)
    assert torch.allclose(PixelTarget(cls)(out), expected)
    assert torch.allclose(resolve_target("predicted", out)(out), expected)
    assert torch.allclose(resolve_target(cls, out)(out), expected)
    with pytest.raises(ValueError, match="Expected `classes` of shape"):
        PixelTarget(cls[:, :2])(out)


def test_resolve_target_errors():
    with pytest.raises(ValueError, match="Expected `target` to be 'predicted'"):
        resolve_target("top", torch.zeros(1, 2))
    with pytest.raises(ValueError, match="Expected `target` to be a class index"):
        resolve_target(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="Expected `target` to be an int"):
        resolve_target(1.5, torch.zeros(1, 2))  # type: ignore[arg-type]


def test_callable_target_must_return_one_score_per_sample(net, images):
    with pytest.raises(ValueError, match="one score per sample"):
        gradient(net, images, lambda out: out.sum())


def test_predicted_equals_explicit_argmax(net, images):
    net.eval()
    pred = net(images).argmax(1)
    assert torch.equal(GradCAM(net, "act").attribute(images, "predicted"), GradCAM(net, "act").attribute(images, pred))


def test_segmentation_region_maps_depend_on_the_region(seg):
    x = torch.randn(1, 3, 6, 6)
    left = torch.zeros(6, 6, dtype=torch.bool)
    left[:, :3] = True
    g = gradient(seg, x, RegionTarget(1, left)).abs().sum(1)[0]
    # a 3x3 conv followed by a 1x1 head: the region's gradient cannot reach columns >= 4
    assert g[:, :4].sum() > 0 and g[:, 4:].sum() == 0
    m = NormGrad(seg, "act").attribute(x, RegionTarget(1, left))
    assert m[0, 0, :, 3:].sum() == 0 and m[0, 0, :, :3].sum() > 0


def test_perturbation_methods_explain_a_segmentation_region(seg):
    from debugger.saliency.extremal import extremal_perturbation
    from debugger.saliency.perturbation import occlusion

    x = torch.randn(2, 3, 8, 8)
    left = torch.zeros(8, 8, dtype=torch.bool)
    left[:, :3] = True
    occ = occlusion(seg, x, RegionTarget(torch.tensor([0, 1]), left), window=2, stride=2)
    # a 3x3 conv and a 1x1 head: occluding columns >= 6 cannot change the left region's score (up to the last bits:
    # the occluded copies run in a larger batch than the clean images)
    signal = occ[:, :, :, :4].abs().max()
    assert signal > 0 and occ[:, :, :, 6:].abs().max() <= 1e-4 * signal
    res = extremal_perturbation(seg, x, PixelTarget(torch.zeros(2, 8, 8, dtype=torch.long)), areas=[0.3], iterations=3)
    assert res.masks.shape == (2, 1, 8, 8) and torch.isfinite(res.scores).all()
    # the clean score is the class-0 logit averaged over every pixel of each image
    with torch.no_grad():
        torch.testing.assert_close(res.clean_scores, seg(x)[:, 0].mean((1, 2)), atol=1e-5, rtol=1e-5)
