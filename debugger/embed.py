"""Patch embeddings at a layer of the model, two ways.

- ``mode="resample"`` (seed 000 §7.1, ACE): each patch is cut out of its image (the pixels outside a
  superpixel's mask set to neutral grey), its box resized to the model's input size, and the batch of
  resized patches sent through the model; the layer's activation is pooled over space. One forward per
  patch (batched), faithful to how the model sees the patch alone. The seed pools the whole map, grey fill
  included (``resample_pool="map"``); ``resample_pool="mask"`` pools only where the resized patch is, so a
  patch's embedding no longer depends on how much of the box its mask fills, or on how close its own colour
  is to the fill (a grey occluder on grey padding).
- ``mode="roi"``: the image is sent through the model once and the patch region is pooled from the
  layer's feature map — a masked average over the patch mask resampled to the feature grid
  (``roi_pool="mask"``), or RoI-align on the box (``roi_pool="box"``: bilinear samples on a regular grid
  inside the box, averaged or max-ed). One forward per image instead of one per patch.

Both stop the forward at the chosen layer (later layers never run) and leave the model as they found it.

Example:
    >>> from debugger.patches import sliding_windows
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    >>> images = torch.rand(2, 3, 8, 8)
    >>> ps = sliding_windows(images, sizes=(4,))
    >>> embed_patches(net, "1", images, ps, mode="roi").shape
    torch.Size([18, 4])
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from debugger.capture import first_tensor, model_device, model_input, preserve_training_mode, resolve_layer
from debugger.structures import PatchSet

Mode = Literal["resample", "roi"]
Pool = Literal["mean", "max"]
Reduce = Literal["mean", "max", "none"]
RoiPool = Literal["mask", "box"]
ResamplePool = Literal["map", "mask"]

__all__ = [
    "PatchEmbedder",
    "embed_images",
    "embed_patches",
    "forward_to_layer",
    "resample_patches",
    "roi_pool_box",
    "roi_pool_mask",
]


class _Stop(Exception):
    """Raised by the capture hook to end the forward once the layer has run."""


def forward_to_layer(model: nn.Module, layer: str | nn.Module, x: Tensor) -> Tensor:
    """Run ``model`` on ``x`` only as far as ``layer`` and return that layer's output (no grad).

    The hook raises a private exception right after the layer runs, so later layers cost nothing; the hook
    is removed in ``finally``. Callers decide the train/eval mode (see :func:`preserve_training_mode`).

    Raises:
        ValueError: if the layer is unknown or never runs in the forward.
    """
    module = resolve_layer(model, layer) if isinstance(layer, str) else layer
    store: dict[str, Tensor] = {}

    def hook(mod: nn.Module, inputs: Any, output: Any) -> None:
        store["out"] = first_tensor(output, f"the output of layer {layer!r}").detach()
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(model_input(model, x))
    except _Stop:
        pass
    finally:
        handle.remove()
    if "out" not in store:
        raise ValueError(f"Expected layer {layer!r} to run in the model's forward pass, but it never did.")
    return store["out"]


def _pool_activation(act: Tensor, reduce: Reduce, layer: str) -> Tensor:
    if reduce == "none":
        if act.dim() != 4:
            raise ValueError(
                f"Expected the activations of layer {layer!r} to be a spatial map (B, D, h, w) for reduce='none', "
                f"but got {tuple(act.shape)!r}."
            )
        return act
    if act.dim() == 2:
        return act
    if act.dim() == 4:
        flat = act.flatten(2)
        return flat.mean(2) if reduce == "mean" else flat.amax(2)
    raise ValueError(
        f"Expected the activations of layer {layer!r} to be poolable, of shape (B, D, h, w) or (B, D), "
        f"but got {tuple(act.shape)!r}."
    )


def embed_images(
    model: nn.Module,
    layer: str,
    images: Tensor,
    reduce: Reduce = "none",
    batch_size: int = 64,
    eval_mode: bool = True,
) -> Tensor:
    """The activations at ``layer`` of images already prepared for the model (e.g. resampled, augmented patches).

    Batched :func:`forward_to_layer` under :func:`preserve_training_mode`, pooled like :func:`embed_patches`.

    Shape:
        - images: ``(B, C, H, W)``
        - output: ``(B, D, h, w)`` for ``reduce="none"``, else ``(B, D)``; float32 on CPU

    Raises:
        ValueError: for an unknown layer or ``reduce``, a non-positive ``batch_size``, or activations that
            cannot be pooled as asked.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        >>> embed_images(net, "1", torch.rand(5, 3, 8, 8)).shape
        torch.Size([5, 4, 8, 8])
    """
    if reduce not in ("mean", "max", "none"):
        raise ValueError(f"Expected `reduce` to be one of 'mean', 'max', 'none', but got {reduce!r}.")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be a positive integer, but got {batch_size!r}.")
    module = resolve_layer(model, layer)
    device = model_device(model)
    out: list[Tensor] = []
    with preserve_training_mode(model, eval_mode):
        for s in range(0, images.shape[0], batch_size):
            act = forward_to_layer(model, module, images[s : s + batch_size].to(device))
            out.append(_pool_activation(act, reduce, layer).float().cpu())
    return torch.cat(out)


def _fill_tensor(fill: float | Sequence[float] | Tensor | str, images: Tensor) -> Tensor:
    c = images.shape[1]
    if isinstance(fill, str):
        if fill != "mean":
            raise ValueError(f"Expected `fill` to be a number, one value per channel or 'mean', but got {fill!r}.")
        return images.mean(dim=(0, 2, 3)).view(1, c, 1, 1)
    t = torch.as_tensor(fill, dtype=images.dtype, device=images.device).flatten()
    if t.numel() == 1:
        t = t.expand(c)
    if t.numel() != c:
        raise ValueError(f"Expected `fill` to hold 1 or {c} values (one per channel), but got {t.numel()}.")
    return t.reshape(1, c, 1, 1)


def resample_patches(
    images: Tensor,
    boxes: Tensor,
    masks: Tensor | None = None,
    size: tuple[int, int] | None = None,
    fill: Tensor | float = 0.5,
    keep_aspect: bool = False,
) -> Tensor:
    """Cut each box out of its image and resize it to ``size`` (bilinear, one batched ``grid_sample``).

    The result equals cropping the box and resizing the crop (``F.interpolate``, ``align_corners=False``):
    pixels next to the box never bleed in. Pixels outside ``masks`` (when given) and, with ``keep_aspect``,
    the margins of the box grown to a square around its centre, are set to ``fill`` — neutral grey by
    default, as in seed 000 §7.1.

    Shape:
        - images: ``(P, C, H, W)``, the source image of each patch (already gathered)
        - boxes: ``(P, 4)`` ``x0, y0, x1, y1`` with exclusive ends, in image pixels
        - masks: ``(P, H, W)`` bool or None
        - fill: a number or ``(1, C, 1, 1)``
        - output: ``(P, C, *size)``

    Example:
        >>> img = torch.arange(16.).view(1, 1, 4, 4)
        >>> resample_patches(img, torch.tensor([[2, 0, 4, 2]]), size=(2, 2))
        tensor([[[[2., 3.],
                  [6., 7.]]]])
    """
    p, _, h, w = images.shape
    out_h, out_w = size if size is not None else (h, w)
    fill_t = torch.as_tensor(fill, dtype=images.dtype, device=images.device)
    if fill_t.dim() == 0:
        fill_t = fill_t.view(1, 1, 1, 1)
    x = images - fill_t  # zero padding in grid_sample then means `fill` outside the image
    if masks is not None:
        x = x * masks[:, None].to(x.dtype)
    b = boxes.to(images.device, torch.float32)
    bw = b[:, 2] - b[:, 0]
    bh = b[:, 3] - b[:, 1]
    if keep_aspect:
        side = torch.maximum(bw, bh)
        bw, bh = side, side
    cx = (b[:, 0] + b[:, 2]) / 2
    cy = (b[:, 1] + b[:, 3]) / 2
    theta = torch.zeros(p, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0] = bw / w
    theta[:, 0, 2] = 2 * cx / w - 1
    theta[:, 1, 1] = bh / h
    theta[:, 1, 2] = 2 * cy / h - 1
    grid = F.affine_grid(theta, [p, images.shape[1], out_h, out_w], align_corners=False)
    # Sample as if the box had been cropped first: clamp to the box's outermost pixel centres (so pixels
    # next to the box never bleed in) and use `fill` for points outside the box (the keep_aspect margins).
    px = (grid[..., 0] + 1) * w / 2  # continuous pixel coordinates, pixel i spans [i, i + 1)
    py = (grid[..., 1] + 1) * h / 2
    x0, y0, x1, y1 = (b[:, i].view(p, 1, 1) for i in range(4))
    outside = (px < x0) | (px > x1) | (py < y0) | (py > y1)
    px = torch.minimum(torch.maximum(px, x0 + 0.5), x1 - 0.5)
    py = torch.minimum(torch.maximum(py, y0 + 0.5), y1 - 0.5)
    grid = torch.stack([2 * px / w - 1, 2 * py / h - 1], dim=-1)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.masked_fill(outside[:, None], 0.0) + fill_t


def roi_pool_mask(features: Tensor, masks: Tensor, reduce: Pool = "mean") -> Tensor:
    """Pool each feature map over its patch mask resampled (area-averaged) to the feature grid.

    ``"mean"`` weighs each feature cell by the fraction of it the mask covers; ``"max"`` takes the maximum
    over the cells the mask touches.

    Shape:
        - features: ``(P, D, h, w)``, the feature map of each patch's image (already gathered)
        - masks: ``(P, H, W)`` bool, or float weights in [0, 1]
        - output: ``(P, D)``

    Example:
        >>> f = torch.arange(4.).view(1, 1, 2, 2)
        >>> m = torch.zeros(1, 4, 4, dtype=torch.bool); m[0, :2, :] = True
        >>> roi_pool_mask(f, m)
        tensor([[0.5000]])
    """
    grid_hw = (int(features.shape[2]), int(features.shape[3]))
    weights = F.adaptive_avg_pool2d(masks[:, None].to(features.dtype), grid_hw).flatten(1)  # (P, hw)
    flat = features.flatten(2)  # (P, D, hw)
    if reduce == "mean":
        return torch.bmm(flat, weights.unsqueeze(2)).squeeze(2) / weights.sum(1, keepdim=True).clamp_min(1e-12)
    touched = (weights > 0).unsqueeze(1)
    return flat.masked_fill(~touched, float("-inf")).amax(2)


def roi_pool_box(
    features: Tensor, boxes: Tensor, image_size: tuple[int, int], samples: int = 4, reduce: Reduce = "mean"
) -> Tensor:
    """RoI-align: bilinear samples on a ``samples × samples`` grid of cell centres inside each box, pooled.

    Box coordinates are in image pixels and are mapped to the feature grid by the image/feature size ratio
    (pixel-centre convention, ``align_corners=False``). A box aligned with feature cells and ``samples``
    equal to its extent in cells gives exactly the average of those cells. ``reduce="none"`` returns the
    sampled grid itself (the patch's spatial latent tensor).

    Shape:
        - features: ``(P, D, h, w)``
        - boxes: ``(P, 4)``
        - output: ``(P, D)``, or ``(P, D, samples, samples)`` for ``reduce="none"``

    Example:
        >>> f = torch.arange(4.).view(1, 1, 2, 2)
        >>> roi_pool_box(f, torch.tensor([[0, 0, 4, 4]]), (4, 4), samples=2)
        tensor([[1.5000]])
    """
    if samples < 1:
        raise ValueError(f"Expected `samples` to be a positive integer, but got {samples!r}.")
    p = features.shape[0]
    h, w = image_size
    b = boxes.to(features.device, features.dtype)
    steps = (torch.arange(samples, device=features.device, dtype=features.dtype) + 0.5) / samples  # (S,)
    xs = b[:, 0:1] + (b[:, 2:3] - b[:, 0:1]) * steps  # (P, S) in image pixels
    ys = b[:, 1:2] + (b[:, 3:4] - b[:, 1:2]) * steps
    gx = (2 * xs / w - 1)[:, None, :].expand(p, samples, samples)
    gy = (2 * ys / h - 1)[:, :, None].expand(p, samples, samples)
    grid = torch.stack([gx, gy], dim=-1)  # (P, S, S, 2)
    sampled = F.grid_sample(features, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if reduce == "none":
        return sampled
    flat = sampled.flatten(2)
    return flat.mean(2) if reduce == "mean" else flat.amax(2)


def _check_inputs(images: Tensor, patches: PatchSet) -> None:
    if not isinstance(images, Tensor) or images.dim() != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"Expected `images` to be a tensor of shape (N, C, H, W), but got {shape!r}.")
    if images.shape[0] == 0 or len(patches) == 0:
        raise ValueError(
            f"Expected a non-empty probe set, but got {images.shape[0]} images and {len(patches)} patches."
        )
    if int(patches.image_index.max()) >= images.shape[0] or int(patches.image_index.min()) < 0:
        raise ValueError(
            f"Expected patch image indices in [0, {images.shape[0]}), but got indices up to "
            f"{int(patches.image_index.max())}."
        )
    if patches.masks is not None and tuple(patches.masks.shape[1:]) != tuple(images.shape[2:]):
        raise ValueError(
            f"Expected patch masks of size {tuple(images.shape[2:])} like the images, "
            f"but got {tuple(patches.masks.shape[1:])}."
        )


def _embed_resample(
    model: nn.Module,
    layer: str,
    images: Tensor,
    patches: PatchSet,
    reduce: Reduce,
    fill: Tensor,
    batch_size: int,
    use_masks: bool,
    input_size: tuple[int, int] | None,
    keep_aspect: bool,
    device: torch.device,
    pool: ResamplePool = "map",
) -> Tensor:
    module = resolve_layer(model, layer)
    out: list[Tensor] = []
    for s in range(0, len(patches), batch_size):
        idx = patches.image_index[s : s + batch_size]
        boxes = patches.boxes[s : s + batch_size]
        src = images[idx].to(device)
        masks = patches.masks[s : s + batch_size].to(device) if (use_masks and patches.masks is not None) else None
        crops = resample_patches(src, boxes, masks, input_size, fill.to(device), keep_aspect)
        act = forward_to_layer(model, module, crops)
        if pool == "mask":
            if act.dim() != 4:
                raise ValueError(
                    f"Expected layer {layer!r} to give a spatial map (B, D, h, w) for resample_pool='mask', but "
                    f"got activations of shape {tuple(act.shape)!r}; use resample_pool='map'."
                )
            # Where the patch lies in the resized crop: its mask (or whole box) resampled the same way, 0 outside.
            inside = (masks if masks is not None else torch.ones_like(src[:, 0], dtype=torch.bool))[:, None]
            where = resample_patches(inside.to(src.dtype), boxes, None, input_size, 0.0, keep_aspect)[:, 0]
            out.append(roi_pool_mask(act, where, "max" if reduce == "max" else "mean").float().cpu())
        else:
            out.append(_pool_activation(act, reduce, layer).float().cpu())
    return torch.cat(out)


def _embed_roi(
    model: nn.Module,
    layer: str,
    images: Tensor,
    patches: PatchSet,
    reduce: Reduce,
    batch_size: int,
    roi_pool: RoiPool,
    roi_samples: int,
    device: torch.device,
) -> Tensor:
    module = resolve_layer(model, layer)
    order = torch.argsort(patches.image_index, stable=True)
    sorted_index = patches.image_index[order]
    out: Tensor | None = None
    h, w = images.shape[2:]
    for s in range(0, images.shape[0], batch_size):
        e = min(s + batch_size, images.shape[0])
        lo, hi = (int(v) for v in torch.searchsorted(sorted_index, torch.tensor([s, e])))
        if lo == hi:
            continue
        feats = forward_to_layer(model, module, images[s:e].to(device))
        if feats.dim() != 4:
            raise ValueError(
                f"Expected layer {layer!r} to give a spatial feature map (B, D, h, w) for mode='roi', "
                f"but got activations of shape {tuple(feats.shape)!r}; use mode='resample' or a conv layer."
            )
        sel = order[lo:hi]
        # Gather per chunk so memory stays at chunk × D × h × w however many patches an image has.
        for c in range(0, len(sel), 1024):
            part = sel[c : c + 1024]
            f = feats[(patches.image_index[part] - s).to(device)]
            if reduce == "none":
                # The spatial latent tensor is RoI-align's sample grid; with roi_pool="mask", cells outside the
                # superpixel are zeroed by the mask sampled on the same grid.
                emb = roi_pool_box(f, patches.boxes[part], (h, w), roi_samples, "none")
                if roi_pool == "mask" and patches.masks is not None:
                    m = patches.masks[part].to(device)[:, None].to(f.dtype)
                    emb = emb * roi_pool_box(m, patches.boxes[part], (h, w), roi_samples, "none")
            elif roi_pool == "mask" and patches.masks is not None:
                emb = roi_pool_mask(f, patches.masks[part].to(device), reduce)
            else:
                emb = roi_pool_box(f, patches.boxes[part], (h, w), roi_samples, reduce)
            if out is None:
                out = torch.empty(len(patches), *emb.shape[1:], dtype=torch.float32)
            out[part] = emb.float().cpu()
    if out is None:  # unreachable: every patch's image index was checked to be in range
        raise RuntimeError("No patch was embedded.")
    return out


def embed_patches(
    model: nn.Module,
    layer: str,
    images: Tensor,
    patches: PatchSet,
    mode: Mode = "roi",
    reduce: Reduce = "mean",
    batch_size: int = 64,
    fill: float | Sequence[float] | Tensor | str = 0.5,
    use_masks: bool = True,
    input_size: tuple[int, int] | None = None,
    keep_aspect: bool = False,
    roi_pool: RoiPool = "mask",
    roi_samples: int = 4,
    eval_mode: bool = True,
    resample_pool: ResamplePool = "map",
) -> Tensor:
    """Embed every patch of ``patches`` at ``layer``; see the module docstring for the two modes.

    Args:
        model: the network (left untouched: train/eval flags restored, no grads).
        layer: dotted layer name whose activations embed the patches.
        images: the probe images the patches were cut from.
        patches: the patches (``image_index`` into ``images``).
        mode: ``"resample"`` (crop, resize, forward) or ``"roi"`` (pool from the image's feature map).
        reduce: spatial pooling of the layer's activations (or inside the RoI); ``"none"`` keeps the spatial
            latent tensor (seed 000's concept extractors read it): the layer's whole map for ``resample``,
            RoI-align's ``roi_samples × roi_samples`` grid over the box for ``roi``.
        batch_size: patches per forward (``resample``) or images per forward (``roi``).
        fill: the neutral value for pixels outside a patch (``resample``): a number, one per channel, or
            ``"mean"`` for the probe images' channel mean (neutral for normalised inputs).
        use_masks: grey out pixels outside superpixel masks (``resample``); False crops the plain box.
        input_size: size patches are resized to (``resample``); default the images' size.
        keep_aspect: grow boxes to squares before resizing, padding with ``fill`` (``resample``).
        roi_pool: ``"mask"`` (masked average over the patch mask) or ``"box"`` (RoI-align) for ``roi``.
        roi_samples: RoI-align samples per side (``roi_pool="box"``).
        eval_mode: run the model in eval mode (flags restored afterwards).
        resample_pool: ``"map"`` pools the layer's whole map, fill included (the seed's); ``"mask"`` pools it
            over the patch's mask resized like the patch (its box without ``use_masks``; the ``keep_aspect``
            margins excluded), area-weighted as ``roi_pool_mask`` does (``resample``, ``reduce`` mean or max).

    Shape:
        - images: ``(N, C, H, W)``
        - output: ``(P, D)`` float32, on CPU; ``(P, D, h, w)`` for ``reduce="none"``

    Raises:
        ValueError: for an unknown layer or option, an empty probe set, patch indices or masks that do not
            match ``images``, or a layer whose activations cannot be pooled (not ``(B, D, h, w)`` or
            ``(B, D)``; ``roi`` needs ``(B, D, h, w)``).
    """
    if mode not in ("resample", "roi"):
        raise ValueError(f"Expected `mode` to be one of 'resample', 'roi', but got {mode!r}.")
    if reduce not in ("mean", "max", "none"):
        raise ValueError(f"Expected `reduce` to be one of 'mean', 'max', 'none', but got {reduce!r}.")
    if roi_pool not in ("mask", "box"):
        raise ValueError(f"Expected `roi_pool` to be one of 'mask', 'box', but got {roi_pool!r}.")
    if resample_pool not in ("map", "mask"):
        raise ValueError(f"Expected `resample_pool` to be one of 'map', 'mask', but got {resample_pool!r}.")
    if resample_pool == "mask" and reduce == "none":
        raise ValueError(
            "Expected `reduce` to be 'mean' or 'max' with resample_pool='mask' (it pools over the patch), but got "
            "'none'; use resample_pool='map' to keep the whole spatial map."
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be a positive integer, but got {batch_size!r}.")
    resolve_layer(model, layer)
    _check_inputs(images, patches)
    device = model_device(model)
    with preserve_training_mode(model, eval_mode):
        if mode == "resample":
            fill_t = _fill_tensor(fill, images)
            return _embed_resample(model, layer, images, patches, reduce, fill_t, batch_size, use_masks,
                                   input_size, keep_aspect, device, resample_pool)
        return _embed_roi(model, layer, images, patches, reduce, batch_size, roi_pool, roi_samples, device)


class PatchEmbedder:
    """Patch embeddings at one layer of a model: ``PatchEmbedder(model, layer).embed(images, patches)``.

    Holds the configuration only (nothing touches the model before :meth:`embed`); the work is
    :func:`embed_patches`, whose arguments these are.

    Example:
        >>> from debugger.patches import sliding_windows
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        >>> images = torch.rand(1, 3, 8, 8)
        >>> PatchEmbedder(net, "1", mode="resample").embed(images, sliding_windows(images, sizes=(8,))).shape
        torch.Size([1, 4])
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        mode: Mode = "roi",
        reduce: Reduce = "mean",
        batch_size: int = 64,
        fill: float | Sequence[float] | Tensor | str = 0.5,
        use_masks: bool = True,
        input_size: tuple[int, int] | None = None,
        keep_aspect: bool = False,
        roi_pool: RoiPool = "mask",
        roi_samples: int = 4,
        resample_pool: ResamplePool = "map",
    ) -> None:
        if mode not in ("resample", "roi"):
            raise ValueError(f"Expected `mode` to be one of 'resample', 'roi', but got {mode!r}.")
        self.model = model
        self.layer = layer
        self.mode: Mode = mode
        self.reduce: Reduce = reduce
        self.batch_size = batch_size
        self.fill = fill
        self.use_masks = use_masks
        self.input_size = input_size
        self.keep_aspect = keep_aspect
        self.roi_pool: RoiPool = roi_pool
        self.roi_samples = roi_samples
        self.resample_pool: ResamplePool = resample_pool

    def embed(self, images: Tensor, patches: PatchSet) -> Tensor:
        """Embed ``patches`` cut from ``images``; ``(P, D)``."""
        return embed_patches(
            self.model, self.layer, images, patches, mode=self.mode, reduce=self.reduce,
            batch_size=self.batch_size, fill=self.fill, use_masks=self.use_masks, input_size=self.input_size,
            keep_aspect=self.keep_aspect, roi_pool=self.roi_pool, roi_samples=self.roi_samples,
            resample_pool=self.resample_pool,
        )
