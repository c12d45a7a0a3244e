"""``nn.Module`` front ends of the corruption catalogue: the failures users meet, each with one strength knob.

Every corruption takes ``strength`` — a number in ``[0, 1]`` or a range to draw it from per sample — plus its
own maxima (what strength 1 means), and lands either on the whole image or on a soft random ellipse
(``extent="blob"``, the default: real failures are usually local). :meth:`region` gives the changed pixels
(the ellipse, or the whole image), so a renderer knows which patches a corruption touched. The records are
:class:`~augment.params.CorruptionParams`; the kernels live in :mod:`augment.functional_corruptions`.

Pixel values are assumed in ``[0, 1]`` (apply these before normalisation): gamma, compression and haze
depend on absolute values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor

from augment import functional as AF
from augment import functional_corruptions as FC
from augment import params as AP
from augment.modules import _Augmentation, check_images
from augment.params import CorruptionParams

Extent = Literal["image", "blob"]
Direction = Literal["both", "decrease", "increase"]
DIRECTIONS: tuple[str, ...] = ("both", "decrease", "increase")


def check_strength(strength: float | Sequence[float]) -> tuple[float, float]:
    """Return ``strength`` as a range ``(lo, hi)`` inside ``[0, 1]`` (a number ``s`` is ``(s, s)``).

    Raises:
        ValueError: otherwise.

    Example:
        >>> check_strength(0.3), check_strength((0.0, 1.0))
        ((0.3, 0.3), (0.0, 1.0))
    """
    if isinstance(strength, int | float) and not isinstance(strength, bool):
        if not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"Expected `strength` to be in [0, 1] or a pair (lo, hi) inside it, but got {strength!r}.")
        return float(strength), float(strength)
    return AP.check_range("strength", strength, 0.0, 1.0)  # type: ignore[arg-type]


def _check_positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"Expected `{name}` to be a positive number, but got {value!r}.")
    return float(value)


def _check_direction(direction: str) -> str:
    if direction not in DIRECTIONS:
        raise ValueError(f"Expected `direction` to be one of {DIRECTIONS}, but got {direction!r}.")
    return direction


def _sign(draw: Tensor, direction: str) -> Tensor:
    """+1 (increase) or -1 (decrease) from a uniform draw, as ``direction`` allows."""
    if direction == "increase":
        return torch.ones_like(draw)
    if direction == "decrease":
        return -torch.ones_like(draw)
    return torch.where(draw < 0.5, -1.0, 1.0).to(draw.dtype)


class _Corruption(_Augmentation):
    """Shared configuration, sampling, region and blending of the catalogue's corruptions."""

    family: ClassVar[str] = ""

    def __init__(self, p: float, strength: float | Sequence[float], extent: Extent,
                 blob_size: tuple[float, float], softness: tuple[float, float], seed: int | None) -> None:
        super().__init__(p, seed)
        self.strength = check_strength(strength)
        if extent not in AP.EXTENTS:
            raise ValueError(f"Expected `extent` to be one of {AP.EXTENTS}, but got {extent!r}.")
        self.extent = extent
        self.blob_size = AP.check_range("blob_size", blob_size, 0.0, 4.0)
        self.softness = AP.check_range("softness", softness, 0.0, 1.0)

    def _draws(self, channels: int) -> int:
        return 0

    def sample(  # type: ignore[override]
        self, images: Tensor, *, generator: torch.Generator | None = None,
        probabilities: Tensor | float | None = None,
    ) -> CorruptionParams:
        """Draw strengths, the family's own numbers and regions for ``images`` (only their shape is read).

        Shape:
            - probabilities: scalar or ``(B,)``, overrides ``p``
        """
        b, c, h, w = check_images(images).shape
        return AP.sample_corruption(b, h, w, self._rng(generator), family=self.family, draws=self._draws(c),
                                    strength=self.strength, extent=self.extent, blob_size=self.blob_size,
                                    softness=self.softness, probabilities=self._probabilities(probabilities))

    def region(self, params: CorruptionParams, height: int, width: int,
               device: torch.device | str = "cpu") -> Tensor:
        """The changed pixels: the soft ellipse or the whole image, zero for samples left unchanged.

        Shape:
            - output: ``(B, 1, H, W)`` float32
        """
        p = params.to(device)
        applied = p.applied.view(-1, 1, 1, 1).float()
        if p.extent == "image":
            return applied.expand(len(p), 1, height, width).clone()
        return FC.ellipse_region(p.blob, p.softness, height, width) * applied

    def corrupt(self, images: Tensor, params: CorruptionParams) -> Tensor:
        """The whole-image corruption of every sample at its strength (``params`` on the images' device)."""
        raise NotImplementedError

    def apply_params(self, images: Tensor, params: CorruptionParams) -> Tensor:
        """Apply ``params`` deterministically: the corruption inside each sample's region."""
        images = check_images(images)
        b, _, h, w = images.shape
        if len(params) != b:
            raise ValueError(f"Expected `params` for {b} samples, but got {len(params)}.")
        if params.family != self.family:
            raise ValueError(f"Expected `params` of family {self.family!r}, but got {params.family!r}.")
        p = params.to(images.device)
        out = torch.empty_like(images)
        # A few samples at a time into one output: the corruption, the region and the blend stay cache-sized,
        # and the only full-batch allocation is the output.
        step = AF.chunk_rows(h, w)
        for i in range(0, b, step):
            rows = slice(i, i + step)
            sub, x = p.select(rows), images[rows]
            if not bool(sub.applied.any()):
                out[rows] = x
                continue
            y = self.corrupt(x, sub)
            if sub.extent == "blob":
                y = FC.blend(x, y, FC.ellipse_region(sub.blob, sub.softness, h, w))
            if not bool(sub.applied.all()):
                y = torch.where(sub.applied.view(-1, 1, 1, 1), y, x)
            out[rows] = y
        return out


_COMMON_DOC = """strength: the knob in ``[0, 1]`` (0 leaves the pixels unchanged), or a range drawn per sample.
        extent: ``blob`` (a soft random ellipse) or ``image`` (everywhere).
        blob_size: range of the ellipse's radii, as a fraction of the image's shorter side.
        softness: range of the ellipse boundary's blur sigma, as a fraction of the shorter side.
        seed: seed of the module's own generator (used when ``forward`` gets none)."""

_RAISES_DOC = """ValueError: on a probability outside ``[0, 1]``, a strength or range outside its bounds, an unknown
            ``extent``, a non-positive maximum, or images that are not a floating ``(B, C, H, W)`` tensor."""


class SyntheticDefocus(_Corruption):
    """Defocus blur: a disc point-spread function of radius ``strength · max_radius · min(H, W)``.

    Args:
        p: probability that a sample is corrupted.
        max_radius: the disc radius at strength 1, as a fraction of the shorter side.
        {common}

    Shape:
        - images: ``(B, C, H, W)`` in ``[0, 1]``
        - output: like ``images``; :meth:`region` gives the ``(B, 1, H, W)`` changed pixels

    Raises:
        {raises}

    Example:
        >>> blur = SyntheticDefocus(p=1.0, strength=1.0, extent="image", seed=0)
        >>> y = blur(torch.eye(16).expand(1, 1, 16, 16))
        >>> bool(y.amax() < 1.0)
        True
    """

    family = "defocus"

    def __init__(self, p: float = 0.5, strength: float | Sequence[float] = (0.0, 1.0), max_radius: float = 0.04,
                 extent: Extent = "blob", blob_size: tuple[float, float] = (0.25, 0.5),
                 softness: tuple[float, float] = (0.02, 0.1), seed: int | None = None) -> None:
        super().__init__(p, strength, extent, blob_size, softness, seed)
        self.max_radius = _check_positive("max_radius", max_radius)

    def corrupt(self, images: Tensor, params: CorruptionParams) -> Tensor:
        side = min(images.shape[-2:])
        return FC.defocus_blur(images, params.strength.cpu() * self.max_radius * side)


class SyntheticMotionBlur(_Corruption):
    """Motion blur: a line kernel of length ``strength · max_length · min(H, W)`` in a uniform direction.

    Args:
        p: probability that a sample is corrupted.
        max_length: the streak length at strength 1, as a fraction of the shorter side.
        {common}

    Shape:
        - images: ``(B, C, H, W)`` in ``[0, 1]``
        - output: like ``images``; :meth:`region` gives the ``(B, 1, H, W)`` changed pixels

    Raises:
        {raises}

    Example:
        >>> blur = SyntheticMotionBlur(p=1.0, strength=1.0, extent="image", seed=0)
        >>> y = blur(torch.eye(16).expand(1, 1, 16, 16))
        >>> bool(y.amax() < 1.0)
        True
    """

    family = "motion_blur"

    def __init__(self, p: float = 0.5, strength: float | Sequence[float] = (0.0, 1.0), max_length: float = 0.08,
                 extent: Extent = "blob", blob_size: tuple[float, float] = (0.25, 0.5),
                 softness: tuple[float, float] = (0.02, 0.1), seed: int | None = None) -> None:
        super().__init__(p, strength, extent, blob_size, softness, seed)
        self.max_length = _check_positive("max_length", max_length)

    def _draws(self, channels: int) -> int:
        return 1

    def corrupt(self, images: Tensor, params: CorruptionParams) -> Tensor:
        side = min(images.shape[-2:])
        angle = params.draws[:, 0].cpu() * torch.pi
        return FC.motion_blur(images, params.strength.cpu() * self.max_length * side, angle)


class SyntheticNoise(_Corruption):
    """Sensor noise: additive Gaussian noise of standard deviation ``strength · max_std``, per pixel and channel.

    Args:
        p: probability that a sample is corrupted.
        max_std: the standard deviation at strength 1, in pixel units.
        {common}

    Shape:
        - images: ``(B, C, H, W)`` in ``[0, 1]``
        - output: like ``images``; :meth:`region` gives the ``(B, 1, H, W)`` changed pixels

    Raises:
        {raises}

    Example:
        >>> y = SyntheticNoise(p=1.0, strength=1.0, extent="image", seed=0)(torch.full((1, 1, 64, 64), 0.5))
        >>> 0.2 < float(y.std()) < 0.4
        True
    """

    family = "noise"

    def __init__(self, p: float = 0.5, strength: float | Sequence[float] = (0.0, 1.0), max_std: float = 0.3,
                 extent: Extent = "blob", blob_size: tuple[float, float] = (0.25, 0.5),
                 softness: tuple[float, float] = (0.02, 0.1), seed: int | None = None) -> None:
        super().__init__(p, strength, extent, blob_size, softness, seed)
        self.max_std = _check_positive("max_std", max_std)

    def corrupt(self, images: Tensor, params: CorruptionParams) -> Tensor:
        return FC.gaussian_noise(images, params.strength * self.max_std, params.seeds)


class _Exposure(_Corruption):
    def __init__(self, p: float, strength: float | Sequence[float], direction: Direction, extent: Extent,
                 blob_size: tuple[float, float], softness: tuple[float, float], seed: int | None) -> None:
        super().__init__(p, strength, extent, blob_size, softness, seed)
        self.direction = _check_direction(direction)

    def _draws(self, channels: int) -> int:
        return 1

    def _signed(self, params: CorruptionParams) -> Tensor:
        return _sign(params.draws[:, 0], self.direction) * params.strength


class SyntheticBrightness(_Exposure):
    """Brightness change: ``± strength · max_delta`` added to every pixel (over- or under-exposure).

    Args:
        p: probability that a sample is corrupted.
        max_delta: the shift at strength 1, in pixel units.
        direction: ``both`` (darker or brighter, equally likely), ``decrease`` or ``increase``.
        {common}

    Shape:
        - images: ``(B, C, H, W)`` in ``[0, 1]``
        - output: like ``images``; :meth:`region` gives the ``(B, 1, H, W)`` changed pixels

    Raises:
        {raises}

    Example:
        >>> t = SyntheticBrightness(p=1.0, strength=0.5, direction="increase", extent="image", seed=0)
        >>> t(torch.zeros(1, 1, 2, 2)).flatten().tolist()
        [0.25, 0.25, 0.25, 0.25]
    """

    family = "brightness"

    def __init__(self, p: float = 0.5, strength: float | Sequence[float] = (0.0, 1.0), max_delta: float = 0.5,
                 direction: Direction = "both", extent: Extent = "blob", blob_size: tuple[float, float] = (0.25, 0.5),
                 softness: tuple[float, float] = (0.02, 0.1), seed: int | None = None) -> None:
        super().__init__(p, strength, direction, extent, blob_size, softness, seed)
        self.max_delta = _check_positive("max_delta", max_delta)

    def corrupt(self, images: Tensor, params: CorruptionParams) -> Tensor:
        return FC.adjust_brightness(images, self._signed(params) * self.max_delta)


class SyntheticContrast(_Exposure):
    """Contrast change: deviations from the image mean scaled by ``max_factor ** (± strength)``.

    Args:
        p: probability that a sample is corrupted.
        max_factor: the contrast gain at strength 1 (its inverse when decreasing), above 1.
        direction: ``both`` (flatter or steeper, equally likely), ``decrease`` or ``increase``.
        {common}

    Shape:
        - images: ``(B, C, H, W)`` in ``[0, 1]``
        - output: like ``images``; :meth:`region` gives the ``(B, 1, H, W)`` changed pixels

    Raises:
        {raises}

    Example:
        >>> t = SyntheticContrast(p=1.0, strength=0.5, max_factor=4.0, direction="decrease", extent="image", seed=0)
        >>> t(torch.tensor([[[[0.0, 1.0]]]])).tolist()
        [[[[0.25, 0.75]]]]
    """

    family = "contrast"

    def __init__(self, p: float = 0.5, strength: float | Sequence[float] = (0.0, 1.0), max_factor: float = 4.0,
                 direction: Direction = "both", extent: Extent = "blob", blob_size: tuple[float, float] = (0.25, 0.5),
                 softness: tuple[float, float] = (0.02, 0.1), seed: int | None = None) -> None:
        super().__init__(p, strength, direction, extent, blob_size, softness, seed)
        if _check_positive("max_factor", max_factor) <= 1.0:
            raise ValueError(f"Expected `max_factor` to be above 1, but got {max_factor!r}.")
        self.max_factor = float(max_factor)

    def corrupt(self, images: Tensor, params: CorruptionParams) -> Tensor:
        return FC.adjust_contrast(images, self.max_factor ** self._signed(params))


class SyntheticGamma(_Exposure):
    """Gamma change: ``x ** (max_gamma ** (± strength))`` (mid-tones darker or lifted, black and white kept).

    Args:
        p: probability that a sample is corrupted.
        max_gamma: the gamma at strength 1 when darkening (its inverse when lifting), above 1.
        direction: ``both``, ``decrease`` (lift, gamma below 1) or ``increase`` (darken, gamma above 1).
        {common}

    Shape:
        - images: ``(B, C, H, W)`` in ``[0, 1]``
        - output: like ``images``; :meth:`region` gives the ``(B, 1, H, W)`` changed pixels

    Raises:
        {raises}

    Example:
        >>> t = SyntheticGamma(p=1.0, strength=1.0, max_gamma=2.0, direction="increase", extent="image", seed=0)
        >>> t(torch.tensor([[[[0.0, 0.5, 1.0]]]])).tolist()
        [[[[0.0, 0.25, 1.0]]]]
    """

    family = "gamma"

    def __init__(self, p: float = 0.5, strength: float | Sequence[float] = (0.0, 1.0), max_gamma: float = 3.0,
                 direction: Direction = "both", extent: Extent = "blob", blob_size: tuple[float, float] = (0.25, 0.5),
                 softness: tuple[float, float] = (0.02, 0.1), seed: int | None = None) -> None:
        super().__init__(p, strength, direction, extent, blob_size, softness, seed)
        if _check_positive("max_gamma", max_gamma) <= 1.0:
            raise ValueError(f"Expected `max_gamma` to be above 1, but got {max_gamma!r}.")
        self.max_gamma = float(max_gamma)

    def corrupt(self, images: Tensor, params: CorruptionParams) -> Tensor:
        # exp(log x) is not exactly x: strength 0 keeps the pixels, as it does for every corruption.
        keep = (params.strength <= 0).view(-1, 1, 1, 1)
        return torch.where(keep, images, FC.adjust_gamma(images, self.max_gamma ** self._signed(params)))


class SyntheticTint(_Corruption):
    """Colour cast: a random colour direction (largest channel ±1) times ``strength · max_shift``, added.

    Args:
        p: probability that a sample is corrupted.
        max_shift: the largest channel shift at strength 1, in pixel units.
        {common}

    Shape:
        - images: ``(B, C, H, W)`` in ``[0, 1]``
        - output: like ``images``; :meth:`region` gives the ``(B, 1, H, W)`` changed pixels

    Raises:
        {raises}

    Example:
        >>> y = SyntheticTint(p=1.0, strength=1.0, max_shift=0.2, extent="image", seed=0)(torch.zeros(1, 3, 2, 2))
        >>> round(float(y.abs().amax()), 4)
        0.2
    """

    family = "tint"

    def __init__(self, p: float = 0.5, strength: float | Sequence[float] = (0.0, 1.0), max_shift: float = 0.3,
                 extent: Extent = "blob", blob_size: tuple[float, float] = (0.25, 0.5),
                 softness: tuple[float, float] = (0.02, 0.1), seed: int | None = None) -> None:
        super().__init__(p, strength, extent, blob_size, softness, seed)
        self.max_shift = _check_positive("max_shift", max_shift)

    def _draws(self, channels: int) -> int:
        return channels

    def corrupt(self, images: Tensor, params: CorruptionParams) -> Tensor:
        if params.draws.shape[1] != images.shape[1]:
            raise ValueError(f"Expected `params` drawn for {images.shape[1]} channels, "
                             f"but got {params.draws.shape[1]}.")
        direction = params.draws * 2.0 - 1.0
        direction = direction / direction.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
        return FC.tint(images, direction * (params.strength * self.max_shift)[:, None])


class SyntheticTexture(_Corruption):
    """Texture overlay: procedural value noise (stains, foliage, fabric) of amplitude ``strength · amplitude``.

    Args:
        p: probability that a sample is corrupted.
        amplitude: the texture's peak deviation at strength 1, in pixel units.
        cells: grid cells per side of the coarsest octave.
        octaves: number of octaves, each twice as fine and half as strong.
        {common}

    Shape:
        - images: ``(B, C, H, W)`` in ``[0, 1]``
        - output: like ``images``; :meth:`region` gives the ``(B, 1, H, W)`` changed pixels

    Raises:
        {raises}

    Example:
        >>> y = SyntheticTexture(p=1.0, strength=1.0, amplitude=0.4, extent="image", seed=0)(torch.zeros(1, 1, 8, 8))
        >>> round(float(y.amin()), 4), round(float(y.amax()), 4)
        (-0.4, 0.4)
    """

    family = "texture"

    def __init__(self, p: float = 0.5, strength: float | Sequence[float] = (0.0, 1.0), amplitude: float = 0.4,
                 cells: int = 4, octaves: int = 3, extent: Extent = "blob",
                 blob_size: tuple[float, float] = (0.25, 0.5), softness: tuple[float, float] = (0.02, 0.1),
                 seed: int | None = None) -> None:
        super().__init__(p, strength, extent, blob_size, softness, seed)
        self.amplitude = _check_positive("amplitude", amplitude)
        self.cells = AP.check_positive_int("cells", cells)
        self.octaves = AP.check_positive_int("octaves", octaves)

    def corrupt(self, images: Tensor, params: CorruptionParams) -> Tensor:
        h, w = images.shape[-2:]
        texture = FC.value_noise(params.seeds.cpu(), h, w, self.cells, self.octaves)
        return FC.texture_overlay(images, texture, params.strength * self.amplitude)


class SyntheticCompression(_Corruption):
    """JPEG-like compression artefacts at quality ``100 - strength · (100 - min_quality)``.

    Blockwise 8×8 DCT quantisation with JPEG's tables (see :func:`augment.functional_corruptions.jpeg_compress`).
    Strength 0 keeps the pixels (quality 100 would still round DCT coefficients).

    Args:
        p: probability that a sample is corrupted.
        min_quality: the JPEG quality at strength 1, in ``[1, 100]``.
        {common}

    Shape:
        - images: ``(B, C, H, W)`` in ``[0, 1]``
        - output: like ``images``; :meth:`region` gives the ``(B, 1, H, W)`` changed pixels

    Raises:
        {raises}

    Example:
        >>> x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> y = SyntheticCompression(p=1.0, strength=1.0, extent="image", seed=0)(x)
        >>> bool((y - x).abs().mean() > 0.05)
        True
    """

    family = "compression"

    def __init__(self, p: float = 0.5, strength: float | Sequence[float] = (0.0, 1.0), min_quality: int = 5,
                 extent: Extent = "blob", blob_size: tuple[float, float] = (0.25, 0.5),
                 softness: tuple[float, float] = (0.02, 0.1), seed: int | None = None) -> None:
        super().__init__(p, strength, extent, blob_size, softness, seed)
        if isinstance(min_quality, bool) or not isinstance(min_quality, int) or not 1 <= min_quality <= 100:
            raise ValueError(f"Expected `min_quality` to be an integer in [1, 100], but got {min_quality!r}.")
        self.min_quality = min_quality

    def corrupt(self, images: Tensor, params: CorruptionParams) -> Tensor:
        quality = 100.0 - params.strength.cpu() * (100.0 - self.min_quality)
        # Quality 100 still rounds coefficients: strength 0 keeps the pixels, as it does for every corruption.
        keep = (params.strength <= 0).view(-1, 1, 1, 1)
        return torch.where(keep, images, FC.jpeg_compress(images, quality))


class SyntheticHaze(_Corruption):
    """Haze or fog: a blend towards the ``airlight`` colour with density ``strength · max_density``.

    Args:
        p: probability that a sample is corrupted.
        max_density: the fraction of scattered light at strength 1 (1 - transmission), in ``(0, 1]``.
        airlight: the colour of the scattered light, a number or one per channel.
        {common}

    Shape:
        - images: ``(B, C, H, W)`` in ``[0, 1]``
        - output: like ``images``; :meth:`region` gives the ``(B, 1, H, W)`` changed pixels

    Raises:
        {raises}

    Example:
        >>> t = SyntheticHaze(p=1.0, strength=0.5, max_density=0.8, airlight=1.0, extent="image", seed=0)
        >>> t(torch.zeros(1, 1, 1, 2)).flatten().tolist()
        [0.4000000059604645, 0.4000000059604645]
    """

    family = "haze"

    def __init__(self, p: float = 0.5, strength: float | Sequence[float] = (0.0, 1.0), max_density: float = 0.8,
                 airlight: float | Sequence[float] = 0.8, extent: Extent = "blob",
                 blob_size: tuple[float, float] = (0.25, 0.5), softness: tuple[float, float] = (0.02, 0.1),
                 seed: int | None = None) -> None:
        super().__init__(p, strength, extent, blob_size, softness, seed)
        if _check_positive("max_density", max_density) > 1.0:
            raise ValueError(f"Expected `max_density` to be in (0, 1], but got {max_density!r}.")
        self.max_density = float(max_density)
        self.airlight = AP.check_value("airlight", airlight)

    def corrupt(self, images: Tensor, params: CorruptionParams) -> Tensor:
        return FC.haze(images, params.strength * self.max_density, torch.as_tensor(self.airlight))


CORRUPTIONS: tuple[type[_Corruption], ...] = (
    SyntheticDefocus, SyntheticMotionBlur, SyntheticNoise, SyntheticBrightness, SyntheticContrast, SyntheticGamma,
    SyntheticTint, SyntheticTexture, SyntheticCompression, SyntheticHaze,
)

for _cls in CORRUPTIONS:
    _cls.__doc__ = (_cls.__doc__ or "").replace("{common}", _COMMON_DOC).replace("{raises}", _RAISES_DOC)
