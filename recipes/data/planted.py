"""Planted concepts, classification: ten object classes on textured backgrounds, with concepts whose pixels we know.

Each image holds one object (a silhouette from :data:`recipes.data.render.SHAPES`) with random size, position,
rotation and colour on a colourised texture photo. Four concepts are planted on top, each with an exact mask:

- ``shadow``: a soft-edged darkening that crosses the object (tree canopy blobs or a straight boundary);
- ``occluder``: an opaque foreign blob over part of the object, made of a bright, fine-grained speckle that no
  background or object has (:func:`render.foreign_material`);
- ``stripes``: a stripe texture laid over a rectangle of the image;
- ``tint``: a colour cast over the whole image.

How often each appears is set per split, per concept and per class. By default shadows are rare in training
(3%) and common at validation and test (50%), so a model trained on this data fails on shadows: the failure
the framework must find. A per-class prevalence builds spurious correlations (``stripes`` with one class).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from recipes.data import render
from recipes.data.base import ChunkedDataset, ContractDataModule, to_uint8

Split = Literal["train", "val", "test"]
CONCEPTS: tuple[str, ...] = ("shadow", "occluder", "stripes", "tint")
SPLITS: tuple[str, ...] = ("train", "val", "test")

DEFAULT_PREVALENCE: dict[str, dict[str, float]] = {
    "train": {"shadow": 0.03, "occluder": 0.10, "stripes": 0.15, "tint": 0.15},
    "val": {"shadow": 0.50, "occluder": 0.30, "stripes": 0.15, "tint": 0.15},
    "test": {"shadow": 0.50, "occluder": 0.30, "stripes": 0.15, "tint": 0.15},
}


def prevalence_table(
    split: str,
    num_classes: int,
    concepts: tuple[str, ...],
    prevalence: Mapping[str, float] | None = None,
    class_prevalence: Mapping[str, Mapping[int, float]] | None = None,
    defaults: Mapping[str, Mapping[str, float]] = DEFAULT_PREVALENCE,
) -> Tensor:
    """Probability of each concept for each class in one split.

    Args:
        prevalence: concept → probability, overriding the split's defaults for every class.
        class_prevalence: concept → {class → probability}, overriding single classes.

    Returns:
        ``(num_classes, K)`` probabilities.

    Raises:
        ValueError: for an unknown split, concept or class, or a probability outside [0, 1].
    """
    if split not in defaults:
        raise ValueError(f"Expected `split` to be one of {sorted(defaults)}, but got {split!r}.")
    base = dict(defaults[split])
    for name, p in (prevalence or {}).items():
        _check_concept(name, concepts)
        base[name] = _check_p(p, f"prevalence[{name!r}]")
    table = torch.tensor([[base.get(c, 0.0) for c in concepts]] * num_classes, dtype=torch.float32)
    for name, per_class in (class_prevalence or {}).items():
        _check_concept(name, concepts)
        for cls, p in per_class.items():
            if not 0 <= int(cls) < num_classes:
                raise ValueError(f"Expected a class index in [0, {num_classes}), but got {cls!r} for {name!r}.")
            table[int(cls), concepts.index(name)] = _check_p(p, f"class_prevalence[{name!r}][{cls}]")
    return table


def _check_concept(name: str, concepts: tuple[str, ...]) -> None:
    if name not in concepts:
        raise ValueError(f"Expected a concept name in {list(concepts)}, but got {name!r}.")


def _check_p(p: float, what: str) -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"Expected `{what}` to be a probability in [0, 1], but got {p!r}.")
    return float(p)


def plant_concepts(
    g: torch.Generator,
    images: Tensor,
    object_mask: Tensor,
    centre_radius: Tensor,
    present: Tensor,
    concepts: tuple[str, ...],
    shadow_strength: tuple[float, float] = (0.55, 0.75),
    shadow_cover: float = 0.5,
) -> tuple[Tensor, Tensor]:
    """Draw the present concepts onto a batch of images and return their exact masks.

    Concepts are drawn in a physical order: occluder, stripes, shadow, tint. Each is sampled for the whole
    batch (so the random stream does not depend on which samples carry it) and applied where present.

    Args:
        shadow_strength: range of the fraction of brightness a shadow removes where it fully covers.
        shadow_cover: about which share of the object a shadow covers (see :func:`render.shadow_alpha`).

    Shape:
        - images: ``(N, C, H, W)`` in [0, 1], C = 1 or 3; object_mask: ``(N, H, W)``; present: ``(N, K)`` bool
        - output: images ``(N, C, H, W)`` and masks ``(N, K, H, W)`` bool
    """
    n, c, h, w = images.shape
    masks = torch.zeros(n, len(concepts), h, w, dtype=torch.bool)

    def colours(lo: float, hi: float) -> Tensor:
        rgb = render.random_colours(g, n, lo, hi)
        return rgb if c == 3 else rgb.mean(1, keepdim=True)

    def on(name: str) -> Tensor | None:
        return present[:, concepts.index(name)] if name in concepts else None

    if (p := on("occluder")) is not None:
        blob = render.occluder_mask(g, object_mask, centre_radius) & p[:, None, None]
        a = blob.unsqueeze(1).float()
        images = images * (1 - a) + render.foreign_material(g, n, h, w).expand(n, c, h, w) * a
        masks[:, concepts.index("occluder")] = blob
    if (p := on("stripes")) is not None:
        alpha = render.stripes_alpha(g, n, h, w) * p[:, None, None]
        images = render.paint(images, alpha > 0, colours(0.0, 1.0), alpha=0.7)
        masks[:, concepts.index("stripes")] = alpha > 0
    if (p := on("shadow")) is not None:
        alpha = render.shadow_alpha(g, object_mask, centre_radius, shadow_cover) * p[:, None, None]
        lo, hi = shadow_strength
        strength = lo + (hi - lo) * torch.rand(n, generator=g)
        images = images * (1 - strength[:, None, None, None] * alpha[:, None])
        masks[:, concepts.index("shadow")] = alpha >= 0.5
    if (p := on("tint")) is not None:
        amount = (0.25 + 0.15 * torch.rand(n, generator=g)) * p.float()
        tint = colours(0.0, 1.0)
        a = amount[:, None, None, None]
        images = images * (1 - a) + tint[:, :, None, None] * a
        masks[:, concepts.index("tint")] = p[:, None, None].expand(n, h, w)
    return images.clamp(0, 1), masks


class PlantedConceptsDataset(ChunkedDataset):
    """Ten object classes on textured backgrounds with planted ``shadow``/``occluder``/``stripes``/``tint``.

    Samples follow :mod:`debugger.contract` and also carry ``object_mask`` (the object's silhouette).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; picks the default prevalence.
        size: number of images.
        image_size: side of the square RGB images (32–64 is the intended range).
        seed: everything is a pure function of it.
        prevalence: concept → probability, overriding the split's defaults.
        class_prevalence: concept → {class → probability}, e.g. ``{"stripes": {3: 0.9}}`` for a spurious cue.
        cache_dir: where generated chunks are cached; ``"default"`` for :func:`default_cache_dir`, None for none.

    Example:
        >>> ds = PlantedConceptsDataset("test", size=4, image_size=32)
        >>> s = ds[0]
        >>> tuple(s["image"].shape), tuple(s["concept_masks"].shape), ds.concept_names[0]
        ((3, 32, 32), (4, 32, 32), 'shadow')
    """

    concept_names = CONCEPTS
    classes = render.SHAPES
    num_classes = len(render.SHAPES)

    def __init__(
        self,
        split: Split = "train",
        size: int = 8000,
        image_size: int = 32,
        seed: int = 0,
        prevalence: Mapping[str, float] | None = None,
        class_prevalence: Mapping[str, Mapping[int, float]] | None = None,
        cache_dir: str | Path | None = "default",
    ) -> None:
        super().__init__(split, size, seed, cache_dir)
        if not isinstance(image_size, int) or not 16 <= image_size <= 256:
            raise ValueError(f"Expected `image_size` to be an integer in [16, 256], but got {image_size!r}.")
        self.image_size = image_size
        self.table = prevalence_table(split, self.num_classes, CONCEPTS, prevalence, class_prevalence)

    def _params(self) -> Any:
        return (self.image_size, self.table.tolist())

    def _generate(self, g: torch.Generator, start: int, n: int) -> dict[str, Tensor]:
        s = self.image_size
        labels = torch.randint(self.num_classes, (n,), generator=g)
        present = torch.rand(n, len(CONCEPTS), generator=g) < self.table[labels]
        images = render.textured_background(g, n, s, s)
        obj, colour, centre_radius = render.draw_objects(g, labels, s, s)
        images = render.paint(images, obj, colour)
        images, masks = plant_concepts(g, images, obj, centre_radius, present, CONCEPTS)
        # A concept is present only where its mask is non-empty (a shadow can miss a tiny object).
        present = present & masks.flatten(2).any(2)
        return {
            "image": to_uint8(images),
            "target": labels,
            "concepts": present.float(),
            "concept_masks": masks,
            "object_mask": obj,
        }


class PlantedConceptsDataModule(ContractDataModule):
    """:class:`PlantedConceptsDataset` train/val/test splits as a DataModule.

    Args:
        image_size: side of the square images.
        train_size: images in the training split (``val_size``, ``test_size`` likewise).
        prevalence: split → {concept → probability}, merged into :data:`DEFAULT_PREVALENCE`.
        class_prevalence: split → {concept → {class → probability}}.
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        seed: seeds the data (each split differently) and the shuffle order.
        cache_dir: chunk cache; ``"default"`` or None.

    Example:
        >>> dm = PlantedConceptsDataModule(train_size=64, val_size=32, test_size=32, batch_size=16, cache_dir=None)
        >>> batch = next(iter(dm.test_dataloader()))
        >>> tuple(batch["image"].shape)
        (16, 3, 32, 32)
    """

    num_classes = PlantedConceptsDataset.num_classes
    in_channels = 3

    def __init__(
        self,
        image_size: int = 32,
        train_size: int = 8000,
        val_size: int = 1000,
        test_size: int = 2000,
        prevalence: dict[str, dict[str, float]] | None = None,
        class_prevalence: dict[str, dict[str, dict[int, float]]] | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = "default",
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        for name, value in (("prevalence", prevalence), ("class_prevalence", class_prevalence)):
            unknown = sorted(set(value or {}) - set(SPLITS))
            if unknown:
                raise ValueError(f"Expected the keys of `{name}` to be splits in {list(SPLITS)}, but got {unknown!r}.")
        self.image_size = image_size
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.prevalence = prevalence or {}
        self.class_prevalence = class_prevalence or {}
        self.cache_dir = cache_dir
        # Fail on bad settings now rather than at the first batch.
        for split in SPLITS:
            prevalence_table(split, self.num_classes, CONCEPTS, self.prevalence.get(split),
                             self.class_prevalence.get(split))

    def make_dataset(self, split: str) -> PlantedConceptsDataset:
        return PlantedConceptsDataset(
            split,  # type: ignore[arg-type]
            size=self.sizes[split],
            image_size=self.image_size,
            seed=self.seed,
            prevalence=self.prevalence.get(split),
            class_prevalence=self.class_prevalence.get(split),
            cache_dir=self.cache_dir,
        )
