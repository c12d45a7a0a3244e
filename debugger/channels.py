"""Channel attribution (Fong, Patrick & Vedaldi 2019, seed 004 Ch. 4 §5): which channels of a layer a prediction
needs.

An extremal perturbation over the channels of an intermediate layer (eq. 9): a mask ``m ∈ [0, 1]^K``, one value per
channel, broadcast over space, multiplies the layer's output (reference value 0) through a forward hook, and is
optimised to keep the target score as high as possible while preserving exactly ``a`` channels::

    m_a = argmax_m  Φ_{l+}(m ⊗ Φ_l(x)) − λ R_a(m),    R_a(m) = mean((sort(m) − r_a)²)

where ``r_a`` is ``K − a`` zeros then ``a`` ones (a mean where the thesis sums, so ``λ`` does not scale with
``K``). ``λ`` rises linearly from 0 to ``area_weight`` over the first ``warmup`` share of the iterations (the
thesis: 0 → 1500 over 150 of 300), then stays; SGD with momentum, the mask projected onto ``[0, 1]`` after each
step. The mask starts at ½ everywhere, so that the first steps (``λ`` ≈ 0) rank the channels by the score alone
before the area term sorts them; from all ones, ties in the sort would decide. The extremal area (eq. 10) is the
smallest ``a`` whose mask keeps the clean score. The CAM-like map of the kept channels is ``Σ_k m_k Φ_l^k(x)``
(eq. 11). Averaging the masks of a class's images (:func:`class_channel_masks`) gives the channels that class
depends on.

:func:`channel_area_loss` is the area constraint; :func:`channel_attribution` the batched optimisation (all
images × areas in one forward per step); :class:`ChannelAttribution` holds the configuration.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from debugger.capture import first_tensor, resolve_layer
from debugger.saliency._core import attribution_mode, copy_scores, fix_target, prepare_input
from debugger.saliency.targets import TargetLike

__all__ = ["ChannelAttribution", "ChannelMasks", "channel_area_loss", "channel_attribution", "class_channel_masks"]


def channel_area_loss(masks: Tensor, areas: Tensor) -> Tensor:
    """The rank-based area constraint ``mean((sort(m) − r_a)²)`` over the channels, per mask.

    Shape:
        - masks: ``(A, ..., K)``, the first dimension matching ``areas``
        - areas: ``(A,)`` numbers of channels to keep
        - return: ``masks.shape[:-1]``

    Example:
        >>> channel_area_loss(torch.tensor([[0.0, 1.0, 1.0], [1.0, 1.0, 1.0]]), torch.tensor([2, 2]))
        tensor([0.0000, 0.3333])
    """
    k = masks.shape[-1]
    ranks = torch.arange(k, device=masks.device)
    ref = (ranks >= (k - areas.to(masks.device).view(-1, *([1] * (masks.dim() - 1))))).to(masks.dtype)
    return (masks.sort(dim=-1).values - ref).square().mean(-1)


@dataclass
class ChannelMasks:
    """The result of :func:`channel_attribution`.

    Attributes:
        masks: ``(B, A, K)`` the optimised channel mask per image and area.
        scores: ``(B, A)`` the target score with each mask applied.
        clean: ``(B,)`` the target score without perturbation.
        areas: ``(A,)`` the numbers of channels kept.
        maps: ``(B, A, h, w)`` the CAM-like maps ``Σ_k m_k Φ_l^k(x)`` (``(B, A)`` for a layer without space).
    """

    masks: Tensor
    scores: Tensor
    clean: Tensor
    areas: Tensor
    maps: Tensor

    def extremal_area(self) -> Tensor:
        """``(B,)`` per image the smallest area whose mask keeps the clean score (the largest area if none does)."""
        keeps = self.scores >= self.clean[:, None]
        first = torch.where(keeps.any(1), keeps.float().argmax(1), torch.full_like(self.clean, -1).long())
        return self.areas[first]

    def extremal_masks(self) -> Tensor:
        """``(B, K)`` per image the mask at its extremal area."""
        index = (self.areas[None, :] == self.extremal_area()[:, None]).float().argmax(1)
        return self.masks[torch.arange(self.masks.shape[0]), index]


def channel_attribution(
    model: nn.Module,
    layer: str,
    inputs: Tensor,
    target: TargetLike,
    areas: Sequence[int] = (1, 2, 4, 8, 16, 32),
    iterations: int = 300,
    lr: float = 0.01,
    momentum: float = 0.9,
    area_weight: float = 1500.0,
    warmup: float = 0.5,
) -> ChannelMasks:
    """Extremal channel masks at ``layer`` for every image and every area, optimised together.

    Args:
        model: the network (eval mode while this runs; flags, grads and hooks left as they were).
        layer: the dotted name of the layer whose output channels are masked.
        inputs: the images.
        target: what to explain (:mod:`debugger.saliency.targets`); ``"predicted"`` is fixed on the clean images.
        areas: numbers of channels to keep, each in ``[1, K]``.
        iterations: optimisation steps.
        lr: SGD's learning rate.
        momentum: SGD's momentum.
        area_weight: the final weight ``λ`` of the area constraint.
        warmup: the share of the iterations over which ``λ`` rises linearly from 0.

    Shape:
        - inputs: ``(B, C, H, W)``
        - return: see :class:`ChannelMasks`

    Raises:
        ValueError: on an unknown layer, areas outside ``[1, K]`` (``K`` the channels of the layer's output
            ``(B, K, ...)``), or a non-positive ``iterations``.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 2))
        >>> res = channel_attribution(net, "1", torch.randn(2, 3, 8, 8), 0, areas=(1, 4), iterations=20)
        >>> tuple(res.masks.shape), tuple(res.maps.shape)
        ((2, 2, 4), (2, 2, 8, 8))
    """
    module = resolve_layer(model, layer)
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"Expected `iterations` to be a positive integer, but got {iterations!r}.")
    with attribution_mode(model):
        x = prepare_input(inputs, model)
        b = x.shape[0]
        seen: list[Tensor] = []
        handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
        try:
            with torch.no_grad():
                target = fix_target(model, x, target)
                clean = copy_scores(target, model(x), 1)
        finally:
            handle.remove()
        act = first_tensor(seen[0], "the layer's output")
        k = act.shape[1]
        area_t = torch.as_tensor(list(areas), dtype=torch.long, device=x.device)
        if area_t.numel() == 0 or bool(((area_t < 1) | (area_t > k)).any()):
            raise ValueError(f"Expected `areas` to be channel counts in [1, {k}], but got {list(areas)!r}.")
        n_areas = area_t.numel()
        masks = torch.full((n_areas, b, k), 0.5, device=x.device, requires_grad=True)
        optimizer = torch.optim.SGD([masks], lr=lr, momentum=momentum)
        x_rep = x.repeat(n_areas, 1, 1, 1)  # copy-major: row a * B + i is image i under area a

        def apply(_m: nn.Module, _i: tuple, out: Tensor) -> Tensor:
            shape = (n_areas * b, k) + (1,) * (out.dim() - 2)
            return out * masks.view(shape).to(out.dtype)

        warm = max(1, round(warmup * iterations))
        handle = module.register_forward_hook(apply)
        try:
            for it in range(iterations):
                weight = area_weight * min(1.0, it / warm)
                scores = copy_scores(target, model(x_rep), n_areas).view(n_areas, b)
                objective = scores - weight * channel_area_loss(masks, area_t)
                (grad,) = torch.autograd.grad(-objective.sum(), [masks])
                masks.grad = grad
                optimizer.step()
                with torch.no_grad():
                    masks.clamp_(0.0, 1.0)
            with torch.no_grad():
                final = copy_scores(target, model(x_rep), n_areas).view(n_areas, b)
        finally:
            handle.remove()
        m = masks.detach()
        cams = torch.einsum("abk,bk...->ba...", m, act.float())
    return ChannelMasks(m.transpose(0, 1).contiguous(), final.T.contiguous(), clean, area_t, cams)


def class_channel_masks(masks: Tensor, labels: Tensor, num_classes: int) -> Tensor:
    """The mean channel mask of each class's images (zeros for a class without images).

    Shape:
        - masks: ``(N, K)``
        - labels: ``(N,)``
        - return: ``(num_classes, K)``

    Example:
        >>> class_channel_masks(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]), torch.tensor([0, 1, 0]), 3)
        tensor([[1.0000, 0.5000],
                [0.0000, 1.0000],
                [0.0000, 0.0000]])
    """
    sums = torch.zeros(num_classes, masks.shape[1], dtype=masks.dtype, device=masks.device)
    sums.index_add_(0, labels.to(masks.device).long(), masks)
    counts = torch.bincount(labels.long().cpu(), minlength=num_classes).to(masks)
    return sums / counts.clamp(min=1)[:, None]


class ChannelAttribution:
    """Extremal channel attribution at one layer (see :func:`channel_attribution`).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 2))
        >>> ChannelAttribution(net, "1", areas=(2,), iterations=5).attribute(torch.randn(1, 3, 8, 8), 1).masks.shape
        torch.Size([1, 1, 4])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        areas: Sequence[int] = (1, 2, 4, 8, 16, 32),
        iterations: int = 300,
        lr: float = 0.01,
        momentum: float = 0.9,
        area_weight: float = 1500.0,
        warmup: float = 0.5,
    ) -> None:
        self.model = model
        self.layer = layer
        self.areas = tuple(areas)
        self.iterations = iterations
        self.lr = lr
        self.momentum = momentum
        self.area_weight = area_weight
        self.warmup = warmup

    def attribute(self, inputs: Tensor, target: TargetLike) -> ChannelMasks:
        """Channel masks of ``inputs`` for ``target`` at every area."""
        return channel_attribution(self.model, self.layer, inputs, target, self.areas, self.iterations, self.lr,
                                   self.momentum, self.area_weight, self.warmup)
