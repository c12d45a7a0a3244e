"""Example sets: concept and random examples (whole images or patches), their activations, pixel samples.

Example:
    >>> m = torch.zeros(1, 1, 8, 8, dtype=torch.bool); m[:, 0, :4, :4] = True
    >>> concepts, random = concept_windows(torch.rand(1, 3, 8, 8), m, ["corner"], sizes=(4,))
    >>> len(concepts["corner"]), len(random)
    (3, 9)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from debugger.embed import embed_images, embed_patches
from debugger.patches import sliding_windows
from debugger.structures import PatchSet

Space = Literal["pooled", "flat"]
_SPACES = ("pooled", "flat")

__all__ = ["ExampleSet", "Space", "concept_windows", "example_activations", "sample_pixels"]


@dataclass(frozen=True)
class ExampleSet:
    """Examples of a concept (or random examples): whole images, or patches cut from them.

    ``index`` selects rows of ``patches`` (or of ``images`` when there are no patches); None takes them all.
    Sets that share the same ``images`` and ``patches`` objects are embedded once per layer.

    Shape:
        - images: ``(N, C, H, W)``
        - index: ``(M,)`` int64 or None
    """

    images: Tensor
    patches: PatchSet | None = None
    index: Tensor | None = None

    def __len__(self) -> int:
        if self.index is not None:
            return int(self.index.shape[0])
        return len(self.patches) if self.patches is not None else int(self.images.shape[0])


def example_activations(
    model: nn.Module,
    layer: str,
    images: Tensor,
    patches: PatchSet | None = None,
    space: Space = "pooled",
    mode: Literal["roi", "resample"] = "roi",
    batch_size: int = 64,
) -> Tensor:
    """Activations of examples at ``layer``: pooled patches, pooled images or flattened images.

    Patches go through :func:`debugger.embed.embed_patches` (``mode``, mean pooling); whole images through
    :func:`debugger.embed.embed_images`, averaged over space (``"pooled"``) or flattened (``"flat"``).

    Shape:
        - output: ``(M, D)`` (pooled) or ``(M, D·h·w)`` (flat), float32 on CPU

    Raises:
        ValueError: for an unknown ``space``, or patches with ``space="flat"`` (a patch has no fixed-size map).
    """
    if space not in _SPACES:
        raise ValueError(f"Expected `space` to be one of {_SPACES!r}, but got {space!r}.")
    if patches is not None:
        if space == "flat":
            raise ValueError("Expected whole images (patches=None) for space='flat', but got a PatchSet.")
        return embed_patches(model, layer, images, patches, mode=mode, reduce="mean", batch_size=batch_size)
    acts = embed_images(model, layer, images, reduce="none" if space == "flat" else "mean", batch_size=batch_size)
    return acts.flatten(1) if space == "flat" else acts


def concept_windows(
    images: Tensor,
    concept_masks: Tensor,
    concept_names: Sequence[str],
    sizes: Sequence[int] = (8, 16),
    min_overlap: float = 0.5,
) -> tuple[dict[str, ExampleSet], ExampleSet]:
    """Concept and random example sets from images with ground-truth concept masks (planted data).

    Windows of ``sizes`` are slid over every image (:func:`debugger.patches.sliding_windows`); a concept's
    examples are the windows at least ``min_overlap`` covered by its mask, the random pool is every window.
    Concepts and random examples thus share one window shape distribution, and one embedding pass per layer.

    Shape:
        - images: ``(N, C, H, W)``; concept_masks: ``(N, K, H, W)`` bool

    Raises:
        ValueError: if ``min_overlap`` is outside ``(0, 1]`` or the masks do not fit the images and names.

    Example:
        >>> m = torch.zeros(2, 1, 16, 16, dtype=torch.bool); m[:, 0, :8, :8] = True
        >>> concepts, random = concept_windows(torch.rand(2, 3, 16, 16), m, ["corner"], sizes=(8,))
        >>> len(concepts["corner"]), len(random)
        (6, 18)
    """
    if not 0.0 < min_overlap <= 1.0:
        raise ValueError(f"Expected `min_overlap` to be in (0, 1], but got {min_overlap!r}.")
    patches = sliding_windows(images, sizes=sizes, concept_masks=concept_masks, concept_names=concept_names,
                              with_masks=False)
    overlap = patches.concept_overlap
    if overlap is None:  # pragma: no cover - sliding_windows fills it when masks are given
        raise RuntimeError("sliding_windows returned no concept overlap.")
    concepts = {
        name: ExampleSet(images, patches, torch.nonzero(overlap[:, k] >= min_overlap).flatten())
        for k, name in enumerate(concept_names)
    }
    return concepts, ExampleSet(images, patches, None)


def sample_pixels(
    labels: Tensor,
    per_class: int,
    classes: Sequence[int],
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Pick up to ``per_class`` random pixels of every class in every image (seed 000 §7.2's pixel samples).

    Slots of a class the image has fewer pixels of are marked ``-1``.

    Shape:
        - labels: ``(N, H, W)`` int
        - output: pixels ``(N, P, 2)`` ``(y, x)`` and their classes ``(N, P)`` with ``P = per_class·len(classes)``

    Example:
        >>> lab = torch.zeros(1, 2, 2, dtype=torch.long); lab[0, 1, 1] = 1
        >>> pix, cls = sample_pixels(lab, 2, [0, 1], torch.Generator().manual_seed(0))
        >>> cls.tolist(), pix[0, 2].tolist()
        ([[0, 0, 1, -1]], [1, 1])
    """
    if labels.dim() != 3 or labels.is_floating_point():
        raise ValueError(f"Expected integer `labels` of shape (N, H, W), but got {tuple(labels.shape)!r}.")
    if not isinstance(per_class, int) or per_class < 1:
        raise ValueError(f"Expected `per_class` to be a positive integer, but got {per_class!r}.")
    n, h, w = labels.shape
    k = min(per_class, h * w)
    flat = labels.reshape(n, -1).cpu()
    pixels, targets = [], []
    for c in classes:  # a handful of classes; each is one batched top-k over all images
        keys = torch.rand(flat.shape, generator=generator)
        keys = keys.masked_fill(flat != c, -1.0)
        val, idx = keys.topk(k, dim=1)
        pixels.append(torch.stack([idx // w, idx % w], dim=-1))
        targets.append(torch.where(val >= 0, torch.full_like(idx, int(c)), torch.full_like(idx, -1)))
    return torch.cat(pixels, 1), torch.cat(targets, 1)
