"""Every method must be safe to call from a Lightning validation hook on a model that is training."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import debugger.saliency as saliency
from debugger.saliency import (
    ConvNormGrad,
    ExtremalPerturbation,
    GradCAM,
    Gradient,
    GradientXInput,
    IntegratedGradients,
    LayerCombination,
    LinearApproximation,
    MeaningfulPerturbation,
    MetaSaliency,
    NormGrad,
    Occlusion,
    SelectiveNormGrad,
    SmoothGrad,
    gradient,
)

TARGETS = torch.tensor([0, 3, 1, 4])


def methods(net):
    """Every attribution object of the package, cheaply configured (the registry the contract tests run over)."""
    return [
        Gradient(net),
        GradientXInput(net),
        SmoothGrad(net, samples=2),
        IntegratedGradients(net, steps=3),
        GradCAM(net, "act"),
        NormGrad(net, "relu"),
        SelectiveNormGrad(net, "layer1"),
        LayerCombination(net, ["relu", "act"]),
        ConvNormGrad(net, "layer1"),
        LinearApproximation(net, "stem"),
        Occlusion(net, window=4, stride=4),
        MeaningfulPerturbation(net, iterations=2),
        ExtremalPerturbation(net, areas=(0.2,), iterations=2),
        MetaSaliency(net, gradient),
    ]


N_METHODS = 14


def test_registry_lists_every_attribution_object(net):
    exported = {name for name in saliency.__all__ if hasattr(getattr(saliency, name), "attribute")}
    listed = {type(m).__name__ for m in methods(net)}
    assert len(methods(net)) == N_METHODS
    assert exported == listed, f"add {sorted(exported - listed)} to methods() in this file"


def all_hooks(net):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in net.modules())


@pytest.mark.parametrize("index", range(N_METHODS))
def test_training_flags_param_grads_and_hooks_are_untouched(net, images, index):
    net.train()
    net.bn.eval()  # a deliberately frozen submodule must stay frozen
    sentinel = {n: torch.full_like(p, 0.5) for n, p in net.named_parameters()}
    for n, p in net.named_parameters():
        p.grad = sentinel[n].clone()
    stats = net.bn.running_mean.clone()
    out = methods(net)[index].attribute(images, TARGETS)
    assert net.training and net.stem.training and not net.bn.training
    for n, p in net.named_parameters():
        assert torch.equal(p.grad, sentinel[n])
    assert torch.equal(net.bn.running_mean, stats)
    assert all_hooks(net) == 0
    assert not out.requires_grad and out.grad_fn is None


@pytest.mark.parametrize("index", range(N_METHODS))
def test_runs_inside_inference_mode_on_inference_tensors(net, images, index):
    with torch.inference_mode():
        x = images.clone()  # inference tensors, as Lightning's validation batches are
        y = TARGETS.clone()
        method = methods(net)[index]
        out = method.attribute(x, y)
    assert out.shape[0] == 4 and out.shape[-2:] in ((8, 8), (4, 4)) and out.device == x.device
    assert torch.isfinite(out).all()
    if not isinstance(method, MeaningfulPerturbation):
        # (the deletion game may legitimately keep the whole mask when blurring raises the class score)
        assert out.abs().sum() > 0


def test_eval_mode_makes_maps_deterministic_despite_dropout(net, images):
    net.train()
    a = NormGrad(net, "act").attribute(images, TARGETS)
    b = NormGrad(net, "act").attribute(images, TARGETS)
    assert torch.equal(a, b)


def test_frozen_model_still_gets_layer_maps(net, images):
    for p in net.parameters():
        p.requires_grad_(False)
    out = GradCAM(net, "act").attribute(images, TARGETS)
    assert out.abs().sum() > 0
    assert all(not p.requires_grad for p in net.parameters())


class Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3)

    def forward(self, x):
        self.conv(x)
        raise RuntimeError("boom")


def test_hooks_removed_and_mode_restored_when_forward_raises():
    model = Boom().train()
    with pytest.raises(RuntimeError, match="boom"):
        NormGrad(model, "conv").attribute(torch.randn(1, 3, 5, 5), 0)
    assert all_hooks(model) == 0
    assert model.training


def test_layer_not_run_in_forward_is_reported():
    model = nn.Module()
    model.body = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten(), nn.Linear(18, 2))
    model.unused = nn.Conv2d(3, 3, 1)
    model.forward = model.body.forward
    with pytest.raises(ValueError, match="to run in the forward pass"):
        NormGrad(model, "unused").attribute(torch.randn(1, 3, 5, 5), 0)


def test_region_and_pixel_targets_made_in_inference_mode(seg):
    from debugger.saliency.targets import PixelTarget, RegionTarget

    x = torch.randn(2, 3, 6, 6)
    with torch.inference_mode():
        classes = torch.randint(0, 3, (2, 6, 6))
        mask = torch.ones(2, 6, 6, dtype=torch.bool)
        index = torch.tensor([1, 2])
        a = Gradient(seg).attribute(x, RegionTarget(index, mask))
        b = NormGrad(seg, "act").attribute(x, PixelTarget(classes))
    assert a.abs().sum() > 0 and b.abs().sum() > 0
