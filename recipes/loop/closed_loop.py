"""The whole loop: train (unless the model is given trained) → diagnose → derive the policy → fine-tune → diagnose
again, with every step's result in the run directory and reused on resume."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
from torch import nn

from augment import AugmentationPolicy
from recipes.data.base import ContractDataModule
from recipes.loop.checks import check_data, check_layer, default_layer
from recipes.loop.diagnosis import diagnose_once, diagnosis_markdown
from recipes.loop.finetuning import finetune
from recipes.loop.policy import loop_policies
from recipes.loop.run import LoopError, RunDirectory
from recipes.loop.tables import format_before_after
from recipes.loop.training import monitors, train


@dataclass
class LoopConfig:
    """The options of :func:`run_loop`.

    Args:
        epochs: training epochs (skipped when ``pretrained``).
        finetune_epochs: fine-tuning epochs.
        layer: dotted name of the layer the concepts are read from; None: :func:`~recipes.loop.checks.default_layer`.
        callbacks: the callbacks while training; None: :func:`~recipes.loop.training.monitors` at ``layer``.
        finetune_lr: the fine-tuning learning rate; None keeps the model's.
        augmentations: failure concept → transform name; None: ``shadow → SyntheticShadow``, ``occluder → Cutout``.
        transforms: transform name → module; None: :func:`~recipes.loop.finetuning.default_transforms`.
        fallback: the transform for failure concepts that match no named concept.
        max_p: probability for a class that fails only inside the concept's slice.
        base_p: probability for every other sample.
        probe_size: probe images diagnosed.
        n_concepts: concepts to discover (None: chosen by silhouette).
        seed: seeds data order, analysis and training.
        progress: Lightning progress bars.
        pretrained: the model is trained already: no training stage.
        calibrate: set the shadow transform's strength from the darkening measured in the failing slice.

    Raises:
        LoopError: for epochs, probe size or concept count that are not positive, a non-positive learning rate,
            or probabilities outside ``0 <= base_p <= max_p <= 1``.

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
    probe_size: int = 128
    n_concepts: int | None = 8
    seed: int = 0
    progress: bool = False
    pretrained: bool = False
    calibrate: bool = True

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


@dataclass
class LoopResult:
    """Before/after metrics, the policy and where everything was written."""

    before: dict[str, Any]
    after: dict[str, Any]
    policies: dict[str, AugmentationPolicy]
    evidence: list[str]
    concept_names: tuple[str, ...]
    run: RunDirectory | None
    model: pl.LightningModule

    def table(self) -> str:
        """The before/after table (:func:`~recipes.loop.tables.format_before_after`)."""
        return format_before_after(self.before, self.after, self.concept_names)


def run_loop(
    datamodule: ContractDataModule,
    model: pl.LightningModule,
    run: RunDirectory | None,
    config: LoopConfig | None = None,
    log: Callable[[str], None] = print,
) -> LoopResult:
    """Train (unless ``config.pretrained``) → diagnose → derive the policy → fine-tune → diagnose again.

    ``log`` gets the console lines (the steps, the evidence, the policy, the time each step took).

    Raises:
        LoopError: for an unknown layer or data that does not fit the model.
    """
    c = config or LoopConfig()
    layer = c.layer or default_layer(model)
    check_layer(model, layer)
    check_data(model, datamodule)
    if not c.pretrained:
        cbs = monitors(layer, seed=c.seed) if c.callbacks is None else list(c.callbacks)
        log(f"[1/4] training for {c.epochs} epochs with {len(cbs)} callbacks "
            f"({', '.join(type(cb).__name__ for cb in cbs) or 'none'})")
        clock = time.time()
        reused = run is not None and run.done("train") is not None
        model = train(model, datamodule, c.epochs, run, "train", cbs, c.seed, c.progress)
        log("      reused checkpoints/train.ckpt from the run directory" if reused
            else f"      done in {time.time() - clock:.0f} s")
    n_probe = min(c.probe_size, len(datamodule.dataset("val")))  # type: ignore[arg-type]
    log(f"[2/4] diagnosing at layer {layer!r} on {n_probe} validation images"
        + (f" (all of the split; {c.probe_size} requested)" if n_probe < c.probe_size else ""))
    clock = time.time()
    before, reused = diagnose_once(model, datamodule, layer, run, "report", c.probe_size, c.n_concepts, seed=c.seed)
    log(f"      {len(before.report.failures)} discovered failure concepts; "
        + ("reused from the run directory" if reused else f"done in {time.time() - clock:.0f} s"))
    # The stored policy belongs to the stored diagnosis; a diagnosis made afresh derives it again.
    stored = run.done("policy") if run is not None and reused else None
    if stored is not None and run is not None:
        saved = run.read_json("policy.json")
        policies = {k: AugmentationPolicy.from_dict(v) for k, v in saved["policies"].items()}
        evidence = list(saved["evidence"])
    else:
        policies, evidence = loop_policies(before, c.augmentations, c.fallback, max_p=c.max_p, base=c.base_p,
                                           calibrate=c.calibrate)
        if run is not None:
            run.write_json("policy.json", {"evidence": evidence,
                                           "policies": {k: v.to_dict() for k, v in policies.items()},
                                           "explained": {k: v.explain() for k, v in policies.items()}})
            run.mark_done("policy", file="policy.json")
    log("[3/4] failure concepts → policy:")
    for line in evidence or ["(no failure concept found: fine-tuning without augmentation)"]:
        log(f"      {line}")
    for policy in policies.values():
        log(f"      {policy.explain()[:300]}")
    clock = time.time()
    log(f"      fine-tuning for {c.finetune_epochs} epochs on "
        + ("joint batches (X, augment(X))" if policies else "plain batches (no augmentation implied)"))
    reused = run is not None and run.done("finetune") is not None
    model = finetune(model, datamodule, policies, c.finetune_epochs, c.finetune_lr, c.transforms, run, "finetune",
                     seed=c.seed, progress=c.progress)
    log("      reused checkpoints/finetune.ckpt from the run directory" if reused
        else f"      done in {time.time() - clock:.0f} s")
    log("[4/4] diagnosing the fine-tuned model")
    after, _ = diagnose_once(model, datamodule, layer, run, "report_after", c.probe_size, c.n_concepts, seed=c.seed)
    result = LoopResult(before.metrics, after.metrics, policies, evidence, before.concept_names, run, model)
    if run is not None:
        run.write_json("metrics.json", {"before": before.metrics, "after": after.metrics})
        md = [diagnosis_markdown(before, "Before fine-tuning"), "\n# Policy\n",
              *[f"- {line}" for line in evidence], "", *[f"- `{p.explain()}`" for p in policies.values()],
              "\n# Before / after (test split)\n", "```", result.table(), "```\n",
              diagnosis_markdown(after, "After fine-tuning")]
        run.write_text("report.md", "\n".join(md))
        run.mark_done("loop", metrics="metrics.json")
    return result
