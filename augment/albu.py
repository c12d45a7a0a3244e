"""Albumentations front ends: the same augmentations for per-sample ``(H, W, C)`` pipelines.

They draw their parameters with the very samplers of the batched path (a ``torch.Generator`` seeded from
albumentations' own ``random_generator``, so ``A.Compose(..., seed=...)`` makes them reproducible) and apply
them with the NumPy kernels of :mod:`augment.functional_numpy`. ``apply(image, **params)`` with
``params = record.item(i)`` of a batched record gives the batched path's pixels (the parity tests check it).

They are pixel-level transforms: masks, boxes and keypoints pass through unchanged, so in a ``Compose`` masks
follow the geometric transforms as usual. :class:`SyntheticShadow` also writes its own shadow mask into an
optional ``shadow_mask`` target (declare it with ``additional_targets={"shadow_mask": "mask"}`` so later
geometric transforms move it too). Images may be uint8 (values in 0..255; ``value``/``floor`` are then in
the same units) or float.

Serialisation works like albumentations' own (``A.to_dict`` / ``A.from_dict``, pickling).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import torch
from albumentations.core.transforms_interface import ImageOnlyTransform

from augment import corruptions as _corruptions
from augment import functional as AF
from augment import functional_numpy as NF
from augment import params as AP

_SHADOW_MASK = "shadow_mask"


def _to_float(img: np.ndarray) -> tuple[np.ndarray, bool]:
    squeeze = img.ndim == 2
    x = img[..., None] if squeeze else img
    return x.astype(np.float64), squeeze


def _from_float(out: np.ndarray, like: np.ndarray, squeeze: bool) -> np.ndarray:
    if squeeze:
        out = out[..., 0]
    if like.dtype == np.uint8:
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out.astype(like.dtype)


def _torch_generator(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(0, 2**62)))


def _listify(value: float | tuple[float, ...]) -> float | list[float]:
    return list(value) if isinstance(value, tuple) else value


class SyntheticShadow(ImageOnlyTransform):
    """Albumentations twin of :class:`augment.SyntheticShadow` (seed 000 §7.2 shadows).

    Args:
        kind: ``line``, ``polygon`` or ``canopy``.
        intensity: range of the fraction of brightness removed.
        softness: range of the boundary blur sigma, as a fraction of the image's shorter side.
        vertices: polygon vertices.
        blobs: canopy ellipses.
        floor: the value shadows darken towards.
        object_key: a data key (e.g. ``"mask"``) whose non-zero pixels are the object; the shadow is placed
            across its bounding box. None places it across the whole image.
        p: probability of applying the transform.

    Targets:
        image (and ``shadow_mask`` when given: the shadow is max-ed into it)

    Raises:
        ValueError: on a probability outside ``[0, 1]``, an unknown ``kind`` or a bad range.

    Example:
        >>> t = SyntheticShadow(p=1.0)
        >>> out = t(image=np.full((8, 8, 3), 200, np.uint8), shadow_mask=np.zeros((8, 8), np.float32))
        >>> out["image"].dtype, bool((out["image"] <= 200).all()), out["shadow_mask"].shape
        (dtype('uint8'), True, (8, 8))
    """

    def __init__(
        self,
        kind: AF.ShadowKind = "line",
        intensity: tuple[float, float] = (0.3, 0.7),
        softness: tuple[float, float] = (0.0, 0.05),
        vertices: int = 5,
        blobs: int = 4,
        floor: float | Sequence[float] = 0.0,
        object_key: str | None = None,
        p: float = 0.5,
    ) -> None:
        super().__init__(p=AP.check_probability("p", p))
        if kind not in AF.SHADOW_KINDS:
            raise ValueError(f"Expected `kind` to be one of {AF.SHADOW_KINDS}, but got {kind!r}.")
        self.kind = kind
        self.intensity = AP.check_range("intensity", intensity, 0.0, 1.0)
        self.softness = AP.check_range("softness", softness, 0.0, 1.0)
        self.vertices = AP.check_positive_int("vertices", vertices, 3)
        self.blobs = AP.check_positive_int("blobs", blobs, 1)
        self.floor = AP.check_value("floor", floor)
        self.object_key = object_key

    @property
    def targets(self) -> dict[str, Any]:
        return {**super().targets, _SHADOW_MASK: self.apply_to_shadow_mask}

    def add_targets(self, additional_targets: dict[str, str]) -> None:
        # The shadow mask is written by this transform, not treated like the mask it is declared as.
        super().add_targets({k: v for k, v in additional_targets.items() if k != _SHADOW_MASK})

    @property
    def targets_as_params(self) -> list[str]:
        return [self.object_key] if self.object_key else []

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        height, width = params["shape"][:2]
        boxes = None
        if self.object_key:
            obj = torch.from_numpy(np.ascontiguousarray(data[self.object_key])).reshape(1, height, width)
            boxes = AF.mask_bounding_boxes(obj)
        record = AP.sample_shadow(
            1, height, width, _torch_generator(self.random_generator), kind=self.kind, intensity=self.intensity,
            softness=self.softness, vertices=self.vertices, blobs=self.blobs, boxes=boxes,
        )
        return record.item(0)

    def _region(self, height: int, width: int, params: dict[str, Any]) -> np.ndarray:
        if not params.get("applied", True):
            return np.zeros((height, width))
        return NF.shadow_region(params["kind"], params["geometry"], params["softness"], height, width)

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        x, squeeze = _to_float(img)
        region = self._region(x.shape[0], x.shape[1], params)
        return _from_float(NF.darken(x, region, params["intensity"], self.floor), img, squeeze)

    def apply_to_shadow_mask(self, mask: np.ndarray, **params: Any) -> np.ndarray:
        region = self._region(mask.shape[0], mask.shape[1], params)
        return np.maximum(mask, region.astype(mask.dtype))

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("kind", "intensity", "softness", "vertices", "blobs", "floor", "object_key")

    def get_transform_init_args(self) -> dict[str, Any]:
        return {k: _listify(getattr(self, k)) for k in self.get_transform_init_args_names()}


class _Occluder(ImageOnlyTransform):
    def __init__(self, fill: AF.FillMode, value: float | Sequence[float], noise_std: float, blur_sigma: float,
                 p: float) -> None:
        super().__init__(p=AP.check_probability("p", p))
        if fill not in AF.FILL_MODES:
            raise ValueError(f"Expected `fill` to be one of {AF.FILL_MODES}, but got {fill!r}.")
        if not isinstance(noise_std, int | float) or noise_std < 0:
            raise ValueError(f"Expected `noise_std` to be a non-negative number, but got {noise_std!r}.")
        if not isinstance(blur_sigma, int | float) or blur_sigma <= 0:
            raise ValueError(f"Expected `blur_sigma` to be a positive number, but got {blur_sigma!r}.")
        self.fill = fill
        self.value = AP.check_value("value", value)
        self.noise_std = float(noise_std)
        self.blur_sigma = float(blur_sigma)

    _own_args: tuple[str, ...] = ()

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        x, squeeze = _to_float(img)
        h, w = x.shape[:2]
        if not params.get("applied", True):
            return img
        region = NF.boxes_region(params["boxes"], params["valid"], h, w)
        out = NF.occlude(x, region, cast(str, self.fill), self.value, params["noise_seed"], self.noise_std,
                         self.blur_sigma)
        return _from_float(out, img, squeeze)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return (*self._own_args, "fill", "value", "noise_std", "blur_sigma")

    def get_transform_init_args(self) -> dict[str, Any]:
        return {k: _listify(getattr(self, k)) for k in self.get_transform_init_args_names()}


class Cutout(_Occluder):
    """Albumentations twin of :class:`augment.Cutout`: ``count`` squares of side ``size``, overflow allowed.

    Targets:
        image

    Raises:
        ValueError: on a probability outside ``[0, 1]``, a non-positive ``count``/``size`` or an unknown ``fill``.

    Example:
        >>> out = Cutout(count=2, size=3, p=1.0)(image=np.ones((8, 8, 1), np.float32))["image"]
        >>> out.shape, bool((out == 0).any())
        ((8, 8, 1), True)
    """

    _own_args = ("count", "size")

    def __init__(self, count: int = 1, size: int = 8, fill: AF.FillMode = "mean",
                 value: float | Sequence[float] = 0.0, noise_std: float = 1.0, blur_sigma: float = 4.0,
                 p: float = 0.5) -> None:
        super().__init__(fill, value, noise_std, blur_sigma, p)
        self.count = AP.check_positive_int("count", count)
        self.size = AP.check_positive_int("size", size)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        rng = _torch_generator(self.random_generator)
        return AP.sample_cutout(1, h, w, rng, count=self.count, size=self.size).item(0)


class HideAndSeek(_Occluder):
    """Albumentations twin of :class:`augment.HideAndSeek`: a ``grid × grid`` grid, cells kept w.p. ``p_keep_patch``.

    Targets:
        image

    Raises:
        ValueError: on a probability outside ``[0, 1]``, a non-positive ``grid`` or an unknown ``fill``.

    Example:
        >>> out = HideAndSeek(grid=2, p_keep_patch=0.0, p=1.0)(image=np.ones((4, 4, 1), np.float32))["image"]
        >>> float(out.sum())
        0.0
    """

    _own_args = ("grid", "p_keep_patch")

    def __init__(self, grid: int = 4, p_keep_patch: float = 0.5, fill: AF.FillMode = "mean",
                 value: float | Sequence[float] = 0.0, noise_std: float = 1.0, blur_sigma: float = 4.0,
                 p: float = 0.5) -> None:
        super().__init__(fill, value, noise_std, blur_sigma, p)
        self.grid = AP.check_positive_int("grid", grid)
        self.p_keep_patch = AP.check_probability("p_keep_patch", p_keep_patch)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        rng = _torch_generator(self.random_generator)
        return AP.sample_hide_and_seek(1, h, w, rng, grid=self.grid, p_keep_patch=self.p_keep_patch).item(0)


class SaliencyOcclusion(_Occluder):
    """Albumentations twin of :class:`augment.SaliencyOcclusion`; the saliency map comes in a data key.

    Call it as ``t(image=img, saliency=map_hw)`` (``saliency_key`` renames the key). Put it after geometric
    transforms, or declare the key a mask target so they move the map too.

    Targets:
        image

    Raises:
        ValueError: on a probability outside ``[0, 1]``, a non-positive ``size``/``count``, a negative
            ``jitter`` or an unknown ``fill``; at call time when the saliency key is missing.

    Example:
        >>> s = np.zeros((4, 4), np.float32); s[3, 3] = 1.0
        >>> out = SaliencyOcclusion(size=2, jitter=0, p=1.0)(image=np.ones((4, 4, 1), np.float32), saliency=s)
        >>> out["image"][2:, 2:, 0].tolist()
        [[0.0, 0.0], [0.0, 0.0]]
    """

    _own_args = ("size", "count", "jitter", "saliency_key")

    def __init__(self, size: int = 8, count: int = 1, jitter: int = 2, saliency_key: str = "saliency",
                 fill: AF.FillMode = "mean", value: float | Sequence[float] = 0.0, noise_std: float = 1.0,
                 blur_sigma: float = 4.0, p: float = 0.5) -> None:
        super().__init__(fill, value, noise_std, blur_sigma, p)
        self.size = AP.check_positive_int("size", size)
        self.count = AP.check_positive_int("count", count)
        self.jitter = AP.check_positive_int("jitter", jitter, 0)
        self.saliency_key = saliency_key

    @property
    def targets_as_params(self) -> list[str]:
        return [self.saliency_key]

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        h, w = params["shape"][:2]
        sal = torch.from_numpy(np.ascontiguousarray(data[self.saliency_key], dtype=np.float32))
        if sal.dim() != 2:
            raise ValueError(f"Expected `{self.saliency_key}` to be an (h, w) array, but got {tuple(sal.shape)}.")
        rng = _torch_generator(self.random_generator)
        return AP.sample_saliency_occlusion(sal[None], h, w, rng, size=self.size, count=self.count,
                                            jitter=self.jitter).item(0)


class _Corruption(ImageOnlyTransform):
    """Albumentations twin of a catalogue corruption (:mod:`augment.corruptions`).

    Configuration is the torch module's (same names, without ``seed``); the parameters are drawn by the same
    sampler from a ``torch.Generator`` seeded by albumentations' ``random_generator``, and applied by the same
    torch kernels on the one image (a zero-copy view), so both paths give the same pixels by construction.
    uint8 images are read as ``value / 255`` and written back rounded.
    """

    _module: type[Any]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        sig = inspect.signature(cls._module)
        params = [p for name, p in sig.parameters.items() if name != "seed"]
        cls.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]

    def __init__(self, p: float = 0.5, **config: Any) -> None:
        super().__init__(p=AP.check_probability("p", p))
        # The torch module validates and holds the configuration; its own p is irrelevant here.
        self.transform = self._module(p=1.0, **config)

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        shape = params["shape"]
        channels = shape[2] if len(shape) == 3 else 1
        like = torch.empty((1, channels, shape[0], shape[1]), device="meta")
        return cast(dict[str, Any], self.transform.sample(like, generator=_torch_generator(self.random_generator))
                    .item(0))

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        record = AP.CorruptionParams.from_dict(params["record"])
        squeeze = img.ndim == 2
        x = img[..., None] if squeeze else img
        scale = 255.0 if img.dtype == np.uint8 else 1.0
        x = x.astype(np.float32) / scale if img.dtype == np.uint8 else x
        t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]
        out = self.transform.apply_params(t, record)[0].permute(1, 2, 0).numpy() * scale
        return _from_float(out, img, squeeze)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return tuple(n for n in inspect.signature(type(self)).parameters if n != "p")

    def get_transform_init_args(self) -> dict[str, Any]:
        return {k: _listify(getattr(self.transform, k)) for k in self.get_transform_init_args_names()}


def _corruption_doc(module: type[Any]) -> str:
    return (f"Albumentations twin of :class:`augment.{module.__name__}`, configured like it (without ``seed``).\n\n"
            "    Targets:\n        image\n")


class SyntheticDefocus(_Corruption):
    __doc__ = _corruption_doc(_corruptions.SyntheticDefocus)
    _module = _corruptions.SyntheticDefocus


class SyntheticMotionBlur(_Corruption):
    __doc__ = _corruption_doc(_corruptions.SyntheticMotionBlur)
    _module = _corruptions.SyntheticMotionBlur


class SyntheticNoise(_Corruption):
    __doc__ = _corruption_doc(_corruptions.SyntheticNoise)
    _module = _corruptions.SyntheticNoise


class SyntheticBrightness(_Corruption):
    __doc__ = _corruption_doc(_corruptions.SyntheticBrightness)
    _module = _corruptions.SyntheticBrightness


class SyntheticContrast(_Corruption):
    __doc__ = _corruption_doc(_corruptions.SyntheticContrast)
    _module = _corruptions.SyntheticContrast


class SyntheticGamma(_Corruption):
    __doc__ = _corruption_doc(_corruptions.SyntheticGamma)
    _module = _corruptions.SyntheticGamma


class SyntheticTint(_Corruption):
    __doc__ = _corruption_doc(_corruptions.SyntheticTint)
    _module = _corruptions.SyntheticTint


class SyntheticTexture(_Corruption):
    __doc__ = _corruption_doc(_corruptions.SyntheticTexture)
    _module = _corruptions.SyntheticTexture


class SyntheticCompression(_Corruption):
    __doc__ = _corruption_doc(_corruptions.SyntheticCompression)
    _module = _corruptions.SyntheticCompression


class SyntheticHaze(_Corruption):
    __doc__ = _corruption_doc(_corruptions.SyntheticHaze)
    _module = _corruptions.SyntheticHaze
