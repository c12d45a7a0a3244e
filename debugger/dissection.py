"""Network dissection (Bau et al. 2017; seed 001 §6.1): which filters of a layer fire exactly where a concept is.

Per filter of a layer, a threshold ``T_k`` is the top ``1 - quantile`` (0.5% by default) of its activations over
the probe set: the quantile over every spatial position of every image, at the layer's own resolution. Each
activation map is upsampled to the image size (bilinear), binarised at ``T_k`` and compared with every concept
mask; the IoU is a *set* IoU over the whole probe set, ``Σ|M_k ∩ L_c| / Σ|M_k ∪ L_c|``. A filter detects a concept
when that IoU exceeds ``iou_threshold`` (0.04 in the paper).

:func:`activation_thresholds` and :func:`dissection_counts` / :func:`dissection_iou` are the pure algorithm on
tensors; :func:`dissect` runs a model over probe batches and returns a :class:`Dissection` per layer.

Memory: :func:`dissect` keeps the layer's activations at the layer's resolution and the concept masks as booleans
for the probe set (both far smaller than upsampled maps); upsampled maps exist for one chunk of images at a time,
and intersections and unions are accumulated over chunks. When a filter has more than ``max_quantile_values``
activations over the probe set, its threshold is the quantile of a seeded uniform sample of that many of them,
and :attr:`Dissection.sampled_quantile` says so.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from debugger.capture import resolve_layer, stream_capture

__all__ = ["Dissection", "activation_thresholds", "dissect", "dissection_counts", "dissection_iou"]


def _check_activations(activations: Tensor) -> None:
    if not isinstance(activations, Tensor) or activations.dim() != 4:
        shape = tuple(activations.shape) if isinstance(activations, Tensor) else type(activations).__name__
        raise ValueError(f"Expected `activations` to be a tensor of shape (N, C, h, w), but got {shape!r}.")


def activation_thresholds(
    activations: Tensor,
    quantile: float = 0.995,
    max_values: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per filter, the ``quantile`` of its activations over every image and spatial position.

    Args:
        activations: a layer's activations over the probe set.
        quantile: in ``(0, 1)``; 0.995 keeps the top 0.5% of each filter's activations.
        max_values: when a filter has more activations than this, the quantile is taken over a uniform random
            sample of this many of them (the same positions for every filter); ``None`` always uses all.
        generator: the randomness of that sample.

    Returns:
        ``(C,)`` thresholds, in the activations' dtype (the lower of the two order statistics around the
        quantile, so exactly the values strictly above it are the top share).

    Shape:
        - activations: ``(N, C, h, w)``
        - return: ``(C,)``

    Raises:
        ValueError: if ``activations`` is not 4-D or ``quantile`` is outside ``(0, 1)``.

    Example:
        >>> a = torch.arange(200.0).reshape(2, 1, 10, 10)
        >>> activation_thresholds(a, quantile=0.99)
        tensor([197.])
    """
    _check_activations(activations)
    if not isinstance(quantile, float | int) or not 0.0 < quantile < 1.0:
        raise ValueError(f"Expected `quantile` to be in (0, 1), but got {quantile!r}.")
    if max_values is not None and (not isinstance(max_values, int) or max_values < 1):
        raise ValueError(f"Expected `max_values` to be None or a positive integer, but got {max_values!r}.")
    values = activations.transpose(0, 1).reshape(activations.shape[1], -1)  # (C, N*h*w)
    if max_values is not None and values.shape[1] > max_values:
        pick = torch.randperm(values.shape[1], generator=generator)[:max_values].to(values.device)
        values = values[:, pick]
    # kthvalue has no size limit (torch.quantile refuses more than 2^24 values); k is 1-based.
    k = max(1, min(values.shape[1], int(quantile * (values.shape[1] - 1)) + 1))
    return values.kthvalue(k, dim=1).values


def dissection_counts(
    activations: Tensor, masks: Tensor, thresholds: Tensor
) -> tuple[Tensor, Tensor]:
    """Intersection and union pixel counts of every filter's binarised map with every concept mask, for one chunk.

    Each map is upsampled (bilinear, ``align_corners=False``) to the masks' size and is "on" where it exceeds its
    filter's threshold. Sum the counts of several chunks and divide for the set IoU of the whole probe set.

    Shape:
        - activations: ``(N, C, h, w)``
        - masks: ``(N, K, H, W)``, boolean (or 0/1)
        - thresholds: ``(C,)``
        - return: two ``(C, K)`` int64 tensors, intersections and unions

    Raises:
        ValueError: if the shapes disagree.

    Example:
        >>> acts = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])       # one filter, on at the top right
        >>> masks = torch.tensor([[[[False, True], [False, False]]]])
        >>> dissection_counts(acts, masks, torch.tensor([0.5]))
        (tensor([[1]]), tensor([[1]]))
    """
    _check_activations(activations)
    if not isinstance(masks, Tensor) or masks.dim() != 4 or masks.shape[0] != activations.shape[0]:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        raise ValueError(
            f"Expected `masks` to be a tensor of shape (N={activations.shape[0]}, K, H, W), but got {shape!r}."
        )
    if thresholds.shape != (activations.shape[1],):
        raise ValueError(
            f"Expected `thresholds` to have shape ({activations.shape[1]},), but got {tuple(thresholds.shape)!r}."
        )
    size = masks.shape[-2:]
    up = activations.float()
    if up.shape[-2:] != size:
        up = F.interpolate(up, size=size, mode="bilinear", align_corners=False)
    on = (up > thresholds.to(up).view(1, -1, 1, 1)).flatten(2).float()  # (N, C, P)
    lab = masks.to(on.device).bool().flatten(2).float()  # (N, K, P)
    # Counts stay exact in float32 up to 2^24 per chunk; the sums across chunks are int64.
    inter = torch.einsum("ncp,nkp->ck", on, lab)
    union = on.sum((0, 2))[:, None] + lab.sum((0, 2))[None, :] - inter
    return inter.round().long().cpu(), union.round().long().cpu()


def dissection_iou(
    activations: Tensor,
    masks: Tensor,
    quantile: float = 0.995,
    thresholds: Tensor | None = None,
    chunk_size: int = 64,
) -> Tensor:
    """The set IoU of every filter with every concept over a probe set held in memory.

    Args:
        activations: a layer's activations over the probe set.
        masks: the concept masks at image resolution.
        quantile: sets each filter's threshold (see :func:`activation_thresholds`) unless ``thresholds`` is given.
        thresholds: per-filter thresholds to use instead (e.g. learned on another split).
        chunk_size: images upsampled at once.

    Shape:
        - activations: ``(N, C, h, w)``
        - masks: ``(N, K, H, W)``
        - return: ``(C, K)``; 0 where a filter and a concept are both empty everywhere

    Example:
        >>> acts = torch.zeros(4, 2, 4, 4)
        >>> acts[:, 0, :2] = 1.0                                   # filter 0 covers the top half
        >>> masks = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
        >>> masks[:, 0, :4] = True                                 # so does the concept
        >>> dissection_iou(acts, masks, thresholds=torch.tensor([0.5, 0.5]))
        tensor([[1.],
                [0.]])
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"Expected `chunk_size` to be a positive integer, but got {chunk_size!r}.")
    if thresholds is None:
        thresholds = activation_thresholds(activations, quantile)
    if activations.shape[0] == 0:
        raise ValueError("Expected `activations` to hold at least one image, but got 0.")
    inter = torch.zeros(activations.shape[1], masks.shape[1], dtype=torch.long)
    union = torch.zeros_like(inter)
    for start in range(0, activations.shape[0], chunk_size):
        i, u = dissection_counts(activations[start:start + chunk_size], masks[start:start + chunk_size], thresholds)
        inter += i
        union += u
    return inter.double().div(union.clamp(min=1)).float()


@dataclass
class Dissection:
    """The dissection of one layer.

    Attributes:
        layer: the dotted layer name.
        iou: ``(C, K)`` set IoU of every filter with every concept.
        thresholds: ``(C,)`` the activation threshold of every filter.
        concept_names: the K concept names.
        iou_threshold: the IoU above which a filter detects a concept.
        quantile: the activation quantile the thresholds came from.
        sampled_quantile: whether the thresholds came from a sample of the activations (see :func:`dissect`).
    """

    layer: str
    iou: Tensor
    thresholds: Tensor
    concept_names: list[str]
    iou_threshold: float = 0.04
    quantile: float = 0.995
    sampled_quantile: bool = False

    def _concept(self, concept: str | int) -> int:
        if isinstance(concept, int) and 0 <= concept < len(self.concept_names):
            return concept
        if concept in self.concept_names:
            return self.concept_names.index(concept)  # type: ignore[arg-type]
        raise ValueError(f"Expected `concept` to be one of {self.concept_names!r}, but got {concept!r}.")

    def detectors(self, concept: str | int) -> list[int]:
        """The filters whose IoU with ``concept`` exceeds the threshold, best first.

        Raises:
            ValueError: if ``concept`` is not one of :attr:`concept_names` (or their indices).
        """
        col = self.iou[:, self._concept(concept)]
        order = col.argsort(descending=True, stable=True).tolist()
        return [u for u in order if float(col[u]) > self.iou_threshold]

    def unit_counts(self) -> dict[str, int]:
        """How many filters detect each concept (a filter may detect several)."""
        return {name: int((self.iou[:, j] > self.iou_threshold).sum()) for j, name in enumerate(self.concept_names)}

    def unit_labels(self) -> list[tuple[int, str, float]]:
        """Every filter's best concept as ``(filter, concept, iou)``, filters sorted by that IoU, highest first."""
        best, arg = self.iou.max(1)
        order = best.argsort(descending=True, stable=True).tolist()
        return [(u, self.concept_names[int(arg[u])], float(best[u])) for u in order]

    def top_units(self, k: int = 5) -> list[tuple[int, str, float]]:
        """The ``k`` filters with the highest IoU with any concept, as in :meth:`unit_labels`."""
        return self.unit_labels()[:k]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary: per concept the count and the detecting filters, and the top units."""
        return {
            "layer": self.layer,
            "filters": int(self.iou.shape[0]),
            "iou_threshold": self.iou_threshold,
            "quantile": self.quantile,
            "sampled_quantile": self.sampled_quantile,
            "unit_counts": self.unit_counts(),
            "detectors": {name: self.detectors(name) for name in self.concept_names},
            "best_iou": {name: round(float(self.iou[:, j].max()), 4) for j, name in enumerate(self.concept_names)},
            "top_units": [[u, c, round(v, 4)] for u, c, v in self.top_units(10)],
        }


def dissect(
    model: nn.Module,
    layers: str | Sequence[str],
    batches: Iterable[Any],
    concept_names: Sequence[str] | None = None,
    quantile: float = 0.995,
    iou_threshold: float = 0.04,
    chunk_size: int = 64,
    max_quantile_values: int | None = 4_000_000,
    seed: int = 0,
) -> dict[str, Dissection]:
    """Dissect ``layers`` of ``model`` over probe ``batches`` that carry concept masks.

    One forward pass per chunk captures every layer at once (eval mode, no grad; the model's flags are restored).

    Args:
        model: the network.
        layers: dotted layer names from ``named_modules()``.
        batches: contract batches (dicts with ``image`` and ``concept_masks``); iterated once.
        concept_names: names of the K concepts (default ``concept-0`` …).
        quantile: each filter's activation quantile used as its threshold.
        iou_threshold: a filter detects a concept when its IoU is above this.
        chunk_size: images per forward and per upsampling step.
        max_quantile_values: per filter, at most this many activations enter the quantile (a seeded sample).
        seed: seeds that sample.

    Returns:
        layer name → :class:`Dissection`.

    Raises:
        ValueError: on an unknown layer, batches without concept masks, or concept names of the wrong length.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> batch = {"image": torch.randn(8, 3, 8, 8), "target": torch.zeros(8, dtype=torch.long),
        ...          "concept_masks": torch.rand(8, 2, 8, 8) > 0.5}
        >>> result = dissect(net, "1", [batch], concept_names=["a", "b"])
        >>> tuple(result["1"].iou.shape)
        (4, 2)
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    for name in names:
        resolve_layer(model, name)
    if not isinstance(iou_threshold, float | int) or not 0.0 <= iou_threshold < 1.0:
        raise ValueError(f"Expected `iou_threshold` to be in [0, 1), but got {iou_threshold!r}.")
    acts: dict[str, list[Tensor]] = {name: [] for name in names}
    masks: list[Tensor] = []
    for result in stream_capture(model, names, batches, chunk_size=chunk_size):
        if result.concept_masks is None:
            raise ValueError("Expected every batch to carry `concept_masks` (N, K, H, W), but got a batch without.")
        masks.append(result.concept_masks.bool().cpu())
        for name in names:
            acts[name].append(result.activations[name].float())
    if not masks:
        raise ValueError("Expected `batches` to hold at least one image with `concept_masks`, but got none.")
    all_masks = torch.cat(masks)
    k = all_masks.shape[1]
    concepts = list(concept_names) if concept_names is not None else [f"concept-{j}" for j in range(k)]
    if len(concepts) != k:
        raise ValueError(f"Expected `concept_names` to name the {k} concepts of the masks, but got {concepts!r}.")
    out: dict[str, Dissection] = {}
    for name in names:
        a = torch.cat(acts.pop(name))
        positions = a.shape[0] * a.shape[2] * a.shape[3]
        sampled = max_quantile_values is not None and positions > max_quantile_values
        thresholds = activation_thresholds(a, quantile, max_quantile_values, torch.Generator().manual_seed(seed))
        iou = dissection_iou(a, all_masks, thresholds=thresholds, chunk_size=chunk_size)
        out[name] = Dissection(name, iou, thresholds, concepts, float(iou_threshold), float(quantile), sampled)
    return out

