"""ConceptMonitor: concept discovery on a fixed probe set while the model trains, seen in TensorBoard.

Each run is one :class:`debugger.pipeline.ConceptAnalysis` over the probe set (patches → embeddings at
``layer`` → k-means/NMF concepts → concept-conditioned confusion → failure ranking), logged as:

- ``concepts/gallery/concept_07``: the top patches of concept 7 (borders blue = the model is right on the
  patch's image, red = wrong) under a caption: its name, FAILURE when it is one, the annotated concept its top
  patches show (where the data has annotations), lift with its interval, error inside / outside its slice and
  the images in the slice; the swatch is the concept's colour. Concepts are re-discovered every run and
  matched to the previous run's (:mod:`debugger.identity`: centroid cosine and member overlap, a Hungarian
  assignment), so a concept keeps its number, and its tag, while it lasts: the step slider shows one concept
  over time. Galleries are drawn for the ``max_galleries`` worst-ranked concepts of each run.
- ``concepts/failure_images/concept_07``: for a failure concept, whole misclassified probe images with the
  concept's patch outlined.
- ``concepts/grid``: the de-cluttered patch grid of seed 000 §5.1 (a 2-D layout of patch embeddings, one
  patch per cell, hidden when the grid is full), borders by correctness.
- the projector (``concepts/patches <layer> epoch <n>``; the latest run's marked ``(latest)`` so the projector
  opens on it): patch embeddings with thumbnails and metadata (concept by its lasting number, correct, both in
  one column, class, image, dominant ground-truth concept; colour the points by "concept and correct"),
  subsampled to ``max_projector_points`` (≤ 10,000, the projector's own limit) with thumbnails shrunk so the
  sprite stays ≤ 8192 px a side.
- scalars: number of concepts and failure concepts, the top failure's lift and slice accuracy.
- the concept store: every run's :class:`~debugger.report.ConceptReport` as JSON in
  ``<run dir>/conceptfix/concepts/reports/`` plus ``latest.json`` (written atomically), for ``conceptfix
  diagnose`` and people.

Each run publishes a :class:`~callbacks.findings.ConceptReportFinding` (the report and its probe images) for the
callbacks after it: :class:`~callbacks.ConfusionMonitor` ranks its concepts, and
:class:`~callbacks.FailureDrivenAugmentation` turns its failure concepts into augmentation policies.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from callbacks._base import Monitor, to_display
from callbacks._probe import AnalysisSkipped, ProbeSet, RunContext, _unwrap_dataset
from callbacks.findings import ConceptReportFinding
from debugger.capture import preserve_training_mode
from debugger.files import atomic_write
from debugger.identity import ConceptTracker, member_keys

Layout = Literal["pca", "tsne"]
PatchMethod = Literal["superpixel", "slic", "quickshift", "window", "windows"]
SPRITE_LIMIT = 8192  # px per side the TensorBoard projector can load
PROJECTOR_LIMIT = 10_000  # points the projector shows before it subsamples on its own
# debugger.discovery's and debugger.pipeline's words for "the probe set cannot hold that many concepts"
_DISTINCT = re.compile(r"Expected at least \d+ distinct embeddings for \d+ concepts, but got (\d+)\.")
_NO_CONCEPT = "Expected discovery to return at least one concept"


def sprite_thumbnail_size(num_points: int, wanted: int, limit: int = SPRITE_LIMIT) -> int:
    """Thumbnail side so a square sprite of ``num_points`` thumbnails stays within ``limit`` px.

    Example:
        >>> sprite_thumbnail_size(10_000, 32), sprite_thumbnail_size(10_000, 128)
        (32, 81)
    """
    if num_points < 1 or wanted < 1:
        raise ValueError(f"Expected positive `num_points` and `wanted`, but got {num_points!r} and {wanted!r}.")
    per_side = math.ceil(math.sqrt(num_points))
    return max(1, min(wanted, limit // per_side))


def pca_layout(embeddings: Tensor) -> Tensor:
    """First two principal components of the embeddings (a cheap layout for the de-cluttered grid).

    Shape:
        - embeddings: ``(P, D)``; output: ``(P, 2)``
    """
    x = embeddings.detach().double()
    x = x - x.mean(0, keepdim=True)
    if x.shape[0] < 2 or x.shape[1] < 2:
        return torch.zeros(x.shape[0], 2, dtype=torch.float32)
    _, _, v = torch.linalg.svd(x, full_matrices=False)
    return (x @ v[:2].T).float()


def select_points(num_points: int, limit: int, seed: int) -> Tensor:
    """Indices of at most ``limit`` points, a seeded uniform subsample in ascending order."""
    if num_points <= limit:
        return torch.arange(num_points)
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(num_points, generator=g)[:limit].sort().values


class ConceptMonitor(Monitor):
    """Discovers concepts on the probe set at a layer and logs galleries, the patch grid, the projector and reports.

    Args:
        layer: dotted module name whose activations embed the patches.
        patches: patch method of :class:`~debugger.pipeline.ConceptAnalysis` (superpixels by default).
        embedding: ``"roi"`` (one forward per image) or ``"resample"`` (one per patch, the seed's).
        n_concepts: concepts per run. A fixed k keeps a run at about a second for 64 probe images; None lets
            discovery choose k by silhouette, which costs several seconds more per run on a CPU.
        discovery: ``"kmeans"`` or ``"nmf"``.
        top_k: patches per concept that define its slice.
        min_support: probe images a slice needs for a failure verdict.
        max_galleries: gallery tags (one per failure rank).
        gallery_size: patches per gallery.
        grid: ``(rows, cols)`` of the de-cluttered patch grid; None skips it.
        grid_layout: ``"pca"`` (fast) or ``"tsne"`` (the seed's; seconds per thousand patches on a CPU).
        grid_points: most patches laid out on the grid (a seeded subsample).
        projector: write patch embeddings for TensorBoard's projector.
        max_projector_points: most projector points (at most 10,000). Writing the sprite and the TSV files is
            the largest cost of a run (about 1 s per 1,000 points of 32 px on one CPU thread).
        thumbnail_size: wanted projector thumbnail side (shrunk to keep the sprite ≤ 8192 px).
        keep_last: runs whose projector tensors (sprite, embeddings, metadata; the largest files of a run) and
            per-run report JSON stay on disk; older ones are deleted after each run (``latest.json`` and the
            report the latest finding points to always stay). None keeps every run. Galleries and the grid are
            images in the append-only event file and cannot be deleted: TensorBoard shows the last 10 per tag.
        analysis_kwargs: further :class:`~debugger.pipeline.ConceptAnalysis` options (``patch_kwargs`` …).
        **kwargs: scheduling, probe and budget options of :class:`callbacks._base.Monitor`.

    Example:
        >>> ConceptMonitor("layer2", every_n_epochs=2).tag_prefix
        'concepts'
    """

    tag_root = "concepts"
    publishes = (ConceptReportFinding,)

    def __init__(
        self,
        layer: str,
        patches: PatchMethod = "superpixel",
        embedding: Literal["roi", "resample"] = "roi",
        n_concepts: int | None = 8,
        discovery: Literal["kmeans", "nmf"] = "kmeans",
        top_k: int = 50,
        min_support: int = 5,
        max_galleries: int = 6,
        gallery_size: int = 16,
        grid: tuple[int, int] | None = (16, 16),
        grid_layout: Layout = "pca",
        grid_points: int = 1024,
        projector: bool = True,
        max_projector_points: int = 1000,
        thumbnail_size: int = 24,
        keep_last: int | None = 5,
        analysis_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not isinstance(layer, str) or not layer:
            raise ValueError(f"Expected `layer` to be a dotted module name, but got {layer!r}.")
        for name, value in (("max_galleries", max_galleries), ("gallery_size", gallery_size),
                            ("grid_points", grid_points), ("thumbnail_size", thumbnail_size)):
            if not isinstance(value, int) or value < (0 if name == "max_galleries" else 1):
                raise ValueError(f"Expected `{name}` to be a positive integer, but got {value!r}.")
        if not isinstance(max_projector_points, int) or not 1 <= max_projector_points <= PROJECTOR_LIMIT:
            raise ValueError(
                f"Expected `max_projector_points` to be in [1, {PROJECTOR_LIMIT}], but got {max_projector_points!r}."
            )
        if keep_last is not None and (not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1):
            raise ValueError(f"Expected `keep_last` to be a positive integer or None, but got {keep_last!r}.")
        if grid is not None and (len(grid) != 2 or min(grid) < 1):
            raise ValueError(f"Expected `grid` to be None or (rows, cols) of positive integers, but got {grid!r}.")
        if grid_layout not in ("pca", "tsne"):
            raise ValueError(f"Expected `grid_layout` to be one of ('pca', 'tsne'), but got {grid_layout!r}.")
        self.layer = layer
        self.patches = patches
        self.embedding = embedding
        self.n_concepts = n_concepts
        self.discovery = discovery
        self.top_k = top_k
        self.min_support = min_support
        self.max_galleries = max_galleries
        self.gallery_size = gallery_size
        self.grid = grid
        self.grid_layout = grid_layout
        self.grid_points = grid_points
        self.projector = projector
        self.max_projector_points = max_projector_points
        self.thumbnail_size = thumbnail_size
        self.keep_last = keep_last
        self.analysis_kwargs = dict(analysis_kwargs or {})
        self.latest_report_path: str | None = None  # where the last run's report was stored (checkpointed)
        self._tracker = ConceptTracker()  # lasting concept numbers across runs (checkpointed)

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        from debugger.capture import resolve_layer

        resolve_layer(pl_module, self.layer)

    @property
    def latest_report(self) -> Any | None:
        """The :class:`~debugger.report.ConceptReport` of the latest run (its :class:`ConceptReportFinding`)."""
        found = self.finding(ConceptReportFinding)
        return None if found is None else found.report

    def extra_state(self) -> dict[str, Any]:
        found = self.finding(ConceptReportFinding)
        return {"latest_report_path": self.latest_report_path,
                "latest_probe_indices": [] if found is None else list(found.probe_indices),
                "next_concept_id": self._tracker.next_id}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        # The finding is re-read from the concept store, so consumers see the same report after a resume.
        self.latest_report_path = state.get("latest_report_path")
        if self.latest_report_path and Path(self.latest_report_path).exists():
            from debugger.report import ConceptReport

            report = ConceptReport.load(self.latest_report_path)
            indices = tuple(int(i) for i in state.get("latest_probe_indices", []))
            epoch, step = int(report.meta.get("epoch", -1)), int(report.meta.get("global_step", -1))
            self.publish(ConceptReportFinding(epoch, step, report, indices, self.latest_report_path))
            ids = report.meta.get("concept_ids") or list(range(len(report.concepts)))
            self._tracker.restore(ids, int(state.get("next_concept_id", 0)), report.centroids, member_keys(report))

    def make_analysis(self, model: Any) -> Any:
        """The :class:`~debugger.pipeline.ConceptAnalysis` this monitor runs (configuration only)."""
        from debugger.pipeline import ConceptAnalysis

        opts: dict[str, Any] = {
            "patches": self.patches,
            "embedding": self.embedding,
            "n_concepts": self.n_concepts,
            "discovery": self.discovery,
            "top_k": self.top_k,
            "min_support": self.min_support,
            "seed": self.seed,
            "chunk_size": self.chunk_size,
        }
        opts.update(self.analysis_kwargs)
        return ConceptAnalysis(model, self.layer, **opts)

    def analyse(self, ctx: RunContext) -> dict[str, Any]:
        from debugger.embed import embed_patches

        probe = ctx.probe
        analysis = self.make_analysis(ctx.pl_module)
        report = self._discover(ctx, analysis)
        report.meta["concept_ids"] = self._tracker.update(report.centroids, member_keys(report))
        summary: dict[str, Any] = {
            "concepts": len(report.concepts),
            "failures": [f.name for f in report.failures],
        }
        self._store(ctx, report)
        self.publish(ConceptReportFinding(ctx.epoch, ctx.global_step, report, tuple(probe.indices),
                                          self.latest_report_path))

        scalars = {"count": float(len(report.concepts)), "failures": float(len(report.failures))}
        if report.ranking:
            top = report.ranking[0]
            if math.isfinite(top.lift):
                scalars["top/lift"] = top.lift
            scalars["top/error_in"] = top.error_in
        self.log_scalars(ctx, scalars)
        if ctx.writer is not None:
            ctx.writer.add_text(f"{self.tag_prefix}/summary", _numbering(report) + report.to_markdown(),
                               global_step=ctx.global_step)

        images = to_display(probe.batch.images).cpu()
        patch_correct = _patch_correctness(report)
        self._galleries(ctx, report, images, patch_correct)
        need_embeddings = self.grid is not None or (self.projector and ctx.writer is not None)
        if need_embeddings and not ctx.out_of_time():
            embeddings = embed_patches(
                ctx.pl_module, self.layer, probe.batch.images, report.patches, mode=analysis.embedding,
                **analysis.embed_kwargs,
            ).float().cpu()
            if self.grid is not None and not ctx.out_of_time():
                self._grid(ctx, report, embeddings, images, patch_correct)
            if self.projector and ctx.writer is not None and not ctx.out_of_time():
                summary["projector_points"] = self._projector(ctx, report, embeddings, images, patch_correct, probe)
        return summary

    def _discover(self, ctx: RunContext, analysis: Any) -> Any:
        """Run the analysis, with fewer concepts than ``n_concepts`` when the probe set cannot hold that many
        (said in a notice), or skip it with the cause in the user's terms."""
        from debugger.report import ConceptReport

        probe, k = ctx.probe, analysis.n_concepts
        if k is not None and len(probe) < k:
            self.notice(ctx.trainer, f"{len(probe)} probe images, need ≥ {k} for {k} concepts: discovering "
                                     f"{len(probe)} this run")
            analysis.n_concepts = k = len(probe)

        def run() -> ConceptReport:
            return analysis.run(
                _probe_batches(probe, self.chunk_size),
                class_names=self._class_names(),
                concept_names=probe.concept_names or None,
                meta={"epoch": ctx.epoch, "global_step": ctx.global_step, "probe_indices": list(probe.indices)},
            )

        try:
            return run()
        except ValueError as err:
            distinct = _DISTINCT.match(str(err))
            if distinct is not None and int(distinct.group(1)) >= 1:
                got = int(distinct.group(1))
                self.notice(ctx.trainer, f"the {len(probe)} probe images gave {got} distinct patch embeddings at "
                                         f"layer {self.layer!r}, fewer than {k} concepts: discovering {got} this run")
                analysis.n_concepts = got
                return run()
            if distinct is not None or str(err).startswith(_NO_CONCEPT):
                raise AnalysisSkipped(
                    f"no concepts in the {len(probe)} probe images at layer {self.layer!r}: their patches look "
                    "alike to the model (blank or low-contrast images?)"
                ) from err
            raise

    # -- outputs -----------------------------------------------------------------------------------------------

    def _store(self, ctx: RunContext, report: Any) -> None:
        if not ctx.is_global_zero:
            return
        text = report.to_json()  # once for both files (the same bytes as ConceptReport.save)
        path = self.write_artifact(ctx, f"reports/report-epoch{ctx.epoch:04d}-step{ctx.global_step:07d}.json", text)
        self.write_artifact(ctx, "reports/latest.json", text)
        self.latest_report_path = None if path is None else str(path)
        self.write_artifact(ctx, "reports/latest.md", report.to_markdown())
        if self.keep_last is not None and ctx.run_dir is not None:
            runs = sorted((ctx.run_dir / "reports").glob("report-epoch*.json"))  # zero-padded: oldest first
            for old in runs[: -self.keep_last]:
                if str(old) != self.latest_report_path:
                    old.unlink(missing_ok=True)

    def _galleries(self, ctx: RunContext, report: Any, images: Tensor, patch_correct: Tensor) -> None:
        from debugger.render import (
            concept_color,
            concept_gallery,
            failure_images_caption,
            gallery_caption,
            outlined_images,
            with_caption,
        )

        ids = concept_numbers(report)
        index = {c.id: i for i, c in enumerate(report.concepts)}
        for row in report.ranking[: self.max_galleries]:
            i = index[row.concept]
            number, concept = ids[i], report.concepts[i]
            name, color = concept_label(number), concept_color(number)
            mosaic = concept_gallery(
                images, report.patches, concept.scores.float(), top_k=self.gallery_size, ncols=8, size=48,
                correct=patch_correct,
            )
            caption = gallery_caption(name, row, annotated_concept(report, i))
            self.log_image(ctx, f"gallery/concept_{number:02d}", with_caption(mosaic, caption, color).float() / 255.0)
            if not row.reported or report.image_accuracy is None:
                continue
            wrong = report.image_accuracy.float().cpu() < 0.5
            top = report.top_patches[i].long().tolist() if report.top_patches.numel() else []
            seen: set[int] = set()
            picks = []
            for p in top:
                img = int(report.patches.image_index[p])
                if bool(wrong[img]) and img not in seen:
                    seen.add(img)
                    picks.append(p)
                if len(picks) == 8:
                    break
            if not picks:
                continue
            keep = torch.tensor(picks)
            examples = outlined_images(images, report.patches.image_index[keep], report.patches.boxes[keep], size=96)
            pairs = self._true_predicted(ctx, report.patches.image_index[keep].long())
            text = failure_images_caption(name, int(wrong.sum()), pairs)
            if not pairs:  # segmentation: no class per image
                text.append(f"{len(picks)} of the {int(wrong.sum())} probe images the model gets mostly wrong")
            self.log_image(ctx, f"failure_images/concept_{number:02d}",
                           with_caption(examples, text, color).float() / 255.0)

    def _true_predicted(self, ctx: RunContext, image_index: Tensor) -> list[str]:
        """``"ring → crescent"`` for each of a few probe images (classification; empty for segmentation)."""
        from debugger.capture import first_tensor, model_input

        batch = ctx.probe.batch
        targets = batch.targets[image_index.to(batch.targets.device)]
        if targets.dim() != 1:
            return []
        with torch.no_grad():
            x = model_input(ctx.pl_module, batch.images[image_index.to(batch.images.device)])
            preds = first_tensor(ctx.pl_module(x), "the model's output").argmax(1).cpu().tolist()
        names = self._class_names()

        def label(c: int) -> str:
            return names[c] if names is not None and 0 <= c < len(names) else str(c)

        return [f"{label(int(t))} → {label(p)}" for t, p in zip(targets.cpu().tolist(), preds, strict=True)]

    def _grid(self, ctx: RunContext, report: Any, embeddings: Tensor, images: Tensor, patch_correct: Tensor) -> None:
        from debugger.render import tsne_grid

        grid = self.grid if self.grid is not None else (16, 16)
        keep = select_points(len(report.patches), self.grid_points, self.seed)
        sub = report.patches.take(keep)
        coords = pca_layout(embeddings[keep]) if self.grid_layout == "pca" else None
        mosaic, _ = tsne_grid(
            embeddings[keep], images, sub, grid=grid, tile=24, correct=patch_correct[keep], coords=coords,
            seed=self.seed,
        )
        self.log_image(ctx, "grid", mosaic.float() / 255.0)

    def _projector(
        self, ctx: RunContext, report: Any, embeddings: Tensor, images: Tensor, patch_correct: Tensor, probe: ProbeSet
    ) -> int:
        from debugger.render import patch_tiles

        writer = ctx.writer
        if writer is None:
            return 0
        keep = select_points(len(report.patches), self.max_projector_points, self.seed)
        size = sprite_thumbnail_size(int(keep.numel()), self.thumbnail_size)
        thumbs = patch_tiles(images, report.patches, keep, size=size)
        scores = report.scores[:, keep]  # (C, p)
        best = scores.argmax(0) if scores.numel() else torch.zeros(keep.numel(), dtype=torch.long)
        names = [concept_label(n) for n in concept_numbers(report)]
        targets = probe.batch.targets.cpu()
        classes = self._class_names()
        overlap = report.patches.concept_overlap
        gt_names = report.patches.concept_names
        rows = []
        for j, p in enumerate(keep.tolist()):
            img = int(report.patches.image_index[p])
            t = targets[img]
            cls = str(int(t)) if t.dim() == 0 else "pixels"
            if classes and t.dim() == 0:
                cls = classes[int(t)]
            gt = "none"
            if overlap is not None and overlap.shape[1] and float(overlap[p].max()) > 0:
                gt = gt_names[int(overlap[p].argmax())] if gt_names else str(int(overlap[p].argmax()))
            concept = names[int(best[j])] if names else "none"
            right = float(patch_correct[p]) >= 0.5
            rows.append([concept, "yes" if right else "no", f"{concept} {'right' if right else 'wrong'}", cls,
                         str(img), gt])
        writer.add_embedding(
            embeddings[keep],
            metadata=rows,
            metadata_header=["concept", "correct", "concept and correct", "class", "image", "ground truth"],
            label_img=thumbs,
            global_step=ctx.global_step,
            tag=f"{self.tag_prefix}/patches {self.layer} epoch {ctx.epoch}",
        )
        if self.keep_last is not None:
            prune_projector(writer, f"{self.tag_prefix}/patches", self.keep_last)
        latest_first(writer)
        return int(keep.numel())

    def _class_names(self) -> list[str] | None:
        names = getattr(_unwrap_dataset(self._dataset), "classes", None)
        return [str(n) for n in names] if names is not None else None

    # -- for people -------------------------------------------------------------------------------------------

    def score_images(self, images: Tensor, model: Any, report: Any | None = None) -> tuple[Tensor, Tensor]:
        """Score images this monitor never analysed with the concepts of one of its runs (the latest by default).

        Patches are made and embedded at ``layer`` by ``model`` (e.g. the module as trained now, for epoch-vs-epoch
        comparisons) and scored by the k-means/NMF model the run kept in its report, so a concept found at epoch
        N can be followed on new samples later, also after a resume (the report is re-read from the concept
        store). Runs under :func:`~debugger.capture.preserve_training_mode`: training is not disturbed.

        Returns:
            Each image's best patch score per concept, and which images fall in each concept's slice, as the
            analysis made its slices (:meth:`~debugger.report.ConceptReport.slices_of`).

        Shape:
            - images: ``(N, C, H, W)``; outputs: ``(num concepts, N)`` float and bool

        Raises:
            ValueError: if there is no report yet, or the report kept no discovery model.
        """
        from debugger.pipeline import best_patch_scores

        report = report if report is not None else self.latest_report
        if report is None:
            raise ValueError("Expected a ConceptMonitor that has run (or a `report`), but got none to score with.")
        device = next(iter(model.parameters())).device
        with preserve_training_mode(model, enable_grad=True, fork_rng=True):
            patches, scores = self.make_analysis(model).score(report, images.to(device))
        best = best_patch_scores(scores, patches.image_index, int(images.shape[0]))
        return best, report.slices_of(scores, patches.image_index, int(images.shape[0]))


def prune_projector(writer: Any, tag: str, keep_last: int) -> list[str]:
    """Delete all but the last ``keep_last`` projector embeddings of ``tag`` that ``writer`` (a torch
    ``SummaryWriter``) wrote, folders and ``projector_config.pbtxt`` entries alike; returns the deleted folders.

    The writer rewrites the config from its own list after every ``add_embedding``, so the entries are dropped
    there too. A writer that kept no such list (another implementation) is left alone.
    """
    import shutil

    from google.protobuf import text_format

    config = getattr(writer, "_projector_config", None)
    if config is None or not hasattr(writer, "get_logdir"):
        return []
    logdir = Path(writer.get_logdir())
    mine = [e for e in config.embeddings if _projector_tag(e.tensor_name) in (tag,) or
            _projector_tag(e.tensor_name).startswith(tag + " ")]
    old = mine[: max(0, len(mine) - keep_last)]
    if not old:
        return []
    gone = {e.tensor_name for e in old}
    kept = [e for e in config.embeddings if e.tensor_name not in gone]
    del config.embeddings[:]
    config.embeddings.extend(kept)
    atomic_write(logdir / "projector_config.pbtxt", text_format.MessageToString(config))
    deleted = []
    for e in old:
        folder = logdir / Path(e.tensor_path).parent
        if folder.is_dir() and logdir in folder.parents:
            shutil.rmtree(folder, ignore_errors=True)
            deleted.append(str(folder))
            if folder.parent != logdir and folder.parent.is_dir() and not any(folder.parent.iterdir()):
                folder.parent.rmdir()  # the step folder holds nothing else
    return deleted


def _projector_tag(tensor_name: str) -> str:
    return tensor_name.rsplit(":", 1)[0]


LATEST = "(latest) "


def latest_first(writer: Any) -> None:
    """Mark the projector's newest embedding ``(latest)`` and list it first, so TensorBoard's projector opens on it.

    The projector opens on the first tensor of its own order (tensors with metadata first, then more points first,
    then by name), not on the config's first entry: ``concepts/patches (latest) layer2 epoch 3`` sorts before
    ``concepts/patches layer2 epoch 2`` among tensors of as many points. The mark moves on at every run (the
    writer's list is changed too, as it rewrites the config from it). A writer that kept no list is left alone.
    """
    from google.protobuf import text_format

    config = getattr(writer, "_projector_config", None)
    if config is None or not hasattr(writer, "get_logdir") or not config.embeddings:
        return

    def step(e: Any) -> int:
        tail = e.tensor_name.rsplit(":", 1)[-1]
        return int(tail) if tail.isdigit() else -1

    ordered = sorted(config.embeddings, key=step, reverse=True)
    copies = [type(e)() for e in ordered]
    for c, e in zip(copies, ordered, strict=True):
        c.CopyFrom(e)
        c.tensor_name = c.tensor_name.replace(LATEST, "")
    head, _, rest = copies[0].tensor_name.partition(" ")
    copies[0].tensor_name = f"{head} {LATEST}{rest}" if rest else f"{LATEST}{head}"
    del config.embeddings[:]
    config.embeddings.extend(copies)
    atomic_write(Path(writer.get_logdir()) / "projector_config.pbtxt", text_format.MessageToString(config))


def concept_numbers(report: Any) -> list[int]:
    """The lasting number of each concept of a report (``meta["concept_ids"]``, set by :class:`ConceptMonitor`),
    or its position for reports without them."""
    ids = report.meta.get("concept_ids")
    if ids is None or len(ids) != len(report.concepts):
        return list(range(len(report.concepts)))
    return [int(i) for i in ids]


def concept_label(number: int) -> str:
    """How a concept with a lasting number is named in TensorBoard.

    Example:
        >>> concept_label(7)
        'concept 07'
    """
    return f"concept {number:02d}"


def annotated_concept(report: Any, index: int, least: float = 0.5) -> str | None:
    """The annotated concept most of a concept's top patches show (``"shadow 80%"``), or None without
    annotations or when no annotated concept reaches ``least`` of them."""
    precision = report.ground_truth_precision
    names = report.patches.concept_names
    if precision is None or precision.numel() == 0 or not names:
        return None
    row = precision[index].float()
    best = int(row.argmax())
    value = float(row[best])
    return f"{names[best]} {100 * value:.0f}%" if value >= least else None


def _numbering(report: Any) -> str:
    numbers = concept_numbers(report)
    pairs = ", ".join(f"{c.name} = {concept_label(n)}" for c, n in zip(report.concepts, numbers, strict=True))
    return f"Lasting concept numbers (galleries, projector): {pairs}.\n\n"


def _probe_batches(probe: ProbeSet, size: int) -> list[dict[str, Tensor]]:
    out = []
    for _, b in probe.chunks(size):
        d = {"image": b.images, "target": b.targets}
        if b.concepts is not None:
            d["concepts"] = b.concepts
        if b.concept_masks is not None:
            d["concept_masks"] = b.concept_masks
        out.append(d)
    return out


def _patch_correctness(report: Any) -> Tensor:
    """Per patch: 1 when the model is right on its image (pixel accuracy for segmentation)."""
    acc = report.image_accuracy
    if acc is None:
        return torch.ones(len(report.patches))
    return acc.float().cpu()[report.patches.image_index.cpu()]
