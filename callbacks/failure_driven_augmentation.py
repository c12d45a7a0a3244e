"""FailureDrivenAugmentation: turn the latest failure concepts into the augmentation policy training uses.

After each scheduled run of the monitors it reads the newest evidence — the findings of a
:class:`~callbacks.concept_monitor.ConceptMonitor` (its report) and/or a
:class:`~callbacks.confusion_monitor.ConfusionMonitor` (its slice confusion) placed before it on the trainer, or a
report JSON on disk — and, for every **failure concept** (significant lift, enough support), decides:

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
The result is one :class:`augment.AugmentationPolicy` per transform (rules carry their reasons). It is published
as a :class:`~callbacks.findings.PolicyFinding` (every :class:`~callbacks.joint_batch.JointBatchTraining` on the
trainer trains with the policy of its occluder's transform), passed to ``on_update``, kept in the checkpoint,
written to ``policy.json`` in the run directory, and logged to TensorBoard: ``augmentation/policy`` (text: what
changed and why) and scalars ``augmentation/<transform>/max_p`` and ``augmentation/<transform>/rules``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from augment.policy import DEFAULT_AUGMENTATIONS, AugmentationPolicy, derive_policies, policy_changes
from callbacks._base import Monitor
from callbacks._probe import RunContext
from callbacks.findings import ConceptReportFinding, Need, PolicyFinding, SliceConfusion, consumers_of
from debugger.failures import FailureEvidence, evidence_from_ranking, evidence_from_report

Source = Literal["auto", "concepts", "confusion"]
_SOURCES = ("auto", "concepts", "confusion")


class FailureDrivenAugmentation(Monitor):
    """Updates the augmentation policy from the latest failure concepts and logs what changed and why.

    Reads the :class:`~callbacks.findings.ConceptReportFinding` of a ConceptMonitor and/or the
    :class:`~callbacks.findings.SliceConfusion` of a ConfusionMonitor placed before it on the trainer, and publishes
    a :class:`~callbacks.findings.PolicyFinding` that :class:`~callbacks.joint_batch.JointBatchTraining` trains
    with. Rank zero decides; under DDP every rank receives its policies, so all ranks augment alike.

    Args:
        on_update: called with the new ``{transform: policy}`` whenever it changes (and on resume), for training
            code that is not a JointBatchTraining.
        source: ``"concepts"`` (the ConceptMonitor's report), ``"confusion"`` (the ConfusionMonitor's
            annotated and discovered slices), or ``"auto"`` (whichever of the two is on the trainer: the report's
            failure concepts and the ConfusionMonitor's annotated failure slices).
        report_path: read the evidence from this ConceptReport JSON instead (e.g. from ``conceptfix diagnose``).
        augmentations: failure concept (or the ground-truth concept it shows) → transform name.
        fallback: transform for failure concepts not in ``augmentations``; None leaves them alone.
        base: probability for samples no rule matches.
        max_p: probability of a class that fails only inside the concept's slice.
        min_class_support: slice samples of a class needed before it gets a rule.
        min_precision: share of a discovered concept's top patches that must show a ground-truth concept for
            the concept to be treated as that one.
        keep_when_no_evidence: keep the current policy when no evidence exists yet (instead of clearing it).
        log_only: only decide, log and store the policies: nothing is published to train with and there is no
            warning that nothing is driven (e.g. the closed loop's training stage, which derives its fine-tuning
            policy afterwards). Not combined with ``on_update``.
        **kwargs: scheduling options of :class:`callbacks._base.Monitor` (no probe set is used).

    Raises:
        ValueError: for an unknown ``source``, ``base``/``max_p`` out of order, ``min_precision`` outside
            ``[0, 1]``, a non-positive ``min_class_support``, or ``on_update`` with ``log_only``; in ``setup()``
            when the producer ``source`` reads is missing or comes after this callback.

    Example:
        >>> fda = FailureDrivenAugmentation(every_n_epochs=2, fallback="HideAndSeek")
        >>> fda.policies, fda.publishes == (PolicyFinding,)
        ({}, True)
    """

    tag_root = "augmentation"
    needs_probe = False  # reads other callbacks' findings; no probe images of its own
    all_ranks = True  # rank zero decides, then every rank receives the policies (see `analyse`)

    def __init__(
        self,
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
        if log_only and on_update is not None:
            raise ValueError(f"Expected no `on_update` with `log_only=True` (nothing is driven), but got "
                             f"{on_update!r}.")
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
        self.publishes = () if log_only else (PolicyFinding,)
        self.policies: dict[str, AugmentationPolicy] = {}

    def extra_state(self) -> dict[str, Any]:
        return {"policies": {k: v.to_dict() for k, v in self.policies.items()}}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.policies = {k: AugmentationPolicy.from_dict(v) for k, v in state.get("policies", {}).items()}
        if self.policies and not self.log_only:  # a resumed run trains with the policies it had
            last = self.runs[-1] if self.runs else {"epoch": -1, "step": -1}
            self.publish(PolicyFinding(int(last["epoch"]), int(last["step"]), dict(self.policies), "checkpoint"))

    def needs(self) -> tuple[Need, ...]:
        if self.report_path is not None:
            return ()
        if self.source == "concepts":
            return (Need(ConceptReportFinding),)
        if self.source == "confusion":
            return (Need(SliceConfusion),)
        return (Need(ConceptReportFinding, required=False), Need(SliceConfusion, required=False))

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        callbacks = list(getattr(trainer, "callbacks", []))
        if self.report_path is None and not self._producers:
            raise ValueError(
                "Expected a ConceptMonitor or a ConfusionMonitor before FailureDrivenAugmentation in the trainer's "
                "`callbacks` (it turns their failure findings into policies), but got neither; add e.g. "
                "ConceptMonitor(layer=...) and ConfusionMonitor() ahead of it, or set `report_path`."
            )
        if not (self.on_update or self.log_only or consumers_of(callbacks, PolicyFinding)):
            warnings.warn(
                "FailureDrivenAugmentation has nothing to drive: no `on_update` and no JointBatchTraining on the "
                "trainer, so its policies are only logged and written to policy.json. Add e.g. "
                "JointBatchTraining(JointBatch(SyntheticShadow())) to the callbacks to train with them.",
                stacklevel=2,
            )

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        if self.policies and self.on_update is not None:  # a resumed run trains with the policies it had
            self.on_update(dict(self.policies))

    # -- evidence ----------------------------------------------------------------------------------------------

    def evidence(self, trainer: Any = None) -> tuple[list[FailureEvidence], list[str] | None, str] | None:
        """The failure concepts to act on, the class names, and where they came from; None without evidence.

        Evidence comes from ``report_path`` when set, else from the findings of the producers found in
        ``setup()``. ``trainer`` is not used (callers that still pass one keep working).
        """
        if self.report_path is not None:
            from debugger.report import ConceptReport

            if not Path(self.report_path).exists():
                return None
            found = evidence_from_report(ConceptReport.load(self.report_path), self.min_precision)
            return found[0], found[1], self.report_path
        failures: list[FailureEvidence] = []
        class_names: list[str] | None = None
        sources: list[str] = []
        report = self.read(ConceptReportFinding)
        if report is not None:
            failures, class_names = evidence_from_report(report.report, self.min_precision)
            producer = type(self._producers[ConceptReportFinding]).__name__
            sources.append(f"{producer} report of step {report.step}")
        confusion = self.read(SliceConfusion)
        if confusion is not None:
            # discovered slices are the report's concepts again: count them once
            skip = {"discovered"} if report is not None else set()
            rows = [r for r in confusion.ranking if confusion.sources[r.concept] not in skip]
            annotated = [r for r in rows if confusion.sources[r.concept] == "annotated"]
            discovered = [r for r in rows if confusion.sources[r.concept] == "discovered"]
            failures += evidence_from_ranking(annotated, confusion.counts, confusion.overall)
            failures += evidence_from_ranking(discovered, confusion.counts, confusion.overall, annotated=False)
            sources.append(f"{type(self._producers[SliceConfusion]).__name__} of step {confusion.step}")
        if not sources:
            return None
        return failures, class_names, " and ".join(sources)

    # -- the run -----------------------------------------------------------------------------------------------

    def analyse(self, ctx: RunContext) -> dict[str, Any]:
        failed: Exception | None = None
        try:
            decided = self._decide(ctx) if ctx.is_global_zero else None
        except Exception as err:  # raised after the broadcast: the other ranks must not wait for rank zero
            failed, decided = err, None
        if ctx.world_size > 1:  # every rank trains with what rank zero decided
            shared = None if decided is None else ({k: v.to_dict() for k, v in decided[0].items()}, decided[1])
            shared = ctx.trainer.strategy.broadcast(shared, src=0)
            if not ctx.is_global_zero:
                if shared is not None:
                    self._adopt(ctx, {k: AugmentationPolicy.from_dict(v) for k, v in shared[0].items()}, shared[1])
                return {}
        if failed is not None:
            raise failed
        if decided is None:
            if ctx.writer is not None:
                ctx.writer.add_text(f"{self.tag_prefix}/policy", "No failure evidence yet; policy unchanged.",
                                    global_step=ctx.global_step)
            return {"evidence": None}
        new, where, failures = decided
        changes = self._adopt(ctx, new, where)

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

    def _decide(self, ctx: RunContext
                ) -> tuple[dict[str, AugmentationPolicy], str, list[FailureEvidence]] | None:
        """The new policies, where their evidence came from, and the evidence; None without evidence."""
        found = self.evidence()
        if found is None:
            return None
        failures, class_names, where = found
        new = derive_policies(failures, self.augmentations, self.fallback, self.base, self.max_p,
                              self.min_class_support, class_names)
        if not new and self.keep_when_no_evidence and not failures:
            new = dict(self.policies)
        return new, where, failures

    def _adopt(self, ctx: RunContext, new: dict[str, AugmentationPolicy], where: str) -> list[str]:
        """Make ``new`` the policies in force (published, and passed to ``on_update`` when they changed)."""
        changes = policy_changes(self.policies, new)
        self.policies = new
        if not self.log_only:
            self.publish(PolicyFinding(ctx.epoch, ctx.global_step, dict(new), where))
        if changes and self.on_update is not None:
            self.on_update(dict(new))
        return changes


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
