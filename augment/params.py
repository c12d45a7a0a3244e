"""Parameter samplers and the frozen parameter records they return.

Sampling is separate from applying: a sampler draws every random quantity of a batch from an explicit
``torch.Generator`` (on the CPU, so a run is reproducible whatever the images' device) into a frozen record;
the kernels in :mod:`augment.functional` then apply it deterministically. A record can be replayed on other
images, logged (``to_dict`` gives plain JSON types), restored (``from_dict``) and cut into per-sample dicts
(``item``) for the albumentations front end.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from augment import functional as AF

_SEED_HIGH = 2**62


def check_probability(name: str, p: float) -> float:
    """Return ``p`` as a float if it lies in ``[0, 1]``.

    Raises:
        ValueError: otherwise.
    """
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"Expected `{name}` to be a probability in [0, 1], but got {p!r}.")
    return float(p)


def check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    """Return ``value`` as a ``(lo, hi)`` tuple with ``low <= lo <= hi <= high``.

    Raises:
        ValueError: otherwise.
    """
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"Expected `{name}` to be a pair (lo, hi), but got {value!r}.") from None
    if not low <= lo <= hi <= high:
        raise ValueError(
            f"Expected `{name}` to be a pair (lo, hi) with {low} <= lo <= hi <= {high}, but got {value!r}."
        )
    return lo, hi


def check_positive_int(name: str, value: int, minimum: int = 1) -> int:
    """Return ``value`` if it is an integer ``>= minimum``.

    Raises:
        ValueError: otherwise.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Expected `{name}` to be an integer >= {minimum}, but got {value!r}.")
    return value


def check_value(name: str, value: float | Sequence[float]) -> float | tuple[float, ...]:
    """Return a fill / floor value as a float or a tuple of floats (one per channel).

    Raises:
        ValueError: if ``value`` is neither a number nor a sequence of numbers.
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise ValueError(f"Expected `{name}` to be a number or one number per channel, but got {value!r}.")
    try:
        return tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"Expected `{name}` to be a number or one number per channel, but got {value!r}.") from None


def check_generator(generator: Any) -> torch.Generator:
    """Return ``generator`` if it is a CPU ``torch.Generator``.

    Raises:
        ValueError: otherwise.
    """
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError(f"Expected `generator` to be a CPU torch.Generator, but got {generator!r}.")
    return generator


def sample_applied(batch_size: int, probabilities: Tensor | float, generator: torch.Generator) -> Tensor:
    """Draw which samples are augmented: sample ``b`` with probability ``probabilities[b]``.

    Shape:
        - probabilities: scalar or ``(B,)``
        - output: ``(B,)`` bool on the CPU

    Raises:
        ValueError: if ``probabilities`` is not a scalar or ``(B,)`` tensor of values in ``[0, 1]``.
    """
    p = torch.as_tensor(probabilities, dtype=torch.float32).detach().cpu()
    if p.dim() == 0:
        p = p.expand(batch_size)
    if p.shape != (batch_size,) or bool(((p < 0) | (p > 1) | p.isnan()).any()):
        raise ValueError(f"Expected `probabilities` to be a scalar or a ({batch_size},) tensor of values in [0, 1], "
                         f"but got {probabilities!r}.")
    u = torch.rand(batch_size, generator=generator)
    return u < p


def _uniform(shape: tuple[int, ...], lo: Tensor | float, hi: Tensor | float, generator: torch.Generator) -> Tensor:
    return torch.as_tensor(lo) + (torch.as_tensor(hi) - torch.as_tensor(lo)) * torch.rand(shape, generator=generator)


class _Record:
    """Serialisation shared by the parameter records (tensor fields become shape/dtype/values)."""

    def __len__(self) -> int:
        return int(self.applied.shape[0])  # type: ignore[attr-defined]

    def to(self, device: torch.device | str) -> Any:
        kw = {f.name: (getattr(self, f.name).to(device) if isinstance(getattr(self, f.name), Tensor)
                       else getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]
        return type(self)(**kw)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": type(self).__name__}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if isinstance(v, Tensor):
                v = v.detach().cpu()
                out[f.name] = {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", ""),
                               "values": v.flatten().tolist()}
            else:
                out[f.name] = v
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Any:
        if d.get("type") != cls.__name__:
            raise ValueError(f"Expected a dict made by {cls.__name__}.to_dict(), but got type {d.get('type')!r}.")
        kw: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            v = d[f.name]
            if isinstance(v, dict):
                v = torch.tensor(v["values"], dtype=getattr(torch, v["dtype"])).reshape(v["shape"])
            kw[f.name] = v
        return cls(**kw)

    def select(self, index: Tensor | slice | int) -> Any:
        """The records of a subset of the batch (``index`` on dim 0)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        kw = {f.name: (getattr(self, f.name)[index] if isinstance(getattr(self, f.name), Tensor)
                       else getattr(self, f.name)) for f in fields(self)}  # type: ignore[arg-type]
        return type(self)(**kw)


@dataclass(frozen=True)
class ShadowParams(_Record):
    """One batch of :class:`~augment.SyntheticShadow` draws.

    ``geometry`` depends on ``kind``: ``line`` ``(B, 3)`` = ``(px, py, angle)``, the line through ``(px, py)``
    with normal ``(cos, sin)(angle)``, shadow on the side the normal points to; ``polygon`` ``(B, K, 2)``
    vertices; ``canopy`` ``(B, N, 5)`` ellipses ``(cx, cy, rx, ry, angle)``. All lengths are in pixels.

    Shape:
        - applied: ``(B,)`` bool
        - geometry: see above
        - intensity: ``(B,)`` fraction of brightness removed
        - softness: ``(B,)`` boundary blur sigma in pixels
    """

    kind: str
    applied: Tensor
    geometry: Tensor
    intensity: Tensor
    softness: Tensor

    def item(self, index: int) -> dict[str, Any]:
        """Sample ``index`` as the keyword arguments of :meth:`augment.albu.SyntheticShadow.apply`."""
        return {
            "kind": self.kind,
            "applied": bool(self.applied[index]),
            "geometry": self.geometry[index].detach().cpu().double().numpy(),
            "intensity": float(self.intensity[index]),
            "softness": float(self.softness[index]),
        }


@dataclass(frozen=True)
class OcclusionParams(_Record):
    """One batch of occlusion draws (Cutout, Hide-and-Seek, saliency occlusion): a set of boxes per sample.

    Shape:
        - applied: ``(B,)`` bool
        - boxes: ``(B, N, 4)`` int64, ``x0, y0, x1, y1`` with exclusive ends, may overflow the image
        - valid: ``(B, N)`` bool, which boxes are occluded
        - noise_seeds: ``(B,)`` int64, the per-sample seed of ``fill="noise"``
    """

    applied: Tensor
    boxes: Tensor
    valid: Tensor
    noise_seeds: Tensor

    def item(self, index: int) -> dict[str, Any]:
        """Sample ``index`` as the keyword arguments of the albumentations occluders' ``apply``."""
        return {
            "applied": bool(self.applied[index]),
            "boxes": self.boxes[index].detach().cpu().numpy(),
            "valid": self.valid[index].detach().cpu().numpy(),
            "noise_seed": int(self.noise_seeds[index]),
        }


def _object_boxes(batch_size: int, height: int, width: int, boxes: Tensor | None) -> Tensor:
    if boxes is None:
        return torch.tensor([[0.0, 0.0, float(width), float(height)]]).expand(batch_size, 4)
    boxes = torch.as_tensor(boxes, dtype=torch.float32).detach().cpu()
    if boxes.shape != (batch_size, 4):
        raise ValueError(f"Expected `boxes` to have shape ({batch_size}, 4), but got {tuple(boxes.shape)}.")
    return boxes


def sample_shadow(
    batch_size: int,
    height: int,
    width: int,
    generator: torch.Generator,
    *,
    kind: AF.ShadowKind = "line",
    probabilities: Tensor | float = 1.0,
    intensity: tuple[float, float] = (0.3, 0.7),
    softness: tuple[float, float] = (0.0, 0.05),
    vertices: int = 5,
    blobs: int = 4,
    boxes: Tensor | None = None,
) -> ShadowParams:
    """Draw synthetic shadows placed on each sample's object box (seed 000 §7.2).

    ``line``: a line through a uniform point of the object box at a uniform angle, shadow on the side its
    normal points to (so both sides are equally likely). ``polygon``: a star-shaped polygon (sorted random
    angles, so it never self-intersects) centred in the box. ``canopy``: ``blobs`` ellipses centred in the box.
    ``softness`` is given as a fraction of the image's shorter side and stored in pixels.

    Shape:
        - probabilities: scalar or ``(B,)``
        - boxes: ``(B, 4)`` ``x0, y0, x1, y1`` object boxes in pixels; None means the whole image

    Raises:
        ValueError: if ``kind`` is unknown or ``boxes`` has the wrong shape.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> p = sample_shadow(2, 8, 8, g)
        >>> tuple(p.geometry.shape), p.kind
        ((2, 3), 'line')
    """
    if kind not in AF.SHADOW_KINDS:
        raise ValueError(f"Expected `kind` to be one of {AF.SHADOW_KINDS}, but got {kind!r}.")
    b = batch_size
    applied = sample_applied(b, probabilities, generator)
    box = _object_boxes(b, height, width, boxes)
    x0, y0, x1, y1 = (box[:, i] for i in range(4))
    bw, bh = (x1 - x0).clamp_min(1.0), (y1 - y0).clamp_min(1.0)
    if kind == "line":
        px = _uniform((b,), x0, x1, generator)
        py = _uniform((b,), y0, y1, generator)
        angle = _uniform((b,), 0.0, 2 * math.pi, generator)
        geometry = torch.stack([px, py, angle], dim=1)
    elif kind == "polygon":
        k = vertices
        cx = _uniform((b,), x0, x1, generator)[:, None]
        cy = _uniform((b,), y0, y1, generator)[:, None]
        angles = torch.sort(_uniform((b, k), 0.0, 2 * math.pi, generator), dim=1).values
        radius = _uniform((b, k), 0.5, 1.5, generator) * 0.5 * torch.sqrt(bw * bh)[:, None]
        geometry = torch.stack([cx + radius * torch.cos(angles), cy + radius * torch.sin(angles)], dim=2)
    else:
        n = blobs
        cx = _uniform((b, n), x0[:, None], x1[:, None], generator)
        cy = _uniform((b, n), y0[:, None], y1[:, None], generator)
        scale = torch.sqrt(bw * bh)[:, None]
        rx = _uniform((b, n), 0.15, 0.4, generator) * scale
        ry = _uniform((b, n), 0.15, 0.4, generator) * scale
        angle = _uniform((b, n), 0.0, math.pi, generator)
        geometry = torch.stack([cx, cy, rx, ry, angle], dim=2)
    lo, hi = intensity
    strength = _uniform((b,), lo, hi, generator)
    s_lo, s_hi = softness
    soft = _uniform((b,), s_lo, s_hi, generator) * min(height, width)
    return ShadowParams(kind, applied, geometry.float(), strength, soft)


def _noise_seeds(batch_size: int, generator: torch.Generator) -> Tensor:
    return torch.randint(0, _SEED_HIGH, (batch_size,), generator=generator, dtype=torch.long)


def sample_cutout(
    batch_size: int,
    height: int,
    width: int,
    generator: torch.Generator,
    *,
    count: int = 1,
    size: int = 8,
    probabilities: Tensor | float = 1.0,
) -> OcclusionParams:
    """Draw ``count`` squares of side ``size`` per sample, centres uniform over the image (may overflow, C.1).

    Example:
        >>> p = sample_cutout(2, 16, 16, torch.Generator().manual_seed(0), count=3, size=4)
        >>> tuple(p.boxes.shape), bool(p.valid.all())
        ((2, 3, 4), True)
    """
    b = batch_size
    applied = sample_applied(b, probabilities, generator)
    cx = torch.randint(0, width, (b, count), generator=generator)
    cy = torch.randint(0, height, (b, count), generator=generator)
    x0, y0 = cx - size // 2, cy - size // 2
    boxes = torch.stack([x0, y0, x0 + size, y0 + size], dim=2)
    valid = torch.ones(b, count, dtype=torch.bool)
    return OcclusionParams(applied, boxes, valid, _noise_seeds(b, generator))


def grid_boxes(height: int, width: int, grid: int) -> Tensor:
    """The ``grid × grid`` cells of an image, row-major, edges at ``round(i · size / grid)``.

    Shape:
        - output: ``(grid * grid, 4)`` int64

    Example:
        >>> grid_boxes(4, 4, 2).tolist()
        [[0, 0, 2, 2], [2, 0, 4, 2], [0, 2, 2, 4], [2, 2, 4, 4]]
    """
    xe = [round(i * width / grid) for i in range(grid + 1)]
    ye = [round(i * height / grid) for i in range(grid + 1)]
    return torch.tensor([[xe[j], ye[i], xe[j + 1], ye[i + 1]] for i in range(grid) for j in range(grid)],
                        dtype=torch.long)


def sample_hide_and_seek(
    batch_size: int,
    height: int,
    width: int,
    generator: torch.Generator,
    *,
    grid: int = 4,
    p_keep_patch: float = 0.5,
    probabilities: Tensor | float = 1.0,
) -> OcclusionParams:
    """Split each image into a ``grid × grid`` grid and drop every cell with probability ``1 - p_keep_patch``.

    Example:
        >>> p = sample_hide_and_seek(1, 8, 8, torch.Generator().manual_seed(0), grid=2, p_keep_patch=0.0)
        >>> p.boxes.shape[1], bool(p.valid.all())
        (4, True)
    """
    b = batch_size
    applied = sample_applied(b, probabilities, generator)
    cells = grid_boxes(height, width, grid)
    keep = torch.rand(b, cells.shape[0], generator=generator) < p_keep_patch
    return OcclusionParams(applied, cells.expand(b, -1, -1).clone(), ~keep, _noise_seeds(b, generator))


def sample_saliency_occlusion(
    saliency: Tensor,
    height: int,
    width: int,
    generator: torch.Generator,
    *,
    size: int = 8,
    count: int = 1,
    jitter: int = 2,
    probabilities: Tensor | float = 1.0,
) -> OcclusionParams:
    """The ``count`` most salient ``size × size`` boxes, each jittered by up to ``±jitter`` pixels (C.1).

    Shape:
        - saliency: ``(B, h, w)`` non-negative, upsampled bilinearly to ``height × width``

    Raises:
        ValueError: if ``saliency`` is not ``(B, h, w)`` or ``size`` does not fit in the image.

    Example:
        >>> s = torch.zeros(1, 8, 8); s[0, 1, 1] = 1.0
        >>> sample_saliency_occlusion(s, 8, 8, torch.Generator().manual_seed(0), size=3, jitter=0).boxes.tolist()
        [[[0, 0, 3, 3]]]
    """
    if not isinstance(saliency, Tensor) or saliency.dim() != 3:
        shape = tuple(saliency.shape) if isinstance(saliency, Tensor) else type(saliency).__name__
        raise ValueError(f"Expected `saliency` to be a tensor of shape (B, h, w), but got {shape!r}.")
    b = saliency.shape[0]
    applied = sample_applied(b, probabilities, generator)
    offsets = torch.randint(-jitter, jitter + 1, (b, count, 2), generator=generator)
    boxes, valid = AF.saliency_boxes(saliency.detach(), height, width, size, offsets.to(saliency.device))
    return OcclusionParams(applied, boxes.cpu(), valid.cpu(), _noise_seeds(b, generator))


EXTENTS: tuple[str, ...] = ("image", "blob")


@dataclass(frozen=True)
class CorruptionParams(_Record):
    """One batch of draws of a catalogue corruption (:mod:`augment.corruptions`).

    ``strength`` is the one knob in ``[0, 1]`` (0 leaves pixels as they are); ``draws`` are the family's own
    uniform numbers in ``[0, 1)`` (a direction, a sign, a colour), turned into kernel parameters by the module.
    ``extent`` says where the corruption lands: the whole ``image`` or a soft ellipse ``blob``
    ``(cx, cy, rx, ry, angle)`` in pixels with boundary blur ``softness`` pixels.

    Shape:
        - applied: ``(B,)`` bool
        - strength: ``(B,)``
        - draws: ``(B, K)``
        - blob: ``(B, 5)``
        - softness: ``(B,)``
        - seeds: ``(B,)`` int64, per-sample seeds of noise and texture
    """

    family: str
    extent: str
    applied: Tensor
    strength: Tensor
    draws: Tensor
    blob: Tensor
    softness: Tensor
    seeds: Tensor

    def item(self, index: int) -> dict[str, Any]:
        """Sample ``index`` as the keyword arguments of the albumentations corruptions' ``apply``."""
        return {"record": self.select(index).to_dict()}


def sample_corruption(
    batch_size: int,
    height: int,
    width: int,
    generator: torch.Generator,
    *,
    family: str,
    draws: int = 0,
    strength: tuple[float, float] = (0.5, 0.5),
    extent: str = "blob",
    blob_size: tuple[float, float] = (0.25, 0.5),
    softness: tuple[float, float] = (0.02, 0.1),
    probabilities: Tensor | float = 1.0,
) -> CorruptionParams:
    """Draw a corruption per sample: strength, ``draws`` uniform numbers, and a soft elliptical region.

    The ellipse's centre is uniform over the image, its radii uniform in ``blob_size`` times the shorter side,
    its orientation uniform; ``softness`` is a fraction of the shorter side, stored in pixels. The region is
    drawn for ``extent="image"`` too (and ignored), so one generator state gives the same strengths and draws
    whatever the extent.

    Raises:
        ValueError: if ``extent`` is unknown or ``draws`` is negative.

    Example:
        >>> p = sample_corruption(2, 8, 8, torch.Generator().manual_seed(0), family="haze", draws=1)
        >>> tuple(p.draws.shape), p.strength.tolist()
        ((2, 1), [0.5, 0.5])
    """
    if extent not in EXTENTS:
        raise ValueError(f"Expected `extent` to be one of {EXTENTS}, but got {extent!r}.")
    check_positive_int("draws", draws, 0)
    b = batch_size
    applied = sample_applied(b, probabilities, generator)
    s = _uniform((b,), strength[0], strength[1], generator)
    u = torch.rand(b, draws, generator=generator)
    side = float(min(height, width))
    cx = _uniform((b,), 0.0, float(width), generator)
    cy = _uniform((b,), 0.0, float(height), generator)
    rx = _uniform((b,), blob_size[0], blob_size[1], generator) * side
    ry = _uniform((b,), blob_size[0], blob_size[1], generator) * side
    angle = _uniform((b,), 0.0, math.pi, generator)
    soft = _uniform((b,), softness[0], softness[1], generator) * side
    blob = torch.stack([cx, cy, rx, ry, angle], dim=1)
    return CorruptionParams(family, extent, applied, s.float(), u, blob.float(), soft.float(),
                            _noise_seeds(b, generator))
