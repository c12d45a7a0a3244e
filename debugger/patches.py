"""Cutting probe images into patches: multi-scale sliding windows and superpixels (SLIC, quickshift).

Every function returns a :class:`debugger.structures.PatchSet`: the source image of each patch, its box, its
pixel mask and, when ground-truth concept masks are given, the fraction of the patch inside each concept.
Windows are generated for all images at once (they only depend on the image size); superpixels run
scikit-image per image and scale, then drop near-duplicates across scales the way ACE does (IoU above a
threshold within the same image) and segments too small to embed.

Example:
    >>> images = torch.rand(2, 3, 16, 16)
    >>> ps = sliding_windows(images, sizes=(8,), strides=(8,))
    >>> len(ps), ps.boxes[1].tolist()
    (8, [8, 0, 16, 8])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from debugger.structures import PatchSet

Method = Literal["windows", "slic", "quickshift"]

__all__ = [
    "box_concept_overlap",
    "extract_patches",
    "mask_concept_overlap",
    "masks_to_boxes",
    "patch_masks",
    "quickshift_superpixels",
    "slic_superpixels",
    "sliding_windows",
]


def _check_images(images: Tensor) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"Expected `images` to be a tensor of shape (N, C, H, W), but got {shape!r}.")
    if images.shape[0] == 0:
        raise ValueError("Expected `images` to hold at least one image, but got an empty probe set (N = 0).")


def _check_concept_masks(concept_masks: Tensor | None, images: Tensor, concept_names: Sequence[str]) -> None:
    if concept_masks is None:
        return
    n, _, h, w = images.shape
    if concept_masks.dim() != 4 or concept_masks.shape[0] != n or tuple(concept_masks.shape[2:]) != (h, w):
        raise ValueError(
            f"Expected `concept_masks` of shape ({n}, K, {h}, {w}), but got {tuple(concept_masks.shape)!r}."
        )
    if concept_names and len(concept_names) != concept_masks.shape[1]:
        raise ValueError(
            f"Expected {concept_masks.shape[1]} `concept_names` (one per mask), but got {list(concept_names)!r}."
        )


def box_concept_overlap(boxes: Tensor, image_index: Tensor, concept_masks: Tensor) -> Tensor:
    """Fraction of each box's pixels inside each concept mask, from integral images (no per-patch masks).

    Shape:
        - boxes: ``(P, 4)`` ``x0, y0, x1, y1`` with exclusive ends
        - image_index: ``(P,)``
        - concept_masks: ``(N, K, H, W)`` bool
        - output: ``(P, K)`` float in ``[0, 1]``

    Example:
        >>> cm = torch.zeros(1, 1, 4, 4, dtype=torch.bool); cm[0, 0, :2, :2] = True
        >>> box_concept_overlap(torch.tensor([[0, 0, 4, 2]]), torch.tensor([0]), cm)
        tensor([[0.5000]])
    """
    n, k, h, w = concept_masks.shape
    integral = torch.zeros(n, k, h + 1, w + 1, dtype=torch.float64)
    integral[:, :, 1:, 1:] = concept_masks.to(torch.float64).cumsum(2).cumsum(3)
    x0, y0, x1, y1 = boxes.long().unbind(1)
    img = image_index.long()[:, None]
    kk = torch.arange(k)[None, :]

    def at(y: Tensor, x: Tensor) -> Tensor:  # (P, K) corner values without copying whole integral images
        return integral[img, kk, y[:, None], x[:, None]]

    inside = at(y1, x1) - at(y0, x1) - at(y1, x0) + at(y0, x0)
    area = ((x1 - x0) * (y1 - y0)).clamp_min(1).to(torch.float64)
    return (inside / area[:, None]).to(torch.float32)


def mask_concept_overlap(masks: Tensor, image_index: Tensor, concept_masks: Tensor, chunk: int = 2048) -> Tensor:
    """Fraction of each patch mask's pixels inside each concept mask (batched matrix products, chunked).

    Shape:
        - masks: ``(P, H, W)`` bool
        - image_index: ``(P,)``
        - concept_masks: ``(N, K, H, W)`` bool
        - output: ``(P, K)`` float in ``[0, 1]``

    Raises:
        ValueError: if the masks and concept masks disagree in image size or count.
    """
    if masks.shape[0] != image_index.shape[0] or masks.shape[1:] != concept_masks.shape[2:]:
        raise ValueError(
            f"Expected `masks` of shape ({image_index.shape[0]}, {concept_masks.shape[2]}, {concept_masks.shape[3]}), "
            f"but got {tuple(masks.shape)!r}."
        )
    p = masks.shape[0]
    k = concept_masks.shape[1]
    out = torch.empty(p, k, dtype=torch.float32)
    cm = concept_masks.flatten(2).float()  # (N, K, HW)
    for s in range(0, p, chunk):
        m = masks[s : s + chunk].flatten(1).float()  # (c, HW)
        inside = torch.bmm(cm[image_index[s : s + chunk].long()], m.unsqueeze(2)).squeeze(2)  # (c, K)
        out[s : s + chunk] = inside / m.sum(1, keepdim=True).clamp_min(1)
    return out


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight ``x0, y0, x1, y1`` boxes (exclusive ends) around non-empty masks.

    Shape:
        - masks: ``(P, H, W)`` bool
        - output: ``(P, 4)`` int64

    Example:
        >>> m = torch.zeros(1, 4, 5, dtype=torch.bool); m[0, 1:3, 2:4] = True
        >>> masks_to_boxes(m).tolist()
        [[2, 1, 4, 3]]
    """
    p, h, w = masks.shape
    cols = masks.any(1)  # (P, W)
    rows = masks.any(2)  # (P, H)
    xs = torch.arange(w)
    ys = torch.arange(h)
    x0 = torch.where(cols, xs, w).amin(1)
    x1 = torch.where(cols, xs, -1).amax(1) + 1
    y0 = torch.where(rows, ys, h).amin(1)
    y1 = torch.where(rows, ys, -1).amax(1) + 1
    return torch.stack([x0, y0, x1, y1], 1).long()


def patch_masks(patches: PatchSet, image_size: tuple[int, int]) -> Tensor:
    """The patches' pixel masks; boxes are rasterised when the set was built without masks.

    Shape:
        - output: ``(P, H, W)`` bool
    """
    if patches.masks is not None:
        return patches.masks
    h, w = image_size
    x0, y0, x1, y1 = patches.boxes.long().unbind(1)
    ys = torch.arange(h)[None, :, None]
    xs = torch.arange(w)[None, None, :]
    return (
        (ys >= y0[:, None, None]) & (ys < y1[:, None, None]) & (xs >= x0[:, None, None]) & (xs < x1[:, None, None])
    )


def _window_grid(length: int, size: int, stride: int) -> list[int]:
    starts = list(range(0, length - size + 1, stride))
    if starts and starts[-1] + size < length:
        starts.append(length - size)  # cover the border the stride skipped
    return starts


def sliding_windows(
    images: Tensor,
    sizes: Sequence[int | tuple[int, int]] = (8, 16),
    strides: Sequence[int | tuple[int, int]] | None = None,
    concept_masks: Tensor | None = None,
    concept_names: Sequence[str] = (),
    with_masks: bool = True,
) -> PatchSet:
    """Square (or ``(h, w)``) windows at several sizes, slid over every image.

    The default stride is half the window. A window that does not fit the image is skipped; the last
    position of each row/column is moved to touch the border so no strip of pixels is missed.

    Args:
        images: the probe images (only their count and size are used).
        sizes: window sizes in pixels.
        strides: one stride per size (default ``size // 2``).
        concept_masks: ground-truth concept pixels; fills ``concept_overlap``.
        concept_names: the concepts' names, in mask order.
        with_masks: store ``(P, H, W)`` masks; without them a window's mask is its box
            (see :func:`patch_masks`), which saves memory on large probe sets.

    Shape:
        - images: ``(N, C, H, W)``
        - concept_masks: ``(N, K, H, W)`` bool

    Raises:
        ValueError: for an empty probe set, a non-positive size or stride, a size list and stride list of
            different lengths, no window fitting the image, or concept masks of the wrong shape.
    """
    _check_images(images)
    _check_concept_masks(concept_masks, images, concept_names)
    n, _, h, w = images.shape
    if strides is not None and len(strides) != len(sizes):
        raise ValueError(f"Expected one stride per window size ({len(sizes)}), but got {list(strides)!r}.")
    boxes: list[list[int]] = []
    for i, size in enumerate(sizes):
        sh, sw = (size, size) if isinstance(size, int) else size
        stride = strides[i] if strides is not None else (max(1, sh // 2), max(1, sw // 2))
        th, tw = (stride, stride) if isinstance(stride, int) else stride
        if min(sh, sw, th, tw) < 1:
            raise ValueError(f"Expected positive window sizes and strides, but got size {size!r}, stride {stride!r}.")
        for y in _window_grid(h, sh, th):
            for x in _window_grid(w, sw, tw):
                boxes.append([x, y, x + sw, y + sh])
    if not boxes:
        raise ValueError(f"Expected at least one window size to fit images of size {(h, w)}, but got {list(sizes)!r}.")
    per_image = torch.tensor(boxes, dtype=torch.long)
    all_boxes = per_image.repeat(n, 1)
    image_index = torch.arange(n).repeat_interleave(len(per_image))
    ps = PatchSet(image_index=image_index, boxes=all_boxes, concept_names=tuple(concept_names), method="windows")
    if with_masks:
        ps.masks = patch_masks(ps, (h, w))
    if concept_masks is not None:
        ps.concept_overlap = box_concept_overlap(all_boxes, image_index, concept_masks.bool())
    return ps


def _to_unit_hwc(image: Tensor) -> np.ndarray:
    x = image.detach().to(torch.float64).cpu()
    lo, hi = float(x.min()), float(x.max())
    x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    return x.permute(1, 2, 0).numpy()


def _labels_to_masks(labels: np.ndarray) -> Tensor:
    lab = torch.from_numpy(np.ascontiguousarray(labels)).long()
    ids = torch.unique(lab)
    return lab[None] == ids[:, None, None]


def _dedup_and_filter(masks: Tensor, min_pixels: int, dedup_iou: float) -> Tensor:
    """Drop masks below ``min_pixels`` and, in order, masks whose IoU with a kept one exceeds ``dedup_iou``."""
    areas = masks.flatten(1).sum(1)
    masks = masks[areas >= min_pixels]
    if dedup_iou >= 1.0 or len(masks) < 2:
        return masks
    flat = masks.flatten(1).float()
    inter = flat @ flat.T
    area = flat.sum(1)
    iou = inter / (area[:, None] + area[None, :] - inter).clamp_min(1)
    keep: list[int] = []
    for i in range(len(masks)):
        if all(float(iou[i, j]) <= dedup_iou for j in keep):
            keep.append(i)
    return masks[keep]


def _superpixel_set(
    images: Tensor,
    segment: Any,
    n_scales: int,
    min_pixels: int,
    dedup_iou: float,
    concept_masks: Tensor | None,
    concept_names: Sequence[str],
    method: str,
) -> PatchSet:
    all_masks: list[Tensor] = []
    index: list[Tensor] = []
    for i in range(images.shape[0]):
        img = _to_unit_hwc(images[i])
        masks = torch.cat([_labels_to_masks(segment(img, s)) for s in range(n_scales)])
        masks = _dedup_and_filter(masks, min_pixels, dedup_iou)
        all_masks.append(masks)
        index.append(torch.full((len(masks),), i, dtype=torch.long))
    masks_t = torch.cat(all_masks)
    image_index = torch.cat(index)
    if len(masks_t) == 0:
        raise ValueError(f"Expected superpixels of at least `min_pixels`={min_pixels} pixels, but got none.")
    ps = PatchSet(
        image_index=image_index,
        boxes=masks_to_boxes(masks_t),
        masks=masks_t,
        concept_names=tuple(concept_names),
        method=method,
    )
    if concept_masks is not None:
        ps.concept_overlap = mask_concept_overlap(masks_t, image_index, concept_masks.bool())
    return ps


def slic_superpixels(
    images: Tensor,
    n_segments: Sequence[int] = (6, 12, 24),
    compactness: float = 10.0,
    sigma: float = 0.0,
    min_pixels: int = 8,
    dedup_iou: float = 0.5,
    concept_masks: Tensor | None = None,
    concept_names: Sequence[str] = (),
) -> PatchSet:
    """SLIC superpixels (scikit-image) at several scales, near-duplicates across scales removed.

    Images are rescaled to ``[0, 1]`` per image for segmentation only (so normalised inputs work);
    ``n_segments`` is SLIC's target count per scale (it returns roughly that many, fewer on plain images).
    A segment whose IoU with an already kept one of the same image is above ``dedup_iou`` is dropped (ACE).

    Shape:
        - images: ``(N, C, H, W)``; ``C`` is 1 (grey) or any number of channels (Lab conversion when 3)
        - concept_masks: ``(N, K, H, W)`` bool

    Raises:
        ValueError: for an empty probe set, non-positive segment counts, or concept masks of the wrong shape.

    Example:
        >>> img = torch.zeros(1, 3, 16, 16); img[:, 0, :, 8:] = 1.0
        >>> ps = slic_superpixels(img, n_segments=(4,))
        >>> len(ps), int(ps.masks.sum())
        (4, 256)
    """
    from skimage.segmentation import slic

    _check_images(images)
    _check_concept_masks(concept_masks, images, concept_names)
    if not n_segments or min(n_segments) < 1:
        raise ValueError(f"Expected `n_segments` to be positive segment counts, but got {list(n_segments)!r}.")
    channels = images.shape[1]

    def segment(img: np.ndarray, s: int) -> np.ndarray:
        if channels == 1:
            return slic(img[..., 0], n_segments=n_segments[s], compactness=compactness, sigma=sigma,
                        channel_axis=None, start_label=0)
        return slic(img, n_segments=n_segments[s], compactness=compactness, sigma=sigma,
                    convert2lab=channels == 3, start_label=0)

    return _superpixel_set(images, segment, len(n_segments), min_pixels, dedup_iou, concept_masks, concept_names,
                           "slic")


def quickshift_superpixels(
    images: Tensor,
    scales: Sequence[tuple[int, float]] = ((2, 6.0), (3, 8.0), (4, 10.0)),
    ratio: float = 0.5,
    min_pixels: int = 8,
    dedup_iou: float = 0.5,
    concept_masks: Tensor | None = None,
    concept_names: Sequence[str] = (),
    seed: int = 0,
) -> PatchSet:
    """Quickshift superpixels (scikit-image) at several ``(kernel_size, max_dist)`` scales (seed 000 §7.1).

    The defaults give about 12, 8 and 5 segments on 32×32 images. Grey images are repeated to three
    channels; quickshift breaks ties randomly, hence ``seed``.

    Shape:
        - images: ``(N, C, H, W)`` with ``C`` 1 or 3
        - concept_masks: ``(N, K, H, W)`` bool

    Raises:
        ValueError: for an empty probe set, images that are not grey or RGB, or malformed scales.
    """
    from skimage.segmentation import quickshift

    _check_images(images)
    _check_concept_masks(concept_masks, images, concept_names)
    if images.shape[1] not in (1, 3):
        raise ValueError(f"Expected 1- or 3-channel images for quickshift, but got {images.shape[1]} channels.")
    if not scales or any(len(s) != 2 or s[0] <= 0 or s[1] <= 0 for s in scales):
        raise ValueError(f"Expected `scales` to be positive (kernel_size, max_dist) pairs, but got {list(scales)!r}.")
    grey = images.shape[1] == 1

    def segment(img: np.ndarray, s: int) -> np.ndarray:
        kernel, dist = scales[s]
        if grey:
            img = np.repeat(img, 3, axis=2)
        kw: dict[str, Any] = {"kernel_size": kernel, "max_dist": dist, "ratio": ratio, "convert2lab": not grey}
        try:
            return quickshift(img, rng=seed, **kw)
        except TypeError:  # scikit-image < 0.23 names the seed differently
            return quickshift(img, random_seed=seed, **kw)  # type: ignore[call-arg]

    return _superpixel_set(images, segment, len(scales), min_pixels, dedup_iou, concept_masks, concept_names,
                           "quickshift")


def extract_patches(
    images: Tensor,
    method: Method = "slic",
    concept_masks: Tensor | None = None,
    concept_names: Sequence[str] = (),
    **kwargs: Any,
) -> PatchSet:
    """Dispatch to :func:`sliding_windows`, :func:`slic_superpixels` or :func:`quickshift_superpixels`.

    Raises:
        ValueError: for an unknown method (and whatever the chosen function raises).

    Example:
        >>> len(extract_patches(torch.rand(1, 3, 8, 8), "windows", sizes=(4,), strides=(4,)))
        4
    """
    if method == "windows":
        return sliding_windows(images, concept_masks=concept_masks, concept_names=concept_names, **kwargs)
    if method == "slic":
        return slic_superpixels(images, concept_masks=concept_masks, concept_names=concept_names, **kwargs)
    if method == "quickshift":
        return quickshift_superpixels(images, concept_masks=concept_masks, concept_names=concept_names, **kwargs)
    raise ValueError(f"Expected `method` to be one of 'windows', 'slic', 'quickshift', but got {method!r}.")
