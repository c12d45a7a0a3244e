"""Road scenes for segmentation: small obstacles ("lost cargo") on a road, with tree shadows.

The analogue of seed 000 §7.2: per-pixel labels background (0), road (1) and obstacle (2); a perspective
road of gravel texture under a horizon, one to three small obstacles on it, and tree-canopy shadows falling
across the road, rare in training (5%) and common at validation and test (50%). The shadow's exact mask is
the one concept (``concept_names = ("shadow",)``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from recipes.data import render
from recipes.data.base import ChunkedDataset, ContractDataModule, to_uint8
from recipes.data.planted import prevalence_table

CLASSES: tuple[str, ...] = ("background", "road", "obstacle")
ROAD_CONCEPTS: tuple[str, ...] = ("shadow",)
ROAD_PREVALENCE: dict[str, dict[str, float]] = {
    "train": {"shadow": 0.05},
    "val": {"shadow": 0.5},
    "test": {"shadow": 0.5},
}


def _road_scene(g: torch.Generator, n: int, h: int, w: int) -> tuple[Tensor, Tensor]:
    """Background, sky and road; returns images ``(n, 3, h, w)`` and labels ``(n, h, w)``."""
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    horizon = (0.3 + 0.15 * torch.rand(n, generator=g)) * h
    vanish_x = (0.35 + 0.3 * torch.rand(n, generator=g)) * w
    bottom_x = (0.4 + 0.2 * torch.rand(n, generator=g)) * w
    half_bottom = (0.38 + 0.12 * torch.rand(n, generator=g)) * w
    t = ((yy[None] - horizon[:, None, None]) / (h - horizon[:, None, None])).clamp(0, 1)
    centre = vanish_x[:, None, None] + t * (bottom_x - vanish_x)[:, None, None]
    half = 0.02 * w + t * half_bottom[:, None, None]
    below = yy[None] > horizon[:, None, None]
    road = below & ((xx[None] - centre).abs() < half)

    ground = render.textured_background(g, n, h, w)
    ground = ground * torch.tensor([0.7, 1.1, 0.6])[None, :, None, None]  # greenish verge
    asphalt = render.textured_background(g, n, h, w).mean(1, keepdim=True).expand(n, 3, h, w) * 0.8 + 0.1
    sky = torch.tensor([0.55, 0.7, 0.9])[None, :, None, None] * (0.8 + 0.2 * (yy / h))[None, None]
    images = torch.where(below[:, None], ground, sky)
    images = torch.where(road[:, None], asphalt, images)
    labels = road.long()
    return images.clamp(0, 1), labels


def _obstacles(g: torch.Generator, labels: Tensor, max_count: int = 3) -> Tensor:
    """Up to ``max_count`` small blobs on the road, sized by perspective; returns their mask ``(n, h, w)``."""
    n, h, w = labels.shape
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    road = labels == 1
    # Pick points uniformly among road pixels: rank random keys, keep the road pixel with the top key.
    out = torch.zeros(n, h, w, dtype=torch.bool)
    count = torch.randint(1, max_count + 1, (n,), generator=g)
    for j in range(max_count):
        keys = torch.rand(n, h * w, generator=g).masked_fill(~road.view(n, -1), -1.0)
        idx = keys.argmax(1)
        cy, cx = (idx // w).float() + 0.5, (idx % w).float() + 0.5
        scale = 1.5 + 4.5 * (cy / h)
        ra = scale * (0.8 + 0.6 * torch.rand(n, generator=g))
        rb = scale * (0.6 + 0.5 * torch.rand(n, generator=g))
        boxy = torch.rand(n, generator=g) < 0.5
        dx = (xx[None] - cx[:, None, None]).abs() / ra[:, None, None]
        dy = (yy[None] - cy[:, None, None]).abs() / rb[:, None, None]
        shape = torch.where(boxy[:, None, None], torch.maximum(dx, dy) < 1, dx**2 + dy**2 < 1)
        out |= shape & (j < count)[:, None, None] & (keys.amax(1) >= 0)[:, None, None]
    return out


class RoadScenesDataset(ChunkedDataset):
    """Road scenes with obstacles and tree shadows, following :mod:`debugger.contract` (segmentation).

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``; picks the default shadow prevalence.
        size: number of images.
        height: image height (width is twice it).
        seed: everything is a pure function of it.
        prevalence: ``{"shadow": p}`` overriding the split's default.
        cache_dir: chunk cache; ``"default"`` or None.

    Example:
        >>> s = RoadScenesDataset("test", size=2, cache_dir=None)[0]
        >>> tuple(s["image"].shape), tuple(s["target"].shape)
        ((3, 64, 128), (64, 128))
    """

    concept_names = ROAD_CONCEPTS
    classes = CLASSES
    num_classes = len(CLASSES)

    def __init__(
        self,
        split: Literal["train", "val", "test"] = "train",
        size: int = 2000,
        height: int = 64,
        seed: int = 0,
        prevalence: Mapping[str, float] | None = None,
        cache_dir: str | Path | None = "default",
    ) -> None:
        super().__init__(split, size, seed, cache_dir)
        if not isinstance(height, int) or not 32 <= height <= 256:
            raise ValueError(f"Expected `height` to be an integer in [32, 256], but got {height!r}.")
        self.height, self.width = height, 2 * height
        self.p_shadow = float(prevalence_table(split, 1, ROAD_CONCEPTS, prevalence, None, ROAD_PREVALENCE)[0, 0])

    def _params(self) -> Any:
        return (self.height, self.p_shadow)

    def _generate(self, g: torch.Generator, start: int, n: int) -> dict[str, Tensor]:
        h, w = self.height, self.width
        images, labels = _road_scene(g, n, h, w)
        obstacle = _obstacles(g, labels)
        images = render.paint(images, obstacle, render.random_colours(g, n, 0.2, 1.0))
        labels = torch.where(obstacle, 2, labels)
        present = torch.rand(n, generator=g) < self.p_shadow
        # Canopy shadows centred on the road: threshold noise at its 45% quantile over road + obstacle pixels.
        noise = render.smooth_noise(g, n, h, w, cells=6)
        on_road = labels > 0
        q = torch.nanquantile(noise.masked_fill(~on_road, float("nan")).view(n, -1), 0.45, dim=1).nan_to_num(0.5)
        hard = (noise < q[:, None, None]).float()
        # No shadow in the sky: only rows from the road's top row down.
        below = on_road.any(2).float().cummax(1).values[:, :, None].expand(n, h, w)
        hard = hard * below * present[:, None, None]
        soft = torch.maximum(render.gaussian_blur(hard, sigma=1.2), hard) * below
        strength = 0.55 + 0.2 * torch.rand(n, generator=g)
        images = images * (1 - strength[:, None, None, None] * soft[:, None])
        mask = soft >= 0.5
        return {
            "image": to_uint8(images),
            "target": labels.to(torch.uint8),  # 3 classes: a quarter of the cache and load time of int64
            "concepts": mask.flatten(1).any(1, keepdim=True).float(),
            "concept_masks": mask.unsqueeze(1),
        }


class RoadScenesDataModule(ContractDataModule):
    """:class:`RoadScenesDataset` splits as a DataModule (see there for the arguments).

    Example:
        >>> dm = RoadScenesDataModule(train_size=8, val_size=8, test_size=8, batch_size=4, cache_dir=None)
        >>> tuple(next(iter(dm.val_dataloader()))["target"].shape)
        (4, 64, 128)
    """

    num_classes = len(CLASSES)
    in_channels = 3

    def __init__(
        self,
        height: int = 64,
        train_size: int = 2000,
        val_size: int = 300,
        test_size: int = 500,
        prevalence: dict[str, dict[str, float]] | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = "default",
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.height = height
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.prevalence = prevalence or {}
        self.cache_dir = cache_dir
        for split in ("train", "val", "test"):
            prevalence_table(split, 1, ROAD_CONCEPTS, self.prevalence.get(split), None, ROAD_PREVALENCE)

    def make_dataset(self, split: str) -> RoadScenesDataset:
        return RoadScenesDataset(split, self.sizes[split], self.height, self.seed,  # type: ignore[arg-type]
                                 self.prevalence.get(split), self.cache_dir)
