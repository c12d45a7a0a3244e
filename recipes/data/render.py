"""Batched renderers for the built-in datasets: textures, object silhouettes and planted concepts.

Every function works on a whole batch at once (no per-sample Python loops) and draws its randomness from
an explicit ``torch.Generator``, so a dataset is a pure function of its seed. Masks are exact: a planted
concept's mask holds the pixels the concept changed, and it is non-empty whenever the concept is present.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "plus",
    "ring",
    "bar",
    "star",
    "dumbbell",
    "tee",
    "crescent",
)


@lru_cache(maxsize=1)
def texture_bank(size: int = 128) -> Tensor:
    """Grayscale texture photos shipped with scikit-image (brick, grass, gravel), plus their mirror images.

    Shape:
        - output: ``(6, size, size)`` float in [0, 1], each texture normalised to mean 0.5, std 0.18
    """
    import skimage.data

    photos = [skimage.data.brick(), skimage.data.grass(), skimage.data.gravel()]
    t = torch.from_numpy(np.stack(photos)).float().unsqueeze(1) / 255.0
    t = F.interpolate(t, size=(size, size), mode="area").squeeze(1)
    t = torch.cat([t, t.flip(-1)])
    t = (t - t.mean(dim=(1, 2), keepdim=True)) / t.std(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    return (0.5 + 0.18 * t).clamp(0, 1)


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def smooth_noise(g: torch.Generator, n: int, height: int, width: int, cells: int = 4) -> Tensor:
    """Low-frequency noise in [0, 1]: a random ``cells``×``cells`` grid upsampled bicubically.

    Shape:
        - output: ``(n, height, width)``
    """
    grid = torch.rand(n, 1, cells, cells, generator=g)
    up = F.interpolate(grid, size=(height, width), mode="bicubic", align_corners=False).squeeze(1)
    lo = up.amin(dim=(1, 2), keepdim=True)
    hi = up.amax(dim=(1, 2), keepdim=True)
    return (up - lo) / (hi - lo).clamp_min(1e-6)


def textured_background(g: torch.Generator, n: int, height: int, width: int) -> Tensor:
    """Colourised crops of the texture photos mixed with procedural noise.

    Shape:
        - output: ``(n, 3, height, width)`` in [0, 1]
    """
    bank = texture_bank()
    size = bank.shape[-1]
    tex_id = torch.randint(len(bank), (n,), generator=g)
    y0 = torch.randint(size - height + 1, (n,), generator=g) if height < size else torch.zeros(n, dtype=torch.long)
    x0 = torch.randint(size - width + 1, (n,), generator=g) if width < size else torch.zeros(n, dtype=torch.long)
    ys = (y0[:, None] + torch.arange(height)[None]).clamp_max(size - 1)
    xs = (x0[:, None] + torch.arange(width)[None]).clamp_max(size - 1)
    gray = bank[tex_id[:, None, None], ys[:, :, None], xs[:, None, :]]
    noise = smooth_noise(g, n, height, width, cells=5)
    mix = _uniform(g, n, 0.0, 0.5)[:, None, None]
    gray = (1 - mix) * gray + mix * noise
    # A muted colour per image, darker than the objects so that silhouettes stay visible.
    base = _uniform(g, n * 3, 0.15, 0.55).view(n, 3, 1, 1)
    return (base + 0.5 * (gray.unsqueeze(1) - 0.5)).clamp(0, 1)


def shape_mask(shape: int, u: Tensor, v: Tensor) -> Tensor:
    """Inside-mask of one shape of :data:`SHAPES` at local coordinates ``(u, v)`` (unit scale, centred).

    Shape:
        - u, v, output: ``(N, H, W)``
    """
    r2 = u * u + v * v
    au, av = u.abs(), v.abs()
    if shape == 0:
        return r2 < 0.64
    if shape == 1:
        return (au < 0.68) & (av < 0.68)
    if shape == 2:  # apex up: the half-width grows linearly from the apex to the base
        return (v <= 0.6) & (au <= (v + 0.75) * 0.62)
    if shape == 3:
        return ((au < 0.24) & (av < 0.85)) | ((av < 0.24) & (au < 0.85))
    if shape == 4:
        return (r2 < 0.7225) & (r2 > 0.25)
    if shape == 5:
        return (au < 0.85) & (av < 0.28)
    if shape == 6:
        return torch.sqrt(r2) < 0.48 + 0.37 * torch.cos(5 * torch.atan2(v, u))
    if shape == 7:
        return ((au - 0.45) ** 2 + v * v < 0.16) | ((au < 0.45) & (av < 0.12))
    if shape == 8:
        return ((au < 0.85) & ((v + 0.55).abs() < 0.22)) | ((au < 0.22) & (v > -0.55) & (v < 0.85))
    if shape == 9:
        return (r2 < 0.6724) & ((u - 0.38) ** 2 + (v + 0.1) ** 2 > 0.42)
    raise ValueError(f"Expected `shape` to be an index in [0, {len(SHAPES)}), but got {shape!r}.")


def draw_objects(
    g: torch.Generator, labels: Tensor, height: int, width: int, scale: tuple[float, float] = (0.28, 0.42)
) -> tuple[Tensor, Tensor, Tensor]:
    """Silhouettes of the class shapes with random size, position, rotation and colour.

    Args:
        labels: class index per image, in ``[0, len(SHAPES))``.
        scale: object radius as a fraction of the shorter image side.

    Returns:
        ``(mask, colour, centre_radius)``: the object's pixels, its RGB colour and ``(cx, cy, radius)``.

    Shape:
        - labels: ``(N,)``
        - mask: ``(N, H, W)`` bool; colour: ``(N, 3)``; centre_radius: ``(N, 3)``
    """
    n = labels.shape[0]
    side = min(height, width)
    radius = _uniform(g, n, *scale) * side
    cx = _uniform(g, n, 0.0, 1.0) * (width - 2 * radius) + radius
    cy = _uniform(g, n, 0.0, 1.0) * (height - 2 * radius) + radius
    theta = _uniform(g, n, -math.pi / 6, math.pi / 6)
    yy, xx = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    dx = (xx[None] - cx[:, None, None]) / radius[:, None, None]
    dy = (yy[None] - cy[:, None, None]) / radius[:, None, None]
    c, s = torch.cos(theta)[:, None, None], torch.sin(theta)[:, None, None]
    u, v = c * dx + s * dy, -s * dx + c * dy
    mask = torch.zeros(n, height, width, dtype=torch.bool)
    for shape in labels.unique().tolist():  # one pass per class, not per sample
        idx = (labels == shape).nonzero().squeeze(1)
        mask[idx] = shape_mask(shape, u[idx], v[idx])
    # Bright saturated colours: a random hue at full value, mixed a little with white.
    hue = torch.rand(n, generator=g)
    k = (torch.tensor([5.0, 3.0, 1.0])[None] + hue[:, None] * 6) % 6
    rgb = 1 - torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    colour = (0.65 + 0.35 * rgb) * _uniform(g, n, 0.8, 1.0)[:, None]
    return mask, colour, torch.stack([cx, cy, radius], dim=1)


def paint(images: Tensor, mask: Tensor, colour: Tensor, alpha: Tensor | float = 1.0) -> Tensor:
    """Blend ``colour`` into ``images`` over ``mask`` (in place on a copy).

    Shape:
        - images: ``(N, C, H, W)``; mask: ``(N, H, W)``; colour: ``(N, C)``; alpha: scalar or ``(N, H, W)``
    """
    a = mask.float() * (alpha if isinstance(alpha, float) else alpha)
    a = a.unsqueeze(1)
    return images * (1 - a) + colour[:, :, None, None] * a


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    radius = max(1, int(math.ceil(2.5 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = x.unsqueeze(1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    x = F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1))
    return x.squeeze(1)


def shadow_alpha(g: torch.Generator, object_mask: Tensor, centre_radius: Tensor, cover: float = 0.5) -> Tensor:
    """Soft shadow coverage in [0, 1] that crosses each object: tree canopy (blobs) or a straight boundary.

    Canopy shadows threshold low-frequency noise at its ``cover`` quantile over the object's pixels, so about
    that share of every object is shadowed; boundary shadows draw a line through the object's box and darken a
    random side, the line moved by ``(2 cover - 1)`` object radii towards the lit side. Both edges are softened
    with a Gaussian blur. The random draws do not depend on ``cover``.

    Raises:
        ValueError: if ``cover`` is not in (0, 1).

    Shape:
        - object_mask: ``(N, H, W)``; centre_radius: ``(N, 3)``; output: ``(N, H, W)``
    """
    if not 0.0 < cover < 1.0:
        raise ValueError(f"Expected the shadow `cover` to be in (0, 1), but got {cover!r}.")
    n, h, w = object_mask.shape
    noise = smooth_noise(g, n, h, w, cells=int(torch.randint(3, 6, (1,), generator=g)))
    inside = noise.masked_fill(~object_mask, float("nan")).view(n, -1)
    thresh = torch.nanquantile(inside, cover, dim=1).nan_to_num(cover)
    canopy = (noise < thresh[:, None, None]).float()

    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    cx, cy, rad = centre_radius.unbind(1)
    px = cx + _uniform(g, n, -0.4, 0.4) * rad
    py = cy + _uniform(g, n, -0.4, 0.4) * rad
    ang = _uniform(g, n, 0.0, 2 * math.pi)
    side = (xx[None] - px[:, None, None]) * torch.cos(ang)[:, None, None] + (yy[None] - py[:, None, None]) * torch.sin(
        ang
    )[:, None, None]
    line = (side > (1 - 2 * cover) * rad[:, None, None]).float()

    use_line = (torch.rand(n, generator=g) < 0.35)[:, None, None]
    hard = torch.where(use_line, line, canopy)
    soft = gaussian_blur(hard, sigma=max(0.6, min(h, w) / 40))
    # Keep every pixel the hard shadow covers fully covered: softness only spreads outwards.
    return torch.maximum(soft, hard)


def stripes_alpha(g: torch.Generator, n: int, h: int, w: int) -> Tensor:
    """Binary stripe pattern (random angle and period) inside a random rectangle covering 40–80% of each side.

    Shape:
        - output: ``(N, H, W)`` float in {0, 1}
    """
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    ang = _uniform(g, n, 0.0, math.pi)[:, None, None]
    period = _uniform(g, n, 3.0, 6.0)[:, None, None] * min(h, w) / 32
    phase = _uniform(g, n, 0.0, 1.0)[:, None, None]
    proj = xx[None] * torch.cos(ang) + yy[None] * torch.sin(ang)
    on = torch.frac(proj / period + phase) < 0.45
    rw = (_uniform(g, n, 0.4, 0.8) * w).long()
    rh = (_uniform(g, n, 0.4, 0.8) * h).long()
    x0 = (torch.rand(n, generator=g) * (w - rw + 1)).long()
    y0 = (torch.rand(n, generator=g) * (h - rh + 1)).long()
    ix = torch.arange(w)[None]
    iy = torch.arange(h)[None]
    in_x = (ix >= x0[:, None]) & (ix < (x0 + rw)[:, None])
    in_y = (iy >= y0[:, None]) & (iy < (y0 + rh)[:, None])
    return (on & in_y[:, :, None] & in_x[:, None, :]).float()


def foreign_material(g: torch.Generator, n: int, height: int, width: int) -> Tensor:
    """Grey speckle for occluders: per-pixel noise around 0.75, a material foreign to everything else drawn here.

    Backgrounds are muted colours (mostly darker than 0.55) with smooth photo or procedural texture, objects are
    flat saturated colours; a bright pixel-scale speckle resembles neither, so an occluder reads as a foreign
    object (issue 2's "foreign opaque blob"), not as a patch of background. It is also far from the neutral grey
    (0.5) that resampled patch embeddings pad with.

    Shape:
        - output: ``(n, 1, height, width)`` in [0.3, 1]
    """
    return (0.75 + 0.9 * (torch.rand(n, 1, height, width, generator=g) - 0.5)).clamp(0, 1)


def occluder_mask(g: torch.Generator, object_mask: Tensor, centre_radius: Tensor) -> Tensor:
    """An opaque blob (a noisy ellipse) centred on a point of the object, covering part of it.

    Shape:
        - output: ``(N, H, W)`` bool
    """
    n, h, w = object_mask.shape
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    cx, cy, rad = centre_radius.unbind(1)
    ang = _uniform(g, n, 0, 2 * math.pi)
    off = _uniform(g, n, 0.2, 0.6) * rad
    ox, oy = cx + off * torch.cos(ang), cy + off * torch.sin(ang)
    ra = (_uniform(g, n, 0.6, 0.9) * rad)[:, None, None]
    rb = (_uniform(g, n, 0.45, 0.7) * rad)[:, None, None]
    tilt = _uniform(g, n, 0, math.pi)
    c, s = torch.cos(tilt)[:, None, None], torch.sin(tilt)[:, None, None]
    dx, dy = xx[None] - ox[:, None, None], yy[None] - oy[:, None, None]
    u, v = c * dx + s * dy, -s * dx + c * dy
    wobble = 0.25 * (smooth_noise(g, n, h, w, cells=4) - 0.5)
    blob = (u / ra) ** 2 + (v / rb) ** 2 < 1 + wobble
    # The blob must touch the object; when a thin shape dodges it, fall back to a disc at the centre.
    misses = ~(blob & object_mask).flatten(1).any(1)
    disc = (xx[None] - cx[:, None, None]) ** 2 + (yy[None] - cy[:, None, None]) ** 2 < (0.45 * rad[:, None, None]) ** 2
    return torch.where(misses[:, None, None], disc, blob)


def random_colours(g: torch.Generator, n: int, lo: float = 0.0, hi: float = 1.0) -> Tensor:
    return _uniform(g, n * 3, lo, hi).view(n, 3)
