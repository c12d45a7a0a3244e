"""A catalogue of the failures users meet, each renderable at a strength and reporting the region it changed.

The closed loop lets a failure concept choose its own fix: every entry is rendered on clean probe images over
a grid of strengths (:func:`render`), the patches it changed are embedded, and the entry whose patches the
concept claims most is the match. So every entry can be built at one strength knob in ``[0, 1]`` (0 changes
nothing), renders deterministically from a generator on the images' device, and says where it changed the
image: our transforms from their own region, albumentations' from the pixel difference
(:func:`changed_region`).

Entries of two sources: ``conceptfix`` (the batched transforms of this package) and ``albumentations``
(albumentations' own transforms, applied per sample by :class:`PerSampleAlbumentations`); each of ours names
its albumentations ``counterpart`` where one exists. :func:`untargeted_control` draws one transform of the
whole catalogue per sample, the comparison a user without a diagnosis would run.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from augment import corruptions as C
from augment import params as AP
from augment.modules import Cutout, OneOfUniform, SyntheticShadow, _Augmentation, check_images
from augment.params import _Record

Source = Literal["conceptfix", "albumentations"]
SOURCES: tuple[str, ...] = ("conceptfix", "albumentations")
FAMILIES: tuple[str, ...] = (
    "shadow", "occluder", "blur", "noise", "exposure", "colour", "texture", "compression", "haze",
)
_CHANGE_TOLERANCE = 1.5 / 255


@dataclass(frozen=True)
class PerSampleParams(_Record):
    """One batch of :class:`PerSampleAlbumentations` draws: which samples change, and each one's seed.

    Shape:
        - applied: ``(B,)`` bool
        - seeds: ``(B,)`` int64, the seed albumentations' own generator gets before the sample
    """

    applied: Tensor
    seeds: Tensor


class PerSampleAlbumentations(_Augmentation):
    """An albumentations transform applied sample by sample to a batch, seeded from a torch generator.

    Images go to albumentations as float32 ``(H, W, C)`` arrays in ``[0, 1]`` and come back on the batch's
    device and dtype. The transform draws its own randomness from a per-sample seed of the record, so a
    record replays exactly. Albumentations does not say which pixels it changed: :func:`changed_region` finds
    them from the pixel difference, and :meth:`region` raises.

    Args:
        transform: an albumentations transform (its own ``p`` applies on top of ``p``).
        p: probability that a sample is handed to the transform.
        seed: seed of the module's own generator (used when ``forward`` gets none).

    Shape:
        - images: ``(B, C, H, W)`` in ``[0, 1]``
        - output: like ``images``

    Raises:
        ValueError: on a ``transform`` that is not an albumentations transform, a probability outside ``[0, 1]``,
            or images that are not a floating ``(B, C, H, W)`` tensor.

    Example:
        >>> import albumentations as A
        >>> t = PerSampleAlbumentations(A.RandomBrightnessContrast((0.2, 0.2), (0.0, 0.0), p=1.0), seed=0)
        >>> y = t(torch.full((2, 3, 4, 4), 0.5))
        >>> [round(v, 2) for v in y[:, 0, 0, 0].tolist()]
        [0.7, 0.7]
    """

    def __init__(self, transform: Any, p: float = 1.0, seed: int | None = None) -> None:
        super().__init__(p, seed)
        from albumentations.core.transforms_interface import BasicTransform

        if not isinstance(transform, BasicTransform):
            raise ValueError(f"Expected `transform` to be an albumentations transform, but got {transform!r}.")
        self.transform = transform

    def sample(  # type: ignore[override]
        self, images: Tensor, *, generator: torch.Generator | None = None,
        probabilities: Tensor | float | None = None,
    ) -> PerSampleParams:
        """Draw which samples change and their seeds (only the images' shape is read)."""
        b = check_images(images).shape[0]
        g = self._rng(generator)
        applied = AP.sample_applied(b, self._probabilities(probabilities), g)
        return PerSampleParams(applied, torch.randint(0, 2**31 - 1, (b,), generator=g, dtype=torch.long))

    def apply_params(self, images: Tensor, params: PerSampleParams) -> Tensor:
        """Apply ``params``: each applied sample through the transform with its own seed."""
        images = check_images(images)
        if len(params) != images.shape[0]:
            raise ValueError(f"Expected `params` for {images.shape[0]} samples, but got {len(params)}.")
        out = images.clone()
        hwc = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
        for i in params.applied.nonzero().flatten().tolist():
            self.transform.set_random_seed(int(params.seeds[i]))
            y = np.asarray(self.transform(image=np.ascontiguousarray(hwc[i]))["image"], dtype=np.float32)
            out[i] = torch.from_numpy(y.reshape(hwc[i].shape)).permute(2, 0, 1).to(out.device, out.dtype)
        return out

    def region(self, params: Any, height: int, width: int, device: torch.device | str = "cpu") -> Tensor:
        """Not known from the record: albumentations does not report it.

        Raises:
            ValueError: always; use :func:`changed_region` on the images and the output.
        """
        raise ValueError(f"Expected a transform that reports its region, but {type(self.transform).__name__} "
                         "does not; use augment.catalog.changed_region(images, augmented).")


def changed_region(images: Tensor, augmented: Tensor, tolerance: float = _CHANGE_TOLERANCE) -> Tensor:
    """The pixels where any channel moved by more than ``tolerance``: 1 there, 0 elsewhere.

    The default tolerance (1.5 grey levels of 255) ignores the rounding of transforms that pass float images
    through uint8.

    Shape:
        - images, augmented: ``(B, C, H, W)``
        - output: ``(B, 1, H, W)`` float32

    Example:
        >>> x = torch.zeros(1, 2, 1, 3); y = x.clone(); y[0, 1, 0, 2] = 0.5
        >>> changed_region(x, y).flatten().tolist()
        [0.0, 0.0, 1.0]
    """
    return ((augmented - images).abs().amax(dim=1, keepdim=True) > tolerance).float()


Builder = Callable[[tuple[float, float], int, int], _Augmentation]


@dataclass(frozen=True)
class CatalogEntry:
    """One transform of the catalogue.

    Attributes:
        name: unique name (``defocus``, ``albumentations.Defocus``).
        family: the failure it imitates, one of :data:`FAMILIES`.
        source: ``conceptfix`` or ``albumentations``.
        build: ``build((lo, hi), height, width)`` returns the transform at strengths drawn from ``[lo, hi]``,
            with ``p = 1``.
        counterpart: for ours, the name of the albumentations entry it is measured against (or None).
        description: what it does, in a phrase.
    """

    name: str
    family: str
    source: str
    build: Builder
    counterpart: str | None = None
    description: str = ""

    def make(self, strength: float | Sequence[float], height: int, width: int) -> _Augmentation:
        """The transform at ``strength`` (a number, or a range drawn per sample) for ``height × width`` images.

        Raises:
            ValueError: on a strength outside ``[0, 1]``.
        """
        return self.build(C.check_strength(strength), height, width)


def _side(height: int, width: int) -> int:
    return min(height, width)


def _mid(strength: tuple[float, float]) -> float:
    return 0.5 * (strength[0] + strength[1])


def _ours() -> list[CatalogEntry]:
    def shadow(kind: str) -> Builder:
        return lambda s, h, w: SyntheticShadow(p=1.0, kind=kind, intensity=s)  # type: ignore[arg-type]

    def cutout(s: tuple[float, float], h: int, w: int) -> _Augmentation:
        # The occluded side grows with the strength up to half the shorter side; strength 0 occludes nothing.
        size = round(0.5 * _mid(s) * _side(h, w))
        return Cutout(p=1.0 if size > 0 else 0.0, size=max(size, 1), fill="mean", value=0.5)

    def corruption(cls: type[C._Corruption]) -> Builder:
        return lambda s, h, w: cls(p=1.0, strength=s)  # type: ignore[call-arg]

    entries = [
        CatalogEntry(f"shadow-{k}", "shadow", "conceptfix", shadow(k), "albumentations.RandomShadow",
                     f"SyntheticShadow kind={k}: brightness removed inside a {k} region, intensity = strength")
        for k in ("line", "polygon", "canopy")
    ]
    entries.append(CatalogEntry("cutout", "occluder", "conceptfix", cutout, "albumentations.CoarseDropout",
                                "a grey square of side strength/2 of the shorter side"))
    for name, family, cls, counterpart in (
        ("defocus", "blur", C.SyntheticDefocus, "albumentations.Defocus"),
        ("motion-blur", "blur", C.SyntheticMotionBlur, "albumentations.MotionBlur"),
        ("noise", "noise", C.SyntheticNoise, "albumentations.GaussNoise"),
        ("brightness", "exposure", C.SyntheticBrightness, "albumentations.RandomBrightness"),
        ("contrast", "exposure", C.SyntheticContrast, "albumentations.RandomContrast"),
        ("gamma", "exposure", C.SyntheticGamma, "albumentations.RandomGamma"),
        ("tint", "colour", C.SyntheticTint, "albumentations.RGBShift"),
        ("texture", "texture", C.SyntheticTexture, "albumentations.PlasmaBrightnessContrast"),
        ("compression", "compression", C.SyntheticCompression, "albumentations.ImageCompression"),
        ("haze", "haze", C.SyntheticHaze, "albumentations.RandomFog"),
    ):
        doc = (cls.__doc__ or "").strip().splitlines()[0]
        entries.append(CatalogEntry(name, family, "conceptfix", corruption(cls), counterpart, doc))
    return entries


def _albumentations() -> list[CatalogEntry]:
    def wrap(factory: Callable[[float, int], Any]) -> Builder:
        # Albumentations draws within its own ranges; the strength range is represented by its midpoint, and
        # strength 0 (which several of its transforms cannot express) by not applying the transform at all.
        def build(s: tuple[float, float], h: int, w: int) -> _Augmentation:
            m = _mid(s)
            return PerSampleAlbumentations(factory(max(m, 1e-3), _side(h, w)), p=1.0 if m > 0 else 0.0)
        return build

    def odd(x: float) -> int:
        return max(3, 2 * round(x / 2) + 1)

    import albumentations as A

    specs: list[tuple[str, str, Callable[[float, int], Any]]] = [
        ("RandomShadow", "shadow", lambda s, side: A.RandomShadow(
            shadow_roi=(0, 0, 1, 1), num_shadows_limit=(1, 1), shadow_intensity_range=(s, s), p=1.0)),
        ("CoarseDropout", "occluder", lambda s, side: A.CoarseDropout(
            num_holes_range=(1, 1), hole_height_range=(0.5 * s, 0.5 * s), hole_width_range=(0.5 * s, 0.5 * s),
            fill=0.5, p=1.0)),
        ("Defocus", "blur", lambda s, side: A.Defocus(
            radius=(max(1, round(0.04 * s * side)),) * 2, alias_blur=(0.1, 0.1), p=1.0)),
        ("MotionBlur", "blur", lambda s, side: A.MotionBlur(blur_limit=(odd(0.08 * s * side),) * 2, p=1.0)),
        ("GaussNoise", "noise", lambda s, side: A.GaussNoise(std_range=(0.3 * s, 0.3 * s), p=1.0)),
        ("RandomBrightness", "exposure", lambda s, side: A.RandomBrightnessContrast(
            brightness_limit=(-0.5 * s, 0.5 * s), contrast_limit=(0.0, 0.0), p=1.0)),
        ("RandomContrast", "exposure", lambda s, side: A.RandomBrightnessContrast(
            brightness_limit=(0.0, 0.0), contrast_limit=(4.0**-s - 1.0, 4.0**s - 1.0), p=1.0)),
        ("RandomGamma", "exposure", lambda s, side: A.RandomGamma(
            gamma_limit=(100.0 * 3.0**-s, 100.0 * 3.0**s), p=1.0)),
        ("RGBShift", "colour", lambda s, side: A.RGBShift(
            r_shift_limit=0.3 * s, g_shift_limit=0.3 * s, b_shift_limit=0.3 * s, p=1.0)),
        ("PlasmaBrightnessContrast", "texture", lambda s, side: A.PlasmaBrightnessContrast(
            brightness_range=(-0.4 * s, 0.4 * s), contrast_range=(0.0, 0.0), plasma_size=max(8, side), p=1.0)),
        ("ImageCompression", "compression", lambda s, side: A.ImageCompression(
            quality_range=(round(100 - 95 * s),) * 2, p=1.0)),
        ("RandomFog", "haze", lambda s, side: A.RandomFog(fog_coef_range=(0.8 * s, 0.8 * s), p=1.0)),
    ]
    return [CatalogEntry(f"albumentations.{n}", fam, "albumentations", wrap(f), None, f"albumentations' {n}")
            for n, fam, f in specs]


def catalog(sources: Sequence[str] = SOURCES) -> tuple[CatalogEntry, ...]:
    """The catalogue's entries from ``sources``, ours first.

    Raises:
        ValueError: on an unknown source, or ``albumentations`` when it is not installed.

    Example:
        >>> names = [e.name for e in catalog(["conceptfix"])]
        >>> names[:4], len(names)
        (['shadow-line', 'shadow-polygon', 'shadow-canopy', 'cutout'], 14)
    """
    for s in sources:
        if s not in SOURCES:
            raise ValueError(f"Expected every source to be one of {SOURCES}, but got {s!r}.")
    out: list[CatalogEntry] = []
    if "conceptfix" in sources:
        out += _ours()
    if "albumentations" in sources:
        try:
            out += _albumentations()
        except ImportError as e:
            raise ValueError("Expected albumentations to be installed for source 'albumentations', "
                             f"but got {e!r}.") from None
    return tuple(out)


def entry(name: str) -> CatalogEntry:
    """The entry called ``name``.

    Raises:
        ValueError: on an unknown name (the nearest names are listed).

    Example:
        >>> entry("haze").family
        'haze'
    """
    sources = ("conceptfix", "albumentations") if name.startswith("albumentations.") else ("conceptfix",)
    entries = {e.name: e for e in catalog(sources)}
    if name not in entries:
        near = difflib.get_close_matches(name, list(entries), n=3, cutoff=0.0)
        raise ValueError(f"Expected `name` to be a catalogue entry (nearest: {near}), but got {name!r}.")
    return entries[name]


def render(
    item: CatalogEntry | str,
    images: Tensor,
    strength: float,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Render one catalogue entry on ``images`` at ``strength``; return the result and the changed region.

    Every sample is transformed (``p = 1``). Our transforms report their own (soft) region (empty at strength 0,
    which changes nothing); albumentations' are measured from the pixel difference (:func:`changed_region`).
    The same generator state gives the same pixels.

    Shape:
        - images: ``(B, C, H, W)`` in ``[0, 1]``
        - output: augmented like ``images``, and the changed region ``(B, 1, H, W)`` in ``[0, 1]`` on the
          images' device

    Raises:
        ValueError: on an unknown entry name, a strength outside ``[0, 1]``, or images that are not a floating
            ``(B, C, H, W)`` tensor.

    Example:
        >>> x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> y, changed = render("haze", x, 0.5, torch.Generator().manual_seed(0))
        >>> tuple(changed.shape), bool(torch.equal(y * (changed == 0), x * (changed == 0)))
        ((2, 1, 16, 16), True)
    """
    e = entry(item) if isinstance(item, str) else item
    if isinstance(strength, bool) or not isinstance(strength, int | float) or not 0.0 <= strength <= 1.0:
        raise ValueError(f"Expected `strength` to be a number in [0, 1], but got {strength!r}.")
    images = check_images(images)
    _, _, h, w = images.shape
    module = e.make(float(strength), h, w)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    params = module.sample(images, generator=generator)
    out = module.apply_params(images, params)
    if isinstance(module, PerSampleAlbumentations):
        return out, changed_region(images, out)
    if strength == 0:
        return out, torch.zeros(images.shape[0], 1, h, w, device=images.device)
    return out, module.region(params, h, w, images.device).float()


def untargeted_control(
    height: int,
    width: int,
    p: float = 1.0,
    strength: float | Sequence[float] = (0.0, 1.0),
    sources: Sequence[str] = ("conceptfix",),
    seed: int | None = None,
) -> OneOfUniform:
    """The untargeted control: each augmented sample gets one transform of the whole catalogue, uniformly.

    What a user without a diagnosis would run. Built on :class:`~augment.OneOfUniform`; our transforms draw a
    strength per sample from ``strength``, albumentations' use its midpoint. With the ``albumentations``
    source its :meth:`~augment.OneOfUniform.region` raises (those do not report one).

    Raises:
        ValueError: on a probability or strength out of range, or an unknown source.

    Example:
        >>> control = untargeted_control(16, 16, seed=0)
        >>> len(control.transforms), control(torch.rand(4, 3, 16, 16)).shape
        (14, torch.Size([4, 3, 16, 16]))
    """
    s = C.check_strength(strength)
    transforms = [e.build(s, height, width) for e in catalog(sources)]
    for t in transforms:
        t.p = 0.0  # OneOfUniform alone decides who is augmented
    return OneOfUniform(transforms, p=p, seed=seed)


def strength_grid(points: int = 5) -> tuple[float, ...]:
    """``points`` strengths evenly spaced over ``(0, 1]`` (0 itself changes nothing, so it is left out).

    Example:
        >>> strength_grid(4)
        (0.25, 0.5, 0.75, 1.0)
    """
    AP.check_positive_int("points", points)
    return tuple(math.floor(1e6 * (i + 1) / points) / 1e6 for i in range(points))
