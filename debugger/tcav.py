"""TCAV: does a class's prediction move when a layer's activation moves towards a concept?

Testing with Concept Activation Vectors (Kim et al. 2018; seed 000 §5.3 and §7.2) in four steps:

1. **Activations** of concept examples and of random examples at a layer: patches pooled from the layer's
   feature map (:func:`debugger.embed.embed_patches`), whole images pooled over space, or whole images
   flattened (``space="flat"``, as captum and the paper do).
2. **CAV**: a linear classifier (scikit-learn) separates concept from random activations; the CAV is the unit
   normal of its decision boundary, pointing towards the concept (:class:`CAV`).
3. **Directional derivatives**: the gradient of a class logit w.r.t. the layer activation, dotted with the CAV
   (:func:`layer_sensitivities`; :func:`directional_derivatives` is the pure part). A CAV of the channel
   space (``D``) moves every spatial position of a ``(D, h, w)`` map alike, so its derivative is the
   spatially summed gradient dotted with it; a flat CAV (``D·h·w``) is dotted with the flat gradient. For
   segmentation every chosen pixel is a sample: the gradient of that pixel's logit of its class (§7.2).
4. **Score and significance**: the TCAV score of a class is the fraction of its samples with a positive
   derivative. It is computed for ``runs`` CAVs (concept vs ``runs`` different random sets) and for ``runs``
   random-vs-random CAVs; a two-sided t-test (:func:`scipy.stats.ttest_ind`) between the two sets of scores
   says whether the concept matters more than chance (:class:`TCAV`).

That t-test treats the runs as independent, but every run shares the one concept set, so it also flags a
concept that is merely a different random set (``benchmarks/bench_tcav.py`` measures how often);
``test="concepts"`` instead sets the concept's mean score against those of random example sets of its size
(:func:`tcav_concept_significance`).

CAVs depend on the weights: :class:`CAVCache` keys them by a fingerprint of every parameter and buffer
(:func:`debugger.fingerprint.model_fingerprint`) and of the examples, so a cached CAV is never reused after a
training step.

Example:
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2))
    >>> g = torch.Generator().manual_seed(0)
    >>> concept = ExampleSet(torch.rand(12, 3, 8, 8, generator=g) + 1.0)
    >>> random = ExampleSet(torch.rand(40, 3, 8, 8, generator=g))
    >>> res = TCAV(net, "1", runs=3).interpret(torch.rand(6, 3, 8, 8, generator=g), torch.tensor([0, 1] * 3),
    ...                                        {"bright": concept}, random)
    >>> tuple(res.scores.shape)  # (layers, concepts, classes, runs)
    (1, 1, 2, 3)
"""

from __future__ import annotations

import math
import time
import warnings
from collections import OrderedDict
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from debugger.capture import first_tensor
from debugger.embed import embed_images, embed_patches
from debugger.fingerprint import model_fingerprint, tensors_fingerprint
from debugger.patches import sliding_windows
from debugger.ranking import Correction, adjust_p_values
from debugger.saliency._core import LayerCapture, attribution_mode, find_layer, prepare_input
from debugger.structures import PatchSet

Space = Literal["pooled", "flat"]
Test = Literal["runs", "concepts"]
ClassifierName = Literal["sgd", "logistic"]
_SPACES = ("pooled", "flat")
_CLASSIFIERS = ("sgd", "logistic")

__all__ = [
    "CAV",
    "CAVCache",
    "ExampleSet",
    "TCAV",
    "TCAVResult",
    "concept_windows",
    "directional_derivatives",
    "example_activations",
    "layer_sensitivities",
    "model_fingerprint",
    "sample_pixels",
    "tcav_concept_significance",
    "tcav_scores",
    "tcav_significance",
]


# --------------------------------------------------------------------------------------------------------------
# CAVs
# --------------------------------------------------------------------------------------------------------------


def _make_classifier(classifier: ClassifierName | Any, alpha: float, random_state: int) -> Any:
    if isinstance(classifier, str):
        if classifier == "sgd":
            from sklearn.linear_model import SGDClassifier

            return SGDClassifier(alpha=alpha, max_iter=1000, tol=1e-3, random_state=random_state)
        if classifier == "logistic":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(C=1.0 / alpha, max_iter=1000)
        raise ValueError(
            f"Expected `classifier` to be one of {_CLASSIFIERS!r} or a scikit-learn linear classifier, "
            f"but got {classifier!r}."
        )
    if not hasattr(classifier, "fit"):
        raise ValueError(
            f"Expected `classifier` to be one of {_CLASSIFIERS!r} or a scikit-learn linear classifier, "
            f"but got {type(classifier).__name__}."
        )
    from sklearn.base import clone

    return clone(classifier)


class CAV:
    """A concept activation vector: the unit normal of a linear boundary between concept and random activations.

    Nothing happens in ``__init__``; :meth:`fit` trains the classifier (concept = label 1, random = label 0) on
    a stratified split and keeps the held-out accuracy. ``direction_`` points towards the concept.

    Args:
        classifier: ``"sgd"`` (:class:`sklearn.linear_model.SGDClassifier`, hinge loss, as captum's default),
            ``"logistic"`` (:class:`~sklearn.linear_model.LogisticRegression` with ``C = 1 / alpha``), or an
            unfitted scikit-learn linear classifier with ``coef_`` (cloned before fitting).
        alpha: regularisation strength.
        test_fraction: share of the examples held out for ``accuracy_``; 0 scores on the training examples.
        random_state: seeds the split and the SGD shuffling.

    Attributes:
        direction_: ``(F,)`` float32 unit vector.
        intercept_: the boundary's offset in units of ``direction_`` (``w·x + b = 0`` with ``|w| = 1``).
        accuracy_: held-out accuracy of the classifier.
        classifier_: the fitted scikit-learn estimator.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> concept = torch.randn(20, 3, generator=g) + torch.tensor([6.0, 0, 0])
        >>> cav = CAV().fit(concept, torch.randn(20, 3, generator=g))
        >>> bool(cav.direction_[0] > 0.9), cav.accuracy_
        (True, 1.0)
    """

    def __init__(
        self,
        classifier: ClassifierName | Any = "sgd",
        alpha: float = 0.01,
        test_fraction: float = 0.33,
        random_state: int = 0,
    ) -> None:
        self.classifier = classifier
        self.alpha = alpha
        self.test_fraction = test_fraction
        self.random_state = random_state

    def fit(self, concept: Tensor, random: Tensor) -> CAV:
        """Train on ``concept`` vs ``random`` activations; returns ``self``.

        Shape:
            - concept: ``(n_c, F)``; random: ``(n_r, F)``

        Raises:
            ValueError: if either set has fewer than 2 examples, they differ in feature size or are not 2-D,
                ``alpha`` is not positive, ``test_fraction`` is outside ``[0, 0.9]``, or ``classifier`` is not
                a valid option.
        """
        if not self.alpha > 0:
            raise ValueError(f"Expected `alpha` to be positive, but got {self.alpha!r}.")
        if not 0.0 <= self.test_fraction <= 0.9:
            raise ValueError(f"Expected `test_fraction` to be in [0, 0.9], but got {self.test_fraction!r}.")
        for name, t in (("concept", concept), ("random", random)):
            if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[0] < 2:
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"Expected `{name}` activations of shape (n >= 2, F), but got {shape!r}.")
        if concept.shape[1] != random.shape[1]:
            raise ValueError(
                f"Expected concept and random activations of one feature size, but got {concept.shape[1]} "
                f"and {random.shape[1]}."
            )
        from sklearn.model_selection import train_test_split

        x = torch.cat([concept, random]).detach().double().cpu().numpy()
        y = np.concatenate([np.ones(concept.shape[0], dtype=np.int64), np.zeros(random.shape[0], dtype=np.int64)])
        n_test = math.ceil(self.test_fraction * len(y)) if self.test_fraction > 0 else 0
        if n_test >= 2 and len(y) - n_test >= 2:
            x_tr, x_te, y_tr, y_te = train_test_split(
                x, y, test_size=n_test, stratify=y, random_state=self.random_state
            )
        else:
            x_tr, x_te, y_tr, y_te = x, x, y, y
        clf = _make_classifier(self.classifier, self.alpha, self.random_state)
        clf.fit(x_tr, y_tr)
        coef = np.asarray(getattr(clf, "coef_", None), dtype=np.float64).reshape(-1)
        if coef.shape[0] != x.shape[1]:
            raise ValueError(
                f"Expected a binary linear classifier with coef_ of {x.shape[1]} weights, but got {coef.shape[0]}."
            )
        if list(clf.classes_) != [0, 1]:  # pragma: no cover - sklearn sorts the labels
            raise RuntimeError(f"Unexpected class order {clf.classes_!r}.")
        norm = float(np.linalg.norm(coef))
        self.classifier_ = clf
        self.direction_ = torch.from_numpy(coef / norm if norm > 0 else coef).float()
        self.intercept_ = float(np.asarray(clf.intercept_).reshape(-1)[0]) / norm if norm > 0 else 0.0
        self.accuracy_ = float((clf.predict(x_te) == y_te).mean())
        return self


# --------------------------------------------------------------------------------------------------------------
# Directional derivatives and scores (pure)
# --------------------------------------------------------------------------------------------------------------


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


def tcav_scores(derivatives: Tensor, labels: Tensor, classes: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Fraction of each class's samples whose directional derivative is positive, for every CAV.

    Samples whose label is not in ``classes`` (e.g. ``-1`` for unused pixel slots) are ignored.

    Shape:
        - derivatives: ``(N, K)`` (or ``(N, P, K)`` with ``labels`` ``(N, P)``)
        - labels: ``(N,)`` (or ``(N, P)``) int
        - output: scores ``(C, K)`` (NaN for a class without samples) and sample counts ``(C,)``

    Example:
        >>> d = torch.tensor([[1.0], [-1.0], [2.0]])
        >>> s, n = tcav_scores(d, torch.tensor([0, 0, 1]), [0, 1])
        >>> s.flatten().tolist(), n.tolist()
        ([0.5, 1.0], [2, 1])
    """
    d = derivatives.reshape(-1, derivatives.shape[-1])
    lab = labels.reshape(-1).to(d.device)
    if lab.shape[0] != d.shape[0]:
        raise ValueError(
            f"Expected one label per sample ({d.shape[0]}), but got labels of shape {tuple(labels.shape)!r}."
        )
    cls = torch.as_tensor(list(classes), dtype=torch.long, device=d.device)
    member = (lab[None, :] == cls[:, None]).double()  # (C, N)
    counts = member.sum(1)
    positive = member @ (d > 0).double()  # (C, K)
    return positive / counts[:, None], counts.long()


def tcav_significance(concept_scores: Tensor, random_scores: Tensor) -> Tensor:
    """Two-sided Student t-test p-values (:func:`scipy.stats.ttest_ind`, pooled variance) over the last axis.

    Two sets of identical constant scores (e.g. both saturated at 1) differ by nothing: p = 1, where scipy gives
    NaN. NaN remains where a side has fewer than 2 runs.

    Shape:
        - concept_scores: ``(..., R)``; random_scores: broadcastable to it
        - output: ``(...)`` float64

    Example:
        >>> p = tcav_significance(torch.tensor([0.9, 0.8, 0.95]), torch.tensor([0.5, 0.4, 0.6]))
        >>> bool(p < 0.01)
        True
    """
    from scipy.stats import ttest_ind

    a, b = torch.broadcast_tensors(concept_scores.double().cpu(), random_scores.double().cpu())
    # Identical runs (a saturated score) make scipy warn about precision; their p-value is NaN or 1 either way.
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = ttest_ind(a.numpy(), b.numpy(), axis=-1)
    p = torch.as_tensor(np.asarray(res.pvalue, dtype=np.float64))
    same = (a == a[..., :1]).all(-1) & (b == a[..., :1]).all(-1) & (a.shape[-1] >= 2)
    return torch.where(torch.isnan(p) & same, torch.ones_like(p), p)


def tcav_concept_significance(concept_scores: Tensor, null_scores: Tensor) -> Tensor:
    """Two-sided p-value of a concept's mean score against the mean scores of ``M`` random "concepts".

    Each null concept is a random example set of the concept's size, scored against the same random sets as the
    concept; their means are a sample of what a concept made of random examples scores. The concept's mean is
    tested as one new draw from that sample: ``t = (s - mean) / (sd · sqrt(1 + 1/M))`` with ``M − 1`` degrees of
    freedom (a pooled-variance t-test with a sample of one). Unlike the test over runs
    (:func:`tcav_significance`), whose runs all share the one concept set, this accounts for how much a score
    depends on which examples were drawn, and is calibrated when the concept is itself a random set.

    Shape:
        - concept_scores: ``(..., R)``; null_scores: ``(..., M, R)`` with ``M >= 2``
        - output: ``(...)`` float64

    Example:
        >>> null = torch.tensor([[0.4, 0.5], [0.5, 0.6], [0.6, 0.5], [0.45, 0.55]])
        >>> bool(tcav_concept_significance(torch.tensor([0.95, 1.0]), null) < 0.01)
        True
    """
    from scipy.stats import t as student_t

    if null_scores.dim() < 2 or null_scores.shape[-2] < 2:
        raise ValueError(
            f"Expected null scores of shape (..., M >= 2, R), but got {tuple(null_scores.shape)!r}."
        )
    m = null_scores.shape[-2]
    c = concept_scores.double().cpu().mean(-1)
    null = null_scores.double().cpu().mean(-1)  # (..., M)
    mu, sd = null.mean(-1), null.std(-1)
    stat = (c - mu) / (sd * math.sqrt(1.0 + 1.0 / m))
    p = torch.as_tensor(2.0 * student_t.sf(stat.abs().numpy(), m - 1), dtype=torch.float64)
    flat = sd == 0  # every null concept scored the same: the concept either matches it or not
    p = torch.where(flat, (c == mu).double(), p)
    return torch.where(torch.isnan(c) | torch.isnan(mu), torch.full_like(p, float("nan")), p)


# --------------------------------------------------------------------------------------------------------------
# Gradients at a layer
# --------------------------------------------------------------------------------------------------------------


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
    find_layer(model, layer)  # unknown names fail before any forward, with the nearest names
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


# --------------------------------------------------------------------------------------------------------------
# Examples and their activations
# --------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------
# Fingerprints and the cache
# --------------------------------------------------------------------------------------------------------------


def _examples_fingerprint(ex: ExampleSet) -> str:
    patches = ex.patches
    if patches is None:
        return tensors_fingerprint(ex.images, ex.index)
    return tensors_fingerprint(ex.images, patches.image_index, patches.boxes, patches.masks, ex.index)


class CAVCache:
    """A bounded LRU store of trained CAVs, keyed by the model's weights, the layer, the examples and settings.

    The key holds :func:`model_fingerprint`, so CAVs trained before a weight update are never served after it
    (they simply stop matching and age out); ``hits`` and ``misses`` count lookups.

    Example:
        >>> cache = CAVCache(max_entries=2)
        >>> cache.put(("a",), 1); cache.get(("a",)), cache.get(("b",)), cache.hits, cache.misses
        (1, None, 1, 1)
    """

    def __init__(self, max_entries: int = 64) -> None:
        if not isinstance(max_entries, int) or max_entries < 1:
            raise ValueError(f"Expected `max_entries` to be a positive integer, but got {max_entries!r}.")
        self.max_entries = max_entries
        self.hits = 0
        self.misses = 0
        self._store: OrderedDict[Hashable, Any] = OrderedDict()

    def __len__(self) -> int:
        return len(self._store)

    def get(self, key: Hashable) -> Any | None:
        if key in self._store:
            self._store.move_to_end(key)
            self.hits += 1
            return self._store[key]
        self.misses += 1
        return None

    def put(self, key: Hashable, value: Any) -> None:
        self._store[key] = value
        self._store.move_to_end(key)
        while len(self._store) > self.max_entries:
            self._store.popitem(last=False)

    def clear(self) -> None:
        self._store.clear()


# --------------------------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------------------------


def check_tcav_options(
    *,
    layers: str | Sequence[str],
    runs: int,
    max_examples: int,
    correction: str,
    significance: float,
    test: str,
    null_concepts: int,
    runs_name: str = "runs",
) -> list[str]:
    """Validate the options :class:`TCAV` and the TCAV monitor share; returns the layer names as a list.

    Raises:
        ValueError: naming the option, what it got and what is accepted.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"Expected `layers` to be one or more dotted layer names, but got {layers!r}.")
    if not isinstance(runs, int) or isinstance(runs, bool) or runs < 2:
        raise ValueError(f"Expected `{runs_name}` to be an integer >= 2, but got {runs!r}.")
    if correction not in ("none", "bonferroni", "holm"):
        raise ValueError(f"Expected `correction` to be one of ('none', 'bonferroni', 'holm'), but got {correction!r}.")
    if not 0.0 < significance < 1.0:
        raise ValueError(f"Expected `significance` to be in (0, 1), but got {significance!r}.")
    if not isinstance(max_examples, int) or max_examples < 2:
        raise ValueError(f"Expected `max_examples` to be an integer >= 2, but got {max_examples!r}.")
    if test not in ("runs", "concepts"):
        raise ValueError(f"Expected `test` to be one of ('runs', 'concepts'), but got {test!r}.")
    if not isinstance(null_concepts, int) or null_concepts < 2:
        raise ValueError(f"Expected `null_concepts` to be an integer >= 2, but got {null_concepts!r}.")
    return names


@dataclass
class TCAVResult:
    """TCAV scores with their random baselines and significance, for layers × concepts × classes.

    Shape:
        - scores: ``(L, K, C, R)``, concept vs random set ``r``
        - random_scores: ``(L, C, R)``, random vs random
        - p_values, p_adjusted: ``(L, K, C)`` float64 (NaN when undefined), of the chosen ``test``
        - p_runs: ``(L, K, C)`` the test over runs (:func:`tcav_significance`), whatever ``test`` was chosen
        - null_scores: ``(L, K, C, M)`` mean scores of the random null concepts (``test="concepts"``), or None
        - cav_accuracy: ``(L, K, R)``; random_cav_accuracy: ``(L, R)``
        - counts: ``(C,)`` samples (images or pixels) per class
    """

    layers: list[str]
    concepts: list[str]
    classes: list[int]
    scores: Tensor
    random_scores: Tensor
    p_values: Tensor
    p_adjusted: Tensor
    cav_accuracy: Tensor
    random_cav_accuracy: Tensor
    counts: Tensor
    correction: str = "none"
    alpha: float = 0.05
    test: str = "runs"
    p_runs: Tensor | None = None
    null_scores: Tensor | None = None

    @property
    def mean(self) -> Tensor:
        """``(L, K, C)`` mean TCAV score over the runs."""
        return self.scores.mean(-1)

    @property
    def significant(self) -> Tensor:
        """``(L, K, C)`` bool: adjusted p-value below ``alpha``."""
        return self.p_adjusted < self.alpha

    def rows(self) -> list[dict[str, Any]]:
        """One flat record per (layer, concept, class)."""
        out = []
        for li, layer in enumerate(self.layers):
            for ki, concept in enumerate(self.concepts):
                for ci, cls in enumerate(self.classes):
                    s, r = self.scores[li, ki, ci], self.random_scores[li, ci]
                    out.append({
                        "layer": layer, "concept": concept, "class": int(cls),
                        "score": _f(s.mean()), "score_std": _f(s.std()) if s.numel() > 1 else 0.0,
                        "random_score": _f(r.mean()), "p_value": _f(self.p_values[li, ki, ci]),
                        "p_runs": _f(self.p_runs[li, ki, ci]) if self.p_runs is not None else None,
                        "null_score": _f(self.null_scores[li, ki, ci].mean()) if self.null_scores is not None
                        else None,
                        "p_adjusted": _f(self.p_adjusted[li, ki, ci]),
                        "significant": bool(self.significant[li, ki, ci]),
                        "cav_accuracy": _f(self.cav_accuracy[li, ki].mean()), "samples": int(self.counts[ci]),
                    })
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: settings, per-run scores and the flat rows (NaN as ``None``)."""
        return {
            "layers": self.layers, "concepts": self.concepts, "classes": self.classes,
            "correction": self.correction, "alpha": self.alpha, "test": self.test,
            "null_scores": None if self.null_scores is None else _nan_none(self.null_scores),
            "scores": _nan_none(self.scores), "random_scores": _nan_none(self.random_scores),
            "cav_accuracy": _nan_none(self.cav_accuracy), "random_cav_accuracy": _nan_none(self.random_cav_accuracy),
            "counts": self.counts.tolist(), "rows": self.rows(),
        }


def _f(x: Tensor | float) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v


def _nan_none(t: Tensor) -> Any:
    return [_nan_none(x) for x in t] if t.dim() else _f(t)


class TCAV:
    """TCAV with significance testing: ``TCAV(model, layers).interpret(inputs, targets, concepts, random)``.

    For each layer, each concept is set against ``runs`` random subsets of the random pool (each the size of
    the concept set, at most ``max_examples``), and a further random subset against the same ``runs`` subsets
    gives the chance-level scores. The two-sided t-test between the concept's and the random runs' scores per
    class gives the p-value; ``correction`` adjusts the p-values of one call for the number of tests
    (layers × concepts × classes). All CAVs of a layer share one gradient pass over the inputs.

    Args:
        model: the network (left as it was: eval flags restored, no ``param.grad``, no hooks).
        layers: one dotted layer name or several.
        runs: CAVs per concept and random-vs-random CAVs (≥ 2; the paper's significance uses ≥ 10).
        classifier: see :class:`CAV`.
        alpha: classifier regularisation (see :class:`CAV`).
        space: ``"pooled"`` (channel CAVs from pooled activations) or ``"flat"`` (flattened maps; images only).
        max_examples: cap on the examples per concept set (a seeded subsample beyond it).
        correction: ``"none"``, ``"bonferroni"`` or ``"holm"`` (see :func:`debugger.ranking.adjust_p_values`).
        significance: level below which an adjusted p-value is significant.
        test: ``"runs"`` (Kim et al. and captum: t-test between the concept's runs and the random-vs-random runs;
            anti-conservative, as its runs share one concept set) or ``"concepts"`` (the concept's mean score
            against ``null_concepts`` random example sets of its size, :func:`tcav_concept_significance`).
        null_concepts: random "concepts" for ``test="concepts"`` (each costs ``runs`` more CAVs).
        embed_mode: patch embedding mode (see :func:`debugger.embed.embed_patches`).
        batch_size: images per forward.
        test_fraction: held-out share for CAV accuracy.
        random_state: seeds random subsets and classifiers.
        cache: a :class:`CAVCache` shared across calls (CAVs are re-trained whenever the weights change).

    Raises:
        ValueError: for invalid options (at construction), unknown layers, empty or too-small example sets.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str],
        runs: int = 10,
        classifier: ClassifierName | Any = "sgd",
        alpha: float = 0.01,
        space: Space = "pooled",
        max_examples: int = 200,
        correction: Correction = "none",
        significance: float = 0.05,
        test: Test = "runs",
        null_concepts: int = 10,
        embed_mode: Literal["roi", "resample"] = "roi",
        batch_size: int = 32,
        test_fraction: float = 0.33,
        random_state: int = 0,
        cache: CAVCache | None = None,
    ) -> None:
        names = check_tcav_options(layers=layers, runs=runs, max_examples=max_examples, correction=correction,
                                   significance=significance, test=test, null_concepts=null_concepts)
        if space not in _SPACES:
            raise ValueError(f"Expected `space` to be one of {_SPACES!r}, but got {space!r}.")
        if isinstance(classifier, str) and classifier not in _CLASSIFIERS:
            raise ValueError(f"Expected `classifier` to be one of {_CLASSIFIERS!r}, but got {classifier!r}.")
        self.model = model
        self.layers = names
        self.runs = runs
        self.classifier = classifier
        self.alpha = alpha
        self.space: Space = space
        self.max_examples = max_examples
        self.correction: Correction = correction
        self.significance = significance
        self.test: Test = test
        self.null_concepts = null_concepts
        self.embed_mode: Literal["roi", "resample"] = embed_mode
        self.batch_size = batch_size
        self.test_fraction = test_fraction
        self.random_state = random_state
        self.cache = cache

    # -- CAVs ------------------------------------------------------------------------------------------------

    def cavs(
        self, layer: str, concepts: Mapping[str, ExampleSet], random: ExampleSet
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Train (or fetch) the CAVs of one layer.

        Returns:
            concept CAVs ``(K, R, F)``, their accuracies ``(K, R)``, random-vs-random CAVs ``(R, F)``, their
            accuracies ``(R,)``, and the null concepts' CAVs ``(K, M, R, F)`` (``M = 0`` unless
            ``test="concepts"``).
        """
        find_layer(self.model, layer)
        key = None
        if self.cache is not None:
            key = (
                model_fingerprint(self.model), layer, self.space, self.embed_mode, self.runs, repr(self.classifier),
                self.alpha, self.max_examples, self.test_fraction, self.random_state, self.test, self.null_concepts,
                _examples_fingerprint(random),
                tuple((name, _examples_fingerprint(ex)) for name, ex in concepts.items()),
            )
            hit = self.cache.get(key)
            if hit is not None:
                return hit
        result = self._train(layer, concepts, random)
        if self.cache is not None and key is not None:
            self.cache.put(key, result)
        return result

    def _train(
        self, layer: str, concepts: Mapping[str, ExampleSet], random: ExampleSet
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        memo: dict[tuple[int, int], Tensor] = {}

        def acts(ex: ExampleSet) -> Tensor:
            k = (id(ex.images), id(ex.patches))
            if k not in memo:
                memo[k] = example_activations(self.model, layer, ex.images, ex.patches, self.space,
                                              self.embed_mode, self.batch_size)
            a = memo[k]
            return a[ex.index] if ex.index is not None else a

        # Separate streams: the random sets must not depend on which concepts are tested alongside.
        g = torch.Generator().manual_seed(self.random_state)
        g_concepts = torch.Generator().manual_seed(self.random_state + 1)
        pool = acts(random)
        concept_acts = {}
        for name, ex in concepts.items():
            a = acts(ex)
            if a.shape[0] > self.max_examples:
                a = a[torch.randperm(a.shape[0], generator=g_concepts)[: self.max_examples]]
            if a.shape[0] < 2:
                raise ValueError(f"Expected at least 2 examples of concept {name!r}, but got {a.shape[0]}.")
            concept_acts[name] = a
        sizes = [a.shape[0] for a in concept_acts.values()]
        m = min(max(sizes, default=2), self.max_examples, pool.shape[0])
        if pool.shape[0] < 4 or m < 2:
            raise ValueError(f"Expected at least 4 random examples, but got {pool.shape[0]}.")
        subsets = [pool[torch.randperm(pool.shape[0], generator=g)[:m]] for _ in range(self.runs + 1)]

        def fit(pos: Tensor, neg: Tensor, r: int) -> tuple[Tensor, float]:
            cav = CAV(self.classifier, self.alpha, self.test_fraction, self.random_state + r).fit(pos, neg)
            return cav.direction_, cav.accuracy_

        dirs, accs = [], []
        for a in concept_acts.values():
            fitted = [fit(a, subsets[r + 1], r) for r in range(self.runs)]
            dirs.append(torch.stack([d for d, _ in fitted]))
            accs.append(torch.tensor([acc for _, acc in fitted]))
        rand = [fit(subsets[0], subsets[r + 1], r) for r in range(self.runs)]
        f = pool.shape[1]
        concept_dirs = torch.stack(dirs) if dirs else torch.zeros(0, self.runs, f)
        concept_accs = torch.stack(accs) if accs else torch.zeros(0, self.runs)
        null = torch.zeros(len(concept_acts), 0, self.runs, f)
        if self.test == "concepts":
            # Null concepts: random example sets of each concept's size, against the concept's own random sets.
            g_null = torch.Generator().manual_seed(self.random_state + 2)
            by_size: dict[int, Tensor] = {}
            for size in sorted({a.shape[0] for a in concept_acts.values()}):
                sets = [pool[torch.randperm(pool.shape[0], generator=g_null)[:size]] for _ in range(self.null_concepts)]
                by_size[size] = torch.stack(
                    [torch.stack([fit(fake, subsets[r + 1], r)[0] for r in range(self.runs)]) for fake in sets]
                )
            null = torch.stack([by_size[a.shape[0]] for a in concept_acts.values()])
        rand_dirs, rand_accs = torch.stack([d for d, _ in rand]), torch.tensor([a for _, a in rand])
        return concept_dirs, concept_accs, rand_dirs, rand_accs, null

    # -- the verb --------------------------------------------------------------------------------------------

    def interpret(
        self,
        inputs: Tensor,
        targets: Tensor,
        concepts: Mapping[str, ExampleSet],
        random: ExampleSet,
        pixels: Tensor | None = None,
        classes: Sequence[int] | None = None,
        deadline: float | None = None,
    ) -> TCAVResult:
        """TCAV scores of every concept for every class and layer, with p-values against random concepts.

        Args:
            inputs: the images whose predictions are explained.
            targets: each image's class ``(N,)``, or each pixel slot's class ``(N, P)`` with ``pixels``
                (``-1`` = unused; see :func:`sample_pixels`).
            concepts: concept name → examples.
            random: the random pool the random sets are drawn from.
            pixels: ``(N, P, 2)`` pixel samples for segmentation.
            classes: classes to report (default: every class present in ``targets``).
            deadline: a :func:`time.perf_counter` time after which no further layer is started (the result then
                covers the layers done, at least the first); for time budgets during training.

        Raises:
            ValueError: if ``concepts`` is empty, or as :meth:`cavs` and :func:`layer_sensitivities`.
        """
        if not concepts:
            raise ValueError("Expected at least one concept in `concepts`, but got none.")
        if not isinstance(targets, Tensor):
            raise ValueError(f"Expected `targets` to be an integer tensor, but got {type(targets).__name__}.")
        cls = sorted({int(c) for c in targets.unique().tolist() if c >= 0}) if classes is None else list(classes)
        if not cls:
            raise ValueError("Expected at least one class to score, but `targets` holds none.")
        names = list(concepts)
        k, r = len(names), self.runs
        scores, rscores, nscores, caccs, raccs = [], [], [], [], []
        counts = torch.zeros(len(cls), dtype=torch.long)
        done: list[str] = []
        for layer in self.layers:
            if done and deadline is not None and time.perf_counter() > deadline:
                break
            done.append(layer)
            cdirs, cacc, rdirs, racc, ndirs = self.cavs(layer, concepts, random)
            m = ndirs.shape[1]
            f = rdirs.shape[1]
            all_dirs = torch.cat([cdirs.reshape(k * r, f), rdirs, ndirs.reshape(k * m * r, f)])
            d = layer_sensitivities(self.model, layer, inputs, all_dirs, targets, pixels, self.batch_size)
            s, counts = tcav_scores(d.cpu(), targets.cpu(), cls)  # (C, K*R + R + K*M*R)
            scores.append(s[:, : k * r].reshape(len(cls), k, r).permute(1, 0, 2))
            rscores.append(s[:, k * r : k * r + r])
            nscores.append(s[:, k * r + r :].reshape(len(cls), k, m, r).permute(1, 0, 2, 3))
            caccs.append(cacc)
            raccs.append(racc)
        sc = torch.stack(scores)  # (L, K, C, R)
        rs = torch.stack(rscores)  # (L, C, R)
        ns = torch.stack(nscores)  # (L, K, C, M, R)
        p_runs = tcav_significance(sc, rs[:, None])
        p = tcav_concept_significance(sc, ns) if self.test == "concepts" else p_runs
        adjusted = adjust_p_values(p.flatten(), self.correction).reshape(p.shape)
        return TCAVResult(
            layers=done, concepts=names, classes=cls, scores=sc, random_scores=rs, p_values=p,
            p_adjusted=adjusted, cav_accuracy=torch.stack(caccs), random_cav_accuracy=torch.stack(raccs),
            counts=counts, correction=self.correction, alpha=self.significance, test=self.test, p_runs=p_runs,
            null_scores=ns.mean(-1) if self.test == "concepts" else None,
        )
