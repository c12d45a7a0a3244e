"""Extremal perturbations (seed 004 digest §1.2): the smallest smooth mask of a given area that keeps (or
deletes) the score, optimised for many images and areas in one batch.

Shares the mask convention and the blur pyramid of :mod:`debugger.saliency.perturbation`: ``m = 1`` keeps a
pixel, ``m = 0`` perturbs it fully.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from debugger.saliency._core import attribution_mode, copy_scores, prepare_input, scores_of
from debugger.saliency.perturbation import (
    _VARIANTS,
    Variant,
    _default_blur,
    _level_pairs,
    _perturb_pairs,
    blur_pyramid,
    gaussian_blur,
)
from debugger.saliency.targets import TargetLike, resolve_target


class _SmoothMaxUpsample(torch.autograd.Function):
    """One separable pass of the smooth max-convolution, along ``dim`` (1 or 2) of ``(N, P, Q)``.

    Output pixel ``p`` takes ``smax_T`` over ``o`` of ``v_o = k_o(p) · t[lattice(p, o)]``, where
    ``smax_T(v) = Σ v e^{v/T} / Σ e^{v/T}`` and ``∂smax/∂v_o = w_o (1 + (v_o − smax)/T)`` with
    ``w = softmax(v/T)``. ``index`` (``O · size``) lists ``lattice(p, o)`` offset-major and ``kernel``
    (``O × size``) holds ``k_o(p) / T``: one gather gives every neighbour of every pixel already cropped to
    the image, the softmax is one fused kernel, and the backward is a few element-wise products and one
    ``index_add_`` — instead of autograd's chain of slice, stack, exp and division nodes.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, t: Tensor, dim: int, index: Tensor, kernel: Tensor,
        temperature: float,
    ) -> Tensor:
        o, size = kernel.shape
        if dim == 1:  # offsets lead the reduced axis so the softmax reduces over long contiguous rows
            vt = t.index_select(1, index).view(t.shape[0], o, size, t.shape[2]) * kernel.view(o, size, 1)
        else:
            vt = t.index_select(2, index).view(t.shape[0], t.shape[1], o, size) * kernel
        w = torch.softmax(vt, dim)
        s = (vt * w).sum(dim, keepdim=True)  # smax / T
        ctx.save_for_backward(vt, w, s, index, kernel)
        ctx.dim = dim  # type: ignore[attr-defined]
        ctx.temperature = temperature  # type: ignore[attr-defined]
        ctx.in_shape = t.shape  # type: ignore[attr-defined]
        return (s * temperature).squeeze(dim)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None, None, None]:
        vt, w, s, index, kernel = ctx.saved_tensors  # type: ignore[attr-defined]
        dim, shape = ctx.dim, ctx.in_shape  # type: ignore[attr-defined]
        k = kernel.view(*kernel.shape, 1) if dim == 1 else kernel
        # ∂out/∂t_v = Σ over the (pixel, offset) pairs reading v of w (1 + vt − s) · k · T
        g = (vt - s).add_(1).mul_(w).mul_(k).mul_(grad.unsqueeze(dim) * ctx.temperature)  # type: ignore[attr-defined]
        g = g.reshape(*shape[:dim], -1, *shape[dim + 1 :])
        return grad.new_zeros(shape).index_add_(dim, index, g), None, None, None, None


class SmoothMaskGenerator:
    """Smooth masks from a coarse parameter lattice by smooth max-convolution (seed 004 Ch.4 eqs. 6-7).

    Lattice points sit every ``step`` pixels; pixel ``u`` takes ``smax_v k(u − v) m̄(v)`` over nearby lattice
    points ``v`` with temperature ``T`` (``1/T = 20`` in the thesis). The kernel is separable,
    ``k(d) = k₁(d_y) k₁(d_x)`` with ``k₁(t) = exp(−2 (|t|/σ − ½)₊²)`` (flat within ``σ/2``, truncated below 1e-2),
    which makes the max-convolution separable: for non-negative factors ``max_v k₁k₁m̄ = max_x k₁ max_y k₁ m̄``
    exactly, so two 1-D passes cost ``2·O`` instead of ``O²`` per pixel (with the smooth max, each pass is a
    smooth max). ``m̄ = 1`` everywhere gives ``m ≈ 1``: max-convolution does not damp the mask as a blur would.

    Shape:
        - call input: ``(N, 1, h̄, w̄)`` in ``[0, 1]`` with ``(h̄, w̄) = lattice_shape``
        - call output: ``(N, 1, H, W)``

    Example:
        >>> gen = SmoothMaskGenerator((8, 8), step=2, sigma=2.0)
        >>> gen(torch.ones(1, 1, *gen.lattice_shape)).min() > 0.95
        tensor(True)
    """

    def __init__(
        self, size: tuple[int, int], step: int, sigma: float, temperature: float = 0.05,
        device: torch.device | None = None, dtype: torch.dtype = torch.float32,
    ) -> None:
        if step < 1 or sigma <= 0 or temperature <= 0:
            raise ValueError(
                f"Expected a positive `step`, `sigma` and `temperature`, but got {step!r}, {sigma!r}, {temperature!r}."
            )
        h, w = size
        self.size = size
        self.step = step
        self.temperature = temperature
        self.lattice_shape = (math.ceil((h - 1) / step) + 1, math.ceil((w - 1) / step) + 1)
        # Pixel p = i·step + q (0 <= q < step) sits in lattice cell i; it sees lattice points i + o with
        # |q − o·step| within reach, and its kernel weight depends on (q, o) only: one (step, O) table.
        reach = sigma * (0.5 + math.sqrt(math.log(1e2) / 2))  # where k₁ falls to 1e-2
        lo, hi = -math.floor(reach / step), math.floor((step - 1 + reach) / step)
        self.pad = (-lo, hi)
        offs = torch.arange(lo, hi + 1, device=device, dtype=dtype)
        dist = (torch.arange(step, device=device, dtype=dtype).view(-1, 1) - offs.view(1, -1) * step).abs()
        k1 = torch.exp(-2 * (dist / sigma - 0.5).clamp_min(0) ** 2)
        self.kernel = torch.where(k1 < 1e-2, torch.zeros_like(k1), k1)  # (step, O)
        self.window = offs.numel()
        # Per axis, the lattice point each pixel reads at each offset and its kernel weight / T. Clamping the
        # lattice index is replicate padding, not zero padding: every pixel sees a full neighbourhood, so a
        # constant lattice gives an exactly constant mask and the border is not favoured when the area
        # constraint ranks mask values.
        self._tables: list[tuple[Tensor, Tensor]] = []
        offsets = torch.arange(lo, hi + 1, device=device).view(-1, 1)
        for n_lattice, length in zip(self.lattice_shape, size, strict=True):
            pix = torch.arange(length, device=device)
            index = (pix.view(1, -1) // step + offsets).clamp(0, n_lattice - 1)  # (O, length)
            weight = self.kernel[pix % step].t() / temperature  # (O, length)
            self._tables.append((index.flatten(), weight.contiguous()))

    def __call__(self, param: Tensor) -> Tensor:
        if param.dim() != 4 or tuple(param.shape[1:]) != (1, *self.lattice_shape):
            raise ValueError(
                f"Expected the lattice parameters to have shape (N, 1, {self.lattice_shape[0]}, "
                f"{self.lattice_shape[1]}), but got {tuple(param.shape)}."
            )
        (rows_index, rows_weight), (cols_index, cols_weight) = self._tables
        along_rows = _SmoothMaxUpsample.apply(param[:, 0], 1, rows_index, rows_weight, self.temperature)
        return _SmoothMaxUpsample.apply(along_rows, 2, cols_index, cols_weight, self.temperature).unsqueeze(1)


@dataclass
class ExtremalResult:
    """Masks of an extremal-perturbation run.

    Shape:
        - masks: ``(B, A, H, W)`` in ``[0, 1]``, ``m = 1`` preserved
        - areas: ``(A,)``
        - scores: ``(B, A)`` target score of the preserved image ``m ⊗ x`` with the final masks
        - clean_scores: ``(B,)`` target score of the unperturbed image
    """

    masks: Tensor
    areas: Tensor
    scores: Tensor
    clean_scores: Tensor

    def extremal_area(self, fraction: float = 1.0) -> Tensor:
        """Smallest area whose preserved score reaches ``fraction ×`` the clean score (``a*``; NaN if none).

        Shape:
            - return: ``(B,)``
        """
        ok = self.scores >= fraction * self.clean_scores.unsqueeze(1)
        areas = self.areas.to(self.scores.dtype).expand_as(self.scores)
        best = torch.where(ok, areas, torch.full_like(areas, float("inf"))).amin(1)
        return torch.where(torch.isinf(best), torch.full_like(best, float("nan")), best)

    def is_monotone(self, tolerance: float = 0.0) -> Tensor:
        """Whether the preserved score never drops as the area grows, up to ``a*`` (thesis eq. 8; ~98% of
        ImageNet images are monotone). Areas past ``a*`` are not checked; an image with no ``a*`` is checked
        over all areas.

        Shape:
            - return: ``(B,)`` bool
        """
        order = self.areas.argsort()
        scores = self.scores[:, order]
        areas = self.areas[order].to(scores.dtype)
        a_star = self.extremal_area()
        limit = torch.where(torch.isnan(a_star), torch.full_like(a_star, float("inf")), a_star)
        checked = areas.view(1, -1)[:, 1:] <= limit.view(-1, 1)  # pairs (j-1, j) with area_j <= a*
        drops = scores[:, 1:] < scores[:, :-1] - tolerance
        return ~(drops & checked).any(1)

    def saliency(self, sigma_fraction: float = 0.09) -> Tensor:
        """A point-able map: the sum of the masks over areas, blurred with ``σ = 9%`` of the short side.

        This is the thesis' conversion for the pointing game (binary masks have no single maximum).

        Shape:
            - return: ``(B, 1, H, W)``
        """
        total = self.masks.sum(1, keepdim=True)
        return gaussian_blur(total, sigma_fraction * min(total.shape[-2:]))


def _area_loss(mask: Tensor, areas: Tensor) -> Tensor:
    """``mean((sort(m) − r_a)²)`` with ``r_a`` = ``(1 − a)·n`` zeros then ``a·n`` ones, without sorting.

    ``‖sort(m) − r_a‖² = Σ m² − 2·(sum of the k largest values) + k`` with ``k = a·n``. The k largest are found
    by one selection (``kthvalue``, O(n)) per run of equal areas instead of a sort; values tied at the threshold
    share the remaining count, so the value is exact and the gradient is the sorted loss's (a subgradient at
    ties): ``2 (m − w) / n`` with ``w`` the (shared) membership of the k largest.

    Shape:
        - mask: ``(N, ...)``
        - areas: ``(N,)``
        - return: ``(N,)``
    """
    flat = mask.flatten(1)
    n = flat.shape[1]
    k = (areas.to(flat.dtype) * n).round().clamp(1, n - 1)
    return _AreaLoss.apply(flat, k)


class _AreaLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, flat: Tensor, k: Tensor) -> Tensor:
        n = flat.shape[1]
        ranks = (n - k).long()  # the threshold is the (n − k)-th smallest value
        values, counts = torch.unique_consecutive(ranks, return_counts=True)
        thresh = torch.cat([  # one selection per run of rows sharing an area (A runs in the area-major layout)
            flat[start : start + count].kthvalue(rank, dim=1).values
            for rank, count, start in zip(
                values.tolist(), counts.tolist(), [0, *counts.cumsum(0)[:-1].tolist()], strict=True
            )
        ]).unsqueeze(1)
        above = flat > thresh
        tied = flat == thresh
        share = (k - above.sum(1)) / tied.sum(1).clamp_min(1)
        weight = torch.addcmul(above.to(flat.dtype), tied.to(flat.dtype), share.unsqueeze(1))
        ctx.save_for_backward(flat, weight)
        return ((flat * flat).sum(1) - 2 * (flat * weight).sum(1) + k) / n

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, None]:
        flat, weight = ctx.saved_tensors  # type: ignore[attr-defined]
        return (flat - weight).mul_(grad.unsqueeze(1) * (2 / flat.shape[1])), None


def extremal_perturbation(
    model: nn.Module,
    inputs: Tensor,
    target: TargetLike,
    areas: Tensor | list[float] | tuple[float, ...] = (0.05, 0.1, 0.2, 0.4),
    iterations: int = 800,
    lr: float = 0.05,
    momentum: float = 0.9,
    area_weight: float = 30.0,
    area_growth: float = 32.0,
    variant: Variant = "preserve",
    step: int | None = None,
    sigma: float | None = None,
    temperature: float = 0.05,
    max_blur: float | None = None,
    levels: int = 8,
    batch_size: int | None = None,
    channels_last: bool = False,
) -> ExtremalResult:
    """Extremal perturbations (Fong, Patrick & Vedaldi 2019; seed 004 Ch.4), batched over images and areas.

    For each image and each area ``a`` finds the smooth mask ``m_a`` maximising the target score of the
    perturbed image under the area constraint ``R_a(m) = mean((sort(m) − r_a)²)`` weighted by the area weight
    (see below). Masks come from :class:`SmoothMaskGenerator` on a lattice of ``step`` pixels, start at 0.5, and
    are optimised by SGD with momentum (projected onto ``[0, 1]``). The perturbation is a blur of
    ``σ_max · (1 − m)`` from a pyramid with ``levels + 1`` levels. ``variant="preserve"`` maximises
    ``Φ(m ⊗ x)``, ``"delete"`` minimises ``Φ((1 − m) ⊗ x)``, ``"dual"`` does both (hybrid).

    Defaults scale TorchRay's 224-px settings to the input: ``sigma`` and ``max_blur`` are 9% of the short
    side, ``step ≈ sigma``. The area weight grows geometrically from ``area_weight`` to
    ``area_weight · area_growth`` (TorchRay: ×1.0035 per iteration; the thesis doubles it twice), so masks first
    find the evidence and then meet the area; our defaults are tuned to logits of small CPU models.
    ``batch_size`` caps how many masks (image × area, ×2 for dual) go through the model at once, rounded down
    to whole areas (at least ``B`` masks); all run together when it is None. ``channels_last`` feeds the
    model channels-last images (written so directly, no extra copy): on CPU, oneDNN convolutions run faster on
    them, most at large batches (``bench_saliency_speed``); the model must not ``.view()`` its
    activations in a way that needs the default layout. The result does not depend on the layout.

    Batched over images, the result equals one-image-at-a-time runs up to the model's own floating-point
    batch dependence (exactly, for a model whose per-sample arithmetic does not depend on the batch size):
    every step here is per mask, and the optimiser is element-wise.

    Shape:
        - inputs: ``(B, C, H, W)``
        - areas: ``(A,)`` fractions in ``(0, 1)``
        - return: see :class:`ExtremalResult`
    """
    area_t = torch.as_tensor(areas, dtype=torch.float64).flatten()
    if area_t.numel() == 0 or bool(((area_t <= 0) | (area_t >= 1)).any()):
        raise ValueError(f"Expected `areas` to be fractions in (0, 1), but got {area_t.tolist()!r}.")
    if variant not in _VARIANTS:
        raise ValueError(f"Expected `variant` to be one of {_VARIANTS}, but got {variant!r}.")
    if iterations < 1:
        raise ValueError(f"Expected `iterations` to be a positive integer, but got {iterations!r}.")
    with attribution_mode(model):
        x = prepare_input(inputs, model)
        b, _, h, w = x.shape
        with torch.no_grad():  # one clean forward fixes "predicted" and gives the clean scores
            clean_output = model(x)
        score = resolve_target(target, clean_output)  # resolved once, not at every step
        clean = scores_of(score, clean_output)
        n_areas = area_t.numel()
        sigma = sigma or max(1.0, 0.09 * min(h, w))
        step = step or max(1, round(sigma))
        gen = SmoothMaskGenerator((h, w), step, sigma, temperature, x.device, x.dtype)
        pyramid = blur_pyramid(x, max_blur or _default_blur((h, w)), levels)  # (B, L+1, C, H, W)
        # area-major layout: mask index a * B + i, so each area's chunk is a B-sample batch in input order
        pyr = _level_pairs(pyramid).repeat(n_areas, 1, 1, 1, 1)  # (A·B, L, 2C, H, W), area-major
        area_of = area_t.to(x.device, x.dtype).repeat_interleave(b)
        param = torch.full((n_areas * b, 1, *gen.lattice_shape), 0.5, device=x.device, dtype=x.dtype)
        velocity = torch.zeros_like(param)
        n_masks = n_areas * b
        # chunks hold whole areas (k areas x B images), so the target always sees B-sample batches
        images_per_mask = 2 if variant == "dual" else 1
        areas_per_chunk = n_areas if batch_size is None else max(1, batch_size // (b * images_per_mask))
        per_chunk = areas_per_chunk * b
        chunks = [slice(s, s + per_chunk) for s in range(0, n_masks, per_chunk)]
        grad = torch.empty_like(param)
        for it in range(iterations):
            weight = area_weight * area_growth ** (it / max(1, iterations - 1))
            for c in chunks:
                p = param[c].detach().requires_grad_(True)
                energy = _extremal_energy(model, score, gen(p), pyr[c], area_of[c], variant, weight, b, channels_last)
                grad[c] = torch.autograd.grad(energy, p)[0]
            with torch.no_grad():  # SGD with momentum, projected onto [0, 1]
                velocity.mul_(momentum).add_(grad)
                param.add_(velocity, alpha=-lr).clamp_(0, 1)
        with torch.no_grad():
            masks = torch.cat([gen(param[c]) for c in chunks])
            scores = torch.cat([
                copy_scores(score, model(_perturb_pairs(pyr[c], masks[c], channels_last)), masks[c].shape[0] // b)
                for c in chunks
            ])
        return ExtremalResult(
            masks=masks.view(n_areas, b, h, w).transpose(0, 1).contiguous(),
            areas=area_t.to(x.device, x.dtype),
            scores=scores.view(n_areas, b).t().contiguous(),
            clean_scores=clean,
        )


def _extremal_energy(
    model: nn.Module, target: TargetLike, mask: Tensor, pyramid: Tensor, areas: Tensor, variant: Variant,
    weight: float, b: int, channels_last: bool,
) -> Tensor:
    copies = mask.shape[0] // b
    if variant == "dual":  # one forward for both games: preserved copies first, deleted copies after
        both = torch.cat([
            _perturb_pairs(pyramid, mask, channels_last), _perturb_pairs(pyramid, 1 - mask, channels_last)
        ])
        scores = copy_scores(target, model(both), 2 * copies)
        reward = scores[: mask.shape[0]] - scores[mask.shape[0] :]
    elif variant == "preserve":
        reward = copy_scores(target, model(_perturb_pairs(pyramid, mask, channels_last)), copies)
    else:
        reward = -copy_scores(target, model(_perturb_pairs(pyramid, 1 - mask, channels_last)), copies)
    return (-reward + weight * _area_loss(mask, areas)).sum()


class ExtremalPerturbation:
    """Captum-style front end of :func:`extremal_perturbation`.

    ``attribute`` returns the pointing-game map (:meth:`ExtremalResult.saliency`); ``explain`` returns the
    full :class:`ExtremalResult` with one mask per area.
    """

    def __init__(
        self,
        model: nn.Module,
        areas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.4),
        iterations: int = 800,
        lr: float = 0.05,
        area_weight: float = 30.0,
        area_growth: float = 32.0,
        variant: Variant = "preserve",
        step: int | None = None,
        sigma: float | None = None,
        max_blur: float | None = None,
        batch_size: int | None = None,
        channels_last: bool = False,
    ) -> None:
        self.model = model
        self.areas = areas
        self.iterations = iterations
        self.lr = lr
        self.area_weight = area_weight
        self.area_growth = area_growth
        self.variant = variant
        self.step = step
        self.sigma = sigma
        self.max_blur = max_blur
        self.batch_size = batch_size
        self.channels_last = channels_last

    def explain(self, inputs: Tensor, target: TargetLike) -> ExtremalResult:
        """Masks for every image and area."""
        return extremal_perturbation(
            self.model, inputs, target, areas=self.areas, iterations=self.iterations, lr=self.lr,
            area_weight=self.area_weight, area_growth=self.area_growth, variant=self.variant, step=self.step,
            sigma=self.sigma, max_blur=self.max_blur, batch_size=self.batch_size, channels_last=self.channels_last,
        )

    def attribute(self, inputs: Tensor, target: TargetLike) -> Tensor:
        """Summed, smoothed masks ``(B, 1, H, W)``."""
        return self.explain(inputs, target).saliency()
