"""Pointing game: does a map's maximum fall on the object? (Zhang et al. 2016; seed 004 §1.6, §2.7.)

A hit is a map maximum within ``tolerance`` pixels (Euclidean) of a ground-truth mask pixel; TorchRay uses
15 px at 224 px. The centre baseline points at the image centre. Images with an empty mask are not scored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric


def _check_masks(masks: Tensor) -> Tensor:
    if masks.dim() != 3:
        raise ValueError(f"Expected `masks` to be (B, H, W), but got shape {tuple(masks.shape)}.")
    return masks.bool()


def _dilate(masks: Tensor, tolerance: float) -> Tensor:
    if tolerance <= 0:
        return masks
    r = int(math.floor(tolerance))
    t = torch.arange(-r, r + 1, device=masks.device, dtype=torch.float32)
    disk = ((t.view(-1, 1) ** 2 + t.view(1, -1) ** 2) <= tolerance**2).float()
    hit = F.conv2d(masks.float().unsqueeze(1), disk.view(1, 1, 2 * r + 1, 2 * r + 1), padding=r)
    return hit.squeeze(1) > 0


def _score(points: Tensor, masks: Tensor, tolerance: float) -> Tensor:
    grown = _dilate(masks, tolerance)
    b = masks.shape[0]
    hits = grown.flatten(1)[torch.arange(b, device=masks.device), points].float()
    empty = ~masks.flatten(1).any(1)
    return torch.where(empty, torch.full_like(hits, float("nan")), hits)


def pointing_game(maps: Tensor, masks: Tensor, tolerance: float = 0.0) -> Tensor:
    """Per-image pointing-game outcome: 1 for a hit, 0 for a miss, NaN for an empty mask.

    Maps are resized bilinearly to the masks' size first; ties go to the first maximum in raster order.

    Shape:
        - maps: ``(B, 1, h, w)`` or ``(B, h, w)``
        - masks: ``(B, H, W)`` bool
        - return: ``(B,)`` float

    Example:
        >>> maps = torch.zeros(2, 1, 4, 4); maps[0, 0, 1, 1] = 1; maps[1, 0, 3, 3] = 1
        >>> masks = torch.zeros(2, 4, 4, dtype=torch.bool); masks[:, :2, :2] = True
        >>> pointing_game(maps, masks).tolist()
        [1.0, 0.0]
    """
    masks = _check_masks(masks)
    m = maps.unsqueeze(1) if maps.dim() == 3 else maps
    if m.dim() != 4 or m.shape[0] != masks.shape[0] or m.shape[1] != 1:
        raise ValueError(f"Expected `maps` of shape ({masks.shape[0]}, 1, h, w), but got {tuple(maps.shape)}.")
    if m.shape[-2:] != masks.shape[-2:]:
        m = F.interpolate(m.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    return _score(m.flatten(1).argmax(1), masks, tolerance)


def center_baseline(masks: Tensor, tolerance: float = 0.0) -> Tensor:
    """Pointing-game outcome of always pointing at the image centre (pixel ``(H // 2, W // 2)``).

    Shape:
        - masks: ``(B, H, W)`` bool
        - return: ``(B,)`` float (NaN for empty masks)
    """
    masks = _check_masks(masks)
    h, w = masks.shape[-2:]
    points = torch.full((masks.shape[0],), (h // 2) * w + w // 2, device=masks.device, dtype=torch.long)
    return _score(points, masks, tolerance)


class PointingGame(Metric):
    """Pointing-game hit rate accumulated over batches (DDP-synchronised sums).

    Example:
        >>> metric = PointingGame()
        >>> masks = torch.zeros(1, 4, 4, dtype=torch.bool); masks[0, 0, 0] = True
        >>> metric.update(torch.eye(4).view(1, 1, 4, 4), masks)
        >>> float(metric.compute())
        1.0
    """

    full_state_update = False
    hits: Tensor
    total: Tensor

    def __init__(self, tolerance: float = 0.0, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        if tolerance < 0:
            raise ValueError(f"Expected `tolerance` to be non-negative, but got {tolerance!r}.")
        self.tolerance = tolerance
        self.add_state("hits", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, maps: Tensor, masks: Tensor) -> None:
        """Score a batch of maps against their masks."""
        outcome = pointing_game(maps, masks, self.tolerance)
        valid = ~torch.isnan(outcome)
        self.hits += outcome[valid].double().sum()
        self.total += valid.double().sum()

    def compute(self) -> Tensor:
        """Hit rate over the scored images (NaN before any)."""
        return self.hits / self.total if self.total > 0 else torch.tensor(float("nan"), dtype=torch.float64)
