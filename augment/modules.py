"""``nn.Module`` front ends: batched augmentations on any device.

Each module holds configuration only. ``sample`` draws a parameter record (on the CPU, from an explicit
generator), ``apply_params`` applies a record deterministically (``apply`` stays ``nn.Module.apply``),
``region`` gives the pixels it changed (the synthetic concept's ground-truth mask) and ``forward`` does
sample + apply. Per-sample probabilities (from an :class:`~augment.policy.AugmentationPolicy`) override
``p`` sample by sample.

Randomness: pass ``generator=`` to ``forward``/``sample``; otherwise the module uses its own CPU generator,
created on first use and seeded from ``seed`` (or from the OS when ``seed`` is None). The global RNG is
never touched.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from augment import functional as AF
from augment import params as AP
from augment.params import OcclusionParams, ShadowParams


def check_images(images: Any) -> Tensor:
    """Return ``images`` if it is a floating ``(B, C, H, W)`` tensor.

    Raises:
        ValueError: otherwise.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or not images.is_floating_point():
        what = (f"{tuple(images.shape)} {images.dtype}" if isinstance(images, Tensor) else type(images).__name__)
        raise ValueError(f"Expected `images` to be a floating-point tensor of shape (B, C, H, W), but got {what}.")
    return images


def _check_fill(fill: str) -> str:
    if fill not in AF.FILL_MODES:
        raise ValueError(f"Expected `fill` to be one of {AF.FILL_MODES}, but got {fill!r}.")
    return fill


class _Augmentation(nn.Module):
    def __init__(self, p: float, seed: int | None) -> None:
        super().__init__()
        self.p = AP.check_probability("p", p)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"Expected `seed` to be an integer or None, but got {seed!r}.")
        self.seed = seed
        self._generator: torch.Generator | None = None

    def _rng(self, generator: torch.Generator | None) -> torch.Generator:
        if generator is not None:
            return AP.check_generator(generator)
        if self._generator is None:
            g = torch.Generator()
            if self.seed is None:
                g.seed()
            else:
                g.manual_seed(self.seed)
            self._generator = g
        return self._generator

    def _probabilities(self, probabilities: Tensor | float | None) -> Tensor | float:
        return self.p if probabilities is None else probabilities

    def sample(self, images: Tensor, **kwargs: Any) -> Any:
        """Draw a parameter record for ``images``."""
        raise NotImplementedError

    def apply_params(self, images: Tensor, params: Any) -> Tensor:
        raise NotImplementedError

    def region(self, params: Any, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        """The pixels ``params`` change, ``(B, 1, H, W)`` in ``[0, 1]``."""
        raise NotImplementedError

    def forward(
        self,
        images: Tensor,
        params: Any = None,
        *,
        return_params: bool = False,
        **kwargs: Any,
    ) -> Tensor | tuple[Tensor, Any]:
        """Augment ``images``: ``apply_params(images, sample(images, **kwargs))``, or replay ``params`` when given.

        Shape:
            - images: ``(B, C, H, W)`` floating point
            - output: like ``images`` (and the parameter record when ``return_params``)
        """
        if params is None:
            params = self.sample(images, **kwargs)
        out = self.apply_params(images, params)
        return (out, params) if return_params else out


class SyntheticShadow(_Augmentation):
    """Darken one side of a random line across the object, or a polygon / canopy-like shadow (seed 000 §7.2).

    Args:
        p: probability that a sample gets a shadow.
        kind: ``line`` (seed 000: a line across the object's box, one side darkened), ``polygon`` or ``canopy``.
        intensity: range of the fraction of brightness removed inside the shadow.
        softness: range of the boundary's Gaussian blur sigma, as a fraction of the image's shorter side.
        vertices: number of polygon vertices (``kind="polygon"``).
        blobs: number of ellipses (``kind="canopy"``).
        floor: the value shadows darken towards (black): 0 for images in ``[0, 1]``, ``-mean/std`` per channel
            for normalised images.
        seed: seed of the module's own generator (used when ``forward`` gets none).

    Shape:
        - images: ``(B, C, H, W)``
        - object_masks: ``(B, H, W)``, non-zero on the object; the shadow is placed across its bounding box
        - output: like ``images``; :meth:`region` gives the ``(B, 1, H, W)`` shadow mask

    Raises:
        ValueError: on a probability outside ``[0, 1]``, an unknown ``kind``, a bad range, or images that are
            not a floating ``(B, C, H, W)`` tensor.

    Example:
        >>> shadow = SyntheticShadow(p=1.0, seed=0)
        >>> x = torch.ones(2, 3, 16, 16)
        >>> y, params = shadow(x, return_params=True)
        >>> bool((y <= x).all()), tuple(shadow.region(params, 16, 16).shape)
        (True, (2, 1, 16, 16))
    """

    def __init__(
        self,
        p: float = 0.5,
        kind: AF.ShadowKind = "line",
        intensity: tuple[float, float] = (0.3, 0.7),
        softness: tuple[float, float] = (0.0, 0.05),
        vertices: int = 5,
        blobs: int = 4,
        floor: float | Sequence[float] = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__(p, seed)
        if kind not in AF.SHADOW_KINDS:
            raise ValueError(f"Expected `kind` to be one of {AF.SHADOW_KINDS}, but got {kind!r}.")
        self.kind = kind
        self.intensity = AP.check_range("intensity", intensity, 0.0, 1.0)
        self.softness = AP.check_range("softness", softness, 0.0, 1.0)
        self.vertices = AP.check_positive_int("vertices", vertices, 3)
        self.blobs = AP.check_positive_int("blobs", blobs, 1)
        self.floor = AP.check_value("floor", floor)

    def sample(  # type: ignore[override]
        self,
        images: Tensor,
        *,
        object_masks: Tensor | None = None,
        boxes: Tensor | None = None,
        generator: torch.Generator | None = None,
        probabilities: Tensor | float | None = None,
    ) -> ShadowParams:
        """Draw shadow parameters for ``images`` (only their shape is read).

        Shape:
            - object_masks: ``(B, H, W)``; their bounding boxes place the shadows
            - boxes: ``(B, 4)`` object boxes, used when ``object_masks`` is None
            - probabilities: scalar or ``(B,)``, overrides ``p``
        """
        b, _, h, w = check_images(images).shape
        if object_masks is not None:
            if object_masks.shape != (b, h, w):
                raise ValueError(f"Expected `object_masks` to have shape ({b}, {h}, {w}), "
                                 f"but got {tuple(object_masks.shape)}.")
            boxes = AF.mask_bounding_boxes(object_masks).cpu()
        return AP.sample_shadow(
            b, h, w, self._rng(generator), kind=self.kind, probabilities=self._probabilities(probabilities),
            intensity=self.intensity, softness=self.softness, vertices=self.vertices, blobs=self.blobs, boxes=boxes,
        )

    def region(self, params: ShadowParams, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        """The soft shadow mask in ``[0, 1]`` (zero for samples left unchanged).

        Shape:
            - output: ``(B, 1, H, W)`` float32
        """
        p = params.to(device)
        r = AF.shadow_region(p.kind, p.geometry, p.softness, height, width)  # type: ignore[arg-type]
        return r * p.applied.view(-1, 1, 1, 1).to(r.dtype)

    def apply_params(self, images: Tensor, params: ShadowParams) -> Tensor:
        """Apply ``params`` deterministically."""
        images = check_images(images)
        _, _, h, w = images.shape
        if len(params) != images.shape[0]:
            raise ValueError(f"Expected `params` for {images.shape[0]} samples, but got {len(params)}.")
        p = params.to(images.device)
        strength = p.intensity * p.applied.to(p.intensity.dtype)
        out = torch.empty_like(images)
        # A few samples at a time: the brightness factor and the region's temporaries stay cache-sized and the
        # peak memory is the output plus one chunk's maps, whatever the batch size.
        step = AF.chunk_rows(h, w)
        for i in range(0, images.shape[0], step):
            rows = slice(i, i + step)
            if p.kind == "line":
                factor = AF.line_shadow_factor(p.geometry[rows], p.softness[rows], strength[rows], h, w)
            else:
                region = AF.shadow_region(p.kind, p.geometry[rows], p.softness[rows], h, w)  # type: ignore[arg-type]
                factor = region.mul_(strength[rows].view(-1, 1, 1, 1).neg()).add_(1.0)
            AF.scale_towards(images[rows], factor, self.floor, out=out[rows])
        return out


class _Occluder(_Augmentation):
    def __init__(self, p: float, fill: AF.FillMode, value: float | Sequence[float], noise_std: float,
                 blur_sigma: float, seed: int | None) -> None:
        super().__init__(p, seed)
        self.fill = _check_fill(fill)
        self.value = AP.check_value("value", value)
        if not isinstance(noise_std, int | float) or noise_std < 0:
            raise ValueError(f"Expected `noise_std` to be a non-negative number, but got {noise_std!r}.")
        if not isinstance(blur_sigma, int | float) or blur_sigma <= 0:
            raise ValueError(f"Expected `blur_sigma` to be a positive number, but got {blur_sigma!r}.")
        self.noise_std = float(noise_std)
        self.blur_sigma = float(blur_sigma)

    def region(self, params: OcclusionParams, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        """The occluded pixels, 1 inside (zero for samples left unchanged); the keep mask is ``1 - region``.

        Shape:
            - output: ``(B, 1, H, W)`` float32
        """
        p = params.to(device)
        return AF.boxes_region(p.boxes, p.valid & p.applied[:, None], height, width)

    def apply_params(self, images: Tensor, params: OcclusionParams) -> Tensor:
        """Apply ``params`` deterministically."""
        images = check_images(images)
        _, _, h, w = images.shape
        if len(params) != images.shape[0]:
            raise ValueError(f"Expected `params` for {images.shape[0]} samples, but got {len(params)}.")
        out = torch.empty_like(images)
        # A few samples at a time: the region and the blend's temporaries stay chunk-sized.
        step = AF.chunk_rows(h, w)
        for i in range(0, images.shape[0], step):
            rows = slice(i, i + step)
            sub = params.select(rows)
            region = self.region(sub, h, w, images.device)
            out[rows] = AF.occlude(images[rows], region, self.fill, self.value,  # type: ignore[arg-type]
                                   sub.noise_seeds, self.noise_std, self.blur_sigma)
        return out


_FILL_DOC = """fill: ``mean`` (the constant ``value``; 0 is the dataset mean after normalisation), ``noise``
            (``value + noise_std · N(0, 1)``) or ``blur`` (the image blurred with ``blur_sigma`` pixels).
        value: fill constant, a number or one per channel.
        noise_std: standard deviation of the noise fill.
        blur_sigma: Gaussian sigma of the blur fill, in pixels.
        seed: seed of the module's own generator (used when ``forward`` gets none)."""


class Cutout(_Occluder):
    """Occlude ``count`` squares of side ``size``, centres uniform over the image, overflow allowed (C.1).

    Args:
        p: probability that a sample is occluded.
        count: number of squares ``N``.
        size: side ``S`` in pixels.
        {fill}

    Shape:
        - images: ``(B, C, H, W)``
        - output: like ``images``

    Raises:
        ValueError: on a probability outside ``[0, 1]``, a non-positive ``count``/``size``, an unknown ``fill``,
            or images that are not a floating ``(B, C, H, W)`` tensor.

    Example:
        >>> y = Cutout(p=1.0, count=1, size=4, seed=0)(torch.ones(1, 1, 8, 8))
        >>> 9 <= int((y == 0).sum()) <= 16
        True
    """

    def __init__(self, p: float = 1.0, count: int = 1, size: int = 8, fill: AF.FillMode = "mean",
                 value: float | Sequence[float] = 0.0, noise_std: float = 1.0, blur_sigma: float = 4.0,
                 seed: int | None = None) -> None:
        super().__init__(p, fill, value, noise_std, blur_sigma, seed)
        self.count = AP.check_positive_int("count", count)
        self.size = AP.check_positive_int("size", size)

    def sample(  # type: ignore[override]
        self, images: Tensor, *, generator: torch.Generator | None = None,
        probabilities: Tensor | float | None = None,
    ) -> OcclusionParams:
        """Draw square positions for ``images`` (only their shape is read)."""
        b, _, h, w = check_images(images).shape
        return AP.sample_cutout(b, h, w, self._rng(generator), count=self.count, size=self.size,
                                probabilities=self._probabilities(probabilities))


class HideAndSeek(_Occluder):
    """Hide-and-Seek: split into a ``grid × grid`` grid, drop each cell with probability ``1 - p_keep_patch``.

    Fong & Vedaldi's ``p_keep,image`` (show the whole image) is ``1 - p``.

    Args:
        p: probability that a sample is occluded.
        grid: cells per side ``G``.
        p_keep_patch: probability that a cell is kept.
        {fill}

    Shape:
        - images: ``(B, C, H, W)``
        - output: like ``images``

    Raises:
        ValueError: on a probability outside ``[0, 1]``, a non-positive ``grid``, an unknown ``fill``, or
            images that are not a floating ``(B, C, H, W)`` tensor.

    Example:
        >>> y = HideAndSeek(p=1.0, grid=2, p_keep_patch=0.0, seed=0)(torch.ones(1, 1, 4, 4))
        >>> int(y.sum())
        0
    """

    def __init__(self, p: float = 1.0, grid: int = 4, p_keep_patch: float = 0.5, fill: AF.FillMode = "mean",
                 value: float | Sequence[float] = 0.0, noise_std: float = 1.0, blur_sigma: float = 4.0,
                 seed: int | None = None) -> None:
        super().__init__(p, fill, value, noise_std, blur_sigma, seed)
        self.grid = AP.check_positive_int("grid", grid)
        self.p_keep_patch = AP.check_probability("p_keep_patch", p_keep_patch)

    def sample(  # type: ignore[override]
        self, images: Tensor, *, generator: torch.Generator | None = None,
        probabilities: Tensor | float | None = None,
    ) -> OcclusionParams:
        """Draw the dropped cells for ``images`` (only their shape is read)."""
        b, _, h, w = check_images(images).shape
        if self.grid > min(h, w):
            raise ValueError(f"Expected `grid` to be at most the image side {min(h, w)}, but got {self.grid}.")
        return AP.sample_hide_and_seek(b, h, w, self._rng(generator), grid=self.grid,
                                       p_keep_patch=self.p_keep_patch, probabilities=self._probabilities(probabilities))


class SaliencyOcclusion(_Occluder):
    """Occlude the ``count`` most salient non-overlapping ``size × size`` patches, jittered by ``±jitter`` (C.1).

    The saliency map is an input (e.g. NormGrad at a layer, from the training step's own gradients); it is
    upsampled bilinearly to the image and searched with a box filter. Patches always lie fully inside the image.

    Args:
        p: probability that a sample is occluded.
        size: patch side ``S`` in pixels.
        count: number of patches ``N`` (C.1 used 1 and notes it is too little occlusion for strong models).
        jitter: maximum shift ``τ`` in pixels.
        {fill}

    Shape:
        - images: ``(B, C, H, W)``
        - saliency: ``(B, h, w)``, non-negative, any resolution
        - output: like ``images``

    Raises:
        ValueError: on a probability outside ``[0, 1]``, a non-positive ``size``/``count``, a negative
            ``jitter``, an unknown ``fill``, a missing or misshapen ``saliency``, a ``size`` larger than the
            image, or images that are not a floating ``(B, C, H, W)`` tensor.

    Example:
        >>> s = torch.zeros(1, 4, 4); s[0, 0, 0] = 1.0
        >>> y = SaliencyOcclusion(size=2, jitter=0, seed=0)(torch.ones(1, 1, 4, 4), saliency=s)
        >>> y[0, 0, :2, :2].sum().item(), y.sum().item()
        (0.0, 12.0)
    """

    def __init__(self, p: float = 1.0, size: int = 8, count: int = 1, jitter: int = 2, fill: AF.FillMode = "mean",
                 value: float | Sequence[float] = 0.0, noise_std: float = 1.0, blur_sigma: float = 4.0,
                 seed: int | None = None) -> None:
        super().__init__(p, fill, value, noise_std, blur_sigma, seed)
        self.size = AP.check_positive_int("size", size)
        self.count = AP.check_positive_int("count", count)
        self.jitter = AP.check_positive_int("jitter", jitter, 0)

    def sample(  # type: ignore[override]
        self, images: Tensor, *, saliency: Tensor | None = None, generator: torch.Generator | None = None,
        probabilities: Tensor | float | None = None,
    ) -> OcclusionParams:
        """Find the patches for ``images`` from ``saliency``."""
        b, _, h, w = check_images(images).shape
        if saliency is None or not isinstance(saliency, Tensor) or saliency.dim() != 3 or saliency.shape[0] != b:
            got = tuple(saliency.shape) if isinstance(saliency, Tensor) else saliency
            raise ValueError(f"Expected `saliency` to be a tensor of shape ({b}, h, w), but got {got!r}.")
        return AP.sample_saliency_occlusion(saliency, h, w, self._rng(generator), size=self.size, count=self.count,
                                            jitter=self.jitter, probabilities=self._probabilities(probabilities))


for _cls in (Cutout, HideAndSeek, SaliencyOcclusion):
    _cls.__doc__ = (_cls.__doc__ or "").replace("{fill}", _FILL_DOC)


def sample_accepts(module: nn.Module, name: str) -> bool:
    """Whether ``module``'s ``sample`` or ``forward`` names keyword ``name`` (e.g. ``object_masks``).

    A catch-all ``**kwargs`` does not count: ``_Augmentation.forward`` passes those on to ``sample``, which
    rejects names it does not know.
    """
    key = (type(module), name)
    if key not in _ACCEPTS:
        methods = [getattr(type(module), m, None) for m in ("sample", "forward")]
        _ACCEPTS[key] = any(fn is not None and name in inspect.signature(fn).parameters for fn in methods)
    return _ACCEPTS[key]


_ACCEPTS: dict[tuple[type, str], bool] = {}


@dataclass(frozen=True)
class OneOfParams:
    """One batch of :class:`OneOfUniform` draws: which transform each sample got, and each transform's record.

    Shape:
        - choice: ``(B,)`` int64, the index of the transform a sample got, ``-1`` for none
        - children: one parameter record per transform (None when no sample chose it)
    """

    choice: Tensor
    children: tuple[Any, ...]

    def __len__(self) -> int:
        return int(self.choice.shape[0])


class OneOfUniform(_Augmentation):
    """Augment a sample with probability ``p``, then with exactly one of ``transforms`` chosen uniformly.

    The RandAugment / albumentations ``OneOf`` reading of "all transforms, uniform": every augmented sample gets
    one transform, never two. Batched: each transform runs once on the whole batch with probability 1 on the rows
    that chose it and 0 elsewhere (its own generator draws its parameters). Keywords a transform's ``sample``
    accepts (``object_masks`` for :class:`SyntheticShadow`) reach it; the others do not.

    Args:
        transforms: the transforms to choose from, each an ``_Augmentation`` with ``sample`` / ``apply_params`` /
            ``region`` (their own ``p`` is ignored).
        p: probability that a sample is augmented.
        seed: seed of the module's own generator (which sample is augmented, and by which transform).

    Shape:
        - images: ``(B, C, H, W)``
        - output: like ``images``; :meth:`region` gives the ``(B, 1, H, W)`` changed pixels

    Raises:
        ValueError: on an empty ``transforms``, an entry that is not such a transform, or a probability outside
            ``[0, 1]``.

    Example:
        >>> pick = OneOfUniform([SyntheticShadow(seed=0), Cutout(size=4, seed=1)], p=1.0, seed=0)
        >>> params = pick.sample(torch.ones(4, 1, 8, 8))
        >>> set(params.choice.tolist()) <= {0, 1}, len(params)
        (True, 4)
    """

    def __init__(self, transforms: Sequence[nn.Module] | nn.ModuleList, p: float = 1.0,
                 seed: int | None = None) -> None:
        super().__init__(p, seed)
        if isinstance(transforms, nn.ModuleList):
            transforms = list(transforms)
        if not isinstance(transforms, Sequence) or not transforms:
            raise ValueError(f"Expected `transforms` to be a non-empty sequence of transforms, but got {transforms!r}.")
        for t in transforms:
            if not isinstance(t, _Augmentation):
                raise ValueError("Expected every entry of `transforms` to be an augmentation with sample/apply_params "
                                 f"(e.g. SyntheticShadow, Cutout), but got {t!r}.")
        self.transforms = nn.ModuleList(transforms)

    def _members(self) -> list[_Augmentation]:
        return [t for t in self.transforms if isinstance(t, _Augmentation)]

    def sample(  # type: ignore[override]
        self,
        images: Tensor,
        *,
        generator: torch.Generator | None = None,
        probabilities: Tensor | float | None = None,
        object_masks: Tensor | None = None,
        **kwargs: Any,
    ) -> OneOfParams:
        """Draw which samples are augmented, by which transform, and that transform's parameters.

        Shape:
            - probabilities: scalar or ``(B,)``, overrides ``p``
            - object_masks: ``(B, H, W)``, passed to the transforms that place by the object
        """
        b = check_images(images).shape[0]
        g = self._rng(generator)
        applied = AP.sample_applied(b, self._probabilities(probabilities), g)
        pick = torch.randint(len(self.transforms), (b,), generator=g)
        choice = torch.where(applied, pick, torch.full_like(pick, -1))
        extra = {**kwargs, **({} if object_masks is None else {"object_masks": object_masks})}
        children: list[Any] = []
        for i, t in enumerate(self._members()):
            rows = choice == i
            if not bool(rows.any()):
                children.append(None)
                continue
            own = {k: v for k, v in extra.items() if sample_accepts(t, k)}
            children.append(t.sample(images, generator=generator, probabilities=rows.float(), **own))
        return OneOfParams(choice, tuple(children))

    def apply_params(self, images: Tensor, params: OneOfParams) -> Tensor:
        """Apply ``params`` deterministically (each row is changed by at most one transform)."""
        images = check_images(images)
        if len(params) != images.shape[0] or len(params.children) != len(self.transforms):
            raise ValueError(f"Expected `params` for {images.shape[0]} samples and {len(self.transforms)} transforms, "
                             f"but got {len(params)} samples and {len(params.children)} transforms.")
        out = images
        for t, child in zip(self._members(), params.children, strict=True):
            if child is not None:
                out = t.apply_params(out, child)
        return out

    def region(self, params: OneOfParams, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        """The pixels the chosen transform changed (its own :meth:`region`), zero for samples left unchanged.

        Shape:
            - output: ``(B, 1, H, W)`` float32
        """
        out = torch.zeros(len(params), 1, height, width, device=device)
        for t, child in zip(self._members(), params.children, strict=True):
            if child is not None:
                out = torch.maximum(out, t.region(child, height, width, device).float())
        return out
