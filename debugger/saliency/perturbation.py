"""Perturbation attributions: occlusion and meaningful perturbation, and the blur pyramid they share with
extremal perturbations (:mod:`debugger.saliency.extremal`).

These treat the model as a black box and only differentiate w.r.t. a mask (never the weights). All are
batched: every occluded copy, or every (image, area) mask, goes through the model in one batch (optionally
chunked), and because the loss is a *sum* over independent masks optimised by element-wise optimisers
(SGD with momentum, Adam), optimising 16 images together gives the same masks as optimising them one by one.

Mask convention (seed 004 digest §1.2, resolving the thesis' inconsistency): ``m = 1`` keeps a pixel,
``m = 0`` perturbs it fully; the blur at a pixel is ``σ_max · (1 − m)``.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from debugger.saliency._core import attribution_mode, copy_scores, fix_target, prepare_input
from debugger.saliency.targets import ClassTarget, Score, TargetLike

Variant = Literal["preserve", "delete", "dual"]
Perturbation = Literal["blur", "constant", "fade"]
_VARIANTS = ("preserve", "delete", "dual")
_PERTURBATIONS = ("blur", "constant", "fade")


def _pair(v: int | tuple[int, int], name: str) -> tuple[int, int]:
    out = (v, v) if isinstance(v, int) else tuple(v)
    if len(out) != 2 or any(not isinstance(i, int) or i < 1 for i in out):
        raise ValueError(f"Expected `{name}` to be a positive int or a pair of them, but got {v!r}.")
    return out[0], out[1]


# --------------------------------------------------------------------------------------------- occlusion


def occlusion(
    model: nn.Module,
    inputs: Tensor,
    target: TargetLike,
    window: int | tuple[int, int] = 8,
    stride: int | tuple[int, int] = 4,
    baseline: float | Tensor = 0.0,
    batch_size: int | None = None,
) -> Tensor:
    """Sliding-window occlusion (Zeiler & Fergus 2014): the score drop when a window is set to ``baseline``.

    Windows start every ``stride`` pixels (the last one is cut at the border, so every pixel is covered) and
    span all channels; a pixel's value is the mean drop over the windows covering it (captum's convention).

    Shape:
        - inputs: ``(B, C, H, W)``
        - baseline: scalar or broadcastable to ``(B, C, H, W)``
        - return: ``(B, 1, H, W)``

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 1, bias=False))
        >>> with torch.no_grad(): _ = net[1].weight.fill_(1.0)
        >>> occlusion(net, torch.ones(1, 1, 2, 2), 0, window=1, stride=1).flatten().tolist()
        [1.0, 1.0, 1.0, 1.0]
    """
    wh, ww = _pair(window, "window")
    sh, sw = _pair(stride, "stride")
    if sh > wh or sw > ww:
        raise ValueError(f"Expected `stride` to be at most the window {window!r}, but got {stride!r}.")
    with attribution_mode(model), torch.no_grad():
        x = prepare_input(inputs, model)
        b, _, h, w = x.shape
        if wh > h or ww > w:
            raise ValueError(f"Expected `window` to fit in the {h}x{w} input, but got {window!r}.")
        target = fix_target(model, x, target)
        base = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x)
        clean = copy_scores(target, model(x), 1)
        ys = [i * sh for i in range(math.ceil((h - wh) / sh) + 1)]
        xs = [j * sw for j in range(math.ceil((w - ww) / sw) + 1)]
        masks = torch.zeros(len(ys) * len(xs), 1, h, w, dtype=x.dtype, device=x.device)
        for i, y0 in enumerate(ys):
            for j, x0 in enumerate(xs):
                masks[i * len(xs) + j, :, y0 : y0 + wh, x0 : x0 + ww] = 1.0
        n = masks.shape[0]
        per_chunk = n if batch_size is None else max(1, batch_size // b)
        drops = []
        for start in range(0, n, per_chunk):
            m = masks[start : start + per_chunk].unsqueeze(1)  # (n, 1, 1, H, W), copy-major over windows
            occluded = (x.unsqueeze(0) * (1 - m) + base.unsqueeze(0) * m).flatten(0, 1)
            scores = copy_scores(target, model(occluded), m.shape[0]).view(m.shape[0], b)
            drops.append(clean.unsqueeze(0) - scores)
        drop = torch.cat(drops)  # (n, B)
        total = torch.einsum("nb,nhw->bhw", drop, masks[:, 0])
        return (total / masks[:, 0].sum(0).clamp_min(1)).unsqueeze(1)


class Occlusion:
    """Captum-style front end of :func:`occlusion`."""

    def __init__(
        self,
        model: nn.Module,
        window: int | tuple[int, int] = 8,
        stride: int | tuple[int, int] = 4,
        baseline: float | Tensor = 0.0,
        batch_size: int | None = None,
    ) -> None:
        self.model = model
        self.window = window
        self.stride = stride
        self.baseline = baseline
        self.batch_size = batch_size

    def attribute(self, inputs: Tensor, target: TargetLike) -> Tensor:
        """Occlusion map ``(B, 1, H, W)`` (score drop; higher = more important)."""
        return occlusion(self.model, inputs, target, window=self.window, stride=self.stride, baseline=self.baseline,
                         batch_size=self.batch_size)


# ------------------------------------------------------------------------------------ blur and pyramids


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with reflect padding (replicate where the image is too small to reflect).

    Computed as weighted sums of shifted copies rather than a convolution, so every image is blurred by the
    same arithmetic whatever the batch size (convolution back ends pick their algorithm by batch size, and
    the last bits then differ): extremal perturbation batched over images reproduces one-at-a-time runs.

    Shape:
        - x: ``(N, C, H, W)``
        - return: ``(N, C, H, W)``
    """
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    taps = (k / k.sum()).tolist()
    h, w = x.shape[-2:]
    mode = "reflect" if radius < min(h, w) else "replicate"
    y = F.pad(x, (radius, radius, 0, 0), mode=mode)
    rows = y[..., :w] * taps[0]
    for i in range(1, len(taps)):
        rows.add_(y[..., i : i + w], alpha=taps[i])
    y = F.pad(rows, (0, 0, radius, radius), mode=mode)
    out = y[..., :h, :] * taps[0]
    for i in range(1, len(taps)):
        out.add_(y[..., i : i + h, :], alpha=taps[i])
    return out


def blur_pyramid(x: Tensor, max_sigma: float, levels: int = 8) -> Tensor:
    """``levels + 1`` copies of ``x`` blurred with ``σ = max_sigma · l / levels`` (level 0 is ``x``).

    Shape:
        - x: ``(B, C, H, W)``
        - return: ``(B, levels + 1, C, H, W)``
    """
    if levels < 1:
        raise ValueError(f"Expected `levels` to be a positive integer, but got {levels!r}.")
    return torch.stack([gaussian_blur(x, max_sigma * lvl / levels) for lvl in range(levels + 1)], 1)


def perturb_with_pyramid(pyramid: Tensor, mask: Tensor) -> Tensor:
    """Blur each pixel by ``σ_max · (1 − m)``, linearly interpolating between pyramid levels.

    Shape:
        - pyramid: ``(N, L + 1, C, H, W)``
        - mask: ``(N, 1, H, W)`` in ``[0, 1]``
        - return: ``(N, C, H, W)``
    """
    return _perturb_pairs(_level_pairs(pyramid), mask)


def _level_pairs(pyramid: Tensor) -> Tensor:
    """Each level next to its difference to the following one, ``(N, L, 2C, H, W)``: one gather per step."""
    return torch.cat([pyramid[:, :-1], pyramid[:, 1:] - pyramid[:, :-1]], dim=2)


def _perturb_pairs(pairs: Tensor, mask: Tensor, channels_last: bool = False) -> Tensor:
    return _PyramidBlend.apply(pairs, mask, channels_last)


class _PyramidBlend(torch.autograd.Function):
    """Blur by ``σ_max · (1 − m)`` from level pairs, with a hand-written backward.

    ``t = clamp((1 − m) · L, 0, L)``, ``lo = min(⌊t⌋, L − 1)``: the pixel is ``below[lo] + step[lo] · (t − lo)``.
    The floor is treated as a constant (floor/frac interpolation, not hat functions), so the gradient is
    ``−L · step[lo]`` summed over channels, non-zero at ``m = 0`` and ``m = 1`` too. One node in the graph
    instead of eight, and the output can be written channels-last directly (no extra copy for the model).
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, pairs: Tensor, mask: Tensor, channels_last: bool
    ) -> Tensor:
        levels, c = pairs.shape[1], pairs.shape[2] // 2
        t = (1 - mask) * levels  # continuous level index, (N, 1, H, W)
        inside = (t >= 0) & (t <= levels)  # clamp's gradient mask (boundaries included)
        t = t.clamp_(0, levels)
        lo = t.floor().clamp_(max=levels - 1)
        frac = t.sub_(lo)
        index = lo.long().unsqueeze(2).expand(-1, -1, pairs.shape[2], -1, -1)
        picked = pairs.gather(1, index).squeeze(1)
        below, step = picked[:, :c], picked[:, c:]
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        out = torch.addcmul(below, step, frac, out=torch.empty_like(below, memory_format=fmt))
        ctx.save_for_backward(step, frac, inside, index)
        ctx.levels = levels  # type: ignore[attr-defined]
        ctx.pairs_shape = pairs.shape  # type: ignore[attr-defined]
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        step, frac, inside, index = ctx.saved_tensors  # type: ignore[attr-defined]
        grad_pairs = grad_mask = None
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            picked = torch.cat([grad, grad * frac], 1).unsqueeze(1)
            grad_pairs = grad.new_zeros(ctx.pairs_shape).scatter_add_(1, index, picked)  # type: ignore[attr-defined]
        if ctx.needs_input_grad[1]:  # type: ignore[attr-defined]
            grad_mask = (grad * step).sum(1, keepdim=True).mul_(inside).mul_(-ctx.levels)  # type: ignore[attr-defined]
        return grad_pairs, grad_mask, None


def _perturb(x: Tensor, mask: Tensor, kind: Perturbation, pairs: Tensor | None) -> Tensor:
    if kind == "blur":
        assert pairs is not None  # internal invariant: the caller built the pyramid's level pairs
        return _perturb_pairs(pairs, mask)
    if kind == "constant":
        mean = x.mean(dim=(2, 3), keepdim=True)
        return x * mask + mean * (1 - mask)
    return x * mask  # fade to black


def _default_blur(size: tuple[int, int]) -> float:
    # TorchRay's 20 px at 224 px, i.e. ~9% of the short side, scaled to the input.
    return max(1.0, 0.09 * min(size))


# ----------------------------------------------------------------------------- meaningful perturbation


def _tv(m: Tensor, beta: float) -> Tensor:
    dy = (m[..., 1:, :] - m[..., :-1, :]).abs().pow(beta).flatten(1).sum(1)
    dx = (m[..., :, 1:] - m[..., :, :-1]).abs().pow(beta).flatten(1).sum(1)
    return dy + dx


def _scored_target(target: TargetLike, score: Score) -> TargetLike:
    if isinstance(target, int | Tensor) and not (isinstance(target, Tensor) and target.dim() == 3):
        return ClassTarget(target, score=score)
    return target


def meaningful_perturbation(
    model: nn.Module,
    inputs: Tensor,
    target: TargetLike,
    iterations: int = 300,
    lr: float = 0.1,
    l1: float = 1e-4,
    tv: float = 1e-2,
    tv_beta: float = 3.0,
    mask_scale: int = 4,
    perturbation: Perturbation = "blur",
    max_blur: float | None = None,
    jitter: int = 1,
    score: Score = "softmax",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Meaningful perturbation, deletion game (Fong & Vedaldi 2017; seed 004 Ch.3, eq. 4).

    Minimises ``l1·‖1 − m‖₁ + tv·Σ‖∇m‖_β^β + E_τ[f_c(Φ(x(· − τ); M))]`` over a low-resolution mask ``m``
    (``H / mask_scale`` per side) with Adam, projecting onto ``[0, 1]`` after each step. ``M`` is ``m``
    bilinearly upsampled; ``f_c`` is the target's softmax probability by default (``score`` applies when
    ``target`` is a class index, tensor or ``"predicted"``). ``jitter`` shifts the perturbed image by a random
    ``τ ∈ [0, jitter)`` pixels per iteration (4 at 224 px in the thesis). Deviation: the mask starts at all
    ones (keep) instead of the thesis' searched circular mask.

    Returns:
        Saliency ``1 − M``: high where deleting the region suppresses the class.

    Shape:
        - inputs: ``(B, C, H, W)``
        - return: ``(B, 1, H, W)`` in ``[0, 1]``
    """
    if iterations < 1:
        raise ValueError(f"Expected `iterations` to be a positive integer, but got {iterations!r}.")
    if perturbation not in _PERTURBATIONS:
        raise ValueError(f"Expected `perturbation` to be one of {_PERTURBATIONS}, but got {perturbation!r}.")
    if mask_scale < 1:
        raise ValueError(f"Expected `mask_scale` to be a positive integer, but got {mask_scale!r}.")
    target = _scored_target(target, score)
    with attribution_mode(model):
        x = prepare_input(inputs, model)
        target = fix_target(model, x, target)
        b, _, h, w = x.shape
        size = (h, w)
        pairs = _level_pairs(blur_pyramid(x, max_blur or _default_blur(size))) if perturbation == "blur" else None
        m = torch.ones(b, 1, max(1, h // mask_scale), max(1, w // mask_scale), device=x.device, dtype=x.dtype)
        m.requires_grad_(True)
        opt = torch.optim.Adam([m], lr=lr)
        for _ in range(iterations):
            up = F.interpolate(m, size=size, mode="bilinear", align_corners=False)
            xp = _perturb(x, up, perturbation, pairs)
            if jitter > 1:
                shift = torch.randint(0, jitter, (2,), generator=generator).tolist()
                xp = torch.roll(xp, shifts=(shift[0], shift[1]), dims=(2, 3))
            loss = (l1 * (1 - m).abs().flatten(1).sum(1) + tv * _tv(m, tv_beta) + copy_scores(target, model(xp), 1))
            (grad,) = torch.autograd.grad(loss.sum(), m)
            opt.zero_grad(set_to_none=True)
            m.grad = grad
            opt.step()
            with torch.no_grad():
                m.clamp_(0, 1)
        with torch.no_grad():
            return 1 - F.interpolate(m.detach(), size=size, mode="bilinear", align_corners=False)


class MeaningfulPerturbation:
    """Captum-style front end of :func:`meaningful_perturbation`; ``seed`` makes the jitter reproducible."""

    def __init__(
        self,
        model: nn.Module,
        iterations: int = 300,
        lr: float = 0.1,
        l1: float = 1e-4,
        tv: float = 1e-2,
        tv_beta: float = 3.0,
        mask_scale: int = 4,
        perturbation: Perturbation = "blur",
        max_blur: float | None = None,
        jitter: int = 1,
        score: Score = "softmax",
        seed: int = 0,
    ) -> None:
        self.model = model
        self.iterations = iterations
        self.lr = lr
        self.l1 = l1
        self.tv = tv
        self.tv_beta = tv_beta
        self.mask_scale = mask_scale
        self.perturbation = perturbation
        self.max_blur = max_blur
        self.jitter = jitter
        self.score = score
        self.seed = seed

    def attribute(self, inputs: Tensor, target: TargetLike) -> Tensor:
        """Deletion saliency ``(B, 1, H, W)``."""
        gen = torch.Generator().manual_seed(self.seed)
        return meaningful_perturbation(
            self.model, inputs, target, self.iterations, self.lr, self.l1, self.tv, self.tv_beta,
            self.mask_scale, self.perturbation, self.max_blur, self.jitter, self.score, gen,
        )


# ----------------------------------------------------------------------------- extremal perturbations
