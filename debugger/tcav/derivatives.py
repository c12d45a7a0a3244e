"""Directional derivatives: how a class logit moves along a CAV at a layer, per image or per pixel.

:func:`directional_derivatives` is the pure part (gradients dotted with CAVs); :func:`layer_sensitivities`
captures the layer, takes the gradients of the target logits w.r.t. it and leaves the model as it was.

Example:
    >>> directional_derivatives(torch.ones(2, 3), torch.tensor([[1.0, 0.0, -1.0]])).tolist()
    [[0.0], [0.0]]
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from debugger.capture import LayerCapture, first_tensor, resolve_layer
from debugger.saliency._core import attribution_mode, prepare_input

__all__ = ["directional_derivatives", "layer_sensitivities"]


def directional_derivatives(gradients: Tensor, cavs: Tensor) -> Tensor:
    """Derivatives of the explained score along each CAV: ``gradient · cav`` per sample.

    A CAV as long as one sample's flattened gradient is dotted with it (captum's convention). A CAV of the
    channel dimension ``D`` of a ``(D, *spatial)`` gradient moves every spatial position alike, so the dot is
    with the gradient summed over space.

    Shape:
        - gradients: ``(N, F)`` or ``(N, D, *spatial)``
        - cavs: ``(K, F)`` with ``F = D·h·w`` (flat) or ``(K, D)`` (pooled)
        - output: ``(N, K)``

    Raises:
        ValueError: if the CAVs fit neither the flattened gradient nor its channel dimension.

    Example:
        >>> g = torch.ones(1, 2, 3, 3)
        >>> directional_derivatives(g, torch.tensor([[1.0, -2.0]])).tolist()
        [[-9.0]]
    """
    if cavs.dim() != 2 or gradients.dim() < 2:
        raise ValueError(
            f"Expected gradients (N, ...) and CAVs (K, F), but got {tuple(gradients.shape)!r} and "
            f"{tuple(cavs.shape)!r}."
        )
    cavs = cavs.to(device=gradients.device, dtype=gradients.dtype)
    flat = gradients.flatten(1)
    if cavs.shape[1] == flat.shape[1]:
        return flat @ cavs.T
    if gradients.dim() > 2 and cavs.shape[1] == gradients.shape[1]:
        return gradients.flatten(2).sum(2) @ cavs.T
    raise ValueError(
        f"Expected CAVs of {flat.shape[1]} (flat) or {gradients.shape[1]} (per channel) features for gradients "
        f"of shape {tuple(gradients.shape[1:])!r}, but got {cavs.shape[1]}."
    )


def layer_sensitivities(
    model: nn.Module,
    layer: str,
    inputs: Tensor,
    cavs: Tensor,
    targets: int | Tensor,
    pixels: Tensor | None = None,
    batch_size: int = 32,
    slots_per_pass: int = 1,
) -> Tensor:
    """Directional derivatives of the target logits along ``cavs`` at ``layer`` (batched, training-safe).

    One forward per chunk with the layer captured, then :func:`torch.autograd.grad` of the target logits w.r.t.
    the captured activation (never ``param.grad``), in eval mode outside inference mode (every module's flag
    restored, hooks removed). For classification each image is a sample explained for its ``targets`` class.
    For segmentation pass ``pixels``: each of the ``P`` pixel slots of an image is a sample, explained by the
    logit of its ``targets`` class at that pixel; one backward per slot covers the whole chunk (in eval mode
    a pixel's logit depends on its own image only). Slots with target ``-1`` are unused (derivative 0).

    ``slots_per_pass > 1`` runs that many slots' backward passes as one vmapped backward
    (``torch.autograd.grad(..., is_grads_batched=True)`` over stacked one-hot output gradients); the result is
    the same, but on CPU with torch 2.13 it is slower than one pass per slot (torch's batched backward has no
    batching rule for convolutions and loops over the slots itself; ``benchmarks/bench_tcav.py --pixel-cost``).
    When the model's backward cannot be vmapped (e.g. data-dependent Python in a custom ``backward``), it warns
    once and falls back to one pass per slot.

    Shape:
        - inputs: ``(N, C, H, W)``
        - cavs: ``(K, F)`` flat or ``(K, D)`` per channel (see :func:`directional_derivatives`)
        - targets: an int, ``(N,)`` (classification) or ``(N, P)`` (with pixels)
        - pixels: ``(N, P, 2)`` ``(y, x)`` in output coordinates, or None
        - output: ``(N, K)``, or ``(N, P, K)`` with pixels; on the model's device

    Raises:
        ValueError: for an unknown layer, bad shapes, class indices out of range, pixels outside the output,
            a segmentation output without ``pixels``, or ``slots_per_pass`` not a positive integer.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 2))
        >>> layer_sensitivities(net, "1", torch.rand(5, 3, 8, 8), torch.randn(3, 4), targets=1).shape
        torch.Size([5, 3])
    """
    resolve_layer(model, layer)  # unknown names fail before any forward, with the nearest names
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"Expected `batch_size` to be a positive integer, but got {batch_size!r}.")
    if not isinstance(slots_per_pass, int) or isinstance(slots_per_pass, bool) or slots_per_pass < 1:
        raise ValueError(f"Expected `slots_per_pass` to be a positive integer, but got {slots_per_pass!r}.")
    if not isinstance(inputs, Tensor) or inputs.dim() != 4:
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"Expected `inputs` of shape (N, C, H, W), but got {shape!r}.")
    n = inputs.shape[0]
    if cavs.dim() == 1:
        cavs = cavs[None]
    if pixels is not None and (pixels.dim() != 3 or pixels.shape[0] != n or pixels.shape[2] != 2):
        raise ValueError(f"Expected `pixels` of shape ({n}, P, 2), but got {tuple(pixels.shape)!r}.")
    tgt = _expand_targets(targets, n, None if pixels is None else pixels.shape[1])
    out_parts: list[Tensor] = []
    with attribution_mode(model):
        for s in range(0, n, batch_size):
            x = prepare_input(inputs[s : s + batch_size], model)
            with LayerCapture(model, [layer]) as cap:
                output = first_tensor(model(x), "the model's output")
            if layer not in cap.outputs:
                raise ValueError(f"Expected layer {layer!r} to run in the model's forward pass, but it never did.")
            act = cap.outputs[layer]
            # Clones made here are normal tensors even when the caller built them under inference mode.
            t = tgt[s : s + batch_size].to(output.device, copy=True)
            if pixels is None:
                out_parts.append(_image_derivatives(output, act, t, cavs))
            else:
                pix = pixels[s : s + batch_size].to(output.device, torch.long, copy=True)
                d, slots_per_pass = _pixel_derivatives(output, act, t, pix, cavs, slots_per_pass)
                out_parts.append(d)
    return torch.cat(out_parts)


def _expand_targets(targets: int | Tensor, n: int, slots: int | None) -> Tensor:
    shape = (n,) if slots is None else (n, slots)
    if isinstance(targets, int) and not isinstance(targets, bool):
        return torch.full(shape, targets, dtype=torch.long)
    if not isinstance(targets, Tensor) or tuple(targets.shape) != shape or targets.is_floating_point():
        got = tuple(targets.shape) if isinstance(targets, Tensor) else targets
        raise ValueError(f"Expected `targets` to be an int or an integer tensor of shape {shape}, but got {got!r}.")
    return targets.detach().long().cpu().clone()


def _check_classes(t: Tensor, num_classes: int) -> None:
    if t.numel() and (int(t.max()) >= num_classes or int(t.min()) < -1):
        raise ValueError(
            f"Expected target classes in [0, {num_classes}) (or -1 for an unused pixel slot), but got values in "
            f"[{int(t.min())}, {int(t.max())}]."
        )


def _image_derivatives(output: Tensor, act: Tensor, t: Tensor, cavs: Tensor) -> Tensor:
    if output.dim() != 2:
        raise ValueError(
            f"Expected (B, classes) logits for image samples, but got {tuple(output.shape)!r}; for segmentation "
            "pass `pixels` (see sample_pixels)."
        )
    _check_classes(t, output.shape[1])
    if int(t.min()) < 0:
        raise ValueError("Expected every image's target class to be non-negative, but got -1.")
    score = output.gather(1, t[:, None]).sum()
    (grad,) = torch.autograd.grad(score, act)
    return directional_derivatives(grad.detach(), cavs)


def _pixel_derivatives(
    output: Tensor, act: Tensor, t: Tensor, pixels: Tensor, cavs: Tensor, slots_per_pass: int = 1
) -> tuple[Tensor, int]:
    """``(B, P, K)`` derivatives of every used slot, and the slots per pass that worked (1 after a fallback)."""
    if output.dim() != 4:
        raise ValueError(f"Expected (B, classes, H, W) logits for pixel samples, but got {tuple(output.shape)!r}.")
    b, c, h, w = output.shape
    _check_classes(t, c)
    pix = pixels.to(output.device).long()
    ys, xs = pix[..., 0], pix[..., 1]
    if pix.numel() and (int(ys.min()) < 0 or int(ys.max()) >= h or int(xs.min()) < 0 or int(xs.max()) >= w):
        raise ValueError(f"Expected pixel coordinates (y, x) inside the {h}x{w} output, but got some outside it.")
    valid = t >= 0  # (B, P)
    used = [p for p in range(t.shape[1]) if bool(valid[:, p].any())]
    out = torch.zeros(b, t.shape[1], cavs.shape[0], device=output.device)
    i = 0
    while i < len(used):
        chunk = used[i : i + slots_per_pass]
        grads = None
        if len(chunk) > 1:
            try:
                grads = _batched_slot_grads(output, act, t, ys, xs, chunk)
            except RuntimeError as err:  # also NotImplementedError; the graph is retained, so loop from here on
                warnings.warn(
                    f"Expected the model's backward to be vmappable over pixel slots (`slots_per_pass` > 1), but "
                    f"it raised {type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                    "; falling back to one backward pass per slot.",
                    stacklevel=3,
                )
                slots_per_pass, chunk = 1, chunk[:1]
        if grads is None:
            p = chunk[0]
            score = output[valid[:, p], t[valid[:, p], p], ys[valid[:, p], p], xs[valid[:, p], p]].sum()
            (g,) = torch.autograd.grad(score, act, retain_graph=i + 1 < len(used))
            grads = g[None]
        for j, p in enumerate(chunk):
            out[:, p] = directional_derivatives(grads[j].detach(), cavs).float() * valid[:, p, None]
        i += len(chunk)
    return out, slots_per_pass


def _batched_slot_grads(output: Tensor, act: Tensor, t: Tensor, ys: Tensor, xs: Tensor, slots: list[int]) -> Tensor:
    """``(S, *act.shape)`` gradients of the slots' pixel logits w.r.t. ``act``, in one vmapped backward."""
    idx = torch.as_tensor(slots, device=output.device)
    tt, yy, xx = t[:, idx], ys[:, idx], xs[:, idx]  # (B, S)
    rows = torch.arange(output.shape[0], device=output.device)[:, None].expand_as(tt)
    slot = torch.arange(len(slots), device=output.device)[None, :].expand_as(tt)
    keep = tt >= 0
    onehot = output.new_zeros((len(slots), *output.shape))
    onehot[slot[keep], rows[keep], tt[keep], yy[keep], xx[keep]] = 1.0
    (grads,) = torch.autograd.grad(output, act, onehot, retain_graph=True, is_grads_batched=True)
    return grads
