"""Plumbing shared by every saliency method: safe gradient mode, layer capture, upsampling.

Everything that makes a method safe to call from a Lightning validation hook lives here, once:

- :func:`attribution_mode` leaves inference mode, enables grad, puts the model in eval mode and puts
  every module's ``training`` flag back afterwards, also when the method raises;
- :class:`debugger.capture.LayerCapture` records a layer's input/output with forward hooks that come off in
  ``finally``;
- gradients are taken with :func:`torch.autograd.grad` w.r.t. captured activations or input clones, so
  ``param.grad`` is never written and no graph outlives the call.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from debugger.capture import first_tensor, model_input, preserve_training_mode
from debugger.saliency.targets import TargetLike, resolve_target


@contextlib.contextmanager
def attribution_mode(model: nn.Module) -> Iterator[None]:
    """Run the block with grad on, outside inference mode, with ``model`` in eval mode; restore afterwards.

    :func:`debugger.capture.preserve_training_mode` with ``enable_grad=True``: each module's own ``training`` flag
    and every ``param.grad`` are put back, also when the method raises.
    """
    with preserve_training_mode(model, enable_grad=True):
        yield


def prepare_input(x: Tensor, model: nn.Module | None = None) -> Tensor:
    """A normal (non-inference) copy of ``x`` on the model's device that may enter an autograd graph.

    Call inside :func:`attribution_mode`. Maps are computed, and returned, on the model's device, in the model's
    parameter dtype (:func:`debugger.capture.model_input`: float32 probes into a bf16 model work).

    Raises:
        ValueError: if ``x`` is not a floating-point ``(B, C, H, W)`` tensor.
    """
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"Expected `inputs` to be a float tensor of shape (B, C, H, W), but got {shape!r}.")
    if model is None:
        return x.detach().clone()
    return model_input(model, x.detach(), copy=True)


def scores_of(target: TargetLike, output: Any) -> Tensor:
    """``(B,)`` scores of ``output`` for ``target`` (see :mod:`debugger.saliency.targets`); a model returning a
    tuple or dict is explained through its first tensor (:func:`debugger.capture.first_tensor`)."""
    output = first_tensor(output, "the model's output")
    scores = resolve_target(target, output)(output)
    if scores.dim() != 1 or scores.shape[0] != output.shape[0]:
        raise ValueError(
            f"Expected the target to return one score per sample ({output.shape[0]},), "
            f"but got {tuple(scores.shape)}."
        )
    return scores


def fix_target(model: nn.Module, x: Tensor, target: TargetLike) -> TargetLike:
    """Resolve ``"predicted"`` once on the clean input so perturbed copies keep explaining the same class."""
    if isinstance(target, str):
        with torch.no_grad():
            return resolve_target(target, first_tensor(model(x), "the model's output"))
    return target


def copy_scores(target: TargetLike, output: Any, copies: int) -> Tensor:
    """Scores of a batch made of ``copies`` stacked copies of a ``B``-sample batch (copy-major layout).

    The target is called once per copy on a ``B``-sample output, so per-sample targets (tensors, regions)
    need no repeating.

    Shape:
        - output: ``(copies * B, ...)``
        - return: ``(copies * B,)``
    """
    output = first_tensor(output, "the model's output")
    chunks = output.chunk(copies, 0) if copies > 1 else (output,)
    return torch.cat([scores_of(target, c) for c in chunks])


def upsample(maps: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Bilinearly resize ``(B, 1, h, w)`` maps to ``size`` (no-op when ``size`` is None or already equal)."""
    if size is None or tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)
