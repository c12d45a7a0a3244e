from __future__ import annotations

import pytest
import torch
from torch import nn

from debugger.saliency.gradient import (
    Gradient,
    IntegratedGradients,
    SmoothGrad,
    gradient,
    gradient_x_input,
    integrated_gradients,
    integration_rule,
    reduce_channels,
    smoothgrad,
)

TARGETS = torch.tensor([0, 3, 1, 4])


def linear_net() -> nn.Module:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2, bias=True))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, -2.0, 0.5, 0.0], [0.0, 1.0, 1.0, 3.0]]))
        net[1].bias.copy_(torch.tensor([0.5, -1.0]))
    return net


def test_gradient_of_linear_model_is_its_weight_row():
    x = torch.randn(2, 1, 2, 2)
    g = gradient(linear_net(), x, torch.tensor([0, 1]))
    assert torch.equal(g[0].flatten(), torch.tensor([1.0, -2.0, 0.5, 0.0]))
    assert torch.equal(g[1].flatten(), torch.tensor([0.0, 1.0, 1.0, 3.0]))


def test_gradient_x_input_exact_on_linear_model():
    x = torch.tensor([[[[2.0, 1.0], [4.0, -1.0]]]])
    out = gradient_x_input(linear_net(), x, 0)
    assert torch.equal(out.flatten(), torch.tensor([2.0, -2.0, 2.0, -0.0]))


def test_integrated_gradients_on_linear_model_is_exact_and_complete():
    x = torch.randn(3, 1, 2, 2)
    net = linear_net()
    ig = integrated_gradients(net, x, 1, steps=4, rule="riemann_trapezoid")
    w = net[1].weight[1].detach().view(1, 1, 2, 2)
    assert torch.allclose(ig, w * x, atol=1e-6)
    # completeness: sum of attributions = f(x) - f(0)
    assert torch.allclose(ig.flatten(1).sum(1), (net(x) - net(torch.zeros_like(x)))[:, 1].detach(), atol=1e-5)


def test_reduce_channels_options():
    a = torch.tensor([1.0, -3.0, 2.0]).view(1, 3, 1, 1)
    assert reduce_channels(a, "max_abs").item() == 3.0
    assert reduce_channels(a, "abs_sum").item() == 6.0
    assert reduce_channels(a, "sum").item() == 0.0
    assert reduce_channels(a, "l2").item() == pytest.approx(14**0.5)
    with pytest.raises(ValueError, match="Expected `how` to be one of"):
        reduce_channels(a, "mean")  # type: ignore[arg-type]


RULES = ["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]


@pytest.mark.parametrize("rule", RULES)
def test_integration_rules_integrate_a_cubic_closely(rule):
    a, w = integration_rule(64, rule)
    assert float((w * a**3).sum()) == pytest.approx(0.25, abs=1e-2)
    assert float(w.sum()) == pytest.approx(1.0)


def test_integration_rule_rejects_bad_arguments():
    with pytest.raises(ValueError, match="Expected `steps` to be at least 2"):
        integration_rule(1)
    with pytest.raises(ValueError, match="Expected `rule` to be one of"):
        integration_rule(8, "simpson")  # type: ignore[arg-type]


def test_gradient_matches_captum(net, images):
    captum = pytest.importorskip("captum.attr")
    ours = Gradient(net).attribute(images, TARGETS)
    net.eval()
    theirs = captum.Saliency(net).attribute(images, target=TARGETS, abs=False)
    assert torch.allclose(ours, theirs, atol=1e-5)


@pytest.mark.parametrize("rule", ["gausslegendre", "riemann_middle", "riemann_right"])
def test_integrated_gradients_matches_captum(net, images, rule):
    captum = pytest.importorskip("captum.attr")
    baseline = torch.full_like(images, 0.3)
    ours = IntegratedGradients(net, steps=12, rule=rule, batch_size=8).attribute(images, TARGETS, baseline)
    net.eval()
    theirs = captum.IntegratedGradients(net).attribute(images, baseline, target=TARGETS, n_steps=12, method=rule)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_integrated_gradients_chunking_does_not_change_the_result(net, images):
    whole = integrated_gradients(net, images, "predicted", steps=10)
    chunked = integrated_gradients(net, images, "predicted", steps=10, batch_size=4)
    assert torch.allclose(whole, chunked, atol=1e-6)


def test_smoothgrad_with_zero_noise_is_the_gradient(net, images):
    sg = smoothgrad(net, images, TARGETS, samples=3, noise_level=0.0)
    assert torch.allclose(sg, gradient(net, images, TARGETS), atol=1e-6)


def test_smoothgrad_is_reproducible_by_seed_and_chunking(net, images):
    a = SmoothGrad(net, samples=6, seed=7).attribute(images, TARGETS)
    b = SmoothGrad(net, samples=6, seed=7, batch_size=8).attribute(images, TARGETS)
    c = SmoothGrad(net, samples=6, seed=8).attribute(images, TARGETS)
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, c)


def test_smoothgrad_equals_mean_captum_gradient_over_the_same_noisy_copies(net, images):
    captum = pytest.importorskip("captum.attr")
    # With the noise drawn by the same generator, SmoothGrad = mean of captum gradients on the noisy copies.
    gen = torch.Generator().manual_seed(0)
    ours = smoothgrad(net, images, TARGETS, samples=4, noise_level=0.1, generator=gen)
    noise = torch.randn((4, *images.shape), generator=torch.Generator().manual_seed(0))
    span = (images.flatten(1).amax(1) - images.flatten(1).amin(1)).view(-1, 1, 1, 1)
    net.eval()
    sal = captum.Saliency(net)
    theirs = torch.stack([sal.attribute(images + n * 0.1 * span, target=TARGETS, abs=False) for n in noise]).mean(0)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_smoothgrad_rejects_bad_arguments(net, images):
    with pytest.raises(ValueError, match="Expected `samples` to be a positive integer"):
        smoothgrad(net, images, 0, samples=0)
    with pytest.raises(ValueError, match="Expected `noise_level` to be non-negative"):
        smoothgrad(net, images, 0, noise_level=-1.0)


def test_inputs_must_be_image_batches(net):
    with pytest.raises(ValueError, match="Expected `inputs` to be a float tensor of shape"):
        gradient(net, torch.zeros(3, 8, 8), 0)
