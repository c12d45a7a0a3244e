"""ConfusionMonitor: concept-conditioned confusion, failure ranking and their change over training.

Each run predicts the probe set, restricts the confusion matrix to each concept's slice (ConceptExtract, seed
000 §5.3) and ranks concepts by how much more often the model fails inside their slice than outside
(:func:`debugger.ranking.rank_failures`). Slices come from the probe set's concept annotations (images where
the concept is present; its mask pixels for segmentation), from the latest concept report of a
:class:`~callbacks.concept_monitor.ConceptMonitor` on the same trainer (the images or pixels of each discovered
concept's top patches), or both. A ``clean`` slice holds the images without any annotated concept.

Under DDP every rank predicts a shard of the probe set; the counts are a torchmetrics ``Metric``
(:class:`debugger.confusion.ConceptConfusion`) synced on ``compute``, and the per-sample predictions the ranking
needs are gathered by a second ``Metric``, so every rank takes part in the same collectives and the counts equal
a single process's.

TensorBoard (``confusion/`` tags, one entry per run each): ``matrix/<slice>`` (row-normalised matrix of the
``max_matrix_slices`` worst-ranked slices), ``diff/<slice>`` (change since the previous run: blue = better,
red = more confusion), each class's samples (``n=``) beside its row, rows without samples grey and rows of
fewer than 5 marked "few"; scalars ``accuracy/<slice>`` (classification) or ``iou/<slice>`` (segmentation mean
IoU), ``lift/<slice>`` and ``accuracy_change/<slice>``, and a text table ``failure_ranking``. Every run's counts
and ranking are also appended to ``ranking.json`` in the run directory.

Discovered concepts (``source="discovered"`` slices) enter the ranking and the JSON only (their names change
with every discovery, which would make a new tag per run); they are ranked against the images the ConceptMonitor
analysed. They come from the :class:`~callbacks.findings.ConceptReportFinding` of a ConceptMonitor placed before
this callback (``setup()`` fails when it is missing with ``source="discovered"``, or comes after this callback).
Each run publishes a :class:`~callbacks.findings.SliceConfusion` (counts, overall counts, ranking, and each
slice's source) for the callbacks after it, e.g. :class:`~callbacks.FailureDrivenAugmentation`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torchmetrics import Metric

from callbacks._base import Monitor
from callbacks._probe import ProbeSet, RunContext
from callbacks.findings import ConceptReportFinding, Need, SliceConfusion, SliceSource
from debugger.capture import first_tensor, model_input
from debugger.failures import annotated_membership, slice_quality

Source = Literal["annotated", "discovered", "both"]
_SOURCES = ("annotated", "discovered", "both")


class ProbePredictions(Metric):
    """Predictions of a sharded probe set, gathered in probe order across processes on ``compute``.

    Shape:
        - update: positions ``(n,)`` int64 in the full probe set, preds ``(n,)`` or ``(n, H, W)``
        - compute: ``(N,)`` or ``(N, H, W)`` sorted by position

    Example:
        >>> m = ProbePredictions()
        >>> m.update(torch.tensor([1, 0]), torch.tensor([7, 5]))
        >>> m.compute().tolist()
        [5, 7]
    """

    full_state_update = False
    positions: list[Tensor]
    preds: list[Tensor]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("positions", default=[], dist_reduce_fx="cat")
        self.add_state("preds", default=[], dist_reduce_fx="cat")

    def update(self, positions: Tensor, preds: Tensor) -> None:
        self.positions.append(positions.long())
        self.preds.append(preds.long())

    def compute(self) -> Tensor:
        pos = torch.cat(self.positions) if isinstance(self.positions, list) else self.positions
        preds = torch.cat(self.preds) if isinstance(self.preds, list) else self.preds
        return preds[torch.argsort(pos)]


class ConfusionMonitor(Monitor):
    """Concept-conditioned confusion matrices, slice accuracy/IoU and lift, failure ranking, epoch-vs-epoch diffs.

    Args:
        source: where slices come from: probe annotations, the latest ConceptMonitor report, or both.
        top_k: top patches per discovered concept that define its slice.
        min_support: probe images a slice needs for a failure verdict (see :func:`debugger.ranking.rank_failures`).
        ignore_index: target value not counted (segmentation "void").
        max_matrix_slices: most slices drawn as ``matrix``/``diff`` images (worst-ranked first).
        **kwargs: scheduling, probe and budget options of :class:`callbacks._base.Monitor`.

    Example:
        >>> ConfusionMonitor(every_n_epochs=1, probe_size=128).sharded
        True
    """

    tag_root = "confusion"
    sharded = True
    publishes = (SliceConfusion,)

    def __init__(
        self,
        source: Source = "both",
        top_k: int = 50,
        min_support: int = 5,
        ignore_index: int | None = None,
        max_matrix_slices: int = 12,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("probe_size", 128)
        super().__init__(**kwargs)
        if source not in _SOURCES:
            raise ValueError(f"Expected `source` to be one of {_SOURCES!r}, but got {source!r}.")
        if not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"Expected `top_k` to be a positive integer, but got {top_k!r}.")
        if not isinstance(min_support, int) or min_support < 0:
            raise ValueError(f"Expected `min_support` to be a non-negative integer, but got {min_support!r}.")
        if not isinstance(max_matrix_slices, int) or max_matrix_slices < 1:
            raise ValueError(f"Expected `max_matrix_slices` to be a positive integer, but got {max_matrix_slices!r}.")
        self.source = source
        self.top_k = top_k
        self.min_support = min_support
        self.ignore_index = ignore_index
        self.max_matrix_slices = max_matrix_slices
        self._previous: dict[str, Tensor] = {}  # annotated slice name -> confusion counts of the previous run

    def needs(self) -> tuple[Need, ...]:
        if self.source == "annotated":
            return ()
        return (Need(ConceptReportFinding, required=self.source == "discovered"),)

    def extra_state(self) -> dict[str, Any]:
        return {"previous": {k: v.tolist() for k, v in self._previous.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self._previous = {k: torch.tensor(v, dtype=torch.long) for k, v in state.get("previous", {}).items()}

    # -- slices ------------------------------------------------------------------------------------------------

    def slices(self, ctx: RunContext, num_images: int, segmentation: bool
               ) -> tuple[list[str], list[SliceSource], Tensor | None, Tensor]:
        """Names, sources, membership ``(C, N[, H, W])`` over the full (unsharded) probe set, and which of its
        ``N`` images count for each slice's ranking, ``(C, N)`` (discovered concepts only know the ConceptMonitor's
        images)."""
        names: list[str] = []
        sources: list[SliceSource] = []
        parts: list[Tensor] = []
        counted: list[Tensor] = []
        full = self.probe(ctx.pl_module.device)
        if full is None:
            return [], [], None, torch.zeros(0, 0, dtype=torch.bool)
        full = full.take(num_images)
        device = ctx.pl_module.device
        if self.source in ("annotated", "both"):
            m = annotated_membership(full.batch.concepts, full.batch.concept_masks, segmentation)
            if m is not None:
                k = m.shape[0] - 1
                given = list(full.concept_names) if len(full.concept_names) == k else [f"concept-{i}" for i in range(k)]
                names += given + ["clean"]
                sources += ["annotated"] * (k + 1)
                parts.append(m.to(device))
                counted.append(torch.ones(k + 1, num_images, dtype=torch.bool, device=device))
        if self.source in ("discovered", "both"):
            found = self._discovered(full) if ctx.is_global_zero else None
            if ctx.world_size > 1:  # ConceptMonitor runs on rank zero: every rank must count the same slices
                found = ctx.trainer.strategy.broadcast(found, src=0)
            if found is not None:
                names += found[0]
                sources += ["discovered"] * len(found[0])
                parts.append(found[1].to(device))
                counted.append(found[2].to(device).unsqueeze(0).expand(len(found[0]), -1))
        if not parts:
            return [], [], None, torch.zeros(0, num_images, dtype=torch.bool)
        if segmentation and any(p.dim() == 2 for p in parts) and any(p.dim() == 4 for p in parts):
            h, w = full.batch.images.shape[-2:]
            parts = [p if p.dim() == 4 else p.view(*p.shape, 1, 1).expand(-1, -1, h, w) for p in parts]
        return names, sources, torch.cat(parts), torch.cat(counted)

    def _discovered(self, full: ProbeSet) -> tuple[list[str], Tensor, Tensor] | None:
        """The latest concept report's slices on this probe set, and which images it covers, if there is one."""
        found = self.read(ConceptReportFinding)
        return None if found is None else found.slices(full.indices)

    # -- the run -----------------------------------------------------------------------------------------------

    def analyse(self, ctx: RunContext) -> dict[str, Any]:
        from debugger.confusion import ConceptConfusion, confusion_difference

        device = ctx.pl_module.device
        # positions of this rank's shard within the (possibly subsampled) full probe set
        n_total = ctx.full_size
        positions = torch.arange(ctx.rank, n_total, ctx.world_size, device=device)
        segmentation = ctx.probe.batch.targets.dim() == 3
        names, sources, membership, counted = self.slices(ctx, n_total, segmentation)

        preds_metric = ProbePredictions().to(device)
        confusion: Metric | None = None
        num_classes = None
        for offset, batch in ctx.probe.chunks(self.chunk_size):
            logits = first_tensor(ctx.pl_module(model_input(ctx.pl_module, batch.images)), "the model's output")
            num_classes = int(logits.shape[1])
            pred = logits.argmax(1)
            pos = positions[offset : offset + batch.images.shape[0]]
            preds_metric.update(pos, pred)
            if membership is not None:
                if confusion is None:
                    confusion = ConceptConfusion(len(names), num_classes, ignore_index=self.ignore_index).to(device)
                confusion.update(pred, batch.targets, membership[:, pos])
        # Every rank reaches both compute() calls (the collectives) even with an empty shard.
        if num_classes is None:
            num_classes = self._num_classes(ctx)
            pred_shape = (0, *ctx.probe.batch.targets.shape[1:])
            preds_metric.update(positions[:0], torch.zeros(pred_shape, dtype=torch.long, device=device))
        if membership is not None and confusion is None:
            confusion = ConceptConfusion(len(names), num_classes, ignore_index=self.ignore_index).to(device)
        preds = preds_metric.compute()
        counts = confusion.compute() if confusion is not None else None
        if not ctx.is_global_zero:
            return {"slices": len(names)}

        full = self.probe(device)
        targets = full.batch.targets[:n_total] if full is not None else ctx.probe.batch.targets
        valid = None if self.ignore_index is None else targets != self.ignore_index
        errors = preds != targets
        scalars: dict[str, float] = {}
        correct = ~errors if valid is None else ~errors & valid
        total = errors.numel() if valid is None else int(valid.sum())
        scalars["accuracy/all" if not segmentation else "pixel_accuracy/all"] = float(correct.sum()) / max(1, total)
        if counts is None or membership is None:
            self.log_scalars(ctx, scalars)
            return {"slices": 0}

        quality = slice_quality(counts, segmentation)
        ranking = self._rank(errors, membership, names, valid, counted)
        lift = {r.concept: r.lift for r in ranking}
        key = "iou" if segmentation else "accuracy"
        # Discovered concepts change with every ConceptMonitor run: ranking, JSON and finding only, no tags.
        annotated = [i for i, src in enumerate(sources) if src == "annotated"]
        for i in annotated:
            q = float(quality[i])
            if not math.isnan(q):
                scalars[f"{key}/{names[i]}"] = q
            if i in lift and math.isfinite(lift[i]):
                scalars[f"lift/{names[i]}"] = lift[i]
        diffs: dict[str, Tensor] = {}
        for i in annotated:
            prev = self._previous.get(names[i])
            if prev is not None and prev.shape == counts[i].shape:
                diffs[names[i]] = confusion_difference(prev.to(counts.device), counts[i])
                before = slice_quality(prev.unsqueeze(0), segmentation)[0]
                change = float(quality[i] - before)
                if math.isfinite(change):
                    scalars[f"{key}_change/{names[i]}"] = change
        self.log_scalars(ctx, scalars)

        order = [r.concept for r in ranking if sources[r.concept] == "annotated"][: self.max_matrix_slices]
        classes = self._class_names(num_classes)
        for i in order:
            self.log_image(ctx, f"matrix/{names[i]}", _heatmap(counts[i], classes, names[i], key, float(quality[i])))
            if names[i] in diffs:
                self.log_image(ctx, f"diff/{names[i]}", _heatmap(diffs[names[i]], classes, names[i], "diff", None,
                                                                 counts[i].sum(-1).cpu()))
        table = _ranking_markdown(ranking, sources)
        if ctx.writer is not None:
            ctx.writer.add_text(f"{self.tag_prefix}/failure_ranking", table, global_step=ctx.global_step)

        from debugger.confusion import concept_confusion

        everything = torch.ones(1, n_total, dtype=torch.bool, device=device)
        overall_counts = concept_confusion(preds, targets, everything, num_classes, self.ignore_index)[0]
        history = self._history(ctx)
        history.append({
            "epoch": ctx.epoch,
            "step": ctx.global_step,
            "names": names,
            "sources": sources,
            "overall": overall_counts,
            "num_classes": num_classes,
            "quality": quality,
            "quality_kind": key,
            "ranking": [r.to_dict() for r in ranking],
            "diff_names": sorted(diffs),
            "counts": counts,
        })
        self.write_artifact(ctx, "ranking.json", history)
        self.publish(SliceConfusion(ctx.epoch, ctx.global_step, tuple(names), tuple(sources), counts.detach().cpu(),
                                    overall_counts.detach().cpu(), tuple(ranking)))
        self._previous = {names[i]: counts[i].detach().cpu() for i in annotated}
        failures = [r.name for r in ranking if r.is_failure]
        return {"slices": len(names), "failures": failures}

    def _rank(self, errors: Tensor, membership: Tensor, names: list[str], valid: Tensor | None, counted: Tensor
              ) -> list[Any]:
        """Failure ranking; slices that only know part of the probe set are ranked against that part alone."""
        from debugger.ranking import rank_failures

        groups: dict[bytes, list[int]] = {}
        for i in range(len(names)):
            groups.setdefault(bytes(counted[i].cpu().numpy().tobytes()), []).append(i)
        rows = []
        for idx in groups.values():
            images = counted[idx[0]]
            unit = images.view(-1, *([1] * (errors.dim() - 1))).expand_as(errors)
            v = unit if valid is None else unit & valid
            rows += rank_failures(errors, membership[idx], names=[names[i] for i in idx], ids=idx, valid=v,
                                  min_support=self.min_support)
        if len(groups) == 1:
            return rows
        rows.sort(key=lambda r: (not r.is_failure, -_finite(r.lift_low), -_finite(r.lift)))
        return [dataclasses.replace(r, rank=rank) for rank, r in enumerate(rows, start=1)]

    def _class_names(self, num_classes: int) -> list[str] | None:
        from callbacks._probe import _unwrap_dataset

        names = getattr(_unwrap_dataset(self._dataset), "classes", None)
        if names is not None and len(names) == num_classes:
            return [str(n) for n in names]
        return None

    @staticmethod
    def _num_classes(ctx: RunContext) -> int:
        x = ctx.probe.batch.images
        probe_shape = (1, *x.shape[1:])
        with torch.no_grad():
            out = ctx.pl_module(model_input(ctx.pl_module, torch.zeros(probe_shape, device=x.device)))
            return int(first_tensor(out, "the model's output").shape[1])

    def _history(self, ctx: RunContext) -> list[dict[str, Any]]:
        import json

        if ctx.run_dir is None:  # nothing is written, so there is no earlier history to extend
            return []
        path = ctx.run_dir / "ranking.json"
        if path.exists():
            try:
                data = json.loads(path.read_text())
                return data if isinstance(data, list) else []
            except ValueError:
                return []
        return []


def _finite(x: float) -> float:
    return x if math.isfinite(x) else -math.inf


def _ranking_markdown(ranking: Sequence[Any], sources: Sequence[SliceSource]) -> str:
    rows = ["| rank | slice | source | failure | support | error in | error out | lift (95% CI) | p (adj.) |",
            "|---" * 9 + "|"]
    for r in ranking:
        rows.append(
            f"| {r.rank} | {r.name} | {sources[r.concept]} | {'**yes**' if r.is_failure else 'no'} | {r.support} | "
            f"{r.error_in:.3f} | {r.error_out:.3f} | {r.lift:.2f} ({r.lift_low:.2f}–{r.lift_high:.2f}) | "
            f"{r.p_adjusted:.3g} |"
        )
    return "\n".join(rows)


def _heatmap(matrix: Tensor, classes: Sequence[str] | None, name: str, kind: str, quality: float | None,
             counts: Tensor | None = None) -> Tensor:
    """One slice's row-normalised confusion matrix (samples per row beside the class, empty rows grey), or its
    change since the previous run (blue = better, red = worse; ``counts`` are this run's samples per row), as a
    ``(3, H, W)`` image."""
    from debugger.confusion import normalize_confusion
    from debugger.render import confusion_heatmap, figure_to_array

    if kind == "diff":
        fig = confusion_heatmap(matrix.float().cpu(), classes, title=f"{name}: change since last run", change=True,
                                row_counts=counts)
    else:
        support = int(matrix.sum())
        q = "" if quality is None or math.isnan(quality) else f", {kind} {quality:.2f}"
        fig = confusion_heatmap(normalize_confusion(matrix.cpu(), "true"), classes, row_counts=matrix.sum(1),
                                title=f"{name} (n={support}{q}); % of each row")
    return figure_to_array(fig).float() / 255.0
