"""NumPy kernels for one ``(H, W, C)`` image: the albumentations path.

The same maths as :mod:`augment.functional`, written again on NumPy arrays in the albumentations layout so
that per-sample pipelines (DataLoader workers) need no tensors; the parity tests pin the two against each
other pixel for pixel. Only fill noise is shared (drawn by :func:`augment.functional.seeded_noise`), so that
one seed means the same noise on both paths (and ``erf``, which NumPy lacks).
"""

from __future__ import annotations

import numpy as np
import torch

from augment import functional as AF

_SQRT2 = np.sqrt(2.0)


def _erf(x: np.ndarray) -> np.ndarray:
    # NumPy has no erf; torch's (float64, on a zero-copy view) avoids a SciPy dependency.
    return torch.special.erf(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))).numpy()


def soft_edge(signed_distance: np.ndarray, softness: float) -> np.ndarray:
    """Gaussian CDF of the signed distance (see :func:`augment.functional.soft_edge`)."""
    sigma = max(float(softness), 1e-4)
    return 0.5 * (1.0 + _erf(signed_distance / (sigma * _SQRT2)))


def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width]
    return xs.astype(np.float64), ys.astype(np.float64)


def shadow_region(kind: str, geometry: np.ndarray, softness: float, height: int, width: int) -> np.ndarray:
    """The shadow mask ``(H, W)`` in ``[0, 1]`` of one sample.

    Raises:
        ValueError: if ``kind`` is not one of ``line``, ``polygon``, ``canopy``.
    """
    xs, ys = _grid(height, width)
    g = np.asarray(geometry, dtype=np.float64)
    if kind == "line":
        px, py, angle = g
        signed = (xs - px) * np.cos(angle) + (ys - py) * np.sin(angle)
    elif kind == "polygon":
        inside = np.zeros((height, width), dtype=bool)
        dist = np.full((height, width), np.inf)
        k = g.shape[0]
        for i in range(k):
            ax, ay = g[i]
            bx, by = g[(i + 1) % k]
            straddles = (ay > ys) != (by > ys)
            dy = by - ay if by != ay else 1.0
            x_cross = ax + (ys - ay) * (bx - ax) / dy
            inside ^= straddles & (xs < x_cross)
            ex, ey = bx - ax, by - ay
            t = np.clip(((xs - ax) * ex + (ys - ay) * ey) / max(ex * ex + ey * ey, 1e-12), 0.0, 1.0)
            dist = np.minimum(dist, np.sqrt((xs - ax - t * ex) ** 2 + (ys - ay - t * ey) ** 2))
        signed = np.where(inside, dist, -dist)
    elif kind == "canopy":
        signed = np.full((height, width), -np.inf)
        for cx, cy, rx, ry, angle in g:
            dx, dy = xs - cx, ys - cy
            c, s = np.cos(angle), np.sin(angle)
            u = (dx * c + dy * s) / max(rx, 1e-6)
            v = (-dx * s + dy * c) / max(ry, 1e-6)
            signed = np.maximum(signed, (1.0 - np.sqrt(u * u + v * v)) * min(rx, ry))
    else:
        raise ValueError(f"Expected `kind` to be one of {AF.SHADOW_KINDS}, but got {kind!r}.")
    return soft_edge(signed, softness)


def _per_channel(name: str, value: float | tuple[float, ...], channels: int) -> np.ndarray:
    v = np.asarray(value, dtype=np.float64)
    if v.ndim != 0 and v.shape != (channels,):
        raise ValueError(f"Expected `{name}` to be a number or {channels} numbers (one per channel), "
                         f"but got {v.shape} values.")
    return v


def darken(image: np.ndarray, region: np.ndarray, intensity: float, floor: float | tuple[float, ...] = 0.0
           ) -> np.ndarray:
    """``x - intensity · region · (x - floor)`` on a float ``(H, W, C)`` image."""
    weight = (region * intensity)[..., None]
    return image - weight * (image - _per_channel("floor", floor, image.shape[-1]))


def boxes_region(boxes: np.ndarray, valid: np.ndarray, height: int, width: int) -> np.ndarray:
    """Union ``(H, W)`` of the valid boxes, clipped by the image."""
    out = np.zeros((height, width), dtype=np.float64)
    for (x0, y0, x1, y1), ok in zip(np.asarray(boxes).reshape(-1, 4), np.asarray(valid).reshape(-1), strict=True):
        if ok:
            out[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 1.0
    return out


def _correlate_edge(image: np.ndarray, k: np.ndarray, axis: int) -> np.ndarray:
    r = (len(k) - 1) // 2
    pad = [(0, 0)] * image.ndim
    pad[axis] = (r, r)
    padded = np.pad(image, pad, mode="edge")
    n = image.shape[axis]
    out = np.zeros_like(image, dtype=np.float64)
    for i, w in enumerate(k):
        out += w * np.take(padded, np.arange(i, i + n), axis=axis)
    return out


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an ``(H, W, C)`` image with edge-replicating borders."""
    k = AF.gaussian_kernel1d(sigma, dtype=torch.float64).numpy()
    return _correlate_edge(_correlate_edge(image, k, axis=1), k, axis=0)


def occlude(image: np.ndarray, region: np.ndarray, fill: str = "mean", value: float | tuple[float, ...] = 0.0,
            noise_seed: int = 0, noise_std: float = 1.0, blur_sigma: float = 4.0) -> np.ndarray:
    """Replace the pixels of ``region`` in a float ``(H, W, C)`` image by a fill (see
    :func:`augment.functional.occlude`).

    Raises:
        ValueError: if ``fill`` is unknown or ``value`` has neither one nor ``C`` entries.
    """
    h, w, c = image.shape
    v = _per_channel("value", value, c)
    if fill == "mean":
        filler = np.broadcast_to(v, image.shape)
    elif fill == "noise":
        noise = AF.seeded_noise(torch.tensor([noise_seed]), c, h, w)[0].numpy().transpose(1, 2, 0)
        filler = v + noise_std * noise.astype(np.float64)
    elif fill == "blur":
        filler = gaussian_blur(image, blur_sigma)
    else:
        raise ValueError(f"Expected `fill` to be one of {AF.FILL_MODES}, but got {fill!r}.")
    r = region[..., None]
    return image * (1.0 - r) + filler * r
