"""Meta-saliency: saliency at the weights after one virtual SGD step, the real weights untouched."""

import copy

import pytest
import torch
from torch import nn

from debugger.saliency import GradCAM, gradient
from debugger.saliency.meta import MetaSaliency, SteppedModel, meta_saliency, stepped_parameters


def linear_net() -> nn.Sequential:
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor([[1.0, 0.0, -1.0, 2.0], [0.5, 0.5, 0.0, -1.0], [0.0, 1.0, 1.0, 0.0]]))
        net[1].bias.copy_(torch.tensor([0.1, -0.2, 0.0]))
    return net


def test_gradient_at_the_stepped_weights_of_a_linear_model_is_exact():
    net = linear_net()
    x = torch.tensor([[[[1.0, 2.0], [0.5, -1.0]]]])
    c, lr = 2, 0.3
    w = net[1].weight.detach()
    p = torch.softmax(net(x), 1)[0]
    # d CE / d W[c] = (p_c − 1) x, so the gradient of logit c at W' is W[c] − lr (p_c − 1) x
    want = w[c] - lr * (p[c] - 1.0) * x.flatten()
    got = meta_saliency(net, x, c, gradient, lr=lr)
    assert torch.allclose(got.flatten(), want, atol=1e-6)
    away = meta_saliency(net, x, c, gradient, lr=lr, ascent=True)
    assert torch.allclose(away.flatten(), w[c] + lr * (p[c] - 1.0) * x.flatten(), atol=1e-6)
    assert not torch.allclose(got, gradient(net, x, c))


def test_parameters_grads_modes_and_optimizer_state_stay_bit_identical():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 3)).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(4, 3, 6, 6)).sum().backward()
    optimizer.step()
    params = copy.deepcopy({n: p.detach() for n, p in net.named_parameters()})
    grads = copy.deepcopy({n: p.grad for n, p in net.named_parameters()})
    buffers = copy.deepcopy({n: b for n, b in net.named_buffers()})
    state = copy.deepcopy(optimizer.state_dict())
    maps = MetaSaliency(net, lambda m, x, t: GradCAM(m, "2").attribute(x, t), lr=0.5).attribute(
        torch.randn(3, 3, 6, 6), "predicted")
    assert maps.shape == (3, 1, 6, 6)
    assert all(torch.equal(p, params[n]) for n, p in net.named_parameters())
    assert all(torch.equal(p.grad, grads[n]) for n, p in net.named_parameters())
    assert all(torch.equal(b, buffers[n]) for n, b in net.named_buffers())
    assert all(m.training for m in net.modules())
    after = optimizer.state_dict()
    for k, v in state["state"].items():
        assert torch.equal(after["state"][k]["momentum_buffer"], v["momentum_buffer"])
    assert all(not m._forward_hooks for m in net.modules())


def test_layer_methods_hook_the_same_names_and_match_plain_saliency_for_a_tiny_step():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 3))
    x = torch.randn(2, 3, 5, 5)
    plain = GradCAM(net, "1").attribute(x, 1)
    tiny = meta_saliency(net, x, 1, lambda m, xx, t: GradCAM(m, "1").attribute(xx, t), lr=1e-6)
    big = meta_saliency(net, x, 1, lambda m, xx, t: GradCAM(m, "1").attribute(xx, t), lr=5.0)
    assert torch.allclose(tiny, plain, atol=1e-4 * float(plain.abs().max()))
    assert not torch.allclose(big, plain, atol=1e-3 * float(plain.abs().max()))


def test_each_example_gets_its_own_step():
    net = linear_net()
    x = torch.randn(3, 1, 2, 2, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 2, 1])
    batch = meta_saliency(net, x, t, gradient, lr=0.5)
    alone = torch.cat([meta_saliency(net, x[i:i + 1], int(t[i]), gradient, lr=0.5) for i in range(3)])
    assert torch.allclose(batch, alone, atol=1e-6)


def test_frozen_parameters_are_not_stepped_and_stepped_model_shares_submodules():
    net = linear_net()
    net[1].bias.requires_grad_(False)
    stepped = stepped_parameters(net, torch.ones(1, 1, 2, 2), 0, lr=1.0)
    assert torch.equal(stepped["1.bias"], net[1].bias)
    assert not torch.equal(stepped["1.weight"], net[1].weight)
    wrapped = SteppedModel(net, stepped)
    assert wrapped.get_submodule("1") is net[1]
    assert torch.allclose(wrapped(torch.ones(1, 1, 2, 2)), torch.ones(1, 4) @ stepped["1.weight"].T + net[1].bias)


def test_runs_inside_inference_mode():
    net = linear_net()
    with torch.inference_mode():
        x = torch.randn(2, 1, 2, 2)
        out = meta_saliency(net, x, 0, gradient)
    assert out.shape == (2, 1, 2, 2)


def test_a_non_positive_step_is_refused():
    with pytest.raises(ValueError, match="Expected `lr` to be a positive number"):
        stepped_parameters(linear_net(), torch.ones(1, 1, 2, 2), 0, lr=0.0)
    with pytest.raises(ValueError, match="Expected `lr` to be a positive number"):
        MetaSaliency(linear_net(), gradient, lr=-1)
