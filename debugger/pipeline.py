"""The end-to-end concept analysis callbacks and the command line call: probe batches in, a ``ConceptReport`` out.

``ConceptAnalysis(model, layer).run(batches)`` chains the engine's steps:

1. :func:`debugger.capture.run_capture` — one forward over the probe batches (contract dicts or ``(x, y)``):
   predictions and per-sample / per-pixel correctness, images and concept masks kept;
2. :func:`debugger.patches.extract_patches` — superpixels or multi-scale windows;
3. :func:`debugger.embed.embed_patches` — patch embeddings at ``layer`` (``"roi"`` or ``"resample"``);
4. discovery — :mod:`debugger.discovery` (k-means / NMF) or any callable ``(embeddings, patches) -> list[Concept]``;
5. slices — every concept's member patches → their images (or pixels), :func:`debugger.slices.member_slices`
   (or seed 000's top-``k`` patches, :func:`debugger.confusion.concept_membership`) → confusion matrix
   (:func:`~debugger.confusion.concept_confusion`);
6. :func:`debugger.ranking.rank_failures` — error inside vs outside each slice, also within classes, failure
   verdict; near-duplicate failure concepts (slices mostly the same images) are merged into one
   (:func:`debugger.slices.near_duplicate_groups`), ranked again, and the parts marked ``merged_into`` it.

The model is left as it was found: train/eval flags restored, forwards without autograd, ``param.grad``
untouched. :meth:`ConceptAnalysis.compare` adds a second model (or a later checkpoint) on the same concepts:
the confusion differences and the ensemble check of seed 000 §7.1.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any, Literal, cast

import torch
from torch import Tensor, nn

from debugger.capture import CaptureResult, resolve_layer, run_capture
from debugger.confusion import (
    concept_confusion,
    concept_membership,
    confusion_difference,
    confusion_iou,
    ensemble_check,
)
from debugger.ranking import rank_failures
from debugger.report import ConceptReport
from debugger.structures import Concept, PatchSet

PatchMethod = Literal["superpixel", "slic", "quickshift", "window", "windows"]
Embedding = Literal["roi", "resample"]
Slices = Literal["members", "top_k"]
Discoverer = Callable[[Tensor, PatchSet], list[Concept]]
ConceptSource = Callable[[Tensor, PatchSet], Concept]

_PATCH_METHODS = ("superpixel", "slic", "quickshift", "window", "windows")
_EMBEDDINGS = ("roi", "resample")
_SLICES = ("members", "top_k")


class ConceptAnalysis:
    """Concept discovery, concept-conditioned confusion and failure ranking at one layer of a model.

    Construction stores configuration only; :meth:`run` does the work and returns a
    :class:`~debugger.report.ConceptReport`.

    Args:
        model: the network under analysis (classification logits ``(B, K)`` or segmentation ``(B, K, H, W)``).
        layer: dotted name of the layer whose activations embed the patches.
        patches: ``"superpixel"`` (= SLIC), ``"slic"``, ``"quickshift"`` or ``"window"`` (multi-scale windows).
        embedding: ``"roi"`` (pool from the image's feature map) or ``"resample"`` (the seed's: crop, resize,
            forward).
        n_concepts: concepts to find; None lets discovery choose (silhouette). Over-clustering (the default
            32) splits a failure into a few pure clusters that the merge joins again; the silhouette picks k = 2
            on the planted probe sets, mixed clusters (``docs/concepts.md``, "Defaults").
        discovery: a :mod:`debugger.discovery` method name (``"kmeans"``, ``"nmf"``), or a callable
            ``(embeddings, patches) -> list[Concept]`` (e.g. a trained concept extractor's scores).
        top_k: a concept's top patches (seed 000: 50): the report's ``top_patches``, its galleries and
            ground-truth precision, and the slice when ``slices="top_k"``.
        slices: a concept's slice is the images (pixels) of its ``"members"`` (the patches discovery assigned
            to it, so a common failure's slice holds all its images) or of its ``"top_k"`` patches (seed 000's;
            at most ``top_k`` images, so a failure in half the probe set is mostly "outside" its own slice).
        class_control: also compare each slice with the rest within classes (Mantel–Haenszel, per-sample or
            per-pixel target class); a failure must pass that test too, so a slice hard only because it holds
            the hard classes is not one (:func:`debugger.ranking.rank_failures`).
        merge_overlap: failure concepts whose slices overlap at least this much (Jaccard; linked in chains) are
            merged into one concept for the report; None keeps them apart (``docs/concepts.md``, "Defaults").
        min_support: probe images a slice needs for a failure verdict.
        alpha: significance level of the failure verdict.
        ignore_index: segmentation target value that is not counted.
        seed: seeds discovery and the bootstrap.
        patch_kwargs: passed to :func:`debugger.patches.extract_patches`.
        embed_kwargs: passed to :func:`debugger.embed.embed_patches`.
        discovery_kwargs: passed to the discovery function.
        rank_kwargs: passed to :func:`debugger.ranking.rank_failures`.
        chunk_size: samples per forward when capturing predictions.
        min_overlap: a top patch "shows" a ground-truth concept when more than this fraction of its pixels lie
            in the concept's mask (0: touches it at all); for the report's ground-truth precision.
        extra_concepts: callables ``(images, patches) -> Concept`` scoring this run's patches, e.g. a trained
            :meth:`debugger.extractor.ConceptExtractor.concept`; their concepts join the discovered ones (ids
            renumbered after them) in confusion and failure ranking.

    Raises:
        ValueError: for an unknown option or a non-positive ``top_k`` / ``n_concepts``.

    Example:
        >>> from debugger.structures import Concept
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 2))
        >>> def by_first_channel(emb, patches):
        ...     return [Concept(0, "bright", torch.arange(len(patches)), emb[:, 0])]
        >>> batches = [(torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 0, 1]))]
        >>> analysis = ConceptAnalysis(net, "1", patches="window", discovery=by_first_channel, top_k=3,
        ...                            patch_kwargs={"sizes": (4,)})
        >>> report = analysis.run(batches)
        >>> report.concept_names, tuple(report.confusion.shape)
        (['bright'], (1, 2, 2))
    """

    def __init__(
        self,
        model: nn.Module,
        layer: str,
        patches: PatchMethod = "superpixel",
        embedding: Embedding = "roi",
        n_concepts: int | None = 32,
        discovery: str | Discoverer = "kmeans",
        top_k: int = 50,
        slices: Slices = "members",
        class_control: bool = True,
        merge_overlap: float | None = 0.3,
        min_support: int = 10,
        alpha: float = 0.05,
        ignore_index: int | None = None,
        seed: int = 0,
        patch_kwargs: dict[str, Any] | None = None,
        embed_kwargs: dict[str, Any] | None = None,
        discovery_kwargs: dict[str, Any] | None = None,
        rank_kwargs: dict[str, Any] | None = None,
        chunk_size: int = 64,
        min_overlap: float = 0.0,
        extra_concepts: Sequence[ConceptSource] = (),
    ) -> None:
        if patches not in _PATCH_METHODS:
            raise ValueError(f"Expected `patches` to be one of {_PATCH_METHODS!r}, but got {patches!r}.")
        if embedding not in _EMBEDDINGS:
            raise ValueError(f"Expected `embedding` to be one of {_EMBEDDINGS!r}, but got {embedding!r}.")
        if n_concepts is not None and (not isinstance(n_concepts, int) or n_concepts < 1):
            raise ValueError(f"Expected `n_concepts` to be None or a positive integer, but got {n_concepts!r}.")
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"Expected `top_k` to be a positive integer, but got {top_k!r}.")
        if slices not in _SLICES:
            raise ValueError(f"Expected `slices` to be one of {_SLICES!r}, but got {slices!r}.")
        if merge_overlap is not None and not 0 < merge_overlap <= 1:
            raise ValueError(f"Expected `merge_overlap` to be None or in (0, 1], but got {merge_overlap!r}.")
        if not (callable(discovery) or discovery in ("kmeans", "nmf")):
            raise ValueError(
                "Expected `discovery` to be 'kmeans', 'nmf' or a callable (embeddings, patches) -> list[Concept], "
                f"but got {discovery!r}."
            )
        self.model = model
        self.layer = layer
        self.patches = patches
        self.embedding = embedding
        self.n_concepts = n_concepts
        self.discovery = discovery
        self.top_k = top_k
        self.slices = slices
        self.class_control = class_control
        self.merge_overlap = merge_overlap
        self.min_support = min_support
        self.alpha = alpha
        self.ignore_index = ignore_index
        self.seed = seed
        self.patch_kwargs = dict(patch_kwargs or {})
        self.embed_kwargs = dict(embed_kwargs or {})
        self.discovery_kwargs = dict(discovery_kwargs or {})
        self.rank_kwargs = dict(rank_kwargs or {})
        self.chunk_size = chunk_size
        self.min_overlap = min_overlap
        if not all(callable(f) for f in extra_concepts):
            raise ValueError(
                f"Expected `extra_concepts` to be callables (images, patches) -> Concept, but got {extra_concepts!r}."
            )
        self.extra_concepts = tuple(extra_concepts)

    def run(
        self,
        batches: Iterable[Any],
        class_names: Sequence[str] | None = None,
        concept_names: Sequence[str] | None = None,
        meta: dict[str, Any] | None = None,
    ) -> ConceptReport:
        """Analyse the probe batches and return the report.

        Args:
            batches: contract dict batches or ``(x, y)`` sequences (a DataLoader or a list).
            class_names: names of the model's classes.
            concept_names: names of the ground-truth concept masks in the batches (for ``concept_overlap``).
            meta: free-form values stored in the report (epoch, step, run name).

        Raises:
            ValueError: for an unknown layer, an empty probe set, malformed batches or a layer whose
                activations cannot be pooled.
        """
        resolve_layer(self.model, self.layer)
        timings: dict[str, float] = {}
        clock = time.perf_counter()
        cap = self._capture(batches)
        timings["capture"] = time.perf_counter() - clock
        images = cap.images
        if images is None:  # run_capture was asked to keep them; this would be a bug in capture
            raise RuntimeError("Expected the capture to keep the probe images, but got none.")
        num_classes = self._num_classes(cap)
        segmentation = cap.targets.dim() == 3

        clock = time.perf_counter()
        names = tuple(concept_names) if concept_names is not None else ()
        if cap.concept_masks is not None and not names:
            names = tuple(f"gt-{i}" for i in range(cap.concept_masks.shape[1]))
        patch_set = self._patches(images, cap.concept_masks, names)
        timings["patches"] = time.perf_counter() - clock

        clock = time.perf_counter()
        from debugger.embed import embed_patches

        embeddings = embed_patches(self.model, self.layer, images, patch_set, mode=self.embedding, **self.embed_kwargs)
        timings["embed"] = time.perf_counter() - clock

        clock = time.perf_counter()
        concepts, fitted = self._discover(embeddings, patch_set)
        timings["discovery"] = time.perf_counter() - clock
        if self.extra_concepts:
            clock = time.perf_counter()
            concepts = self._with_extra(concepts, images, patch_set)
            timings["extra_concepts"] = time.perf_counter() - clock

        clock = time.perf_counter()
        report = self._analyse(cap, patch_set, concepts, num_classes, segmentation)
        timings["analysis"] = time.perf_counter() - clock
        report.class_names = tuple(class_names) if class_names is not None else ()
        report.config = self.config()
        report.discovery = fitted
        report.centroids = concept_centroids(embeddings, report.concepts)  # merged failure concepts included
        report.radii = concept_radii(embeddings, report.concepts, report.centroids)
        report.meta = dict(meta or {}, timings=timings, num_patches=len(patch_set),
                           embedding_dim=int(embeddings.shape[1]))
        return report

    def compare(
        self,
        report: ConceptReport,
        other: nn.Module,
        batches: Iterable[Any],
        name: str = "other",
        ensemble: bool = True,
        against: Literal["model", "report"] = "model",
    ) -> ConceptReport:
        """Evaluate ``other`` on the same probe batches and the same concept slices as ``report``.

        Adds ``diffs[name]``: the normalized confusion of ``other`` minus that of the reference, per concept.
        The reference is this analysis' model evaluated now (``against="model"``: model vs model), or the
        confusion stored in ``report`` (``against="report"``: epoch vs epoch — pass the same model, trained
        further, as ``other``). With ``against="model"`` and ``ensemble``, also adds ``ensembles[name]``: does
        averaging the two models' softmax probabilities fix each one's errors on the concepts' images?
        The batches must be the probe set ``report`` was computed on. Returns a new report.

        Raises:
            ValueError: if ``against`` is not a valid option, the batches do not hold the report's probe images,
                ``other`` does not output the report's number of classes, or the two models' outputs differ in
                shape.
        """
        if against not in ("model", "report"):
            raise ValueError(f"Expected `against` to be one of 'model', 'report', but got {against!r}.")
        n = int(report.membership.shape[1])
        theirs = self._capture(batches, model=other, keep_images=False)
        if len(theirs) != n:
            raise ValueError(f"Expected the batches to hold the report's {n} probe images, but got {len(theirs)}.")
        k = report.num_classes
        if theirs.logits is None or theirs.logits.dim() < 2 or theirs.logits.shape[1] != k:
            shape = None if theirs.logits is None else tuple(theirs.logits.shape)
            raise ValueError(
                f"Expected `other` to output {k} class scores at dim 1 like the report's model, "
                f"but got shape {shape!r}."
            )
        region = self._region(report, theirs.targets.dim() == 3)
        cm_other = concept_confusion(theirs.predictions, theirs.targets, region, k, self.ignore_index)
        out = replace(report, diffs=dict(report.diffs), ensembles=dict(report.ensembles))
        if against == "report":
            out.diffs[name] = confusion_difference(report.confusion, cm_other)
            return out
        mine = self._capture(batches, model=self.model, keep_images=False)
        if mine.logits is None or theirs.logits is None:
            raise RuntimeError("Expected the capture to keep the logits, but got none.")
        if mine.logits.shape != theirs.logits.shape:
            raise ValueError(
                f"Expected `other` to output logits of shape {tuple(mine.logits.shape)!r} like the model, "
                f"but got {tuple(theirs.logits.shape)!r}."
            )
        cm_mine = concept_confusion(mine.predictions, mine.targets, region, k, self.ignore_index)
        out.diffs[name] = confusion_difference(cm_mine, cm_other)
        if ensemble:
            out.ensembles[name] = ensemble_check(
                mine.logits.float().softmax(1), theirs.logits.float().softmax(1), mine.targets, region, k,
                self.ignore_index,
            )
        return out

    def score(self, report: ConceptReport, images: Tensor) -> tuple[PatchSet, Tensor]:
        """Score new images with the concepts of an earlier report (e.g. concepts found at epoch N, images of now).

        The images' patches are made and embedded as this analysis makes them (its patch method, layer, embedding
        mode and model, e.g. the model trained further), then scored by the discovery model the report kept
        (:meth:`ConceptReport.score`). :func:`best_patch_scores` turns patch scores into per-image scores, and
        comparing those with ``report.slice_thresholds`` puts images into the report's slices. The model should
        be in eval mode (as :meth:`run` expects too).

        Shape:
            - images: ``(N, C, H, W)``
            - output: the ``P`` patches of the images, and their scores ``(num concepts, P)``

        Raises:
            ValueError: if the report is of another layer or kept no discovery model, or the images are not
                ``(N, C, H, W)`` with ``N > 0``.
        """
        if report.layer != self.layer:
            raise ValueError(f"Expected a report of layer {self.layer!r} like this analysis, but got {report.layer!r}.")
        if images.dim() != 4 or images.shape[0] == 0:
            raise ValueError(f"Expected `images` of shape (N, C, H, W) with N > 0, but got {tuple(images.shape)!r}.")
        if report.discovery is None:
            report.score(images.new_zeros(1, 1))  # raises the report's own error
        patch_set, embeddings = self.embed(images)
        return patch_set, report.score(embeddings.float().cpu())

    def embed(self, images: Tensor, patches: PatchSet | None = None) -> tuple[PatchSet, Tensor]:
        """The patches of ``images`` and their embeddings, made exactly as :meth:`run` makes them.

        ``patches`` embeds given patches instead (e.g. patches cut from other images, laid on these): how
        :mod:`debugger.matching` embeds the same patches of an image before and after a transform.

        Shape:
            - images: ``(N, C, H, W)``
            - output: the ``P`` patches, and their embeddings ``(P, D)`` (float32, CPU)

        Raises:
            ValueError: for images that are not ``(N, C, H, W)`` with ``N > 0``, patches that do not fit them, or
                an unknown layer.

        Example:
            >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            >>> analysis = ConceptAnalysis(net, "1", patches="window", patch_kwargs={"sizes": (4,), "strides": (4,)})
            >>> patches, emb = analysis.embed(torch.rand(2, 3, 8, 8))
            >>> len(patches), tuple(emb.shape)
            (8, (8, 4))
        """
        if images.dim() != 4 or images.shape[0] == 0:
            raise ValueError(f"Expected `images` of shape (N, C, H, W) with N > 0, but got {tuple(images.shape)!r}.")
        from debugger.embed import embed_patches

        patch_set = self.make_patches(images) if patches is None else patches
        with torch.no_grad():
            embeddings = embed_patches(self.model, self.layer, images, patch_set, mode=self.embedding,
                                       **self.embed_kwargs)
        return patch_set, embeddings

    def make_patches(self, images: Tensor) -> PatchSet:
        """The patches :meth:`run` cuts ``images`` into (this analysis' patch method and settings).

        Shape:
            - images: ``(N, C, H, W)``

        Raises:
            ValueError: for an empty probe set or settings the patch method rejects.
        """
        return self._patches(images, None, ())

    def config(self) -> dict[str, Any]:
        """The configuration as JSON-ready values (stored in every report)."""
        return {
            "layer": self.layer,
            "patches": self.patches,
            "embedding": self.embedding,
            "n_concepts": self.n_concepts,
            "discovery": self.discovery if isinstance(self.discovery, str) else getattr(
                self.discovery, "__name__", type(self.discovery).__name__
            ),
            "top_k": self.top_k,
            "slices": self.slices,
            "class_control": self.class_control,
            "merge_overlap": self.merge_overlap,
            "min_overlap": self.min_overlap,
            "min_support": self.min_support,
            "alpha": self.alpha,
            "ignore_index": self.ignore_index,
            "seed": self.seed,
            "patch_kwargs": _jsonable(self.patch_kwargs),
            "embed_kwargs": _jsonable(self.embed_kwargs),
            "discovery_kwargs": _jsonable(self.discovery_kwargs),
            "rank_kwargs": _jsonable(self.rank_kwargs),
            "extra_concepts": [getattr(f, "__qualname__", type(f).__name__) for f in self.extra_concepts],
        }

    # -- steps -------------------------------------------------------------------------------------------

    def _capture(self, batches: Iterable[Any], model: nn.Module | None = None, keep_images: bool = True
                 ) -> CaptureResult:
        model = self.model if model is None else model
        return run_capture(
            model,
            self.layer if model is self.model else _any_layer(model, self.layer),
            batches,
            reduce="mean",
            dtype=torch.float16,
            chunk_size=self.chunk_size,
            keep_logits=True,
            keep_images=keep_images,
        )

    @staticmethod
    def _num_classes(cap: CaptureResult) -> int:
        logits = cap.logits
        if logits is None or logits.dim() < 2 or logits.shape[1] < 2:
            shape = None if logits is None else tuple(logits.shape)
            raise ValueError(
                f"Expected the model to output class scores of shape (B, K) or (B, K, H, W) with K >= 2, "
                f"but got {shape!r}."
            )
        return int(logits.shape[1])

    def _patches(self, images: Tensor, concept_masks: Tensor | None, names: tuple[str, ...]) -> PatchSet:
        from debugger.patches import extract_patches

        method = {"superpixel": "slic", "window": "windows"}.get(self.patches, self.patches)
        return extract_patches(images, method, concept_masks=concept_masks, concept_names=names,  # type: ignore[arg-type]
                               **self.patch_kwargs)

    def _discover(self, embeddings: Tensor, patches: PatchSet) -> tuple[list[Concept], dict[str, Any] | None]:
        """The concepts, and the fitted k-means/NMF model that scores new patches (None for a callable)."""
        fitted: dict[str, Any] | None = None
        if callable(self.discovery):
            concepts = list(self.discovery(embeddings, patches))
        else:
            from debugger.discovery import ConceptDiscovery

            kwargs = dict(self.discovery_kwargs)
            image_index = kwargs.pop("image_index", patches.image_index)
            found = ConceptDiscovery(
                method=cast(Literal["kmeans", "nmf"], self.discovery), n_concepts=self.n_concepts, seed=self.seed,
                **kwargs,
            ).fit(embeddings, image_index)
            concepts, fitted = list(found.concepts_), found.to_dict()
        if not concepts:
            raise ValueError("Expected discovery to return at least one concept, but got none.")
        for c in concepts:
            if c.scores.shape != (len(patches),):
                raise ValueError(
                    f"Expected every concept to score all {len(patches)} patches, but got scores of shape "
                    f"{tuple(c.scores.shape)!r} for {c.name!r}."
                )
        return concepts, fitted

    def _with_extra(self, concepts: list[Concept], images: Tensor, patches: PatchSet) -> list[Concept]:
        out = list(concepts)
        next_id = max((c.id for c in concepts), default=-1) + 1
        for source in self.extra_concepts:
            c = source(images, patches)
            if not isinstance(c, Concept) or c.scores.shape != (len(patches),):
                got = tuple(c.scores.shape) if isinstance(c, Concept) else type(c).__name__
                raise ValueError(
                    f"Expected every extra concept source to return a Concept scoring all {len(patches)} patches, "
                    f"but got {got!r}."
                )
            out.append(replace(c, id=next_id))
            next_id += 1
        return out

    def _analyse(self, cap: CaptureResult, patches: PatchSet, concepts: list[Concept], num_classes: int,
                 segmentation: bool) -> ConceptReport:
        report, region = self._slice_and_rank(cap, patches, concepts, num_classes, segmentation)
        if self.merge_overlap is None:
            return report
        from debugger.slices import mark_merged, merge_concepts, near_duplicate_groups

        position = {c.id: i for i, c in enumerate(concepts)}
        failing = [position[row.concept] for row in report.ranking if row.is_failure]
        groups = near_duplicate_groups(region, failing, self.merge_overlap)
        if not groups:
            return report
        merged = merge_concepts(concepts, groups)
        report, _ = self._slice_and_rank(cap, patches, concepts + merged, num_classes, segmentation)
        report.ranking = mark_merged(report.ranking, merged)
        return report

    def _slice_and_rank(self, cap: CaptureResult, patches: PatchSet, concepts: list[Concept], num_classes: int,
                        segmentation: bool) -> tuple[ConceptReport, Tensor]:
        """The report of these concepts, and the slices it ranked (pixel regions for segmentation)."""
        scores = torch.stack([torch.nan_to_num(c.scores.float(), nan=-torch.inf) for c in concepts])
        n = len(cap)
        k = min(self.top_k, len(patches))
        top = torch.topk(scores, k, dim=1).indices
        masks = _masks(patches, cap) if segmentation else None
        membership = self._slices(concepts, scores, patches, n)
        region = membership if masks is None else self._slices(concepts, scores, patches, n, masks)
        valid = None if self.ignore_index is None else cap.targets != self.ignore_index
        confusion = concept_confusion(cap.predictions, cap.targets, region, num_classes, self.ignore_index)
        everything = torch.ones(1, n, dtype=torch.bool)
        overall = concept_confusion(cap.predictions, cap.targets, everything, num_classes, self.ignore_index)[0]
        rank_kwargs: dict[str, Any] = {"min_support": self.min_support, "alpha": self.alpha,
                       "generator": torch.Generator().manual_seed(self.seed)}
        if self.class_control:
            # units the ranking does not count (ignore_index) may hold any value; they only need a valid stratum
            strata = cap.targets if valid is None else torch.where(valid, cap.targets, torch.zeros_like(cap.targets))
            rank_kwargs.update(strata=strata, num_strata=num_classes)
        rank_kwargs.update(self.rank_kwargs)
        ranking = rank_failures(~cap.correct, region, names=[c.name for c in concepts], ids=[c.id for c in concepts],
                                valid=valid, **rank_kwargs)
        correct = cap.correct.float()
        if segmentation:
            v = valid.float() if valid is not None else torch.ones_like(correct)
            image_accuracy = (correct * v).flatten(1).sum(1) / v.flatten(1).sum(1).clamp_min(1)
        else:
            image_accuracy = correct
        report = ConceptReport(
            task="segmentation" if segmentation else "classification",
            layer=self.layer,
            num_classes=num_classes,
            concepts=concepts,
            patches=patches,
            membership=membership,
            top_patches=top,
            confusion=confusion,
            ranking=ranking,
            overall_confusion=overall,
            iou=confusion_iou(confusion) if segmentation else None,
            image_accuracy=image_accuracy,
            ground_truth_precision=ground_truth_precision(patches, top, self.min_overlap),
        )
        return report, region

    def _slices(self, concepts: list[Concept], scores: Tensor, patches: PatchSet, n: int,
                masks: Tensor | None = None) -> Tensor:
        if self.slices == "top_k":
            return concept_membership(scores, patches.image_index, n, self.top_k, masks=masks)
        from debugger.slices import member_slices

        return member_slices(concepts, patches.image_index, n, masks=masks)

    def _region(self, report: ConceptReport, segmentation: bool) -> Tensor:
        if not segmentation:
            return report.membership
        n = int(report.membership.shape[1])
        masks = report.patches.masks
        if masks is None:
            from debugger.patches import patch_masks

            masks = patch_masks(report.patches, _image_size(report.patches))
        if report.config.get("slices", "top_k") == "members":
            from debugger.slices import member_slices

            return member_slices(report.concepts, report.patches.image_index, n, masks=masks)
        scores = torch.stack([torch.nan_to_num(c.scores.float(), nan=-torch.inf) for c in report.concepts])
        top_k = max(1, int(report.top_patches.shape[1]))
        return concept_membership(scores, report.patches.image_index, n, top_k, masks=masks)


def best_patch_scores(scores: Tensor, image_index: Tensor, num_images: int) -> Tensor:
    """Each image's best patch score for each concept (``-inf`` for an image without patches).

    Shape:
        - scores: ``(C, P)``; image_index: ``(P,)`` in ``[0, N)``; output: ``(C, N)``

    Example:
        >>> best_patch_scores(torch.tensor([[0.1, 0.7, 0.3]]), torch.tensor([0, 0, 1]), 3).tolist()
        [[0.699999988079071, 0.30000001192092896, -inf]]
    """
    if scores.dim() != 2 or image_index.shape != (scores.shape[1],):
        raise ValueError(
            f"Expected `scores` (C, P) and `image_index` (P,), but got {tuple(scores.shape)!r} and "
            f"{tuple(image_index.shape)!r}."
        )
    out = scores.new_full((scores.shape[0], num_images), -torch.inf)
    index = image_index.to(scores.device).long().view(1, -1).expand_as(scores)
    return out.scatter_reduce(1, index, scores, reduce="amax", include_self=True)


def concept_centroids(embeddings: Tensor, concepts: Sequence[Concept]) -> Tensor:
    """The mean embedding of each concept's members (NaN for a concept without members).

    For k-means concepts this is the cluster centre without the outliers discovery dropped; for any other
    concept (NMF, a callable, an extractor) it places the concept in embedding space all the same, so new
    patches can be assigned to the nearest concept (:mod:`debugger.matching`).

    Shape:
        - embeddings: ``(P, D)`` (or ``(P, D, h, w)``, flattened); output: ``(C, D)`` float32

    Example:
        >>> emb = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0]])
        >>> concept_centroids(emb, [Concept(0, "a", torch.tensor([0, 1]), torch.zeros(3))]).tolist()
        [[1.0, 0.0]]
    """
    flat = embeddings.detach().float().flatten(1)
    out = flat.new_full((len(concepts), flat.shape[1]), float("nan"))
    for i, c in enumerate(concepts):
        if c.members.numel():
            out[i] = flat[c.members.long().to(flat.device)].mean(0)
    return out.cpu()


def concept_radii(embeddings: Tensor, concepts: Sequence[Concept], centroids: Tensor, quantile: float = 0.95
                  ) -> Tensor:
    """How far each concept's members lie from its centroid: the ``quantile`` of their distances (NaN without members).

    A new patch nearer to a concept's centroid than to any other is one of its kind only when it also lies within
    this radius (:mod:`debugger.matching`): a Voronoi cell reaches to infinity, a concept does not.

    Shape:
        - embeddings: ``(P, D)`` (or ``(P, D, h, w)``, flattened); centroids: ``(C, D)``; output: ``(C,)`` float32

    Example:
        >>> emb = torch.tensor([[0.0, 0.0], [2.0, 0.0], [5.0, 5.0]])
        >>> c = [Concept(0, "a", torch.tensor([0, 1]), torch.zeros(3))]
        >>> concept_radii(emb, c, concept_centroids(emb, c), quantile=1.0).tolist()
        [1.0]
    """
    flat = embeddings.detach().float().flatten(1).cpu()
    out = torch.full((len(concepts),), float("nan"))
    for i, c in enumerate(concepts):
        if c.members.numel():
            d = (flat[c.members.long()] - centroids[i].float()).norm(dim=1)
            out[i] = torch.quantile(d, quantile)
    return out


def ground_truth_precision(patches: PatchSet, top: Tensor, min_overlap: float = 0.0) -> Tensor | None:
    """Fraction of every concept's top patches that show each ground-truth concept (None without ground truth).

    Shape:
        - top: ``(C, k)`` patch indices
        - output: ``(C, G)`` float, ``G`` = ground-truth concepts of ``patches.concept_overlap``

    Example:
        >>> ps = PatchSet(torch.zeros(3, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long),
        ...               concept_overlap=torch.tensor([[0.9], [0.0], [0.2]]))
        >>> ground_truth_precision(ps, torch.tensor([[0, 2], [1, 2]]))
        tensor([[1.0000],
                [0.5000]])
    """
    if patches.concept_overlap is None:
        return None
    hits = patches.concept_overlap > min_overlap  # (P, G)
    return hits[top].float().mean(1)


def _masks(patches: PatchSet, cap: CaptureResult) -> Tensor:
    if patches.masks is not None:
        return patches.masks
    from debugger.patches import patch_masks

    return patch_masks(patches, tuple(cap.targets.shape[1:]))  # type: ignore[arg-type]


def _image_size(patches: PatchSet) -> tuple[int, int]:
    return int(patches.boxes[:, 3].max()), int(patches.boxes[:, 2].max())


def _any_layer(model: nn.Module, preferred: str) -> str:
    """A layer that runs in ``model``'s forward, to capture predictions: ``preferred`` or the first leaf with weights.

    (The last registered module is no good: LightningModules often end with metrics that never run in forward.)
    """
    modules = dict(model.named_modules())
    if preferred in modules and preferred:
        return preferred
    for name, m in modules.items():
        if name and not list(m.children()) and any(True for _ in m.parameters(recurse=False)):
            return name
    raise ValueError(
        f"Expected `other` to have a submodule with parameters to observe, but got {type(model).__name__}."
    )


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, tuple):
            v = list(v)
        if isinstance(v, bool | int | float | str | list | dict) or v is None or isinstance(v, Tensor):
            out[k] = v
        else:
            out[k] = repr(v)
    return out
