from __future__ import annotations

import pytest
import torch
from torch import nn

from debugger.saliency.cam import GradCAM, NormGrad
from debugger.saliency.evaluation import PointingGame, center_baseline, pointing_game
from debugger.saliency.gradient import Gradient
from debugger.saliency.sanity import cascading_randomization, class_sensitivity, parameter_layers, spearman


def linear_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 4, (3, 1, 5, 5), generator=g).float()  # many ties
    b = torch.randn(3, 1, 5, 5, generator=g)
    ours = spearman(a, b)
    for i in range(3):
        ref = stats.spearmanr(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert ours[i].item() == pytest.approx(ref, abs=1e-12)


def test_spearman_of_identical_and_reversed_maps():
    a = torch.randn(2, 10)
    assert torch.allclose(spearman(a, a), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(spearman(a, -a), -torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match="Expected `a` and `b`"):
        spearman(a, a[:, :5])


def test_parameter_layers_go_from_output_to_input(net):
    assert parameter_layers(net) == ["fc", "bn", "layer1", "stem"]


def test_cascading_randomization_of_a_linear_model_is_exact_and_leaves_model_alone():
    net = linear_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(2, 1, 3, 4)
    out = cascading_randomization(lambda m: Gradient(m).attribute, net, x, torch.tensor([0, 2]),
                                  generator=torch.Generator().manual_seed(4))
    assert list(out) == ["1"]
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    # the gradient of a linear model is its weight row: the expected correlation is between old and new rows
    w = net[1].weight.detach()
    g = torch.Generator().manual_seed(4)
    new_w = torch.randn(w.shape, generator=g) * w.std() + w.mean()
    expected = spearman(w[[0, 2]], new_w[[0, 2]])
    assert torch.allclose(out["1"], expected)


def test_cascading_randomization_changes_gradcam_maps_and_is_reproducible(net, images):
    def make(m):
        return GradCAM(m, "layer1").attribute

    a = cascading_randomization(make, net, images, "predicted", generator=torch.Generator().manual_seed(1))
    b = cascading_randomization(make, net, images, "predicted", generator=torch.Generator().manual_seed(1))
    assert list(a) == ["fc", "bn", "layer1", "stem"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["stem"].nanmean() < 0.9


def test_cascading_randomization_errors(net, images):
    with pytest.raises(ValueError, match="Expected at least one layer"):
        cascading_randomization(lambda m: Gradient(m).attribute, net, images, 0, layers=[])
    with pytest.raises(ValueError, match="unknown names"):
        cascading_randomization(lambda m: Gradient(m).attribute, net, images, 0, layers=["head"])


def test_class_sensitivity_of_linear_gradient_is_row_correlation():
    net = linear_net()
    x = torch.randn(4, 1, 3, 4)
    logits = net(x)
    top, bottom = logits.argmax(1), logits.argmin(1)
    w = net[1].weight.detach()
    expected = spearman(w[top], w[bottom])
    assert torch.allclose(class_sensitivity(Gradient(net).attribute, net, x), expected)


def test_class_sensitivity_needs_a_classifier(seg):
    with pytest.raises(ValueError, match="Expected a classifier's"):
        class_sensitivity(NormGrad(seg, "act").attribute, seg, torch.randn(1, 3, 4, 4))


def test_pointing_game_tolerance_resize_and_empty_masks():
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, 0, 0] = True
    masks[1, 4:, 4:] = True
    maps = torch.zeros(3, 1, 8, 8)
    maps[0, 0, 2, 2] = 1.0  # 2.83 px from the mask pixel
    maps[1, 0, 5, 5] = 1.0
    out = pointing_game(maps, masks)
    assert out[:2].tolist() == [0.0, 1.0] and torch.isnan(out[2])
    assert pointing_game(maps, masks, tolerance=3.0)[0].item() == 1.0
    assert pointing_game(maps, masks, tolerance=2.5)[0].item() == 0.0
    small = torch.zeros(3, 1, 2, 2)
    small[:, 0, 1, 1] = 1.0  # bottom-right quadrant after upsampling
    assert pointing_game(small, masks)[1].item() == 1.0
    with pytest.raises(ValueError, match="Expected `maps` of shape"):
        pointing_game(maps[:2], masks)
    with pytest.raises(ValueError, match="Expected `masks` to be"):
        pointing_game(maps, masks[0])


def test_center_baseline_and_metric():
    masks = torch.zeros(2, 9, 9, dtype=torch.bool)
    masks[0, 3:6, 3:6] = True
    masks[1, 0:2, 0:2] = True
    assert center_baseline(masks).tolist() == [1.0, 0.0]
    metric = PointingGame()
    maps = torch.zeros(2, 1, 9, 9)
    maps[:, 0, 0, 0] = 1.0
    metric.update(maps, masks)
    metric.update(maps, torch.zeros(2, 9, 9, dtype=torch.bool))  # empty masks are not scored
    assert float(metric.compute()) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="Expected `tolerance` to be non-negative"):
        PointingGame(tolerance=-1)


def test_cascading_randomization_accepts_blocks(net, images):
    block = nn.Sequential()
    block.add_module("body", net)
    out = cascading_randomization(lambda m: Gradient(m).attribute, block, images, TARGETS_4, layers=["body"])
    assert list(out) == ["body"] and out["body"].shape == (4,)
    assert out["body"].mean() < 0.9


TARGETS_4 = torch.tensor([0, 3, 1, 4])


def test_cascading_randomization_under_inference_mode_matches_outside(net, images):
    # A Lightning validation hook runs under torch.inference_mode(); the copies and re-drawn weights must still
    # enter the attribution's backward pass.
    make = lambda m: GradCAM(m, "layer1").attribute  # noqa: E731
    outside = cascading_randomization(make, net, images, "predicted", generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        inside = cascading_randomization(make, net, images.clone(), "predicted",
                                         generator=torch.Generator().manual_seed(1))
    assert list(inside) == list(outside)
    for name in outside:
        torch.testing.assert_close(inside[name], outside[name], atol=1e-5, rtol=1e-4)
