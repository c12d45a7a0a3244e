"""Active learning for concept extractors (seed 000 §4.2, §8.1): stages, query strategies, a simulated labeller.

A stage adds ``n_pos`` positive and ``n_neg`` negative labels (a schedule such as ``"10-4-4-4"``) and refits the
:class:`~debugger.extractor.ConceptExtractor`. After the first stage the extractor's confidence on the unlabelled
patches orders what the labeller is shown; the labeller walks that order and keeps the first ``n_pos`` patches
that show the concept and the first ``n_neg`` that do not (it skips ambiguous ones):

- ``"confident_wrong"`` (the paper's): the most confident candidates first. The labeller picks the confident but
  wrong ones as hard negatives and confirms the right ones as positives — seed 000's user filtering the
  0.75–1.0 confidence range. (Seeking positives among the most confident *negatives* instead — missed positives
  — was tried and made precision@50 fall stage after stage on the planted data: those are mostly patches where
  the concept is faint.)
- ``"least_confidence"``, ``"margin"``, ``"entropy"``: the most uncertain first (for one binary concept the three
  give the same order; they differ for more than two classes);
- ``"random"``: a seeded random order.

The first stage has nothing to rank by: the labeller brings examples it found itself (a random order).
The :class:`Oracle` labeller reads the ground truth from a :class:`~debugger.structures.PatchSet`'s
``concept_overlap`` (and, to brush rectangles, the concept masks).

Example:
    >>> probs = torch.tensor([[0.9, 0.1], [0.5, 0.5], [0.7, 0.3]])
    >>> least_confidence(probs).argmax().item(), margin(probs).argmin().item(), entropy(probs).argmax().item()
    (1, 1, 1)
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from debugger.extractor import ConceptExtractor
from debugger.structures import PatchSet

Strategy = Literal["confident_wrong", "least_confidence", "margin", "entropy", "random"]
STRATEGIES: tuple[str, ...] = ("confident_wrong", "least_confidence", "margin", "entropy", "random")

__all__ = [
    "STRATEGIES",
    "ActiveLearner",
    "Oracle",
    "entropy",
    "least_confidence",
    "margin",
    "parse_schedule",
    "precision_at_k",
    "query_order",
    "select_labels",
]


def _as_probs(probs: Tensor) -> Tensor:
    """``(P,)`` probabilities of the positive class become ``(P, 2)``; ``(P, K)`` rows pass through."""
    if probs.dim() == 1:
        return torch.stack([1 - probs, probs], 1)
    if probs.dim() == 2:
        return probs
    raise ValueError(f"Expected probabilities of shape (P,) or (P, K), but got {tuple(probs.shape)!r}.")


def least_confidence(probs: Tensor) -> Tensor:
    """``1 - max_k p_k`` per row: higher is more uncertain.

    Shape:
        - probs: ``(P,)`` (binary, probability of the positive class) or ``(P, K)``
        - output: ``(P,)``
    """
    return 1 - _as_probs(probs).amax(1)


def margin(probs: Tensor) -> Tensor:
    """Top-1 minus top-2 probability per row: *lower* is more uncertain.

    Shape:
        - probs: ``(P,)`` or ``(P, K)`` with ``K >= 2``
        - output: ``(P,)``
    """
    top2 = torch.topk(_as_probs(probs), 2, dim=1).values
    return top2[:, 0] - top2[:, 1]


def entropy(probs: Tensor) -> Tensor:
    """Shannon entropy in nats per row (``0 log 0 = 0``): higher is more uncertain.

    Shape:
        - probs: ``(P,)`` or ``(P, K)``
        - output: ``(P,)``
    """
    p = _as_probs(probs).double()
    return -torch.xlogy(p, p).sum(1).to(probs.dtype)


def query_order(strategy: str, scores: Tensor | None, candidates: Tensor, generator: torch.Generator) -> Tensor:
    """The order in which the labeller is shown ``candidates``.

    ``scores`` (the extractor's confidence for every patch) may be None only for ``"random"``. Ties keep the
    candidates' order (stable sorts).

    Shape:
        - scores: ``(P,)`` in ``[0, 1]``
        - candidates: ``(M,)`` patch indices
        - output: ``(M,)``, a permutation of ``candidates``

    Raises:
        ValueError: for an unknown strategy, or no scores for a strategy that ranks by them.

    Example:
        >>> s = torch.tensor([0.9, 0.2, 0.55, 0.05])
        >>> query_order("confident_wrong", s, torch.arange(4), torch.Generator()).tolist()
        [0, 2, 1, 3]
        >>> query_order("entropy", s, torch.arange(4), torch.Generator()).tolist()
        [2, 1, 0, 3]
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"Expected `strategy` to be one of {STRATEGIES!r}, but got {strategy!r}.")
    if strategy == "random":
        return candidates[torch.randperm(len(candidates), generator=generator)]
    if scores is None:
        raise ValueError(f"Expected extractor scores to rank candidates by {strategy!r}, but got None.")
    s = scores[candidates].float()
    if strategy == "confident_wrong":
        key = -s
    elif strategy == "least_confidence":
        key = -least_confidence(s)
    elif strategy == "margin":
        key = margin(s)
    else:
        key = -entropy(s)
    return candidates[torch.argsort(key, stable=True)]


class Oracle:
    """A simulated labeller reading ground truth from ``patches.concept_overlap``.

    A patch is labelled positive when at least ``positive_min`` of its pixels show the concept, negative when at
    most ``negative_max`` do, and skipped (``-1``) in between — a person would not call a patch with a sliver of
    shadow either way. With ``concept_masks`` it can also brush: the tight box of the concept's pixels inside a
    patch (seed 000's rectangle brushing).

    Args:
        patches: the pool, with ``concept_overlap`` and ``concept_names``.
        concept: the concept's name (in ``patches.concept_names``) or column.
        positive_min: overlap from which a patch is positive.
        negative_max: overlap up to which a patch is negative.
        concept_masks: ``(N, K, H, W)`` ground-truth masks, for :meth:`brush`.

    Raises:
        ValueError: without ground truth, for an unknown concept, or thresholds with ``negative_max >=
            positive_min``.
    """

    def __init__(
        self,
        patches: PatchSet,
        concept: str | int,
        positive_min: float = 0.25,
        negative_max: float = 0.0,
        concept_masks: Tensor | None = None,
    ) -> None:
        if patches.concept_overlap is None:
            raise ValueError("Expected a PatchSet with `concept_overlap` (ground-truth concept masks), but got None.")
        k = patches.concept_overlap.shape[1]
        if isinstance(concept, str):
            if concept not in patches.concept_names:
                raise ValueError(
                    f"Expected `concept` to be one of {list(patches.concept_names)!r}, but got {concept!r}."
                )
            column = patches.concept_names.index(concept)
        elif isinstance(concept, int) and 0 <= concept < k:
            column = concept
        else:
            raise ValueError(f"Expected `concept` to be a concept name or a column in [0, {k}), but got {concept!r}.")
        if not 0.0 <= negative_max < positive_min <= 1.0:
            raise ValueError(
                f"Expected 0 <= `negative_max` < `positive_min` <= 1, but got {negative_max!r} and {positive_min!r}."
            )
        self.patches = patches
        self.concept = concept
        self.column = column
        self.positive_min = positive_min
        self.negative_max = negative_max
        self.concept_masks = concept_masks
        self.overlap = patches.concept_overlap[:, column].float()

    def label(self, idx: Tensor) -> Tensor:
        """``1`` (shows the concept), ``0`` (does not) or ``-1`` (ambiguous, skipped) for each patch index.

        Shape:
            - idx: ``(M,)``; output: ``(M,)`` int64
        """
        o = self.overlap[idx]
        out = torch.full(o.shape, -1, dtype=torch.long)
        out[o >= self.positive_min] = 1
        out[o <= self.negative_max] = 0
        return out

    def truth(self, min_overlap: float = 0.0) -> Tensor:
        """Which patches show the concept for evaluation: overlap above ``min_overlap`` (as
        :func:`debugger.pipeline.ground_truth_precision`). Shape ``(P,)`` bool."""
        return self.overlap > min_overlap

    def brush(self, idx: Tensor) -> Tensor:
        """The tight box ``x0, y0, x1, y1`` of the concept's pixels inside each patch (the patch box if none).

        Shape:
            - idx: ``(M,)``; output: ``(M, 4)`` int64

        Raises:
            ValueError: if the oracle was built without ``concept_masks``.
        """
        if self.concept_masks is None:
            raise ValueError("Expected the Oracle to hold `concept_masks` to brush rectangles, but got None.")
        from debugger.patches import masks_to_boxes, patch_masks

        ps = self.patches
        h, w = self.concept_masks.shape[2:]
        sub = PatchSet(ps.image_index[idx], ps.boxes[idx], None if ps.masks is None else ps.masks[idx])
        inside = patch_masks(sub, (int(h), int(w))) & self.concept_masks[sub.image_index, self.column].bool()
        boxes = masks_to_boxes(inside)
        empty = ~inside.flatten(1).any(1)
        boxes[empty] = sub.boxes[empty].long()
        return boxes


def select_labels(
    strategy: str,
    scores: Tensor | None,
    oracle: Oracle,
    labelled: Tensor,
    n_pos: int,
    n_neg: int,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, int]:
    """One stage's queries: the first ``n_pos`` positives and ``n_neg`` negatives along the strategy's order.

    Returns the positive and negative patch indices and how many patches the labeller looked at (the deepest
    position reached). Fewer are returned when the unlabelled pool runs out.

    Shape:
        - scores: ``(P,)``; labelled: ``(P,)`` bool
    """
    candidates = (~labelled).nonzero().flatten()
    order = query_order(strategy, scores, candidates, generator)
    labels = oracle.label(order)
    pos_at = (labels == 1).nonzero().flatten()[:n_pos]
    neg_at = (labels == 0).nonzero().flatten()[:n_neg]
    reviewed = max(int(pos_at[-1]) + 1 if len(pos_at) else 0, int(neg_at[-1]) + 1 if len(neg_at) else 0)
    return order[pos_at], order[neg_at], reviewed


def parse_schedule(schedule: str | Sequence[int | tuple[int, int]]) -> list[tuple[int, int]]:
    """``"10-4-4-4"`` or ``[10, 4, 4, 4]`` (positives = negatives) or ``[(10, 8), (4, 4)]`` → ``[(pos, neg), ...]``.

    Raises:
        ValueError: for an empty schedule, a malformed string or a count below 1.

    Example:
        >>> parse_schedule("6-4-4-4")
        [(6, 6), (4, 4), (4, 4), (4, 4)]
    """
    bad = ValueError(
        "Expected `schedule` to be a string like '10-4-4-4', a list of positive counts or of (positives, negatives) "
        f"pairs, but got {schedule!r}."
    )
    if isinstance(schedule, str):
        if not re.fullmatch(r"\d+(-\d+)*", schedule.strip()):
            raise bad
        stages: list[tuple[int, int]] = [(int(v), int(v)) for v in schedule.strip().split("-")]
    else:
        stages = []
        for s in schedule:
            if isinstance(s, int) and not isinstance(s, bool):
                stages.append((s, s))
            elif isinstance(s, tuple | list) and len(s) == 2 and all(isinstance(v, int) for v in s):
                stages.append((int(s[0]), int(s[1])))
            else:
                raise bad
    if not stages or any(p < 1 or n < 1 for p, n in stages):
        raise bad
    return stages


def _check_ks(ks: Sequence[int]) -> None:
    if isinstance(ks, str) or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise ValueError(f"Expected precision cut-offs to be positive integers, e.g. (10, 50, 100), but got {ks!r}.")


def precision_at_k(scores: Tensor, truth: Tensor, ks: Sequence[int] = (10, 50, 100),
                   exclude: Tensor | None = None) -> dict[int, float]:
    """Fraction of the ``k`` highest-scoring patches that show the concept, for each ``k``.

    ``exclude`` (``(P,)`` bool, e.g. the labelled patches) drops patches from the ranking first.

    Example:
        >>> precision_at_k(torch.tensor([0.9, 0.8, 0.1, 0.7]), torch.tensor([True, False, False, True]), ks=(2, 3))
        {2: 0.5, 3: 0.6666666865348816}
    """
    _check_ks(ks)
    keep = torch.ones_like(truth, dtype=torch.bool) if exclude is None else ~exclude
    s, t = scores[keep], truth[keep]
    out: dict[int, float] = {}
    for k in ks:
        kk = min(int(k), len(s))
        out[int(k)] = float(t[torch.topk(s, kk).indices].float().mean()) if kk > 0 else float("nan")
    return out


class ActiveLearner:
    """Stages of labelling and refitting a :class:`ConceptExtractor`, driven by a labeller (here an :class:`Oracle`).

    Construction stores configuration; :meth:`run` does every stage and fills ``stages_`` (one dict per stage:
    labels so far, patches reviewed, precision@k on the unlabelled patches, seconds), ``scores_`` (the last
    stage's confidence for every patch), ``positives_``/``negatives_`` (labelled patch indices) and ``latents_``.

    Args:
        extractor: the extractor to train (refitted from scratch on all labels at every stage).
        schedule: labels per stage (see :func:`parse_schedule`).
        strategy: query strategy after the first stage (:data:`STRATEGIES`).
        brush: positives are the oracle's brushed rectangles instead of whole patches.
        eval_ks: ``k`` for precision@k after every stage (needs the oracle's ground truth).
        seed: seeds the queries.

    Raises:
        ValueError: for an unknown strategy or a bad schedule.

    Example:
        >>> from debugger.patches import sliding_windows
        >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
        >>> images = torch.rand(8, 3, 8, 8)
        >>> cm = torch.zeros(8, 1, 8, 8, dtype=torch.bool); cm[:4] = True; images[:4, 0] += 2
        >>> ps = sliding_windows(images, sizes=(4,), concept_masks=cm, concept_names=("red",))
        >>> ex = ConceptExtractor(net, "1", "red", n_augment=16, max_epochs=3)
        >>> learner = ActiveLearner(ex, "2-2", "least_confidence").run(images, ps, Oracle(ps, "red"))
        >>> [s["labels"] for s in learner.stages_]
        [4, 8]
    """

    def __init__(
        self,
        extractor: ConceptExtractor,
        schedule: str | Sequence[int | tuple[int, int]] = "10-4-4-4",
        strategy: Strategy = "confident_wrong",
        brush: bool = False,
        eval_ks: Sequence[int] = (10, 50, 100),
        seed: int = 0,
    ) -> None:
        if strategy not in STRATEGIES:
            raise ValueError(f"Expected `strategy` to be one of {STRATEGIES!r}, but got {strategy!r}.")
        _check_ks(eval_ks)
        self.extractor = extractor
        self.schedule = parse_schedule(schedule)
        self.strategy: Strategy = strategy
        self.brush = brush
        self.eval_ks = tuple(eval_ks)
        self.seed = seed

    def run(self, images: Tensor, patches: PatchSet, oracle: Oracle, latents: Tensor | None = None) -> ActiveLearner:
        """Run every stage of the schedule.

        Args:
            images: the images ``patches`` were cut from.
            patches: the pool of patches to label and score.
            oracle: the labeller.
            latents: the pool's cached latent tensors (:meth:`ConceptExtractor.embed`); computed when None.

        Raises:
            ValueError: if the latents do not match the pool, or the first stage finds no positive or negative.
        """
        if latents is None:
            latents = self.extractor.embed(images, patches)
        if latents.dim() != 4 or latents.shape[0] != len(patches):
            raise ValueError(
                f"Expected cached latents of shape ({len(patches)}, C, h, w) for the pool, but got "
                f"{tuple(latents.shape)!r}."
            )
        g = torch.Generator().manual_seed(self.seed)
        labelled = torch.zeros(len(patches), dtype=torch.bool)
        pos: list[int] = []
        neg: list[int] = []
        truth = oracle.truth()
        scores: Tensor | None = None
        self.stages_: list[dict[str, Any]] = []
        for stage, (n_pos, n_neg) in enumerate(self.schedule):
            strategy = "random" if stage == 0 else self.strategy
            clock = time.perf_counter()
            new_pos, new_neg, reviewed = select_labels(strategy, scores, oracle, labelled, n_pos, n_neg, g)
            select_s = time.perf_counter() - clock
            if not pos and (len(new_pos) == 0 or len(new_neg) == 0):
                raise ValueError(
                    f"Expected the pool to hold positives and negatives of {oracle.concept!r}, but the labeller "
                    f"found {len(new_pos)} and {len(new_neg)}."
                )
            labelled[new_pos] = True
            labelled[new_neg] = True
            pos += new_pos.tolist()
            neg += new_neg.tolist()
            positives: list[Any] = list(pos)
            if self.brush:
                boxes = oracle.brush(torch.tensor(pos, dtype=torch.long))
                positives = [(i, b.tolist()) for i, b in zip(pos, boxes, strict=True)]
            clock = time.perf_counter()
            self.extractor.fit(images, patches, positives, neg)
            fit_s = time.perf_counter() - clock
            clock = time.perf_counter()
            scores = self.extractor.score_latents(latents)
            score_s = time.perf_counter() - clock
            hist = self.extractor.history_[-1]
            self.stages_.append({
                "stage": stage,
                "strategy": strategy,
                "positives": len(pos),
                "negatives": len(neg),
                "labels": len(pos) + len(neg),
                "reviewed": reviewed,
                "precision": precision_at_k(scores, truth, self.eval_ks, exclude=labelled),
                "epochs": hist["epochs"],
                "select_seconds": select_s,
                "fit_seconds": fit_s,
                "embed_seconds": hist.get("embed_seconds", 0.0),
                "head_seconds": hist["train_seconds"],
                "score_seconds": score_s,
            })
        self.scores_ = scores
        self.positives_ = torch.tensor(pos, dtype=torch.long)
        self.negatives_ = torch.tensor(neg, dtype=torch.long)
        self.labelled_ = labelled
        self.latents_ = latents
        return self
