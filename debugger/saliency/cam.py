"""Layer saliency in the Extract & Aggregate framework (Rebuffi, Fong, Ji, Vedaldi, CVPR 2020; seed 004 C.2).

At a layer with output ``x`` (``(B, K, h, w)``) and ``g = ∂score/∂x``, each method extracts a per-location
contribution to a (virtual identity) layer's weight gradient and aggregates it over channels:

===========================  ==============================  ===========================
method                       map at location ``u``           extract / aggregate
===========================  ==============================  ===========================
Grad-CAM                     ``ReLU(Σ_k mean_v(g_kv) x_ku)`` scaling identity, GAP'd g / sum
linear approximation         ``Σ_k g_ku x_ku``               scaling identity / sum
NormGrad                     ``‖g_u‖ · ‖x_u‖``               1×1 conv identity / Frobenius norm
selective NormGrad           ``‖(g_u ⊙ x_u)₊‖``              scaling identity / positive filter + norm
NormGrad, real conv          ``‖g_u‖ · ‖x^in_{u,N×N}‖``      the layer's own N×N conv / norm
gradient (bias identity)     ``max_k |g_ku|``                bias identity / max-abs
===========================  ==============================  ===========================

The ``*_from`` functions hold the maths on already-available ``(activation, grad)`` pairs (one line each);
:func:`layer_saliency` runs one forward and one backward (down to the shallowest requested layer only) and
applies them to any number of layers at once. Scores follow :mod:`debugger.saliency.targets`; use
``ClassTarget(c, score="log_softmax")`` for the paper's "head including the cross-entropy loss" (norm-based
maps are unchanged in sign; NormGrad's paper convention).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from debugger.capture import LayerCapture, resolve_layer
from debugger.saliency._core import attribution_mode, prepare_input, scores_of, upsample
from debugger.saliency.targets import TargetLike

Method = Literal["gradcam", "normgrad", "selective_normgrad", "linear_approximation", "gradient", "conv_normgrad"]
Combine = Literal["sum", "product"]
_METHODS = ("gradcam", "normgrad", "selective_normgrad", "linear_approximation", "gradient", "conv_normgrad")


def _check_pair(activation: Tensor, grad: Tensor) -> None:
    if activation.dim() != 4 or activation.shape != grad.shape:
        raise ValueError(
            "Expected `activation` and `grad` to be (B, K, h, w) tensors of the same shape, "
            f"but got {tuple(activation.shape)} and {tuple(grad.shape)}."
        )


def normgrad_from(activation: Tensor, grad: Tensor) -> Tensor:
    """NormGrad map from a layer's activation and the gradient of the score w.r.t. it: ``‖g_u‖₂ · ‖x_u‖₂``.

    This is the whole algorithm (a virtual 1×1 identity convolution after the layer; the Frobenius norm of its
    per-location weight-gradient contribution ``g_u x_uᵀ`` is the product of the two vector norms). It needs no
    extra pass when the caller already has both tensors, e.g. from a training step's own backward (where
    ``grad`` is the loss gradient; the norm ignores its sign):
    ``(grad.square().sum(1, keepdim=True) * activation.square().sum(1, keepdim=True)).sqrt()``.

    Shape:
        - activation: ``(B, K, h, w)``
        - grad: ``(B, K, h, w)``
        - return: ``(B, 1, h, w)``, non-negative

    Example:
        >>> x = torch.tensor([3.0, 4.0]).view(1, 2, 1, 1); g = torch.tensor([0.0, 2.0]).view(1, 2, 1, 1)
        >>> normgrad_from(x, g).item()
        10.0
    """
    _check_pair(activation, grad)
    # sqrt(Σg² · Σx²) = ‖g‖·‖x‖; Tensor.norm over dim 1 is slower on CPU than this sum of squares
    return (grad.square().sum(1, keepdim=True) * activation.square().sum(1, keepdim=True)).sqrt()


def selective_normgrad_from(activation: Tensor, grad: Tensor) -> Tensor:
    """Class-selective NormGrad ``‖(g_u ⊙ x_u)₊‖₂``: only channels whose change would raise the score.

    Shape:
        - activation, grad: ``(B, K, h, w)``
        - return: ``(B, 1, h, w)``
    """
    _check_pair(activation, grad)
    return (grad * activation).clamp_min(0).square().sum(1, keepdim=True).sqrt()


def linear_approximation_from(activation: Tensor, grad: Tensor) -> Tensor:
    """Linear approximation (gradient × activation summed over channels) ``Σ_k g_ku x_ku``; signed.

    Shape:
        - activation, grad: ``(B, K, h, w)``
        - return: ``(B, 1, h, w)``
    """
    _check_pair(activation, grad)
    return (grad * activation).sum(1, keepdim=True)


def gradcam_from(activation: Tensor, grad: Tensor, relu: bool = True) -> Tensor:
    """Grad-CAM ``ReLU(Σ_k α_k x_k)`` with ``α_k`` the spatial mean of ``g_k`` (Selvaraju et al. 2017).

    Shape:
        - activation, grad: ``(B, K, h, w)``
        - return: ``(B, 1, h, w)``
    """
    _check_pair(activation, grad)
    cam = (grad.mean(dim=(2, 3), keepdim=True) * activation).sum(1, keepdim=True)
    return cam.clamp_min(0) if relu else cam


def gradient_from(activation: Tensor, grad: Tensor) -> Tensor:
    """Bias-identity gradient map ``max_k |g_ku|`` at a layer (``activation`` only fixes the shape).

    Shape:
        - activation, grad: ``(B, K, h, w)``
        - return: ``(B, 1, h, w)``
    """
    _check_pair(activation, grad)
    return grad.abs().amax(1, keepdim=True)


def conv_normgrad_from(layer_input: Tensor, grad: Tensor, conv: nn.Conv2d) -> Tensor:
    """NormGrad at a real convolution: ``‖g_u‖ · ‖x^in_{u,N×N}‖`` over the conv's receptive patch at ``u``.

    ``‖x^in_{u,N×N}‖`` is computed as the square root of a box filter (the conv's kernel size, stride,
    padding and dilation) over ``Σ_k x_k²``, never materialising the ``K'×N²K`` outer product.
    Grouped convolutions are treated as one patch over all input channels.

    Shape:
        - layer_input: ``(B, K, H, W)``
        - grad: ``(B, K', h, w)``, the gradient w.r.t. the conv's output
        - return: ``(B, 1, h, w)``
    """
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"Expected `conv` to be an nn.Conv2d, but got {type(conv).__name__}.")
    if conv.padding_mode != "zeros":
        raise ValueError(f"Expected a zero-padded convolution, but got padding_mode={conv.padding_mode!r}.")
    squares = layer_input.pow(2).sum(1, keepdim=True)
    ones = torch.ones(1, 1, *conv.kernel_size, dtype=squares.dtype, device=squares.device)
    patch = F.conv2d(squares, ones, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
    if patch.shape[-2:] != grad.shape[-2:]:
        raise ValueError(
            f"Expected the gradient's spatial size {tuple(patch.shape[-2:])} of the conv output, "
            f"but got {tuple(grad.shape[-2:])}."
        )
    return (grad.square().sum(1, keepdim=True) * patch.clamp_min(0)).sqrt()


_AGGREGATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "gradcam": gradcam_from,
    "normgrad": normgrad_from,
    "selective_normgrad": selective_normgrad_from,
    "linear_approximation": linear_approximation_from,
    "gradient": gradient_from,
}


def layer_saliency(
    model: nn.Module,
    inputs: Tensor,
    target: TargetLike,
    layers: str | Sequence[str],
    method: Method = "normgrad",
    size: tuple[int, int] | None = None,
) -> dict[str, Tensor]:
    """Maps of one Extract & Aggregate ``method`` at each of ``layers`` from one forward and one backward.

    Args:
        model: any module; run in eval mode, its mode restored afterwards.
        inputs: images.
        target: what to explain (see :mod:`debugger.saliency.targets`).
        layers: dotted module names from ``named_modules()``; a map is taken at each module's output.
        method: one of ``gradcam``, ``normgrad``, ``selective_normgrad``, ``linear_approximation``,
            ``gradient`` and ``conv_normgrad`` (the latter needs ``nn.Conv2d`` layers and uses their inputs).
        size: resize every map bilinearly to this ``(H, W)`` (e.g. the input's), or keep each layer's size.

    Returns:
        ``{layer: (B, 1, h, w)}`` maps on the inputs' device, detached.

    Raises:
        ValueError: for an unknown method or layer name, or a layer whose output is not ``(B, K, h, w)``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8, 2))
        >>> maps = layer_saliency(net, torch.randn(3, 1, 2, 2), "predicted", ["0", "1"], "normgrad")
        >>> tuple(maps["1"].shape)
        (3, 1, 2, 2)
    """
    if method not in _METHODS:
        raise ValueError(f"Expected `method` to be one of {_METHODS}, but got {method!r}.")
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ValueError(f"Expected at least one layer name, but got {layers!r}.")
    conv = method == "conv_normgrad"
    with attribution_mode(model):
        x = prepare_input(inputs, model)
        with LayerCapture(model, names, inputs=conv) as cap:
            output = model(x)
        missing = [n for n in names if n not in cap.outputs]
        if missing:
            raise ValueError(f"Expected layers {missing!r} to run in the forward pass, but they did not.")
        acts = [cap.outputs[n] for n in names]
        for n, a in zip(names, acts, strict=True):
            if a.dim() != 4:
                raise ValueError(f"Expected layer {n!r} to output (B, K, h, w), but got {tuple(a.shape)}.")
        grads = torch.autograd.grad(scores_of(target, output).sum(), acts)
        maps: dict[str, Tensor] = {}
        for n, a, g in zip(names, acts, grads, strict=True):
            if conv:
                module = resolve_layer(model, n)
                if not isinstance(module, nn.Conv2d):
                    raise ValueError(f"Expected layer {n!r} to be an nn.Conv2d for conv_normgrad, but got {module}.")
                m = conv_normgrad_from(cap.inputs[n].detach(), g, module)
            else:
                m = _AGGREGATORS[method](a.detach(), g)
            maps[n] = upsample(m, size)
        return maps


def min_max_normalize(maps: Tensor, eps: float = 1e-12) -> Tensor:
    """Rescale each map of a batch to ``[0, 1]`` (a constant map becomes zeros).

    Shape:
        - maps: ``(B, 1, h, w)``
        - return: ``(B, 1, h, w)``
    """
    flat = maps.flatten(1)
    lo = flat.amin(1).view(-1, 1, 1, 1)
    hi = flat.amax(1).view(-1, 1, 1, 1)
    return (maps - lo) / (hi - lo).clamp_min(eps)


def combine_maps(
    maps: Sequence[Tensor],
    weights: Sequence[float] | Tensor | None = None,
    mode: Combine = "sum",
    size: tuple[int, int] | None = None,
) -> Tensor:
    """Combine maps from several layers: ``Σ_j γ_j m_j`` or ``Π_j m_j^{γ_j}`` (seed 004 C.2 §4.2).

    Each map is resized to ``size`` (default: the largest map's size) and min-max normalised per image first,
    so layers of different scale are comparable. Weights are normalised to sum to one (uniform when None).

    Shape:
        - maps: each ``(B, 1, h_j, w_j)``
        - return: ``(B, 1, H, W)`` in ``[0, 1]``

    Example:
        >>> a = torch.tensor([[[[0.0, 1.0]]]]); b = torch.tensor([[[[1.0, 0.0]]]])
        >>> combine_maps([a, b], [3.0, 1.0]).flatten().tolist()
        [0.25, 0.75]
    """
    if len(maps) == 0:
        raise ValueError("Expected at least one map to combine, but got none.")
    if mode not in ("sum", "product"):
        raise ValueError(f"Expected `mode` to be one of ('sum', 'product'), but got {mode!r}.")
    w = torch.ones(len(maps)) if weights is None else torch.as_tensor(weights, dtype=torch.float64).flatten()
    if w.shape[0] != len(maps) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"Expected {len(maps)} non-negative weights with a positive sum, but got {w.tolist()!r}.")
    norm_w: list[float] = (w / w.sum()).tolist()
    if size is None:
        size = max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])  # type: ignore[assignment]
    normed = [min_max_normalize(upsample(m, size)) for m in maps]
    if mode == "sum":
        return sum((wj * m for wj, m in zip(norm_w, normed, strict=True)), torch.zeros_like(normed[0]))
    out = torch.ones_like(normed[0])
    for wj, m in zip(norm_w, normed, strict=True):
        out = out * m.pow(wj)
    return out


def feature_spread_weights(activations: Sequence[Tensor]) -> Tensor:
    """Layer weights from feature spread: ``γ_j = mean_i |x̄^i − x̄^μ|`` per layer (seed 004 C.2 §4.2).

    ``x̄^i`` is image ``i``'s spatial mean activation and ``x̄^μ = mean_i |x̄^i|``; the channel-wise spread is
    averaged over channels (the thesis leaves this reduction implicit). Use images drawn across classes.

    Shape:
        - activations: each ``(M, K_j, h_j, w_j)``
        - return: ``(J,)``, normalised to sum to one
    """
    spreads = []
    for a in activations:
        means = a.detach().float().mean(dim=(2, 3))
        ref = means.abs().mean(0, keepdim=True)
        spreads.append((means - ref).abs().mean())
    s = torch.stack(spreads)
    return s / s.sum().clamp_min(1e-12)


class _LayerMethod:
    method: Method = "normgrad"

    def __init__(self, model: nn.Module, layer: str, upsample: bool = False) -> None:
        self.model = model
        self.layer = layer
        self.upsample = upsample

    def attribute(self, inputs: Tensor, target: TargetLike) -> Tensor:
        """The map at ``layer``: ``(B, 1, h, w)``, or ``(B, 1, H, W)`` when built with ``upsample=True``."""
        size = (int(inputs.shape[-2]), int(inputs.shape[-1])) if self.upsample else None
        return layer_saliency(self.model, inputs, target, self.layer, method=self.method, size=size)[self.layer]


class GradCAM(_LayerMethod):
    """Grad-CAM at any layer (meaningful at the last conv block; seed 004 C.2 §4.2).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        ...                     nn.Flatten(), nn.Linear(4, 2))
        >>> GradCAM(net, "1", upsample=True).attribute(torch.randn(2, 3, 8, 8), "predicted").shape
        torch.Size([2, 1, 8, 8])
    """

    method: Method = "gradcam"


class NormGrad(_LayerMethod):
    """NormGrad ``‖g‖·‖x‖`` at a layer's output (virtual 1×1 identity conv); works at any layer, e.g. a ReLU."""

    method: Method = "normgrad"


class SelectiveNormGrad(_LayerMethod):
    """Class-selective NormGrad ``‖(g ⊙ x)₊‖`` at a layer's output."""

    method: Method = "selective_normgrad"


class ConvNormGrad(_LayerMethod):
    """NormGrad at a real ``nn.Conv2d`` (``‖g‖·‖x^in_{N×N}‖``), without the identity trick."""

    method: Method = "conv_normgrad"


class LinearApproximation(_LayerMethod):
    """Linear approximation ``Σ_k g_k x_k`` at a layer's output (gradient × activation)."""

    method: Method = "linear_approximation"


class LayerCombination:
    """One method at several layers from a single forward/backward, combined with :func:`combine_maps`.

    Args:
        model: the network.
        layers: dotted names, shallow to deep.
        method: the Extract & Aggregate method at every layer.
        weights: per-layer weights; ``"uniform"`` (``1/J``), ``"linear"`` (``j/J``) or explicit numbers.
        mode: additive or multiplicative combination.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.Conv2d(2, 2, 3, stride=2, padding=1),
        ...                     nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
        >>> LayerCombination(net, ["1", "3"], weights="linear").attribute(torch.randn(2, 1, 8, 8), 0).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str],
        method: Method = "linear_approximation",
        weights: Literal["uniform", "linear"] | Sequence[float] = "uniform",
        mode: Combine = "sum",
    ) -> None:
        self.model = model
        self.layers = list(layers)
        self.method = method
        self.weights = weights
        self.mode = mode

    def attribute(self, inputs: Tensor, target: TargetLike) -> Tensor:
        """Combined map ``(B, 1, H, W)`` at the input's resolution, in ``[0, 1]``."""
        if isinstance(self.weights, str):
            n = len(self.layers)
            if self.weights == "uniform":
                weights: list[float] = [1.0] * n
            elif self.weights == "linear":
                weights = [(j + 1) / n for j in range(n)]
            else:
                raise ValueError(f"Expected `weights` to be 'uniform', 'linear' or numbers, but got {self.weights!r}.")
        else:
            weights = list(self.weights)
        maps = layer_saliency(self.model, inputs, target, self.layers, self.method)
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        return combine_maps([maps[n] for n in self.layers], weights, self.mode, size)
