from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from debugger.saliency.cam import (
    ConvNormGrad,
    GradCAM,
    LayerCombination,
    LinearApproximation,
    NormGrad,
    SelectiveNormGrad,
    combine_maps,
    feature_spread_weights,
    layer_saliency,
    normgrad_from,
)

TARGETS = torch.tensor([0, 3, 1, 4])


class HandSet(nn.Module):
    """x (1,1,1,2) → 1×1 conv with weights (1, 2) → flatten → fc with weights (1, 0, -1, 2).

    For x = (2, 3): activation a = [[2, 3], [4, 6]] (channel, location); gradient g = [[1, 0], [-1, 2]].
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 1, bias=False)
        self.fc = nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0, -1.0, 2.0]]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).flatten(1))


X = torch.tensor([2.0, 3.0]).view(1, 1, 1, 2)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("normgrad", [math.sqrt(2) * math.sqrt(20), 2 * math.sqrt(45)]),
        ("selective_normgrad", [2.0, 12.0]),
        ("linear_approximation", [-2.0, 12.0]),
        ("gradcam", [3.0, 4.5]),
        ("gradient", [1.0, 2.0]),
    ],
)
def test_exact_values_on_hand_set_model(method, expected):
    m = layer_saliency(HandSet(), X, 0, "conv", method)["conv"]
    assert m.shape == (1, 1, 1, 2)
    assert m.flatten().tolist() == pytest.approx(expected, rel=1e-6)


def test_conv_normgrad_equals_frobenius_norm_of_unfolded_outer_product(net, images):
    maps = layer_saliency(net, images, TARGETS, "layer1", "conv_normgrad")["layer1"]
    # reference: materialise g_u x_{u,3x3}^T per location and take its Frobenius norm
    net.eval()
    acts = {}
    h1 = net.layer1.register_forward_hook(lambda m, i, o: acts.update(inp=i[0], out=o))
    out = net(images)
    h1.remove()
    (g,) = torch.autograd.grad(out.gather(1, TARGETS.view(-1, 1)).sum(), acts["out"])
    cols = F.unfold(acts["inp"].detach(), 3, padding=1, stride=2)  # (B, 9K, L)
    gg = g.flatten(2)  # (B, K', L)
    outer = torch.einsum("bkl,bjl->blkj", gg, cols)
    ref = outer.flatten(2).norm(dim=2).view_as(maps)
    assert torch.allclose(maps, ref, atol=1e-5)
    assert torch.allclose(ConvNormGrad(net, "layer1").attribute(images, TARGETS), ref, atol=1e-5)


def test_conv_normgrad_needs_a_conv_layer(net, images):
    with pytest.raises(ValueError, match="to be an nn.Conv2d"):
        layer_saliency(net, images, 0, "act", "conv_normgrad")


@pytest.mark.parametrize("layer", ["stem", "relu", "layer1", "bn", "act"])
def test_gradcam_matches_captum_at_every_layer(net, images, layer):
    captum = pytest.importorskip("captum.attr")
    ours = GradCAM(net, layer).attribute(images, TARGETS)
    net.eval()
    module = dict(net.named_modules())[layer]
    theirs = captum.LayerGradCam(net, module).attribute(images, target=TARGETS, relu_attributions=True)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_gradcam_upsampled_matches_captum_interpolation(net, images):
    captum = pytest.importorskip("captum.attr")
    ours = GradCAM(net, "layer1", upsample=True).attribute(images, TARGETS)
    net.eval()
    cam = captum.LayerGradCam(net, net.layer1).attribute(images, target=TARGETS, relu_attributions=True)
    theirs = captum.LayerAttribution.interpolate(cam, (8, 8), interpolate_mode="bilinear")
    assert ours.shape == (4, 1, 8, 8)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_linear_approximation_at_input_layer_equals_gradient_times_input_summed(net, images):
    captum = pytest.importorskip("captum.attr")
    ours = LinearApproximation(net, "stem").attribute(images, TARGETS)
    net.eval()
    theirs = captum.LayerGradientXActivation(net, net.stem).attribute(images, target=TARGETS).sum(1, keepdim=True)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_normgrad_and_selective_are_nonnegative_and_differ(net, images):
    a = NormGrad(net, "act").attribute(images, TARGETS)
    b = SelectiveNormGrad(net, "act").attribute(images, TARGETS)
    assert (a >= 0).all() and (b >= 0).all()
    assert not torch.allclose(a, b)


def test_normgrad_from_is_norm_product_and_rejects_mismatch():
    x = torch.randn(2, 3, 4, 4)
    g = torch.randn(2, 3, 4, 4)
    assert torch.allclose(normgrad_from(x, g), x.norm(dim=1, keepdim=True) * g.norm(dim=1, keepdim=True))
    with pytest.raises(ValueError, match="Expected `activation` and `grad`"):
        normgrad_from(x, g[:, :2])


def test_normgrad_from_reproduces_layer_method_from_a_training_style_backward(net, images):
    # The augment use-case: activation and loss gradient from one's own backward pass.
    net.eval()
    store = {}
    h = net.act.register_forward_hook(lambda m, i, o: store.update(a=o))
    logits = net(images)
    h.remove()
    loss = F.cross_entropy(logits, TARGETS, reduction="sum")
    (g,) = torch.autograd.grad(loss, store["a"])
    from debugger.saliency.targets import ClassTarget

    ours = NormGrad(net, "act").attribute(images, ClassTarget(TARGETS, score="log_softmax"))
    assert torch.allclose(normgrad_from(store["a"].detach(), g), ours, atol=1e-6)


def test_one_pass_gives_maps_at_several_layers_equal_to_separate_passes(net, images):
    both = layer_saliency(net, images, TARGETS, ["relu", "act"], "normgrad")
    assert torch.allclose(both["relu"], NormGrad(net, "relu").attribute(images, TARGETS))
    assert torch.allclose(both["act"], NormGrad(net, "act").attribute(images, TARGETS))


def test_layer_saliency_errors(net, images):
    with pytest.raises(ValueError, match="Expected `method` to be one of"):
        layer_saliency(net, images, 0, "act", "cam")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Nearest valid names"):
        layer_saliency(net, images, 0, "layer9", "normgrad")
    with pytest.raises(ValueError, match=r"to output \(B, K, h, w\)"):
        layer_saliency(net, images, 0, "fc", "normgrad")
    with pytest.raises(ValueError, match="Expected at least one layer name"):
        layer_saliency(net, images, 0, [], "normgrad")


def test_combine_maps_sum_and_product():
    a = torch.tensor([[[[0.0, 2.0, 4.0]]]])
    b = torch.tensor([[[[1.0, 0.0, 1.0]]]])
    assert combine_maps([a, b], [1.0, 1.0]).flatten().tolist() == pytest.approx([0.5, 0.25, 1.0])
    assert combine_maps([a, b], [1.0, 1.0], mode="product").flatten().tolist() == pytest.approx([0.0, 0.0, 1.0])
    with pytest.raises(ValueError, match="non-negative weights"):
        combine_maps([a, b], [1.0])
    with pytest.raises(ValueError, match="Expected `mode`"):
        combine_maps([a], mode="max")  # type: ignore[arg-type]


def test_combine_maps_resizes_to_largest():
    small = torch.rand(2, 1, 2, 2)
    large = torch.rand(2, 1, 4, 4)
    assert combine_maps([small, large]).shape == (2, 1, 4, 4)


def test_layer_combination_linear_weights(net, images):
    combo = LayerCombination(net, ["relu", "act"], "normgrad", weights="linear").attribute(images, TARGETS)
    maps = layer_saliency(net, images, TARGETS, ["relu", "act"], "normgrad")
    expected = combine_maps([maps["relu"], maps["act"]], [0.5, 1.0], size=(8, 8))
    assert torch.allclose(combo, expected)
    with pytest.raises(ValueError, match="Expected `weights`"):
        LayerCombination(net, ["relu"], weights="spread").attribute(images, TARGETS)  # type: ignore[arg-type]


def test_feature_spread_weights_prefer_spread_out_layers():
    flat = torch.ones(8, 3, 2, 2)
    varied = torch.arange(8.0).view(8, 1, 1, 1).expand(8, 3, 2, 2)
    w = feature_spread_weights([flat, varied])
    assert w.tolist() == pytest.approx([0.0, 1.0])
