"""The whole loop: train (unless the model is given trained) → diagnose → derive the policy → fine-tune (and, as a
control, fine-tune without augmentation on the same budget) → diagnose again, with every step's result in the run
directory and reused on resume."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
from torch import nn

from augment import AugmentationPolicy
from debugger.fingerprint import model_fingerprint
from debugger.matching import MatchResult
from debugger.probes import detectable_rate, probe_coverage
from debugger.report import ConceptReport
from recipes.baseline import slice_metrics
from recipes.data.base import ContractDataModule
from recipes.loop.checks import check_data, check_layer, default_layer
from recipes.loop.diagnosis import (
    Diagnosis,
    diagnose_once,
    diagnosis_markdown,
    probe_folder,
    probe_images,
    probe_loader,
)
from recipes.loop.finetuning import finetune
from recipes.loop.policy import loop_policies, matched_policies
from recipes.loop.run import LoopError, RunDirectory
from recipes.loop.tables import format_before_after
from recipes.loop.training import monitors, train

# the prevalence the console checks the probe set against: a failure in this share of deployment images
RARE_FAILURE = 0.03


@dataclass
class LoopConfig:
    """The options of :func:`run_loop`.

    Args:
        epochs: training epochs (skipped when ``pretrained``).
        finetune_epochs: fine-tuning epochs.
        layer: dotted name of the layer the concepts are read from; None: :func:`~recipes.loop.checks.default_layer`.
        callbacks: the callbacks while training; None: :func:`~recipes.loop.training.monitors` at ``layer``.
        finetune_lr: the fine-tuning learning rate; None keeps the model's.
        augmentations: with ``policy="annotations"``: ground-truth concept → transform name; None:
            ``shadow → SyntheticShadow``, ``occluder → Cutout``.
        transforms: transform name → module, added to :func:`~recipes.loop.finetuning.loop_transforms`.
        fallback: the transform for failure concepts that match no transform (no match: no policy when None).
        max_p: probability for a class that fails only inside the concept's slice.
        base_p: probability for every other sample.
        probe_size: probe images diagnosed.
        n_concepts: concepts to discover (None: chosen by silhouette).
        seed: seeds data order, analysis and training.
        progress: Lightning progress bars.
        pretrained: the model is trained already: no training stage.
        calibrate: with ``policy="annotations"``, set the shadow transform's strength from the darkening measured
            in the failing slice.
        policy: ``"match"``: each discovered failure concept chooses its transform from the catalogue
            (:func:`~recipes.loop.policy.matched_policies`, no labels needed); ``"annotations"``: the ground-truth
            concept it shows does (:func:`~recipes.loop.policy.loop_policies`).
        bind: discovered concept → transform, chosen by a person (``{"cluster-6": "shadow-line"}``); overrides the
            match.
        control: ``"no_aug"``: also fine-tune a copy of the model without augmentation on the same budget, shown
            beside the policy's in the table; None: no control arm.
        probe_root: a labelled folder of deployment images (``root/<class>/<image>``) diagnosed instead of the
            validation split.
        report: a ``report.json`` of ``conceptfix diagnose`` on this model: its concepts are used instead of a new
            diagnosis (probe set and seed read from it).

    Raises:
        LoopError: for epochs, probe size or concept count that are not positive, a non-positive learning rate,
            probabilities outside ``0 <= base_p <= max_p <= 1``, or an unknown ``policy`` or ``control``.

    Example:
        >>> LoopConfig(finetune_epochs=5).epochs
        3
    """

    epochs: int = 3
    finetune_epochs: int = 2
    layer: str | None = None
    callbacks: Sequence[Any] | None = None
    finetune_lr: float | None = 3e-3
    augmentations: Mapping[str, str] | None = None
    transforms: Mapping[str, nn.Module] | None = None
    fallback: str | None = None
    max_p: float = 0.9
    base_p: float = 0.3
    probe_size: int = 256
    n_concepts: int | None = 32
    seed: int = 0
    progress: bool = False
    pretrained: bool = False
    calibrate: bool = True
    policy: Literal["match", "annotations"] = "match"
    bind: Mapping[str, str] | None = None
    control: Literal["no_aug"] | None = None
    probe_root: str | None = None
    report: str | None = None

    def __post_init__(self) -> None:
        for name in ("epochs", "finetune_epochs", "probe_size", "n_concepts"):
            value = getattr(self, name)
            if name == "n_concepts" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LoopError(f"Expected `{name}` to be a positive integer, but got {value!r}.")
        if self.finetune_lr is not None and not self.finetune_lr > 0:
            raise LoopError(f"Expected `finetune_lr` to be positive or None, but got {self.finetune_lr!r}.")
        if not 0 <= self.base_p <= self.max_p <= 1:
            raise LoopError(f"Expected 0 <= `base_p` <= `max_p` <= 1, but got base_p={self.base_p!r}, "
                            f"max_p={self.max_p!r}.")
        if self.policy not in ("match", "annotations"):
            raise LoopError(f"Expected `policy` to be one of ['match', 'annotations'], but got {self.policy!r}.")
        if self.control not in (None, "no_aug"):
            raise LoopError(f"Expected `control` to be 'no_aug' or None, but got {self.control!r}.")


@dataclass
class LoopResult:
    """Before/after metrics (``control``: the no-augmentation arm's, when it ran), the policy and where everything
    was written."""

    before: dict[str, Any]
    after: dict[str, Any]
    policies: dict[str, AugmentationPolicy]
    evidence: list[str]
    concept_names: tuple[str, ...]
    run: RunDirectory | None
    model: pl.LightningModule
    control: dict[str, Any] | None = None
    match: MatchResult | None = None

    def table(self) -> str:
        """The before/after table (:func:`~recipes.loop.tables.format_before_after`)."""
        return format_before_after(self.before, self.after if self.policies else None, self.concept_names,
                                   control=self.control)


def _probe(c: LoopConfig, datamodule: ContractDataModule, stored: ConceptReport | None) -> tuple[Any, str]:
    """The probe dataset (None: the validation split) and what it is called in the stored settings."""
    root = c.probe_root
    if root is None and stored is not None:
        root = stored.meta.get("probe_root")
    if root is None:
        return None, "val"
    return probe_folder(str(root), datamodule), f"folder:{Path(root).resolve()}"


def _stored_diagnosis(path: str, model: nn.Module, datamodule: ContractDataModule) -> Diagnosis:
    """The diagnosis of a ``conceptfix diagnose`` run (its ``report.json``), checked to be of ``model``."""
    file = Path(path)
    if file.is_dir():
        file = file / "report.json"
    try:
        report = ConceptReport.load(file)
    except (OSError, ValueError, KeyError) as err:
        raise LoopError(f"Expected `--report` to be the report.json of a `conceptfix diagnose` run (or its run "
                        f"directory), but got {path!r}: {err}") from err
    made_on = report.meta.get("fingerprint")
    if made_on is not None and made_on != model_fingerprint(model):
        raise LoopError(f"Expected the report {str(file)!r} to be of the checkpoint being fine-tuned, but it was made "
                        "on other weights; diagnose this checkpoint (`conceptfix diagnose`) or drop `--report`.")
    metrics = slice_metrics(model, datamodule.dataset("test"))
    names = tuple(getattr(datamodule, "concept_names", ()) or ())
    return Diagnosis(report, None, metrics, names)


def run_loop(
    datamodule: ContractDataModule,
    model: pl.LightningModule,
    run: RunDirectory | None,
    config: LoopConfig | None = None,
    log: Callable[[str], None] = print,
) -> LoopResult:
    """Train (unless ``config.pretrained``) → diagnose → derive the policy → fine-tune → diagnose again.

    ``log`` gets the console lines (the steps, the probe set's reach, the evidence, the policy, the time each step
    took). With ``config.control == "no_aug"`` a copy of the diagnosed model is also fine-tuned without
    augmentation for the same epochs, and the table shows it beside the policy's.

    Raises:
        LoopError: for an unknown layer, data that does not fit the model, or a stored report of other weights.
    """
    c = config or LoopConfig()
    stored_report = None
    if c.report is not None:
        stored_report = _stored_diagnosis(c.report, model, datamodule) if c.pretrained else None
        if stored_report is None:
            raise LoopError("Expected `report` only with a trained model (`pretrained`, `conceptfix finetune`), "
                            "but the loop trains the model first.")
    layer = stored_report.report.layer if stored_report is not None else c.layer or default_layer(model)
    check_layer(model, layer)
    check_data(model, datamodule)
    probe, probe_source = _probe(c, datamodule, stored_report.report if stored_report is not None else None)
    if not c.pretrained:
        cbs = monitors(layer, seed=c.seed, n_concepts=c.n_concepts) if c.callbacks is None else list(c.callbacks)
        log(f"[1/4] training for {c.epochs} epochs with {len(cbs)} callbacks "
            f"({', '.join(type(cb).__name__ for cb in cbs) or 'none'})")
        clock = time.time()
        reused = run is not None and run.done("train") is not None
        model = train(model, datamodule, c.epochs, run, "train", cbs, c.seed, c.progress)
        log("      reused checkpoints/train.ckpt from the run directory" if reused
            else f"      done in {time.time() - clock:.0f} s")
    probe_set = datamodule.dataset("val") if probe is None else probe
    probe_size = int(stored_report.report.meta.get("probe_size_requested", c.probe_size)) \
        if stored_report is not None else c.probe_size
    seed = int(stored_report.report.meta.get("probe_seed", c.seed)) if stored_report is not None else c.seed
    loader = probe_loader(probe_set, probe_size, seed)
    n_probe = len(loader.dataset)  # type: ignore[arg-type]
    where = "validation images" if probe is None else f"images of {c.probe_root or probe_source}"
    clock = time.time()
    if stored_report is not None:
        log(f"[2/4] concepts of {c.report} (layer {layer!r}, {n_probe} {where}): no new diagnosis")
        before, reused = stored_report, True
    else:
        log(f"[2/4] diagnosing at layer {layer!r} on {n_probe} {where}"
            + (f" (all of the {'split' if probe is None else 'folder'}; {c.probe_size} requested)"
               if n_probe < c.probe_size else ""))
        before, reused = diagnose_once(model, datamodule, layer, run, "report", c.probe_size, c.n_concepts,
                                       seed=c.seed, probe=probe, probe_source=probe_source)
    for line in _coverage(n_probe, before.report):
        log(f"      {line}")
    log(f"      {len(before.report.failures)} discovered failure concepts; "
        + ("reused" if reused else f"done in {time.time() - clock:.0f} s"))
    # The stored policy belongs to the stored diagnosis; a diagnosis made afresh derives it again.
    stored = run.done("policy") if run is not None and reused else None
    match: MatchResult | None = None
    if stored is not None and run is not None:
        saved = run.read_json("policy.json")
        policies = {k: AugmentationPolicy.from_dict(v) for k, v in saved["policies"].items()}
        evidence = list(saved["evidence"])
        match = MatchResult.from_dict(saved["match"]) if saved.get("match") else None
    else:
        clock = time.time()
        if c.policy == "match":
            policies, evidence, match = matched_policies(
                model, before, probe_images(loader), c.bind, c.fallback, max_p=c.max_p, base=c.base_p, seed=c.seed)
            evidence.append(f"matched in {time.time() - clock:.0f} s")
        else:
            policies, evidence = loop_policies(before, c.augmentations, c.fallback, max_p=c.max_p, base=c.base_p,
                                               calibrate=c.calibrate)
        if run is not None:
            run.write_json("policy.json", {"evidence": evidence,
                                           "policies": {k: v.to_dict() for k, v in policies.items()},
                                           "explained": {k: v.explain() for k, v in policies.items()},
                                           "match": None if match is None else match.to_dict()})
            run.mark_done("policy", file="policy.json")
            _log_policy(run, evidence, match)
    log("[3/4] failure concepts → policy" + (" (matched over the transform catalogue, no labels):"
                                             if c.policy == "match" else " (by the annotated concepts they show):"))
    for line in evidence if before.report.failures else ["(no failure concept found)"]:
        log(f"      {line}")
    for policy in policies.values():
        log(f"      {policy.explain()[:300]}")
    if not policies:
        log("      no policy: nothing to augment" + (", fine-tuning without augmentation only as the control"
                                                     if c.control else ", no fine-tuning with a policy"))
    control_metrics = None
    control_model = copy.deepcopy(model) if c.control == "no_aug" else None
    tuned = model
    if policies:
        clock = time.time()
        log(f"      fine-tuning for {c.finetune_epochs} epochs on joint batches (X, augment(X))")
        reused = run is not None and run.done("finetune") is not None
        tuned = finetune(model, datamodule, policies, c.finetune_epochs, c.finetune_lr, c.transforms, run,
                         "finetune", seed=c.seed, progress=c.progress)
        log("      reused checkpoints/finetune.ckpt from the run directory" if reused
            else f"      done in {time.time() - clock:.0f} s")
    if control_model is not None:
        clock = time.time()
        log(f"      control: fine-tuning a copy for {c.finetune_epochs} epochs without augmentation (same budget)")
        reused = run is not None and run.done("finetune_no_aug") is not None
        control_model = finetune(control_model, datamodule, {}, c.finetune_epochs, c.finetune_lr, c.transforms, run,
                                 "finetune_no_aug", seed=c.seed, progress=c.progress)
        control_metrics = slice_metrics(control_model, datamodule.dataset("test"))
        log("      reused checkpoints/finetune_no_aug.ckpt from the run directory" if reused
            else f"      done in {time.time() - clock:.0f} s")
    after_metrics: dict[str, Any] = before.metrics
    after = None
    if policies:
        log("[4/4] diagnosing the fine-tuned model")
        after, _ = diagnose_once(tuned, datamodule, layer, run, "report_after", probe_size, c.n_concepts, seed=seed,
                                 probe=probe, probe_source=probe_source)
        after_metrics = after.metrics
    else:
        log("[4/4] no fine-tuned model to diagnose")
    result = LoopResult(before.metrics, after_metrics, policies, evidence, before.concept_names, run, tuned,
                        control_metrics, match)
    if run is not None:
        run.write_json("metrics.json", {"before": before.metrics, "after": after_metrics if policies else None,
                                        "no_aug": control_metrics})
        md = [diagnosis_markdown(before, "Before fine-tuning"), "\n# Policy\n",
              *[f"- {line}" for line in _coverage(n_probe, before.report)],
              *[f"- {line}" for line in evidence], "", *[f"- `{p.explain()}`" for p in policies.values()],
              "" if policies else "No policy: no failure concept led to a transform.",
              "", match.to_markdown() if match is not None else "",
              "\n# Before / after (test split)\n", "```", result.table(), "```\n",
              diagnosis_markdown(after, "After fine-tuning") if after is not None else ""]
        run.write_text("report.md", "\n".join(md))
        run.mark_done("loop", metrics="metrics.json")
    return result


def _coverage(n_probe: int, report: ConceptReport) -> list[str]:
    """What the probe set can show: the rarest failure it reaches, and a warning for a rare one it misses."""
    min_support = int(report.config.get("min_support", 10) or 10)
    lines = []
    rate = detectable_rate(n_probe, min_support)
    if rate == rate and rate <= 1:  # finite
        lines.append(f"{n_probe} probe images reach a failure in {100 * rate:.0f}% of images or more "
                     f"({min_support} images per failure concept)")
    cover = probe_coverage(max(n_probe, 1), RARE_FAILURE, min_support)
    if not cover.enough:
        lines.append(f"probe set too small for a rare failure: {cover.message}")
    return lines


def _log_policy(run: RunDirectory, evidence: Sequence[str], match: MatchResult | None) -> None:
    """The evidence and the match's claim table as TensorBoard text under ``tb/policy``."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run.tensorboard / "policy"))
    try:
        writer.add_text("evidence", "\n".join(f"- {line}" for line in evidence) or "no failure concept")
        if match is not None:
            writer.add_text("match", match.to_markdown())
    finally:
        writer.close()
