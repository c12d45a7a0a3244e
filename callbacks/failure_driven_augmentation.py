"""FailureDrivenAugmentation: turn the latest failure concepts into the augmentation policy training uses.

After each scheduled run of the monitors it reads the newest evidence — the
:class:`~debugger.report.ConceptReport` of a :class:`~callbacks.concept_monitor.ConceptMonitor` on the same
trainer and/or the last result of a :class:`~callbacks.confusion_monitor.ConfusionMonitor`, or a report JSON
on disk — and, for every **failure concept** (significant lift, enough support), decides:

- **which transform**: by the concept's name (annotated slices) or the ground-truth concept its top patches
  show (discovered clusters, ``ground_truth_precision`` ≥ ``min_precision``), looked up in ``augmentations``
  (``shadow → SyntheticShadow``, ``occluder → Cutout`` by default); unmatched failures use ``fallback``;
- **on which samples and how strongly**: the classes whose error rate inside the concept's slice exceeds
  their error rate outside it (the same comparison as :func:`debugger.ranking.rank_failures`) get a class rule
  with ``p = base + (max_p - base) · (err_in - err_out) / err_in``, so a class that fails only under the
  concept is augmented hardest;
- **how strong the transform is** (when the evidence measured it): a failure with a
  :class:`~debugger.failures.Darkening` — how much brightness the concept removes inside its mask, over the
  images of its slice (:func:`~debugger.failures.concept_darkening`) — sets the strength of a transform in
  ``strength_params`` (``SyntheticShadow``'s ``intensity``) to the measured range, so the shadows trained on
  are as deep as the ones the model fails on. Without a measurement the transform keeps its own settings.

The rule is :func:`augment.policy.derive_policies`; the evidence is :class:`debugger.failures.FailureEvidence`.
The result is one :class:`augment.AugmentationPolicy` per transform (rules carry their reasons). It is set
as ``policy`` on the objects in ``targets`` (e.g. the joint-batch integration or any holder the training step
reads), passed to ``on_update``, kept in the checkpoint, written to ``policy.json`` in the run directory, and
logged to TensorBoard: ``augmentation/policy`` (text: what changed and why) and scalars
``augmentation/<transform>/max_p`` and ``augmentation/<transform>/rules``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch

from augment.policy import DEFAULT_AUGMENTATIONS, AugmentationPolicy, derive_policies, policy_changes
from callbacks._base import Monitor, RunContext
from debugger.failures import FailureEvidence, evidence_from_report

Source = Literal["auto", "concepts", "confusion"]
_SOURCES = ("auto", "concepts", "confusion")


class FailureDrivenAugmentation(Monitor):
    """Updates the augmentation policy from the latest failure concepts and logs what changed and why.

    Args:
        targets: transform name → object whose ``policy`` attribute is set; by default every
            :class:`~callbacks.joint_batch.JointBatchTraining` on the trainer, by its occluder's class name. A
            transform without a target is still decided, stored and logged.
        on_update: called with the new ``{transform: policy}`` whenever it changes.
        source: ``"concepts"`` (the ConceptMonitor's report), ``"confusion"`` (the ConfusionMonitor's
            annotated and discovered slices), or ``"auto"`` (both: the report's failure concepts and the
            ConfusionMonitor's annotated failure slices).
        report_path: read the evidence from this ConceptReport JSON instead (e.g. from ``conceptfix diagnose``).
        augmentations: failure concept (or the ground-truth concept it shows) → transform name.
        fallback: transform for failure concepts not in ``augmentations``; None leaves them alone.
        base: probability for samples no rule matches.
        max_p: probability of a class that fails only inside the concept's slice.
        min_class_support: slice samples of a class needed before it gets a rule.
        min_precision: share of a discovered concept's top patches that must show a ground-truth concept for
            the concept to be treated as that one.
        keep_when_no_evidence: keep the current policy when no evidence exists yet (instead of clearing it).
        log_only: only decide, log and store the policies: no JointBatchTraining is looked for and there is no
            warning that nothing is driven (e.g. the closed loop's training stage, which derives its fine-tuning
            policy afterwards). Not combined with ``targets`` or ``on_update``.
        **kwargs: scheduling options of :class:`callbacks._base.Monitor` (no probe set is used).

    Example:
        >>> fda = FailureDrivenAugmentation(every_n_epochs=2, fallback="HideAndSeek")
        >>> fda.policies
        {}
    """

    tag_root = "augmentation"
    needs_probe = False  # reads other callbacks' results; no probe images of its own

    def __init__(
        self,
        targets: Mapping[str, Any] | None = None,
        on_update: Callable[[dict[str, AugmentationPolicy]], None] | None = None,
        source: Source = "auto",
        report_path: str | None = None,
        augmentations: Mapping[str, str] | None = None,
        fallback: str | None = None,
        base: float = 0.0,
        max_p: float = 0.8,
        min_class_support: int = 3,
        min_precision: float = 0.5,
        keep_when_no_evidence: bool = True,
        log_only: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if source not in _SOURCES:
            raise ValueError(f"Expected `source` to be one of {_SOURCES!r}, but got {source!r}.")
        if not 0.0 <= base <= max_p <= 1.0:
            raise ValueError(f"Expected 0 <= `base` <= `max_p` <= 1, but got base={base!r}, max_p={max_p!r}.")
        if not 0.0 <= min_precision <= 1.0:
            raise ValueError(f"Expected `min_precision` to be in [0, 1], but got {min_precision!r}.")
        if not isinstance(min_class_support, int) or min_class_support < 1:
            raise ValueError(f"Expected `min_class_support` to be a positive integer, but got {min_class_support!r}.")
        for name, obj in (targets or {}).items():
            if not hasattr(obj, "policy"):
                kind = type(obj).__name__
                raise ValueError(f"Expected target {name!r} to have a `policy` attribute, but got {kind}.")
        if log_only and (targets or on_update is not None):
            raise ValueError(
                f"Expected no `targets` and no `on_update` with `log_only=True` (nothing is driven), but got "
                f"targets={sorted(targets or {})!r}, on_update={on_update!r}."
            )
        self.targets = dict(targets or {})
        self.on_update = on_update
        self.source = source
        self.report_path = report_path
        self.augmentations = dict(DEFAULT_AUGMENTATIONS if augmentations is None else augmentations)
        self.fallback = fallback
        self.base = base
        self.max_p = max_p
        self.min_class_support = min_class_support
        self.min_precision = min_precision
        self.keep_when_no_evidence = keep_when_no_evidence
        self.log_only = log_only
        self.policies: dict[str, AugmentationPolicy] = {}
        self._auto_targets: dict[str, Any] = {}

    def extra_state(self) -> dict[str, Any]:
        return {"policies": {k: v.to_dict() for k, v in self.policies.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.policies = {k: AugmentationPolicy.from_dict(v) for k, v in state.get("policies", {}).items()}

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._auto_targets = {} if self.targets or self.log_only else \
            training_targets(getattr(trainer, "callbacks", []))
        if not (self.targets or self._auto_targets or self.on_update or self.log_only):
            warnings.warn(
                "FailureDrivenAugmentation has nothing to drive: no `targets`, no `on_update` and no "
                "JointBatchTraining on the trainer, so its policies are only logged and written to policy.json. "
                "Add e.g. JointBatchTraining(JointBatch(SyntheticShadow())) to the callbacks to train with them.",
                stacklevel=2,
            )

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.policies:  # a resumed run trains with the policy it had
            self._apply(self.policies)

    # -- evidence ----------------------------------------------------------------------------------------------

    def evidence(self, trainer: Any) -> tuple[list[FailureEvidence], list[str] | None, str] | None:
        """The failure concepts to act on, the class names, and where they came from; None without evidence."""
        if self.report_path is not None:
            from debugger.report import ConceptReport

            if not Path(self.report_path).exists():
                return None
            return self._from_report(ConceptReport.load(self.report_path)) + (self.report_path,)
        callbacks = list(getattr(trainer, "callbacks", []))
        failures: list[FailureEvidence] = []
        class_names: list[str] | None = None
        sources: list[str] = []
        if self.source in ("auto", "concepts"):
            for cb in callbacks:
                report = getattr(cb, "latest_report", None)
                if report is not None:
                    found, class_names = self._from_report(report)
                    failures += found
                    sources.append(f"{type(cb).__name__} report of step {report.meta.get('global_step', '?')}")
                    break
        if self.source in ("auto", "confusion"):
            for cb in callbacks:
                latest = getattr(cb, "latest", None)
                if isinstance(latest, dict) and "overall" in latest:
                    # discovered slices ("name@step") are the report's concepts again: count them once
                    skip_discovered = bool(sources)
                    failures += self._from_confusion(latest, skip_discovered)[0]
                    sources.append(f"{type(cb).__name__} of step {latest['step']}")
                    break
        if not sources:
            return None
        return failures, class_names, " and ".join(sources)

    def _from_report(self, report: Any) -> tuple[list[FailureEvidence], list[str] | None]:
        return evidence_from_report(report, self.min_precision)

    def _from_confusion(self, latest: dict[str, Any], skip_discovered: bool = False
                        ) -> tuple[list[FailureEvidence], list[str] | None]:
        names = latest["names"]
        counts = torch.tensor(latest["counts"], dtype=torch.long)
        overall = torch.tensor(latest["overall"], dtype=torch.long)
        out = []
        for row in latest["ranking"]:
            if not row["is_failure"] or row["name"] == "clean" or (skip_discovered and "@" in row["name"]):
                continue
            i = names.index(row["name"])
            out.append(FailureEvidence(row["name"], None, float(row["lift"]), counts[i], overall))
        return out, None

    # -- the run -----------------------------------------------------------------------------------------------

    def analyse(self, ctx: RunContext) -> dict[str, Any]:
        found = self.evidence(ctx.trainer)
        if found is None:
            if ctx.is_global_zero and ctx.writer is not None:
                ctx.writer.add_text(f"{self.tag_prefix}/policy", "No failure evidence yet; policy unchanged.",
                                    global_step=ctx.global_step)
            return {"evidence": None}
        failures, class_names, where = found
        new = derive_policies(failures, self.augmentations, self.fallback, self.base, self.max_p,
                              self.min_class_support, class_names)
        if not new and self.keep_when_no_evidence and not failures:
            new = dict(self.policies)
        changes = policy_changes(self.policies, new)
        if changes:
            self._apply(new)
        self.policies = new

        scalars: dict[str, float] = {}
        for transform, policy in new.items():
            scalars[f"{transform}/rules"] = float(len(policy.rules))
            scalars[f"{transform}/max_p"] = max([r.p for r in policy.rules], default=policy.base)
        scalars["failures"] = float(len(failures))
        self.log_scalars(ctx, scalars)
        text = _markdown(where, failures, new, changes)
        if ctx.writer is not None:
            ctx.writer.add_text(f"{self.tag_prefix}/policy", text, global_step=ctx.global_step)
        entry = {
            "epoch": ctx.epoch,
            "step": ctx.global_step,
            "evidence": where,
            "failures": [f.name for f in failures],
            "changes": changes,
            "policies": {k: v.to_dict() for k, v in new.items()},
        }
        history = [*(r.get("policy_entry") for r in self.runs if r.get("policy_entry")), entry]
        self.write_artifact(ctx, "policy.json", history)
        return {"failures": [f.name for f in failures], "changes": len(changes), "policy_entry": entry}

    def _apply(self, policies: dict[str, AugmentationPolicy]) -> None:
        for transform, target in (self.targets or getattr(self, "_auto_targets", {})).items():
            target.policy = policies.get(transform, AugmentationPolicy(base=0.0, augmentation=transform))
        if self.on_update is not None:
            self.on_update(dict(policies))


def training_targets(callbacks: Sequence[Any]) -> dict[str, Any]:
    """The trainer's joint-batch integrations by occluder name (``{"Cutout": JointBatchTraining(...)}``).

    Any callback with a ``policy`` attribute and a ``joint`` augmenter counts; its transform is the class name of
    ``joint.occluder`` (or of ``joint`` itself when it has no occluder).
    """
    found: dict[str, Any] = {}
    for cb in callbacks:
        joint = getattr(cb, "joint", None)
        if joint is None or not hasattr(cb, "policy"):
            continue
        occluder = getattr(joint, "occluder", None)
        found.setdefault(type(occluder if occluder is not None else joint).__name__, cb)
    return found


def _markdown(where: str, failures: Sequence[FailureEvidence], policies: Mapping[str, AugmentationPolicy],
              changes: Sequence[str]) -> str:
    lines = [f"Evidence: {where}.", ""]
    if failures:
        shown = ", ".join(f"`{f.name}`" + (f" (shows {f.matches})" if f.matches and f.matches != f.name else "")
                          for f in failures)
        lines.append(f"Failure concepts: {shown}.")
    else:
        lines.append("No failure concepts.")
    lines += ["", "**Changes:**" if changes else "No changes.", *[f"- {c}" for c in changes], ""]
    for transform, policy in policies.items():
        lines.append(f"- `{transform}`: {policy.explain()}")
    return "\n".join(lines)
