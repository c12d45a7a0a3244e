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
- **how strong the transform is** (when the evidence measured it): a failure with a :class:`Darkening` — how
  much brightness the concept removes inside its mask, over the images of its slice (:func:`concept_darkening`)
  — sets the strength of a transform in ``strength_params`` (``SyntheticShadow``'s ``intensity``) to the
  measured range, so the shadows trained on are as deep as the ones the model fails on. Without a measurement
  the transform keeps its own settings.

The result is one :class:`augment.AugmentationPolicy` per transform (rules carry their reasons). It is set
as ``policy`` on the objects in ``targets`` (e.g. the joint-batch integration or any holder the training step
reads), passed to ``on_update``, kept in the checkpoint, written to ``policy.json`` in the run directory, and
logged to TensorBoard: ``augmentation/policy`` (text: what changed and why) and scalars
``augmentation/<transform>/max_p`` and ``augmentation/<transform>/rules``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from augment.policy import AugmentationPolicy
from callbacks._base import Monitor, RunContext

Source = Literal["auto", "concepts", "confusion"]
_SOURCES = ("auto", "concepts", "confusion")
DEFAULT_AUGMENTATIONS: dict[str, str] = {"shadow": "SyntheticShadow", "occluder": "Cutout"}
# transform → its argument that takes a (lo, hi) range of the fraction of brightness removed
STRENGTH_PARAMS: dict[str, str] = {"SyntheticShadow": "intensity"}


def concept_darkening(
    images: Tensor,
    concept_masks: Tensor,
    object_masks: Tensor | None = None,
    quantile: float = 0.9,
    min_pixels: int = 4,
) -> Tensor:
    """Per image, the fraction of brightness a concept removes inside its mask.

    ``1 - q(lum inside) / q(lum outside)``, with ``q`` the ``quantile`` of the luminance (channel mean) over the
    object's pixels inside and outside the concept's mask (the whole image without ``object_masks``). An upper
    quantile rather than the mean, because the region inside a shadow's mask also holds background and
    half-covered edge pixels; the brightest pixels inside are the shadowed object itself (on Fashion-MNIST with
    black backgrounds and without object masks, the median would read the background). The ratio assumes that 0
    is black (images in ``[0, 1]`` or ``[0, 255]``, not mean/std-normalised ones).

    Shape:
        - images: ``(B, C, H, W)``; concept_masks, object_masks: ``(B, H, W)``, non-zero inside
        - output: ``(B,)``, NaN where either region has fewer than ``min_pixels`` pixels or the outside is black

    Raises:
        ValueError: for masks whose shape does not match the images, or ``quantile`` outside ``[0, 1]``.

    Example:
        >>> x = torch.full((1, 1, 4, 4), 0.8)
        >>> x[..., :2] *= 0.25  # the left half loses 75% of its brightness
        >>> mask = torch.zeros(1, 4, 4, dtype=torch.bool)
        >>> mask[..., :2] = True
        >>> round(float(concept_darkening(x, mask)[0]), 3)
        0.75
    """
    if not isinstance(images, Tensor) or images.dim() != 4:
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"Expected `images` to have shape (B, C, H, W), but got {got!r}.")
    b, _, h, w = images.shape
    for name, m in (("concept_masks", concept_masks), ("object_masks", object_masks)):
        if m is not None and tuple(m.shape) != (b, h, w):
            raise ValueError(f"Expected `{name}` to have shape ({b}, {h}, {w}), but got {tuple(m.shape)}.")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"Expected `quantile` to be in [0, 1], but got {quantile!r}.")
    lum = images.detach().float().mean(1).cpu()
    inside = concept_masks.detach().cpu() != 0
    obj = torch.ones_like(inside) if object_masks is None else object_masks.detach().cpu() != 0
    out = torch.full((b,), float("nan"))
    for i in range(b):
        r_in, r_out = inside[i] & obj[i], ~inside[i] & obj[i]
        if int(r_in.sum()) < min_pixels or int(r_out.sum()) < min_pixels:
            continue
        lit = torch.quantile(lum[i][r_out], quantile)
        if float(lit) <= 1e-3:
            continue
        out[i] = (1 - torch.quantile(lum[i][r_in], quantile) / lit).clamp(0, 1)
    return out


@dataclass(frozen=True)
class Darkening:
    """How much brightness a concept removes over the images of its slice: median and 10th–90th percentiles.

    Example:
        >>> d = Darkening.from_values(torch.tensor([0.6, 0.7, 0.65, float("nan"), 0.62, 0.68]))
        >>> d.n, round(d.median, 2)
        (5, 0.65)
    """

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def from_values(cls, values: Tensor, min_images: int = 5) -> Darkening | None:
        """Summarise per-image values (NaN ignored); None when fewer than ``min_images`` were measured."""
        v = values[~torch.isnan(values)].double()
        if len(v) < min_images:
            return None
        q = torch.quantile(v, torch.tensor([0.5, 0.1, 0.9], dtype=torch.float64)).tolist()
        return cls(round(q[0], 4), round(q[1], 4), round(q[2], 4), len(v))

    def describe(self, concept: str) -> str:
        return (f"'{concept}' removes {self.median:.0%} of the brightness under its mask (median of {self.n} "
                f"images; 10th–90th percentile {self.low:.0%}–{self.high:.0%})")

    def to_dict(self) -> dict[str, Any]:
        return {"median": self.median, "low": self.low, "high": self.high, "n": self.n}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Darkening:
        return cls(float(d["median"]), float(d["low"]), float(d["high"]), int(d["n"]))


@dataclass(frozen=True)
class FailureEvidence:
    """One failure concept and the confusion counts a policy is derived from.

    ``darkening``: how much brightness the concept removes in its slice, when it was measured (concept masks);
    it sets the strength of the transform (see :func:`derive_policies`).

    Shape:
        - confusion_in: ``(K, K)`` counts inside the concept's slice
        - confusion_all: ``(K, K)`` counts over the whole probe set (the slice included; outside the slice is
          ``confusion_all - confusion_in``)
    """

    name: str
    matches: str | None
    lift: float
    confusion_in: Tensor
    confusion_all: Tensor
    darkening: Darkening | None = None


def class_error_rates(confusion: Tensor) -> tuple[Tensor, Tensor]:
    """Per ground-truth class error rate and support of a ``(K, K)`` confusion matrix (NaN where no support).

    Example:
        >>> err, n = class_error_rates(torch.tensor([[3, 1], [0, 0]]))
        >>> err.tolist()[0], n.tolist()
        (0.25, [4, 0])
    """
    cm = confusion.double()
    support = cm.sum(1)
    correct = torch.diagonal(cm)
    err = torch.where(support > 0, 1 - correct / support.clamp_min(1), torch.full_like(support, float("nan")))
    return err, support.long()


def derive_policies(
    failures: Sequence[FailureEvidence],
    augmentations: Mapping[str, str] = DEFAULT_AUGMENTATIONS,
    fallback: str | None = None,
    base: float = 0.0,
    max_p: float = 0.8,
    min_class_support: int = 3,
    class_names: Sequence[str] | None = None,
    strength_params: Mapping[str, str] | None = STRENGTH_PARAMS,
) -> dict[str, AugmentationPolicy]:
    """One policy per transform from the failure concepts (see the module docstring for the rule).

    A class that several failures point at under the same transform keeps its strongest rule. A transform in
    ``strength_params`` whose failures carry a :class:`Darkening` gets ``params`` setting that argument to the
    measured 10th–90th percentile range (from the failure with the largest lift); None or ``{}`` turns this off.

    Example:
        >>> inside = torch.tensor([[1, 3], [0, 4]])  # class 0 wrong 3/4 times inside the slice
        >>> overall = torch.tensor([[8, 4], [1, 9]])  # ... and 1/8 outside it (4 - 3 of 12 - 4)
        >>> policies = derive_policies([FailureEvidence("shadow", "shadow", 2.5, inside, overall)])
        >>> policies["SyntheticShadow"].probabilities(torch.tensor([0, 1])).tolist()
        [0.666700005531311, 0.0]

    Raises:
        ValueError: for ``base``/``max_p`` out of order, a non-positive ``min_class_support``, or a slice's counts
            that exceed the whole probe set's (``confusion_in`` must be a part of ``confusion_all``).
    """
    if not 0.0 <= base <= max_p <= 1.0:
        raise ValueError(f"Expected 0 <= `base` <= `max_p` <= 1, but got base={base!r}, max_p={max_p!r}.")
    if not isinstance(min_class_support, int) or min_class_support < 1:
        raise ValueError(f"Expected `min_class_support` to be a positive integer, but got {min_class_support!r}.")
    best: dict[str, dict[int, tuple[float, str]]] = {}
    strength: dict[str, FailureEvidence] = {}
    for f in failures:
        key = f.matches if f.matches is not None else f.name
        transform = augmentations.get(key, fallback)
        if transform is None:
            continue
        if f.darkening is not None and transform in (strength_params or {}):
            if transform not in strength or strength[transform].lift < f.lift:
                strength[transform] = f
        outside = f.confusion_all - f.confusion_in
        if bool((outside < 0).any()):
            raise ValueError(
                f"Expected the slice counts of {f.name!r} (`confusion_in`) to be a part of the probe set's counts "
                f"(`confusion_all`, every cell at least as large), but got {f.confusion_in.tolist()} and "
                f"{f.confusion_all.tolist()}."
            )
        err_in, n_in = class_error_rates(f.confusion_in)
        err_out, _ = class_error_rates(outside)
        for c in range(int(err_in.shape[0])):
            e_in, e_out, n = float(err_in[c]), float(err_out[c]), int(n_in[c])
            if n < min_class_support or math.isnan(e_in) or math.isnan(e_out) or e_in <= e_out:
                continue
            p = base + (max_p - base) * (e_in - e_out) / e_in
            cname = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            shown = f"{f.name} (shows {f.matches})" if f.matches and f.matches != f.name else f.name
            reason = (
                f"class {cname} is wrong {e_in:.0%} of the time in the '{shown}' slice (n={n}) vs {e_out:.0%} "
                f"outside it; concept lift {f.lift:.2f}"
            )
            rules = best.setdefault(transform, {})
            if c not in rules or rules[c][0] < p:
                rules[c] = (p, reason)
    out: dict[str, AugmentationPolicy] = {}
    for transform, rules in best.items():
        params: dict[str, Any] = {}
        params_reason = ""
        measured = strength.get(transform)
        if measured is not None and measured.darkening is not None:
            d = measured.darkening
            params = {(strength_params or {})[transform]: (d.low, d.high)}
            params_reason = f"measured: {d.describe(measured.matches or measured.name)}"
        policy = AugmentationPolicy(base=base, augmentation=transform, params=params, params_reason=params_reason)
        for c in sorted(rules):
            cname = class_names[c] if class_names is not None and c < len(class_names) else ""
            policy = policy.with_class(c, round(rules[c][0], 4), reason=rules[c][1], name=cname)
        out[transform] = policy
    return out


def why_no_rule(failure: FailureEvidence, min_class_support: int = 3) -> str | None:
    """Why :func:`derive_policies` gives ``failure`` no class rule, or None when it gives one.

    A class gets a rule when it has at least ``min_class_support`` samples in the slice and is wrong more often
    inside the slice than outside it.

    Example:
        >>> inside = torch.tensor([[1, 1], [0, 1]])  # two images of class 0 and one of class 1 in the slice
        >>> why_no_rule(FailureEvidence("shadow", "shadow", 1.2, inside, inside + 5))
        'no class has 3 or more images in the slice (at most 2)'
    """
    err_in, n_in = class_error_rates(failure.confusion_in)
    err_out, _ = class_error_rates(failure.confusion_all - failure.confusion_in)
    supported = [c for c in range(int(n_in.shape[0])) if int(n_in[c]) >= min_class_support]
    if not supported:
        return f"no class has {min_class_support} or more images in the slice (at most {int(n_in.max())})"
    for c in supported:
        e_in, e_out = float(err_in[c]), float(err_out[c])
        if not (math.isnan(e_in) or math.isnan(e_out)) and e_in > e_out:
            return None
    return (f"none of the {len(supported)} classes with {min_class_support} or more images in the slice is wrong "
            "more often inside it than outside it")


def policy_changes(old: Mapping[str, AugmentationPolicy], new: Mapping[str, AugmentationPolicy]) -> list[str]:
    """What changed between two policy sets, one line per added, removed or re-weighted rule.

    Example:
        >>> a = {"Cutout": AugmentationPolicy().with_class(1, 0.5)}
        >>> b = {"Cutout": AugmentationPolicy().with_class(1, 0.7, reason="worse")}
        >>> policy_changes(a, b)
        ['Cutout: class 1 p 0.50 → 0.70 (worse)']
    """
    lines: list[str] = []
    for transform in sorted(set(old) | set(new)):
        before = {(r.kind, r.index): r for r in old[transform].rules} if transform in old else {}
        after = {(r.kind, r.index): r for r in new[transform].rules} if transform in new else {}
        for key in sorted(set(before) | set(after)):
            b, a = before.get(key), after.get(key)
            label = f"{key[0]} {(a or b).name or key[1]}"  # type: ignore[union-attr]
            if b is None and a is not None:
                lines.append(f"{transform}: + {label} p={a.p:.2f} ({a.reason})")
            elif a is None and b is not None:
                lines.append(f"{transform}: − {label} (no longer a failure)")
            elif a is not None and b is not None and abs(a.p - b.p) > 1e-6:
                lines.append(f"{transform}: {label} p {b.p:.2f} → {a.p:.2f} ({a.reason})")
    return lines


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
        if report.overall_confusion is None:
            return [], None
        gt_names = list(report.patches.concept_names)
        out = []
        for row in report.failures:
            i = next(j for j, c in enumerate(report.concepts) if c.id == row.concept)
            matches = None
            if report.ground_truth_precision is not None and gt_names:
                prec = report.ground_truth_precision[i]
                if prec.numel() and float(prec.max()) >= self.min_precision:
                    matches = gt_names[int(prec.argmax())]
            out.append(FailureEvidence(row.name, matches, row.lift, report.confusion[i], report.overall_confusion))
        return out, list(report.class_names) or None

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
