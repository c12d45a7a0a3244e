"""Net2Vec (Fong & Vedaldi 2018; seed 004 Ch. 5): concepts as learned weighted combinations of a layer's filters.

Two probes per concept, each compared with the best single filter:

- **Segmentation** (eq. 2, 4): every filter is binarised at its top-quantile threshold ``T_k`` (as in network
  dissection, :func:`debugger.dissection.activation_thresholds`), the binary maps are upsampled (bilinear) to the
  mask size, and a per-pixel logistic model ``M(x; w) = σ(Σ_k w_k 𝟙(A_k(x) > T_k))`` (no bias, as in eq. 2) is
  fitted with the size-weighted binary cross-entropy ``−[α L log M + (1 − α)(1 − L) log(1 − M)]``, where ``α`` is
  one minus the share of concept pixels. The score is the set IoU of ``M > ½`` with the masks over the probe set;
  the single-filter baseline is each filter's own upsampled binary map, ``> ½``.
- **Classification** (eq. 5): logistic regression on the spatially averaged (not thresholded) activations,
  positives and negatives weighted equally, scored by average precision of concept presence per image; the
  single-filter baseline ranks images by one filter's average activation.

The thesis trains with SGD (lr 1e-4, momentum 0.9, 30 epochs); here Adam with a larger step reaches the same
optimum of these convex problems in fewer epochs on small probe sets. Fitting runs on the activations' device,
seeded. :func:`fit_segmentation_vector`, :func:`fit_classification_vector`, :func:`segmentation_iou`,
:func:`single_filter_iou` and :func:`average_precision` are the pure algorithm; :class:`Net2Vec` captures a
model's layer, fits a vector per concept on one probe set (also choosing the best single filter there) and
:meth:`Net2Vec.score` reports both on another.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from debugger.capture import resolve_layer, stream_capture
from debugger.dissection import activation_thresholds

__all__ = [
    "ConceptVector",
    "Net2Vec",
    "average_precision",
    "binary_features",
    "fit_classification_vector",
    "fit_segmentation_vector",
    "segmentation_iou",
    "single_filter_iou",
]


def _check_pair(activations: Tensor, masks: Tensor) -> None:
    if not isinstance(activations, Tensor) or activations.dim() != 4:
        shape = tuple(activations.shape) if isinstance(activations, Tensor) else type(activations).__name__
        raise ValueError(f"Expected `activations` to be a tensor of shape (N, C, h, w), but got {shape!r}.")
    if not isinstance(masks, Tensor) or masks.dim() != 3 or masks.shape[0] != activations.shape[0]:
        shape = tuple(masks.shape) if isinstance(masks, Tensor) else type(masks).__name__
        n = activations.shape[0]
        raise ValueError(f"Expected `masks` to be a tensor of shape (N={n}, H, W), but got {shape!r}.")


def binary_features(activations: Tensor, thresholds: Tensor, size: tuple[int, int]) -> Tensor:
    """Each filter binarised at its threshold, then upsampled (bilinear) to ``size``: values in ``[0, 1]``.

    Shape:
        - activations: ``(N, C, h, w)``
        - thresholds: ``(C,)``
        - return: ``(N, C, *size)`` float

    Example:
        >>> binary_features(torch.tensor([[[[0.0, 2.0]]]]), torch.tensor([1.0]), (1, 2))
        tensor([[[[0., 1.]]]])
    """
    on = (activations > thresholds.to(activations).view(1, -1, 1, 1)).float()
    if tuple(on.shape[-2:]) == tuple(size):
        return on
    return F.interpolate(on, size=size, mode="bilinear", align_corners=False)


def fit_segmentation_vector(
    activations: Tensor,
    masks: Tensor,
    thresholds: Tensor,
    epochs: int = 30,
    lr: float = 0.05,
    batch_size: int = 64,
    seed: int = 0,
) -> Tensor:
    """Fit the weights ``w`` of ``M(x; w) = σ(Σ_k w_k f_k(x))`` on the binarised, upsampled filters ``f_k``.

    Args:
        activations: a layer's activations over the fitting images.
        masks: the concept's mask per image.
        thresholds: per-filter thresholds (:func:`debugger.dissection.activation_thresholds`).
        epochs: passes over the images.
        lr: Adam's step size.
        batch_size: images per step (upsampled features exist for one batch at a time).
        seed: seeds the order of the images.

    Returns:
        ``(C,)`` weights, on the activations' device.

    Shape:
        - activations: ``(N, C, h, w)``
        - masks: ``(N, H, W)``

    Raises:
        ValueError: if the shapes disagree or the masks are empty everywhere.

    Example:
        >>> acts = torch.zeros(2, 2, 2, 2)
        >>> acts[:, 0, 0] = 1.0                                  # filter 0 fires on the top row
        >>> masks = torch.zeros(2, 2, 2, dtype=torch.bool)
        >>> masks[:, 0] = True                                   # the concept is the top row
        >>> w = fit_segmentation_vector(acts, masks, torch.tensor([0.5, 0.5]), epochs=50)
        >>> bool(w[0] > 0), segmentation_iou(acts, masks, torch.tensor([0.5, 0.5]), w)
        (True, 1.0)
    """
    _check_pair(activations, masks)
    share = masks.float().mean()
    if share == 0:
        raise ValueError("Expected `masks` to hold at least one concept pixel, but got none.")
    alpha = float(1.0 - share)
    size = (int(masks.shape[1]), int(masks.shape[2]))
    device = activations.device
    with torch.inference_mode(False):
        weights = torch.zeros(activations.shape[1], device=device, requires_grad=True)
        optimizer = torch.optim.Adam([weights], lr=lr)
    g = torch.Generator().manual_seed(seed)
    with torch.inference_mode(False), torch.enable_grad():
        activations, masks, thresholds = activations.clone(), masks.clone(), thresholds.clone()
        for _ in range(epochs):
            for idx in torch.randperm(activations.shape[0], generator=g).split(batch_size):
                idx = idx.to(device)
                feats = binary_features(activations[idx], thresholds, size)
                label = masks[idx].to(device).float()
                logits = torch.einsum("nchw,c->nhw", feats, weights)
                balance = alpha * label + (1 - alpha) * (1 - label)
                loss = F.binary_cross_entropy_with_logits(logits, label, weight=balance)
                (grad,) = torch.autograd.grad(loss, [weights])
                weights.grad = grad
                optimizer.step()
    return weights.detach()


def _set_iou(predicted_on: Iterable[tuple[Tensor, Tensor]]) -> Tensor:
    inter: Tensor | float = 0.0
    union: Tensor | float = 0.0
    for on, label in predicted_on:
        inter = inter + (on & label[:, None]).flatten(2).sum((0, 2)).double()
        union = union + (on | label[:, None]).flatten(2).sum((0, 2)).double()
    if not isinstance(inter, Tensor) or not isinstance(union, Tensor):
        raise ValueError("Expected at least one image, but got 0.")
    return (inter / union.clamp(min=1)).float().cpu()


def segmentation_iou(
    activations: Tensor, masks: Tensor, thresholds: Tensor, weights: Tensor, chunk_size: int = 64
) -> float:
    """The set IoU over all images of ``σ(Σ_k w_k f_k) > ½`` with the concept masks.

    Shape:
        - activations: ``(N, C, h, w)``
        - masks: ``(N, H, W)``
        - weights: ``(C,)``
    """
    _check_pair(activations, masks)
    size = (int(masks.shape[1]), int(masks.shape[2]))
    w = weights.to(activations.device, torch.float32)

    def chunks() -> Iterable[tuple[Tensor, Tensor]]:
        for s in range(0, activations.shape[0], chunk_size):
            logits = torch.einsum("nchw,c->nhw", binary_features(activations[s:s + chunk_size], thresholds, size), w)
            yield (logits > 0)[:, None], masks[s:s + chunk_size].to(activations.device).bool()

    return float(_set_iou(chunks())[0])


def single_filter_iou(activations: Tensor, masks: Tensor, thresholds: Tensor, chunk_size: int = 64) -> Tensor:
    """Each filter's set IoU with the concept when used alone: its upsampled binary map ``> ½``.

    Shape:
        - activations: ``(N, C, h, w)``
        - masks: ``(N, H, W)``
        - return: ``(C,)``

    Example:
        >>> acts = torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]])   # filter 0: left pixel; filter 1: both
        >>> single_filter_iou(acts, torch.tensor([[[True, False]]]), torch.tensor([0.5, 0.5]))
        tensor([1.0000, 0.5000])
    """
    _check_pair(activations, masks)
    size = (int(masks.shape[1]), int(masks.shape[2]))

    def chunks() -> Iterable[tuple[Tensor, Tensor]]:
        for s in range(0, activations.shape[0], chunk_size):
            on = binary_features(activations[s:s + chunk_size], thresholds, size) > 0.5
            yield on, masks[s:s + chunk_size].to(activations.device).bool()

    return _set_iou(chunks())


def average_precision(scores: Tensor, labels: Tensor) -> float:
    """Average precision of ranking by ``scores`` against binary ``labels`` (tied scores form one threshold).

    ``Σ_n (R_n − R_{n−1}) P_n`` over the distinct score thresholds, as scikit-learn's
    ``average_precision_score``; 0 when there are no positives.

    Shape:
        - scores, labels: ``(N,)``

    Example:
        >>> average_precision(torch.tensor([0.9, 0.8, 0.1]), torch.tensor([1, 0, 1]))
        0.8333333333333333
    """
    if scores.dim() != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"Expected `scores` and `labels` to be 1-D of one length, but got {tuple(scores.shape)!r} and "
            f"{tuple(labels.shape)!r}."
        )
    order = scores.double().argsort(descending=True, stable=True)
    s = scores.double()[order]
    y = labels.bool()[order].double()
    if y.sum() == 0:
        return 0.0
    last = torch.cat([(s[1:] != s[:-1]).nonzero().flatten(), torch.tensor([len(s) - 1], device=s.device)])
    tp = y.cumsum(0)[last]
    fp = (1 - y).cumsum(0)[last]
    precision = tp / (tp + fp)
    recall = tp / tp[-1]
    steps = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((steps * precision).sum())


def fit_classification_vector(
    pooled: Tensor, present: Tensor, steps: int = 300, lr: float = 0.05, weight_decay: float = 1e-3
) -> tuple[Tensor, Tensor]:
    """Logistic regression of concept presence on spatially averaged activations, classes weighted equally.

    Features are standardised while fitting; the returned weights and bias act on the raw averages.

    Args:
        pooled: per image, each filter's mean activation.
        present: whether the concept is in the image.
        steps: full-batch Adam steps.
        lr: Adam's step size.
        weight_decay: L2 penalty on the standardised weights.

    Returns:
        ``(weights (C,), bias ())``.

    Shape:
        - pooled: ``(N, C)``
        - present: ``(N,)``

    Raises:
        ValueError: if ``present`` lacks positives or negatives, or the shapes disagree.

    Example:
        >>> x = torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
        >>> w, b = fit_classification_vector(x, torch.tensor([False, True, False, True]))
        >>> average_precision(x @ w + b, torch.tensor([0, 1, 0, 1]))
        1.0
    """
    if pooled.dim() != 2 or present.shape != (pooled.shape[0],):
        raise ValueError(
            f"Expected `pooled` to be (N, C) and `present` (N,), but got {tuple(pooled.shape)!r} and "
            f"{tuple(present.shape)!r}."
        )
    y = present.to(pooled.device).float()
    n_pos = float(y.sum())
    if n_pos == 0 or n_pos == len(y):
        raise ValueError(f"Expected `present` to hold positives and negatives, but got {int(n_pos)} of {len(y)}.")
    mean, std = pooled.mean(0), pooled.std(0, unbiased=False).clamp(min=1e-8)
    x = (pooled - mean) / std
    weight = torch.where(y > 0, len(y) / (2 * n_pos), len(y) / (2 * (len(y) - n_pos)))
    # full-batch from zeros: deterministic, no randomness to seed
    with torch.inference_mode(False):
        w = torch.zeros(pooled.shape[1], device=pooled.device, requires_grad=True)
        b = torch.zeros((), device=pooled.device, requires_grad=True)
        optimizer = torch.optim.Adam([w, b], lr=lr)
    with torch.inference_mode(False), torch.enable_grad():
        x, y, weight = x.clone(), y.clone(), weight.clone()  # normal tensors, also when given inference tensors
        for _ in range(steps):
            loss = F.binary_cross_entropy_with_logits(x @ w + b, y, weight=weight) + weight_decay * (w * w).sum()
            gw, gb = torch.autograd.grad(loss, [w, b])
            w.grad, b.grad = gw, gb
            optimizer.step()
    w_raw = w.detach() / std
    return w_raw, b.detach() - (mean * w_raw).sum()


@dataclass
class ConceptVector:
    """One concept's Net2Vec probes on a layer.

    Attributes:
        concept: the concept's name.
        segmentation_weights: ``(C,)`` weights over the binarised filters, or None when the concept had no pixels.
        classification_weights: ``(C,)`` weights over the averaged filters, or None without positives/negatives.
        classification_bias: the classification probe's bias.
        best_filter_segmentation: the filter with the highest single-filter IoU on the fitting images.
        best_filter_classification: the filter whose average activation ranks presence best (AP) there.
    """

    concept: str
    segmentation_weights: Tensor | None
    classification_weights: Tensor | None
    classification_bias: Tensor | None
    best_filter_segmentation: int | None
    best_filter_classification: int | None


class Net2Vec:
    """Fit Net2Vec concept vectors for a layer on one probe set and score them against single filters on another.

    Args:
        model: the network.
        layer: a dotted layer name.
        quantile: each filter's binarisation quantile.
        epochs: segmentation-probe epochs.
        lr: Adam's step size for both probes.
        batch_size: images per step and per forward.
        seed: seeds the fits.

    Attributes:
        thresholds_: ``(C,)`` filter thresholds from the fitting images.
        vectors_: concept name → :class:`ConceptVector`.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        >>> g = torch.Generator().manual_seed(0)
        >>> batch = {"image": torch.randn(8, 3, 8, 8, generator=g), "target": torch.zeros(8, dtype=torch.long),
        ...          "concept_masks": torch.rand(8, 1, 8, 8, generator=g) > 0.7}
        >>> probe = Net2Vec(net, "1", epochs=2).fit([batch], ["blob"])
        >>> sorted(probe.score([batch])["blob"])
        ['ap', 'iou', 'single_filter_ap', 'single_filter_iou']
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        quantile: float = 0.995,
        epochs: int = 30,
        lr: float = 0.05,
        batch_size: int = 64,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.layer = layer
        self.quantile = quantile
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.seed = seed

    def _capture(self, batches: Iterable[Any]) -> tuple[Tensor, Tensor]:
        resolve_layer(self.model, self.layer)
        acts, masks = [], []
        for result in stream_capture(self.model, self.layer, batches, chunk_size=self.batch_size):
            if result.concept_masks is None:
                raise ValueError("Expected every batch to carry `concept_masks` (N, K, H, W), but got a batch without.")
            acts.append(result.activations[self.layer].float())
            masks.append(result.concept_masks.bool())
        if not acts:
            raise ValueError("Expected `batches` to hold at least one image, but got none.")
        return torch.cat(acts), torch.cat(masks)

    def fit(self, batches: Iterable[Any], concept_names: Sequence[str]) -> Net2Vec:
        """Capture the layer over ``batches`` (with concept masks) and fit both probes for every concept.

        Raises:
            ValueError: on an unknown layer, batches without concept masks, or names not matching the masks.
        """
        acts, masks = self._capture(batches)
        names = list(concept_names)
        if len(names) != masks.shape[1]:
            raise ValueError(
                f"Expected `concept_names` to name the {masks.shape[1]} concepts of the masks, but got {names!r}."
            )
        self.thresholds_ = activation_thresholds(acts, self.quantile)
        pooled = acts.mean((2, 3))
        self.vectors_: dict[str, ConceptVector] = {}
        for j, name in enumerate(names):
            m = masks[:, j]
            present = m.flatten(1).any(1)
            seg = best_seg = cls_w = cls_b = best_cls = None
            if m.any():
                seg = fit_segmentation_vector(acts, m, self.thresholds_, self.epochs, self.lr, self.batch_size,
                                              self.seed)
                best_seg = int(single_filter_iou(acts, m, self.thresholds_).argmax())
            if 0 < int(present.sum()) < len(present):
                cls_w, cls_b = fit_classification_vector(pooled, present, lr=self.lr)
                best_cls = max(range(pooled.shape[1]), key=lambda k: average_precision(pooled[:, k], present))
            self.vectors_[name] = ConceptVector(name, seg, cls_w, cls_b, best_seg, best_cls)
        return self

    def score(self, batches: Iterable[Any]) -> dict[str, dict[str, float | None]]:
        """Per concept: the vector's IoU and AP, and those of the filter chosen at fit time, on ``batches``.

        Raises:
            ValueError: if called before :meth:`fit`, or on batches without concept masks.
        """
        if not hasattr(self, "vectors_"):
            raise ValueError("Expected `fit` to have been called before `score`, but got an unfitted Net2Vec.")
        acts, masks = self._capture(batches)
        pooled = acts.mean((2, 3))
        out: dict[str, dict[str, float | None]] = {}
        for j, (name, v) in enumerate(self.vectors_.items()):
            m = masks[:, j]
            present = m.flatten(1).any(1)
            row: dict[str, float | None] = {"iou": None, "single_filter_iou": None, "ap": None,
                                            "single_filter_ap": None}
            if v.segmentation_weights is not None and v.best_filter_segmentation is not None and m.any():
                row["iou"] = segmentation_iou(acts, m, self.thresholds_, v.segmentation_weights)
                single = single_filter_iou(acts, m, self.thresholds_)
                row["single_filter_iou"] = float(single[v.best_filter_segmentation])
            if (v.classification_weights is not None and v.classification_bias is not None
                    and v.best_filter_classification is not None and present.any()):
                row["ap"] = average_precision(pooled @ v.classification_weights + v.classification_bias, present)
                row["single_filter_ap"] = average_precision(pooled[:, v.best_filter_classification], present)
            out[name] = row
        return out
