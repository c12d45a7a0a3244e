"""Batched torch kernels: deterministic, parameter-in, pixels-out.

Every function here is pure: it takes images (or only a size) plus already-sampled parameters and returns
tensors on the images' device. Randomness lives in :mod:`augment.params`; the ``nn.Module`` and
albumentations front ends only glue the two together.

Conventions (one for the whole package):

- A **region** is a float map ``(B, 1, H, W)`` in ``[0, 1]``: 1 where a pixel is changed (shadowed or
  occluded), 0 where it is kept. It is the ground-truth mask of the synthetic concept. The "keep mask" ``M``
  of Fong & Vedaldi's ``X ⊙ M`` is ``1 - region``.
- Pixel ``(i, j)`` sits at coordinate ``x = j``, ``y = i``; boxes are ``x0, y0, x1, y1`` with exclusive ends.
- Shadow boundaries are softened with the closed form of a Gaussian blur of a hard edge: the Gaussian CDF of
  the signed distance to the edge (exact for the straight line of seed 000 §7.2, a close approximation for
  polygon corners and ellipses). This avoids a convolution per image and costs one ``erf`` per pixel.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

ShadowKind = Literal["line", "polygon", "canopy"]
FillMode = Literal["mean", "noise", "blur"]
SHADOW_KINDS: tuple[str, ...] = ("line", "polygon", "canopy")
FILL_MODES: tuple[str, ...] = ("mean", "noise", "blur")

_SQRT2 = math.sqrt(2.0)
_MIN_SOFTNESS = 1e-4


def _grid(height: int, width: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    ys = torch.arange(height, device=device, dtype=dtype).view(1, height, 1)
    xs = torch.arange(width, device=device, dtype=dtype).view(1, 1, width)
    return xs, ys


def _per_channel(name: str, value: Tensor | float | tuple[float, ...], images: Tensor) -> Tensor:
    v = torch.as_tensor(value, dtype=images.dtype, device=images.device)
    if v.dim() == 0:
        return v
    if v.dim() != 1 or v.shape[0] != images.shape[1]:
        raise ValueError(f"Expected `{name}` to be a number or {images.shape[1]} numbers (one per channel), "
                         f"but got {tuple(v.shape)} values.")
    return v.view(1, -1, 1, 1)


def soft_edge(signed_distance: Tensor, softness: Tensor) -> Tensor:
    """Gaussian-blurred indicator of ``signed_distance >= 0``.

    Blurring the indicator of a half-plane with a Gaussian of standard deviation ``softness`` gives exactly
    the normal CDF of the signed distance to its edge; ``softness = 0`` is a hard edge (0.5 on the edge).

    Shape:
        - signed_distance: ``(B, H, W)``
        - softness: ``(B,)``
        - output: ``(B, H, W)``

    Example:
        >>> soft_edge(torch.tensor([[[-50.0, 0.0, 50.0]]]), torch.tensor([2.0]))
        tensor([[[0.0000, 0.5000, 1.0000]]])
    """
    sigma = softness.clamp_min(_MIN_SOFTNESS).view(-1, 1, 1).to(signed_distance.dtype)
    return torch.div(signed_distance, sigma * _SQRT2).erf_().add_(1.0).mul_(0.5)


def line_shadow_region(geometry: Tensor, softness: Tensor, height: int, width: int) -> Tensor:
    """Region on one side of a line (seed 000 §7.2), with a soft boundary.

    ``geometry[b] = (px, py, angle)``: the line passes through ``(px, py)`` with unit normal
    ``n = (cos angle, sin angle)``; the shadow is where ``<u - p, n> >= 0`` (a uniform angle makes both
    sides equally likely).

    Shape:
        - geometry: ``(B, 3)``
        - softness: ``(B,)``
        - output: ``(B, 1, H, W)``

    Example:
        >>> r = line_shadow_region(torch.tensor([[2.0, 0.0, 0.0]]), torch.zeros(1), 2, 4)
        >>> r[0, 0]
        tensor([[0.0000, 0.0000, 0.5000, 1.0000],
                [0.0000, 0.0000, 0.5000, 1.0000]])
    """
    xs, ys = _grid(height, width, geometry.device, geometry.dtype)
    px, py, angle = (geometry[:, i].view(-1, 1, 1) for i in range(3))
    distance = (xs - px) * torch.cos(angle) + (ys - py) * torch.sin(angle)
    return soft_edge(distance, softness).unsqueeze(1)


def polygon_shadow_region(vertices: Tensor, softness: Tensor, height: int, width: int) -> Tensor:
    """Region inside a polygon (even-odd rule), with a soft boundary.

    Shape:
        - vertices: ``(B, K, 2)`` as ``(x, y)``, in drawing order, ``K >= 3``
        - softness: ``(B,)``
        - output: ``(B, 1, H, W)``

    Example:
        >>> square = torch.tensor([[[1.0, 1.0], [3.0, 1.0], [3.0, 3.0], [1.0, 3.0]]])
        >>> (polygon_shadow_region(square, torch.zeros(1), 5, 5)[0, 0] > 0.5).sum().item()
        1
    """
    b, k, _ = vertices.shape
    xs, ys = _grid(height, width, vertices.device, vertices.dtype)
    inside = torch.zeros(b, height, width, dtype=torch.bool, device=vertices.device)
    dist = torch.full((b, height, width), float("inf"), dtype=vertices.dtype, device=vertices.device)
    # One edge at a time keeps every temporary at (B, H, W); the crossing abscissa depends on the row only.
    for i in range(k):
        ax, ay = vertices[:, i, 0].view(-1, 1, 1), vertices[:, i, 1].view(-1, 1, 1)
        bx, by = vertices[:, (i + 1) % k, 0].view(-1, 1, 1), vertices[:, (i + 1) % k, 1].view(-1, 1, 1)
        # Even-odd crossing test for a ray towards +x; rows the edge does not straddle cross at -inf (never).
        straddles = (ay > ys) != (by > ys)  # (B, H, 1)
        x_cross = ax + (ys - ay) * (bx - ax) / torch.where(by == ay, torch.ones_like(by), by - ay)
        inside ^= xs < torch.where(straddles, x_cross, float("-inf"))
        # Distance to the edge segment; its projection parameter is a row term plus a column term.
        ex, ey = bx - ax, by - ay
        inv = 1.0 / (ex * ex + ey * ey).clamp_min(1e-12)
        t = ((xs - ax) * (ex * inv) + (ys - ay) * (ey * inv)).clamp_(0.0, 1.0)
        dx = (xs - ax) - t * ex
        dy = t.mul_(ey).neg_().add_(ys - ay)
        torch.minimum(dist, torch.hypot(dx, dy), out=dist)
    signed = torch.where(inside, dist, dist.neg())
    return soft_edge(signed, softness).unsqueeze(1)


def canopy_shadow_region(blobs: Tensor, softness: Tensor, height: int, width: int) -> Tensor:
    """Union of ellipses, like light through a canopy, with a soft boundary.

    ``blobs[b, n] = (cx, cy, rx, ry, angle)``. The signed distance to an ellipse is approximated by
    ``(1 - ρ) · min(rx, ry)`` with ``ρ`` the normalised radius (exact for circles).

    Shape:
        - blobs: ``(B, N, 5)``
        - softness: ``(B,)``
        - output: ``(B, 1, H, W)``

    Example:
        >>> disc = torch.tensor([[[2.0, 2.0, 1.0, 1.0, 0.0]]])
        >>> (canopy_shadow_region(disc, torch.zeros(1), 5, 5)[0, 0] >= 0.5).sum().item()
        5
    """
    b, n, _ = blobs.shape
    xs, ys = _grid(height, width, blobs.device, blobs.dtype)
    signed = torch.full((b, height, width), float("-inf"), dtype=blobs.dtype, device=blobs.device)
    for i in range(n):
        cx, cy, rx, ry, angle = (blobs[:, i, j].view(-1, 1, 1) for j in range(5))
        c, s = torch.cos(angle), torch.sin(angle)
        inv_rx, inv_ry = 1.0 / rx.clamp_min(1e-6), 1.0 / ry.clamp_min(1e-6)
        # Rotated, normalised coordinates: each a row term plus a column term.
        u = (xs - cx) * (c * inv_rx) + (ys - cy) * (s * inv_rx)
        v = (ys - cy) * (c * inv_ry) - (xs - cx) * (s * inv_ry)
        m = torch.minimum(rx, ry)
        torch.maximum(signed, torch.hypot(u, v).mul_(m.neg()).add_(m), out=signed)
    return soft_edge(signed, softness).unsqueeze(1)


def shadow_region(kind: ShadowKind, geometry: Tensor, softness: Tensor, height: int, width: int) -> Tensor:
    """Dispatch to the region function of a shadow ``kind``.

    Shape:
        - geometry: ``(B, 3)`` (line), ``(B, K, 2)`` (polygon) or ``(B, N, 5)`` (canopy)
        - softness: ``(B,)``
        - output: ``(B, 1, H, W)``

    Raises:
        ValueError: if ``kind`` is not one of ``line``, ``polygon``, ``canopy``.
    """
    if kind == "line":
        return line_shadow_region(geometry, softness, height, width)
    if kind == "polygon":
        return polygon_shadow_region(geometry, softness, height, width)
    if kind == "canopy":
        return canopy_shadow_region(geometry, softness, height, width)
    raise ValueError(f"Expected `kind` to be one of {SHADOW_KINDS}, but got {kind!r}.")


def darken(
    images: Tensor, region: Tensor, intensity: Tensor, floor: Tensor | float | tuple[float, ...] = 0.0
) -> Tensor:
    """Move pixels towards ``floor`` (black) by ``intensity`` inside ``region``.

    ``out = x - intensity · region · (x - floor)``; with images in ``[0, 1]`` and ``floor = 0`` this is the
    multiplicative brightness reduction of seed 000 §7.2. For normalised images pass the normalised black,
    ``floor = -mean / std`` per channel.

    Shape:
        - images: ``(B, C, H, W)``
        - region: ``(B, 1, H, W)``
        - intensity: ``(B,)``
        - floor: scalar or ``(C,)``
        - output: like ``images``

    Raises:
        ValueError: if ``floor`` has neither one nor ``C`` entries.

    Example:
        >>> darken(torch.ones(1, 1, 1, 2), torch.tensor([[[[0.0, 1.0]]]]), torch.tensor([0.5]))
        tensor([[[[1.0000, 0.5000]]]])
    """
    weight = region.to(torch.float32) * intensity.to(device=region.device, dtype=torch.float32).view(-1, 1, 1, 1)
    return scale_towards(images, 1.0 - weight, floor)


def scale_towards(images: Tensor, factor: Tensor, floor: Tensor | float | tuple[float, ...] = 0.0,
                  out: Tensor | None = None) -> Tensor:
    """``floor + factor · (x - floor)``: one pass over the images when ``floor`` is 0.

    Shape:
        - images: ``(B, C, H, W)``
        - factor: ``(B, 1, H, W)``
        - floor: scalar or ``(C,)``
        - out: optional ``(B, C, H, W)`` tensor written in place and returned
        - output: like ``images``

    Raises:
        ValueError: if ``floor`` has neither one nor ``C`` entries.
    """
    factor = factor.to(images.dtype)
    if isinstance(floor, int | float) and floor == 0:
        return torch.mul(images, factor, out=out) if out is not None else images * factor
    floor_t = _per_channel("floor", floor, images)
    if out is not None:
        return torch.addcmul(floor_t, images - floor_t, factor, out=out)
    return torch.addcmul(floor_t, images - floor_t, factor)


def chunk_rows(height: int, width: int, pixels: int = 1 << 18) -> int:
    """How many ``height × width`` maps make about ``pixels`` pixels (at least one): a cache-sized batch chunk.

    Example:
        >>> chunk_rows(224, 224), chunk_rows(64, 64)
        (5, 64)
    """
    return max(1, pixels // (height * width))


def line_shadow_factor(geometry: Tensor, softness: Tensor, strength: Tensor, height: int, width: int) -> Tensor:
    """``1 - strength · line_shadow_region(...)``, fused: the brightness factor of a line shadow.

    The signed distance to a line is a row term plus a column term, so the per-pixel work is one add, one
    ``erf`` and one multiply-add: ``1 - s/2 - (s/2) · erf(d / (σ√2))``.

    Shape:
        - geometry: ``(B, 3)``
        - softness: ``(B,)``
        - strength: ``(B,)``, the intensity (0 for samples left unchanged)
        - output: ``(B, 1, H, W)``
    """
    b = geometry.shape[0]
    xs, ys = _grid(height, width, geometry.device, geometry.dtype)
    px, py, angle = (geometry[:, i].view(-1, 1, 1) for i in range(3))
    k = 1.0 / (softness.clamp_min(_MIN_SOFTNESS).to(geometry.dtype) * _SQRT2).view(-1, 1, 1)
    t = ((ys - py) * (torch.sin(angle) * k)) + ((xs - px) * (torch.cos(angle) * k))
    t = t.erf_()
    half = (0.5 * strength.to(t.dtype)).view(b, 1, 1)
    return torch.addcmul(1.0 - half, t, half, value=-1.0).unsqueeze(1)


def boxes_region(boxes: Tensor, valid: Tensor, height: int, width: int) -> Tensor:
    """Union of axis-aligned boxes; boxes may overflow the image and are clipped by it.

    Shape:
        - boxes: ``(B, N, 4)`` int64, ``x0, y0, x1, y1`` with exclusive ends
        - valid: ``(B, N)`` bool, which boxes count
        - output: ``(B, 1, H, W)`` float, 1 inside any valid box

    Example:
        >>> r = boxes_region(torch.tensor([[[-1, 0, 1, 1]]]), torch.tensor([[True]]), 2, 3)
        >>> r[0, 0]
        tensor([[1., 0., 0.],
                [0., 0., 0.]])
    """
    device = boxes.device
    xs = torch.arange(width, device=device).view(1, 1, width)
    ys = torch.arange(height, device=device).view(1, 1, height)
    in_x = (xs >= boxes[..., 0:1]) & (xs < boxes[..., 2:3]) & valid[..., None]  # (B, N, W)
    in_y = (ys >= boxes[..., 1:2]) & (ys < boxes[..., 3:4])  # (B, N, H)
    # Sum of per-box outer products: one batched matmul instead of a (B, N, H, W) boolean tensor.
    count = torch.einsum("bnh,bnw->bhw", in_y.float(), in_x.float())
    return (count > 0).float().unsqueeze(1)


def gaussian_kernel1d(sigma: float, dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """Normalised 1-D Gaussian taps with radius ``ceil(3 sigma)`` (at least 1).

    Example:
        >>> gaussian_kernel1d(1.0).shape
        torch.Size([7])
    """
    radius = max(1, math.ceil(3.0 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    return (k / k.sum()).to(dtype=dtype, device=device)


def gaussian_blur(images: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur with edge-replicating borders.

    Shape:
        - images: ``(B, C, H, W)``
        - output: like ``images``

    Example:
        >>> gaussian_blur(torch.ones(1, 2, 5, 5), 1.5).allclose(torch.ones(1, 2, 5, 5))
        True
    """
    b, c, h, w = images.shape
    k = gaussian_kernel1d(sigma, images.dtype, images.device)
    r = (k.numel() - 1) // 2
    x = images.reshape(b * c, 1, h, w)
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return x.reshape(b, c, h, w)


def seeded_noise(seeds: Tensor, channels: int, height: int, width: int) -> Tensor:
    """Standard normal noise, one independent CPU stream per sample, reproducible from its seed.

    Both front ends draw fill noise here, so the same seed gives the same pixels on both paths.

    Shape:
        - seeds: ``(B,)`` int64
        - output: ``(B, C, H, W)`` float32 on the CPU
    """
    out = torch.empty(seeds.shape[0], channels, height, width)
    g = torch.Generator()
    for i, s in enumerate(seeds.tolist()):
        g.manual_seed(int(s))
        out[i] = torch.randn(channels, height, width, generator=g)
    return out


def occlude(
    images: Tensor,
    region: Tensor,
    fill: FillMode = "mean",
    value: Tensor | float | tuple[float, ...] = 0.0,
    noise_seeds: Tensor | None = None,
    noise_std: float = 1.0,
    blur_sigma: float = 4.0,
) -> Tensor:
    """Replace the pixels of ``region`` by a fill: ``x ⊙ (1 - region) + fill ⊙ region``.

    - ``mean``: the constant ``value`` (the dataset mean: 0 after normalisation, Fong & Vedaldi C.1).
    - ``noise``: ``value + noise_std · N(0, 1)``, drawn per sample from ``noise_seeds``.
    - ``blur``: the image blurred with a Gaussian of ``blur_sigma`` pixels.

    Shape:
        - images: ``(B, C, H, W)``
        - region: ``(B, 1, H, W)``
        - value: scalar or ``(C,)``
        - noise_seeds: ``(B,)`` int64, required for ``noise``
        - output: like ``images``

    Raises:
        ValueError: if ``fill`` is unknown, ``noise`` is asked for without ``noise_seeds``, or ``value`` has
            neither one nor ``C`` entries.

    Example:
        >>> occlude(torch.ones(1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]]]]))
        tensor([[[[0., 1.]]]])
    """
    value_t = _per_channel("value", value, images)
    if fill == "mean":
        filler: Tensor = value_t.expand_as(images)
    elif fill == "noise":
        if noise_seeds is None:
            raise ValueError("Expected `noise_seeds` to be a (B,) int64 tensor for fill='noise', but got None.")
        b, c, h, w = images.shape
        noise = seeded_noise(noise_seeds.cpu(), c, h, w).to(device=images.device, dtype=images.dtype)
        filler = value_t + noise_std * noise
    elif fill == "blur":
        filler = gaussian_blur(images, blur_sigma)
    else:
        raise ValueError(f"Expected `fill` to be one of {FILL_MODES}, but got {fill!r}.")
    r = region.to(images.dtype)
    # One full-size allocation: the kept pixels, then the fill added in place.
    return (images * (1.0 - r)).addcmul_(filler, r)


def box_sums(maps: Tensor, size: int) -> Tensor:
    """Sum of every ``size × size`` window fully inside the map (a box filter with stride 1).

    Uses an integral image in float64, so the cost does not grow with ``size``.

    Shape:
        - maps: ``(B, H, W)``
        - output: ``(B, H - size + 1, W - size + 1)``, entry ``[b, y, x]`` is the window with top-left ``(x, y)``
    """
    integral = F.pad(maps.double().cumsum(1).cumsum(2), (1, 0, 1, 0))
    s = size
    return integral[:, s:, s:] - integral[:, :-s, s:] - integral[:, s:, :-s] + integral[:, :-s, :-s]


def saliency_boxes(saliency: Tensor, height: int, width: int, size: int, jitter: Tensor) -> tuple[Tensor, Tensor]:
    """The most salient non-overlapping ``size × size`` boxes, jittered, fully inside the image (C.1).

    The saliency map is upsampled bilinearly to ``height × width``; box ``n`` is the maximum-sum window among
    those not overlapping boxes ``0 .. n-1``, shifted by ``jitter[:, n]`` and clamped inside the image. When no
    window is left (the image is too small for ``N`` disjoint boxes), the box is marked invalid.

    Shape:
        - saliency: ``(B, h, w)``, any non-negative scale
        - jitter: ``(B, N, 2)`` int64 offsets ``(dx, dy)``
        - output: boxes ``(B, N, 4)`` int64 and valid ``(B, N)`` bool

    Raises:
        ValueError: if ``size`` does not fit inside the image.

    Example:
        >>> s = torch.zeros(1, 8, 8); s[0, 5, 6] = 1.0
        >>> saliency_boxes(s, 8, 8, 2, torch.zeros(1, 1, 2, dtype=torch.long))[0].tolist()
        [[[5, 4, 7, 6]]]
    """
    if not 1 <= size <= min(height, width):
        raise ValueError(f"Expected `size` to be in [1, {min(height, width)}] for a {height}x{width} image, "
                         f"but got {size!r}.")
    b, n = jitter.shape[0], jitter.shape[1]
    sal = saliency.float().unsqueeze(1)
    if sal.shape[-2:] != (height, width):
        sal = F.interpolate(sal, size=(height, width), mode="bilinear", align_corners=False)
    scores = box_sums(sal[:, 0], size)  # (B, H', W')
    hh, ww = scores.shape[1], scores.shape[2]
    ys = torch.arange(hh, device=scores.device).view(1, hh, 1)
    xs = torch.arange(ww, device=scores.device).view(1, 1, ww)
    boxes = torch.zeros(b, n, 4, dtype=torch.long, device=scores.device)
    valid = torch.zeros(b, n, dtype=torch.bool, device=scores.device)
    jitter = jitter.to(scores.device)
    for i in range(n):
        flat = scores.reshape(b, -1)
        best = flat.argmax(dim=1)
        ok = torch.isfinite(flat.gather(1, best[:, None]))[:, 0]
        by = torch.div(best, ww, rounding_mode="floor")
        bx = best % ww
        x0 = (bx + jitter[:, i, 0]).clamp(0, ww - 1)
        y0 = (by + jitter[:, i, 1]).clamp(0, hh - 1)
        if i > 0:
            # A jittered box must stay clear of the earlier ones; the unjittered one always is.
            prev = boxes[:, :i]
            clash = (((prev[..., 0] - x0[:, None]).abs() < size) & ((prev[..., 1] - y0[:, None]).abs() < size)
                     & valid[:, :i]).any(dim=1)
            x0 = torch.where(clash, bx, x0)
            y0 = torch.where(clash, by, y0)
        boxes[:, i] = torch.stack([x0, y0, x0 + size, y0 + size], dim=1)
        valid[:, i] = ok
        overlaps = ((ys - y0.view(-1, 1, 1)).abs() < size) & ((xs - x0.view(-1, 1, 1)).abs() < size)
        scores = scores.masked_fill(overlaps, float("-inf"))
    return boxes, valid


def mask_bounding_boxes(masks: Tensor) -> Tensor:
    """Bounding box of each mask's non-zero pixels, or the whole image when a mask is empty.

    Shape:
        - masks: ``(B, H, W)``
        - output: ``(B, 4)`` float, ``x0, y0, x1, y1`` with exclusive ends

    Example:
        >>> m = torch.zeros(1, 4, 5, dtype=torch.bool); m[0, 1:3, 2] = True
        >>> mask_bounding_boxes(m).tolist()
        [[2.0, 1.0, 3.0, 3.0]]
    """
    b, h, w = masks.shape
    m = masks != 0
    cols = m.any(dim=1)  # (B, W)
    rows = m.any(dim=2)  # (B, H)
    xr = torch.arange(w, device=masks.device)
    yr = torch.arange(h, device=masks.device)
    x0 = torch.where(cols, xr, w).amin(dim=1)
    x1 = torch.where(cols, xr + 1, 0).amax(dim=1)
    y0 = torch.where(rows, yr, h).amin(dim=1)
    y1 = torch.where(rows, yr + 1, 0).amax(dim=1)
    empty = ~cols.any(dim=1)
    out = torch.stack([x0, y0, x1, y1], dim=1).float()
    full = torch.tensor([0.0, 0.0, float(w), float(h)], device=masks.device)
    return torch.where(empty[:, None], full, out)
