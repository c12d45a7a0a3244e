"""TCAVMonitor: how much each annotated concept drives each class, per layer, as training goes on.

Each run trains fresh CAVs on the current weights (:class:`debugger.tcav.TCAV`): a concept's examples are the
windows of the probe images that its ground-truth mask covers (planted data carries ``concept_masks``), the
random pool is every window (:func:`debugger.tcav.concept_windows`). The TCAV score of a class is the fraction
of its probe images (or, for segmentation, of its sampled pixels, seed 000 §7.2) whose class logit rises along
the CAV; ``num_runs`` concept-vs-random CAVs against as many random-vs-random ones give a two-sided t-test p-value
(``test="runs"``, the paper's; ``test="concepts"`` tests against random example sets instead, see
``docs/tcav.md`` for why).

TensorBoard (``tcav/`` tags, one entry per run each): scalars ``score/<layer>/<concept>/<class>`` (mean over the
runs), ``p_value/<layer>/<concept>/<class>`` (adjusted when ``correction`` is set) and ``significant/<layer>``
(how many concept-class pairs are significant), and a text table ``table``. Every run's full result (per-run
scores, random baselines, CAV accuracies) is appended to ``tcav.json`` in the run directory, and published to the
callbacks after this one as a :class:`~callbacks.findings.TCAVFinding`.

The analysis runs on global rank zero only (no collective inside); its cost grows with layers × (concepts + 1)
× ``num_runs`` classifier fits plus one backward per probe chunk and layer (per pixel slot for segmentation).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from callbacks._base import Monitor
from callbacks._probe import RunContext, _unwrap_dataset
from callbacks.findings import TCAVFinding
from debugger.tcav import check_tcav_options


class TCAVMonitor(Monitor):
    """Logs TCAV scores and their significance for the probe set's annotated concepts.

    Args:
        layers: one dotted module name (from ``named_modules()``) or several; a CAV is trained per layer.
        concepts: names of the annotated concepts to test (default: all the probe set has).
        classes: class indices to score (default: every class present in the probe targets).
        num_runs: concept-vs-random (and random-vs-random) CAVs per concept and layer; ≥ 10 for the paper's
            test.
        window_sizes: window sides in pixels for concept and random examples (default: a quarter and a half of
            the probe images' shorter side).
        min_overlap: share of a window its concept's mask must cover for the window to be an example.
        pixels_per_class: pixel samples per class and image (segmentation); each of the ``pixels_per_class ×
            classes`` slots costs one backward pass per probe chunk and layer.
        correction: family-wise adjustment of one run's p-values: ``"none"``, ``"bonferroni"`` or ``"holm"``.
        significance: level below which an (adjusted) p-value counts as significant.
        test: ``"runs"`` (the paper's t-test over runs) or ``"concepts"`` (against ``null_concepts`` random example
            sets; calibrated, costs ``null_concepts × num_runs`` more CAVs per concept size), see
            :class:`debugger.tcav.TCAV`.
        null_concepts: random example sets for ``test="concepts"``.
        classifier: the CAV classifier, ``"sgd"`` or ``"logistic"`` (see :class:`debugger.tcav.CAV`).
        max_examples: cap on the examples per concept set.
        ignore_index: target value that is no class (segmentation "void"); its pixels are never sampled.
        **kwargs: scheduling, probe and budget options of :class:`callbacks._base.Monitor`.

    Example:
        >>> TCAVMonitor("layer2", every_n_epochs=2, num_runs=10).state_key
        "TCAVMonitor{'name': None, 'every_n_epochs': 2, 'every_n_train_steps': None}"
    """

    tag_root = "tcav"
    publishes = (TCAVFinding,)

    def __init__(
        self,
        layers: str | Sequence[str],
        concepts: Sequence[str] | None = None,
        classes: Sequence[int] | None = None,
        num_runs: int = 10,
        window_sizes: Sequence[int] | None = None,
        min_overlap: float = 0.5,
        pixels_per_class: int = 4,
        correction: str = "none",
        significance: float = 0.05,
        test: str = "runs",
        null_concepts: int = 10,
        classifier: str = "sgd",
        max_examples: int = 200,
        ignore_index: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        names = check_tcav_options(layers=layers, runs=num_runs, runs_name="num_runs", max_examples=max_examples,
                                   correction=correction, significance=significance, test=test,
                                   null_concepts=null_concepts)
        if concepts is not None and (isinstance(concepts, str) or not all(isinstance(c, str) for c in concepts)):
            raise ValueError(f"Expected `concepts` to be a list of concept names or None, but got {concepts!r}.")
        if classes is not None and (not classes or not all(isinstance(c, int) and c >= 0 for c in classes)):
            raise ValueError(f"Expected `classes` to be non-negative class indices or None, but got {classes!r}.")
        if window_sizes is not None and (not window_sizes or not all(isinstance(s, int) and s > 0
                                                                     for s in window_sizes)):
            raise ValueError(f"Expected `window_sizes` to be positive integers or None, but got {window_sizes!r}.")
        if not 0.0 < min_overlap <= 1.0:
            raise ValueError(f"Expected `min_overlap` to be in (0, 1], but got {min_overlap!r}.")
        if not isinstance(pixels_per_class, int) or pixels_per_class < 1:
            raise ValueError(f"Expected `pixels_per_class` to be a positive integer, but got {pixels_per_class!r}.")
        if classifier not in ("sgd", "logistic"):
            raise ValueError(f"Expected `classifier` to be one of ('sgd', 'logistic'), but got {classifier!r}.")
        self.layers = names
        self.concepts = None if concepts is None else list(concepts)
        self.classes = None if classes is None else list(classes)
        self.num_runs = num_runs
        self.window_sizes = None if window_sizes is None else list(window_sizes)
        self.min_overlap = min_overlap
        self.pixels_per_class = pixels_per_class
        self.correction = correction
        self.significance = significance
        self.test = test
        self.null_concepts = null_concepts
        self.classifier = classifier
        self.max_examples = max_examples
        self.ignore_index = ignore_index
        self._warned_no_masks = False

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        from debugger.capture import resolve_layer

        for layer in self.layers:
            resolve_layer(pl_module, layer)  # fail at setup with the nearest names, not mid-training
        known = tuple(getattr(_unwrap_dataset(self._dataset), "concept_names", ()) or ())
        unknown = sorted(set(self.concepts or ()) - set(known))
        if known and unknown:
            raise ValueError(f"Expected `concepts` among the dataset's {list(known)!r}, but got {unknown!r}.")

    # -- the run -----------------------------------------------------------------------------------------------

    def analyse(self, ctx: RunContext) -> dict[str, Any]:
        from debugger.tcav import TCAV, concept_windows, sample_pixels

        batch = ctx.probe.batch
        if batch.concept_masks is None:
            if not self._warned_no_masks:
                self._warned_no_masks = True
                warnings.warn(
                    "TCAVMonitor needs probe samples with `concept_masks` (e.g. the planted-concept data) to build "
                    "concept sets; this probe set has none, so it logs nothing.",
                    stacklevel=2,
                )
            return {"skipped": "no concept masks"}
        images = batch.images
        masks = batch.concept_masks.bool()
        k = masks.shape[1]
        all_names = list(ctx.probe.concept_names) if len(ctx.probe.concept_names) == k else [
            f"concept-{i}" for i in range(k)]
        wanted = all_names if self.concepts is None else self.concepts
        unknown = sorted(set(wanted) - set(all_names))
        if unknown:
            raise ValueError(f"Expected `concepts` among the probe set's {all_names!r}, but got {unknown!r}.")
        h, w = images.shape[-2:]
        sizes = self.window_sizes or sorted({max(2, min(h, w) // 4), max(2, min(h, w) // 2)})
        concept_sets, random = concept_windows(images, masks, all_names, sizes, self.min_overlap)
        usable = {n: concept_sets[n] for n in wanted if len(concept_sets[n]) >= 2}
        skipped = [n for n in wanted if n not in usable]
        if not usable or len(random) < 4:
            few = [f"{n!r} {len(concept_sets[n])}" for n in skipped]
            self.notice(ctx.trainer, f"too few examples to train CAVs on {len(ctx.probe)} probe images (windows per "
                                     f"concept: {', '.join(few) or 'enough'}, need ≥ 2; random windows: "
                                     f"{len(random)}, need ≥ 4); no TCAV this run")
            return {"skipped": "too few concept examples", "concepts_skipped": skipped}
        if skipped:
            self.notice(ctx.trainer, f"concepts {skipped!r} have fewer than 2 example windows in the "
                                     f"{len(ctx.probe)} probe images; scored without them")

        segmentation = batch.targets.dim() == 3
        pixels = None
        if segmentation:
            present = batch.targets.unique().tolist()
            classes = self.classes or sorted(int(c) for c in present if c >= 0 and c != self.ignore_index)
            g = torch.Generator().manual_seed(self.seed)
            pixels, targets = sample_pixels(batch.targets.cpu(), self.pixels_per_class, classes, g)
            pixels, targets = pixels.to(images.device), targets.to(images.device)
        else:
            targets = batch.targets
            classes = self.classes or sorted(int(c) for c in targets.unique().tolist())
        tcav = TCAV(
            ctx.pl_module, self.layers, runs=self.num_runs, classifier=self.classifier, max_examples=self.max_examples,
            correction=self.correction,  # type: ignore[arg-type]
            test=self.test, null_concepts=self.null_concepts,  # type: ignore[arg-type]
            significance=self.significance, batch_size=self.chunk_size, random_state=self.seed,
        )
        # Past the time budget no further layer starts; the base class then shrinks the next run's probe set.
        result = tcav.interpret(images, targets, usable, random, pixels=pixels, classes=classes,
                                deadline=ctx.deadline)

        class_names = self._class_names()
        label = {c: (class_names[c] if class_names and c < len(class_names) else f"class_{c}") for c in classes}
        scalars: dict[str, float] = {}
        for row in result.rows():
            key = f"{row['layer']}/{row['concept']}/{label[row['class']]}"
            if row["score"] is not None:
                scalars[f"score/{key}"] = row["score"]
            if row["p_adjusted"] is not None:
                scalars[f"p_value/{key}"] = row["p_adjusted"]
        for li, layer in enumerate(result.layers):
            scalars[f"significant/{layer}"] = float(result.significant[li].sum())
        self.log_scalars(ctx, scalars)
        if ctx.writer is not None:
            table = _markdown(result.rows(), label)
            ctx.writer.add_text(f"{self.tag_prefix}/table", table, global_step=ctx.global_step)

        record = {"epoch": ctx.epoch, "step": ctx.global_step, "probe": len(ctx.probe), "concepts_skipped": skipped,
                  "class_names": {str(c): label[c] for c in classes}, **result.to_dict()}
        history = self._history(ctx)
        history.append(record)
        path = self.write_artifact(ctx, "tcav.json", history)
        self.publish(TCAVFinding(ctx.epoch, ctx.global_step, result, dict(label), tuple(skipped)))
        significant = [f"{r['layer']}/{r['concept']}/{label[r['class']]}" for r in result.rows() if r["significant"]]
        return {"tcav_tests": len(result.rows()), "significant": len(significant),
                "artifact": None if path is None else str(path),
                "layers_done": len(result.layers)}

    def _class_names(self) -> list[str] | None:
        names = getattr(_unwrap_dataset(self._dataset), "classes", None)
        return [str(n) for n in names] if names is not None else None

    def _history(self, ctx: RunContext) -> list[dict[str, Any]]:
        if ctx.run_dir is None:  # nothing is written, so there is no earlier history to extend
            return []
        path = ctx.run_dir / "tcav.json"
        if not path.exists():
            return []
        try:
            data = json.loads(path.read_text())
        except ValueError:
            return []
        return data if isinstance(data, list) else []


def _markdown(rows: Sequence[dict[str, Any]], label: dict[int, str]) -> str:
    out = ["| layer | concept | class | TCAV | random | p | significant |", "|---" * 7 + "|"]
    for r in rows:
        score = "n/a" if r["score"] is None else f"{r['score']:.2f} ± {r['score_std']:.2f}"
        rand = "n/a" if r["random_score"] is None else f"{r['random_score']:.2f}"
        p = "n/a" if r["p_adjusted"] is None else f"{r['p_adjusted']:.3g}"
        out.append(f"| {r['layer']} | {r['concept']} | {label[r['class']]} | {score} | {rand} | {p} | "
                   f"{'**yes**' if r['significant'] else 'no'} |")
    return "\n".join(out)
