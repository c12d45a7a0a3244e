"""What an attribution explains: a scalar score per sample, chosen from the model's output.

Every method here differentiates ``score = target(output)``, a ``(B,)`` tensor with one score per sample.
Because the model runs in eval mode, sample ``i``'s score depends on sample ``i``'s input only, so one
backward pass of ``score.sum()`` gives every sample's own gradient.

A target can be given as

- a class-index tensor ``(B,)`` (or a Python ``int`` for every sample),
- the string ``"predicted"`` (the arg-max class of the unperturbed output, fixed before any perturbation),
- a per-pixel class map ``(B, H, W)`` for segmentation outputs (the ground truth, for instance),
- any callable ``output -> (B,)`` such as :class:`ClassTarget` or :class:`RegionTarget`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor

Score = Literal["logit", "log_softmax", "softmax"]
TargetLike = int | str | Tensor | Callable[[Tensor], Tensor]

_SCORES = ("logit", "log_softmax", "softmax")


def _transform(output: Tensor, score: Score) -> Tensor:
    if score == "logit":
        return output
    if score == "log_softmax":
        return torch.log_softmax(output, dim=1)
    if score == "softmax":
        return torch.softmax(output, dim=1)
    raise ValueError(f"Expected `score` to be one of {_SCORES}, but got {score!r}.")


def _normal(t: Tensor) -> Tensor:
    """A copy usable by autograd of a tensor made under ``torch.inference_mode`` (e.g. Lightning batch labels)."""
    return t.clone() if t.is_inference() else t


def _check_score(score: str) -> None:
    if score not in _SCORES:
        raise ValueError(f"Expected `score` to be one of {_SCORES}, but got {score!r}.")


class ClassTarget:
    """Score of one class per sample; for segmentation outputs, the class's mean score over all pixels.

    Args:
        index: class per sample ``(B,)``, or one class for the whole batch.
        score: ``"logit"`` (pre-softmax, the default of Grad-CAM and captum), ``"log_softmax"`` (minus the
            cross-entropy loss of that label, the "head including the loss" of NormGrad) or ``"softmax"``.

    Shape:
        - output: ``(B, C)`` or ``(B, C, H, W)``
        - return: ``(B,)``

    Example:
        >>> ClassTarget(1)(torch.tensor([[0.0, 2.0], [3.0, 1.0]]))
        tensor([2., 1.])
    """

    def __init__(self, index: int | Tensor, score: Score = "logit") -> None:
        _check_score(score)
        self.index = index
        self.score = score

    def __call__(self, output: Tensor) -> Tensor:
        out = _transform(output, self.score)
        idx = _normal(torch.as_tensor(self.index, device=out.device, dtype=torch.long))
        if idx.dim() == 0:
            idx = idx.expand(out.shape[0])
        if idx.shape != (out.shape[0],):
            raise ValueError(f"Expected `index` to have shape ({out.shape[0]},), but got {tuple(idx.shape)}.")
        n_classes = out.shape[1]
        if idx.numel():
            lo, hi = torch.aminmax(idx)  # one pass and two reads instead of two comparisons, two any()s
            if int(lo) < 0 or int(hi) >= n_classes:
                raise ValueError(f"Expected `index` to lie in [0, {n_classes}), but got {idx.tolist()!r}.")
        if out.dim() == 2:  # classification: no spatial mean (one op less each way in a Grad-CAM call)
            return out.gather(1, idx.view(-1, 1)).squeeze(1)
        picked = out.gather(1, idx.view(-1, *([1] * (out.dim() - 1))).expand(-1, 1, *out.shape[2:]))
        return picked.flatten(1).mean(1)


class RegionTarget:
    """Segmentation target: mean score of class ``index`` over a region of the output map.

    Args:
        index: class per sample ``(B,)`` or one class for all.
        mask: ``(B, H, W)`` or ``(H, W)`` bool region at the output's resolution; ``None`` means the pixels
            the model currently assigns to ``index`` (all pixels when it assigns none).
        score: as for :class:`ClassTarget`.

    Shape:
        - output: ``(B, C, H, W)``
        - return: ``(B,)``

    Example:
        >>> out = torch.zeros(1, 3, 2, 2); out[0, 2, 0, 0] = 4.0
        >>> RegionTarget(2, mask=torch.tensor([[True, True], [False, False]]))(out)
        tensor([2.])
    """

    def __init__(self, index: int | Tensor, mask: Tensor | None = None, score: Score = "logit") -> None:
        _check_score(score)
        self.index = index
        self.mask = mask
        self.score = score

    def __call__(self, output: Tensor) -> Tensor:
        if output.dim() != 4:
            raise ValueError(f"Expected a segmentation output (B, C, H, W), but got {tuple(output.shape)}.")
        b = output.shape[0]
        idx = _normal(torch.as_tensor(self.index, device=output.device, dtype=torch.long))
        idx = idx.expand(b) if idx.dim() == 0 else idx
        out = _transform(output, self.score)
        cls_map = out[torch.arange(b, device=out.device), idx]  # (B, H, W)
        if self.mask is None:
            mask = output.detach().argmax(1) == idx.view(-1, 1, 1)
            empty = ~mask.flatten(1).any(1)
            mask = mask | empty.view(-1, 1, 1)
        else:
            mask = _normal(self.mask.to(out.device).bool())
            mask = mask.expand(b, -1, -1) if mask.dim() == 2 else mask
            if mask.shape != cls_map.shape:
                raise ValueError(f"Expected `mask` of shape {tuple(cls_map.shape)}, but got {tuple(mask.shape)}.")
        m = mask.to(out.dtype)
        return (cls_map * m).flatten(1).sum(1) / m.flatten(1).sum(1).clamp_min(1.0)


class PixelTarget:
    """Segmentation target from a per-pixel class map: mean over pixels of the score of each pixel's class.

    Shape:
        - classes: ``(B, H, W)`` int64
        - output: ``(B, C, H, W)``
        - return: ``(B,)``
    """

    def __init__(self, classes: Tensor, score: Score = "logit") -> None:
        _check_score(score)
        self.classes = classes
        self.score = score

    def __call__(self, output: Tensor) -> Tensor:
        if output.dim() != 4 or self.classes.shape != (output.shape[0], *output.shape[2:]):
            raise ValueError(
                f"Expected `classes` of shape (B, H, W) matching output {tuple(output.shape)}, "
                f"but got {tuple(self.classes.shape)}."
            )
        out = _transform(output, self.score)
        return out.gather(1, _normal(self.classes.to(out.device).long()).unsqueeze(1)).flatten(1).mean(1)


def resolve_target(target: TargetLike, output: Tensor) -> Callable[[Tensor], Tensor]:
    """Turn any accepted target into a callable ``output -> (B,)``, reading ``output`` for ``"predicted"``.

    Raises:
        ValueError: if ``target`` is an unknown string or a tensor of the wrong shape.

    Example:
        >>> f = resolve_target("predicted", torch.tensor([[0.0, 2.0]]))
        >>> f(torch.tensor([[5.0, 7.0]]))
        tensor([7.])
    """
    if isinstance(target, str):
        if target != "predicted":
            raise ValueError(f"Expected `target` to be 'predicted', a tensor or a callable, but got {target!r}.")
        pred = output.detach().argmax(1)
        return PixelTarget(pred) if output.dim() == 4 else ClassTarget(pred)
    if isinstance(target, int | Tensor):
        t = torch.as_tensor(target)
        if output.dim() == 4 and t.dim() == 3:
            return PixelTarget(t)
        if t.dim() > 1:
            raise ValueError(
                f"Expected `target` to be a class index or a (B,) tensor, but got shape {tuple(t.shape)}."
            )
        return ClassTarget(t)
    if callable(target):
        return target
    raise ValueError(f"Expected `target` to be an int, 'predicted', a tensor or a callable, but got {target!r}.")
