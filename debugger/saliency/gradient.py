"""Input-gradient attributions: gradient, gradient × input, SmoothGrad and Integrated Gradients.

Each returns an attribution per input element ``(B, C, H, W)`` on the inputs' device; :func:`reduce_channels`
turns it into a ``(B, 1, H, W)`` map (Simonyan et al. display ``max_k |∂Φ/∂x_k|``).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from debugger.saliency._core import attribution_mode, copy_scores, fix_target, prepare_input
from debugger.saliency.targets import TargetLike

Reduction = Literal["max_abs", "abs_sum", "sum", "l2"]
Rule = Literal["gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid"]
_RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")
_REDUCTIONS = ("max_abs", "abs_sum", "sum", "l2")


def _grad(model: nn.Module, x: Tensor, target: TargetLike, copies: int = 1) -> Tensor:
    x = x.detach().requires_grad_(True)
    scores = copy_scores(target, model(x), copies)
    (g,) = torch.autograd.grad(scores.sum(), x)
    return g


def reduce_channels(attributions: Tensor, how: Reduction = "max_abs") -> Tensor:
    """Collapse the channel dimension of an attribution into a map.

    Shape:
        - attributions: ``(B, C, H, W)``
        - return: ``(B, 1, H, W)``

    Example:
        >>> reduce_channels(torch.tensor([[[[1.0]], [[-3.0]]]])).flatten().tolist()
        [3.0]
    """
    if how == "max_abs":
        return attributions.abs().amax(1, keepdim=True)
    if how == "abs_sum":
        return attributions.abs().sum(1, keepdim=True)
    if how == "sum":
        return attributions.sum(1, keepdim=True)
    if how == "l2":
        return attributions.square().sum(1, keepdim=True).sqrt()
    raise ValueError(f"Expected `how` to be one of {_REDUCTIONS}, but got {how!r}.")


def gradient(model: nn.Module, inputs: Tensor, target: TargetLike) -> Tensor:
    """Gradient of the target score w.r.t. the input (Simonyan et al. 2014), signed.

    Shape:
        - inputs: ``(B, C, H, W)``
        - return: ``(B, C, H, W)``

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> gradient(net, torch.ones(1, 1, 2, 2), 0).shape
        torch.Size([1, 1, 2, 2])
    """
    with attribution_mode(model):
        return _grad(model, prepare_input(inputs, model), target)


def gradient_x_input(model: nn.Module, inputs: Tensor, target: TargetLike) -> Tensor:
    """Gradient × input, the linear approximation ``S₂ = ∇f(x₀) ⊙ x₀`` at the input.

    Shape:
        - inputs: ``(B, C, H, W)``
        - return: ``(B, C, H, W)``
    """
    with attribution_mode(model):
        x = prepare_input(inputs, model)
        return _grad(model, x, target) * x


def smoothgrad(
    model: nn.Module,
    inputs: Tensor,
    target: TargetLike,
    samples: int = 16,
    noise_level: float = 0.15,
    squared: bool = False,
    batch_size: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """SmoothGrad: the gradient averaged over noisy copies ``x + z``, ``z ~ N(0, σ²)`` (Smilkov et al. 2017).

    ``σ = noise_level · (max(x) − min(x))`` per image. All copies of all images go through the model in
    batches of at most ``batch_size`` images (default: every copy at once).

    Shape:
        - inputs: ``(B, C, H, W)``
        - return: ``(B, C, H, W)``
    """
    if samples < 1:
        raise ValueError(f"Expected `samples` to be a positive integer, but got {samples!r}.")
    if noise_level < 0:
        raise ValueError(f"Expected `noise_level` to be non-negative, but got {noise_level!r}.")
    with attribution_mode(model):
        x = prepare_input(inputs, model)
        target = fix_target(model, x, target)
        b = x.shape[0]
        span = (x.flatten(1).amax(1) - x.flatten(1).amin(1)).view(b, 1, 1, 1)
        # drawn on the generator's device (CPU by default) so a seed gives the same noise on any device
        noise_device = generator.device if generator is not None else x.device
        noise = torch.randn((samples, *x.shape), generator=generator, device=noise_device, dtype=x.dtype).to(x.device)
        noisy = (x.unsqueeze(0) + noise * (noise_level * span).unsqueeze(0)).flatten(0, 1)  # copy-major
        total = torch.zeros_like(x)
        per_chunk = samples if batch_size is None else max(1, batch_size // b)
        for start in range(0, samples, per_chunk):
            n = min(per_chunk, samples - start)
            g = _grad(model, noisy[start * b : (start + n) * b], target, copies=n).view(n, *x.shape)
            total += (g * g if squared else g).sum(0)
        return total / samples


def integration_rule(steps: int, rule: Rule = "gausslegendre") -> tuple[Tensor, Tensor]:
    """Points ``α ∈ [0, 1]`` and weights of a quadrature rule for ``∫₀¹ f(α) dα``.

    The trapezoid weights sum to one (``1/(n−1)`` inside, half at the ends).

    Shape:
        - return: ``(steps,)`` points and ``(steps,)`` weights, float64
    """
    if steps < 2:
        raise ValueError(f"Expected `steps` to be at least 2, but got {steps!r}.")
    n = steps
    if rule == "gausslegendre":
        pts, wts = np.polynomial.legendre.leggauss(n)
        return torch.from_numpy(0.5 * (pts + 1)), torch.from_numpy(0.5 * wts)
    i = torch.arange(n, dtype=torch.float64)
    if rule == "riemann_left":
        return i / n, torch.full((n,), 1 / n, dtype=torch.float64)
    if rule == "riemann_right":
        return (i + 1) / n, torch.full((n,), 1 / n, dtype=torch.float64)
    if rule == "riemann_middle":
        return (i + 0.5) / n, torch.full((n,), 1 / n, dtype=torch.float64)
    if rule == "riemann_trapezoid":
        w = torch.full((n,), 1 / (n - 1), dtype=torch.float64)
        w[0] = w[-1] = 0.5 / (n - 1)
        return i / (n - 1), w
    raise ValueError(f"Expected `rule` to be one of {_RULES}, but got {rule!r}.")


def integrated_gradients(
    model: nn.Module,
    inputs: Tensor,
    target: TargetLike,
    baseline: Tensor | float = 0.0,
    steps: int = 32,
    rule: Rule = "gausslegendre",
    batch_size: int | None = None,
) -> Tensor:
    """Integrated Gradients ``(x − x₀) ⊙ ∫₀¹ ∂Φ(x₀ + α(x − x₀))/∂x dα`` (Sundararajan et al. 2017).

    All integration points of all images are evaluated in batches of at most ``batch_size`` images
    (default: ``steps · B`` at once).

    Shape:
        - inputs: ``(B, C, H, W)``
        - baseline: scalar, ``(C, H, W)`` or ``(B, C, H, W)``
        - return: ``(B, C, H, W)``

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False))
        >>> x = torch.ones(1, 1, 2, 2)
        >>> bool(torch.allclose(integrated_gradients(net, x, 0).sum(), net(x).sum()))
        True
    """
    alphas, weights = integration_rule(steps, rule)
    with attribution_mode(model):
        x = prepare_input(inputs, model)
        target = fix_target(model, x, target)
        b = x.shape[0]
        base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
        delta = x - base
        alphas = alphas.to(x.device, x.dtype).view(-1, 1, 1, 1, 1)
        weights = weights.to(x.device, x.dtype).view(-1, 1, 1, 1, 1)
        total = torch.zeros_like(x)
        per_chunk = steps if batch_size is None else max(1, batch_size // b)
        for start in range(0, steps, per_chunk):
            a = alphas[start : start + per_chunk]
            n = a.shape[0]
            path = (base.unsqueeze(0) + a * delta.unsqueeze(0)).flatten(0, 1)
            g = _grad(model, path, target, copies=n).view(n, *x.shape)
            total += (g * weights[start : start + n]).sum(0)
        return delta * total


class Gradient:
    """Captum-style front end of :func:`gradient`.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> Gradient(net).attribute(torch.ones(2, 1, 2, 2), "predicted").shape
        torch.Size([2, 1, 2, 2])
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def attribute(self, inputs: Tensor, target: TargetLike) -> Tensor:
        """Signed input gradient ``(B, C, H, W)``."""
        return gradient(self.model, inputs, target)


class GradientXInput:
    """Captum-style front end of :func:`gradient_x_input`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def attribute(self, inputs: Tensor, target: TargetLike) -> Tensor:
        """Gradient × input ``(B, C, H, W)``."""
        return gradient_x_input(self.model, inputs, target)


class SmoothGrad:
    """Captum-style front end of :func:`smoothgrad`; ``seed`` makes the noise reproducible per call."""

    def __init__(
        self,
        model: nn.Module,
        samples: int = 16,
        noise_level: float = 0.15,
        squared: bool = False,
        batch_size: int | None = None,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.samples = samples
        self.noise_level = noise_level
        self.squared = squared
        self.batch_size = batch_size
        self.seed = seed

    def attribute(self, inputs: Tensor, target: TargetLike, generator: torch.Generator | None = None) -> Tensor:
        """SmoothGrad attribution ``(B, C, H, W)``; a fresh generator seeded with ``seed`` unless given."""
        if generator is None:
            generator = torch.Generator().manual_seed(self.seed)
        return smoothgrad(
            self.model, inputs, target, self.samples, self.noise_level, self.squared, self.batch_size, generator
        )


class IntegratedGradients:
    """Captum-style front end of :func:`integrated_gradients`."""

    def __init__(
        self,
        model: nn.Module,
        steps: int = 32,
        rule: Rule = "gausslegendre",
        batch_size: int | None = None,
    ) -> None:
        self.model = model
        self.steps = steps
        self.rule = rule
        self.batch_size = batch_size

    def attribute(self, inputs: Tensor, target: TargetLike, baseline: Tensor | float = 0.0) -> Tensor:
        """Integrated Gradients ``(B, C, H, W)`` from ``baseline`` (black image by default)."""
        return integrated_gradients(self.model, inputs, target, baseline, steps=self.steps, rule=self.rule,
                                    batch_size=self.batch_size)
