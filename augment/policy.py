"""Concept-targeted augmentation: per-sample probabilities that the closed loop sets and explains.

An :class:`AugmentationPolicy` maps each sample to the probability that it is augmented, from its target
class(es) and its concept vector. The analysis side (which never needs to be imported here) adds rules such
as "augment class 3 with p = 0.8 because its error rate inside the shadow slice is 41% vs 9% outside"; the
augmentation modules take the result as ``probabilities=``. Policies are immutable, JSON-serialisable and
say in words why they are set the way they are.

:func:`derive_policies` builds them from failure evidence: any object with the fields of :class:`Failure` (the
analysis side's ``debugger.failures.FailureEvidence`` is one), so this module never imports the analysis side.

A sample's probability is the largest of the base probability and every rule that matches it:
a class rule matches when the sample's target is that class (for segmentation: when the class occurs in the
target map); a concept rule matches with strength ``concepts[b, k]`` (so a soft concept score scales it).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import torch
from torch import Tensor

from augment.params import check_probability

RuleKind = Literal["class", "concept"]

#: failure concept (or the ground-truth concept it shows) → the transform that trains against it
DEFAULT_AUGMENTATIONS: dict[str, str] = {"shadow": "SyntheticShadow", "occluder": "Cutout"}
#: transform → its argument that takes a (lo, hi) range of the fraction of brightness removed
STRENGTH_PARAMS: dict[str, str] = {"SyntheticShadow": "intensity"}


@dataclass(frozen=True)
class PolicyRule:
    """One reason to augment: samples of class / with concept ``index`` get probability ``p``."""

    kind: RuleKind
    index: int
    p: float
    reason: str = ""
    name: str = ""

    def describe(self) -> str:
        what = f"{self.kind} {self.name!r}" if self.name else f"{self.kind} {self.index}"
        text = f"{what}: p={self.p:.2f}"
        return f"{text} ({self.reason})" if self.reason else text


@dataclass(frozen=True)
class AugmentationPolicy:
    """Per-sample augmentation probabilities from classes and concepts.

    Args:
        base: probability for samples no rule matches.
        rules: the rules, in the order they were added.
        augmentation: a free-form label of what the policy drives (e.g. ``"SyntheticShadow"``), for reports.
        params: settings for the transform the policy drives, as its keyword arguments (e.g. the
            ``SyntheticShadow`` ``intensity`` measured from the failure, see
            :func:`derive_policies`); whoever builds the transform applies
            them (:func:`recipes.loop.configure_transforms`). Empty: the transform's own settings.
        params_reason: why ``params`` are set so, for reports.

    Raises:
        ValueError: on probabilities outside ``[0, 1]``, negative indices, an unknown rule kind, ``params`` that
            are not a mapping with string keys, or targets / concepts of the wrong shape.

    Example:
        >>> policy = AugmentationPolicy(base=0.1).with_class(2, 0.9, reason="class 2 fails under shadow")
        >>> policy.probabilities(torch.tensor([0, 2])).tolist()
        [0.10000000149011612, 0.8999999761581421]
        >>> print(policy.explain())
        base p=0.10; class 2: p=0.90 (class 2 fails under shadow)
    """

    base: float = 0.0
    rules: tuple[PolicyRule, ...] = ()
    augmentation: str = ""
    params: Mapping[str, Any] = field(default_factory=dict)
    params_reason: str = ""

    def __post_init__(self) -> None:
        check_probability("base", self.base)
        if not isinstance(self.params, Mapping) or not all(isinstance(k, str) for k in self.params):
            raise ValueError(f"Expected `params` to be a mapping from argument names to values, but got "
                             f"{self.params!r}.")
        # A plain dict copy: the caller's mapping can change afterwards without changing the policy.
        object.__setattr__(self, "params", dict(self.params))
        for r in self.rules:
            if r.kind not in ("class", "concept"):
                raise ValueError(f"Expected a rule kind in ('class', 'concept'), but got {r.kind!r}.")
            check_probability("p", r.p)
            if isinstance(r.index, bool) or not isinstance(r.index, int) or r.index < 0:
                raise ValueError(f"Expected a rule index to be a non-negative integer, but got {r.index!r}.")

    def with_class(self, index: int, p: float, reason: str = "", name: str = "") -> AugmentationPolicy:
        """A copy with a rule for class ``index``."""
        return replace(self, rules=(*self.rules, PolicyRule("class", index, p, reason, name)))

    def with_concept(self, index: int, p: float, reason: str = "", name: str = "") -> AugmentationPolicy:
        """A copy with a rule for concept ``index`` (a column of the contract's ``concepts``)."""
        return replace(self, rules=(*self.rules, PolicyRule("concept", index, p, reason, name)))

    def probabilities(self, targets: Tensor, concepts: Tensor | None = None) -> Tensor:
        """The probability that each sample is augmented.

        Shape:
            - targets: ``(B,)`` class indices or ``(B, H, W)`` class maps
            - concepts: ``(B, K)`` in ``[0, 1]``, or None (concept rules then match nothing)
            - output: ``(B,)`` float32 on the targets' device
        """
        if not isinstance(targets, Tensor) or targets.dim() not in (1, 3):
            got = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
            raise ValueError(f"Expected `targets` to have shape (B,) or (B, H, W), but got {got!r}.")
        b = targets.shape[0]
        if concepts is not None and (not isinstance(concepts, Tensor) or concepts.dim() != 2
                                     or concepts.shape[0] != b):
            got = tuple(concepts.shape) if isinstance(concepts, Tensor) else type(concepts).__name__
            raise ValueError(f"Expected `concepts` to have shape ({b}, K), but got {got!r}.")
        out = torch.full((b,), self.base, dtype=torch.float32, device=targets.device)
        flat = targets.reshape(b, -1)
        for r in self.rules:
            if r.kind == "class":
                match = (flat == r.index).any(dim=1).float()
            elif concepts is not None and r.index < concepts.shape[1]:
                match = concepts[:, r.index].float().clamp(0, 1).to(targets.device)
            else:
                continue
            out = torch.maximum(out, r.p * match)
        return out

    def explain(self) -> str:
        """Why the policy is set so, one clause per rule (and the transform's settings, when it carries any)."""
        parts = [f"base p={self.base:.2f}"] + [r.describe() for r in self.rules]
        head = f"{self.augmentation}: " if self.augmentation else ""
        if self.params:
            settings = ", ".join(f"{k}={_show(v)}" for k, v in self.params.items())
            parts.append(f"with {settings}" + (f" ({self.params_reason})" if self.params_reason else ""))
        return head + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "base": self.base,
            "augmentation": self.augmentation,
            "rules": [{"kind": r.kind, "index": r.index, "p": r.p, "reason": r.reason, "name": r.name}
                      for r in self.rules],
            "params": {k: list(v) if isinstance(v, tuple) else v for k, v in self.params.items()},
            "params_reason": self.params_reason,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AugmentationPolicy:
        rules = tuple(PolicyRule(str(r["kind"]), int(r["index"]), float(r["p"]),  # type: ignore[arg-type]
                                 str(r.get("reason", "")), str(r.get("name", ""))) for r in d.get("rules", []))
        # JSON has no tuples: ranges such as ``intensity`` come back as lists and are restored.
        params = {str(k): tuple(v) if isinstance(v, list) else v for k, v in (d.get("params") or {}).items()}
        return cls(base=float(d.get("base", 0.0)), rules=rules, augmentation=str(d.get("augmentation", "")),
                   params=params, params_reason=str(d.get("params_reason", "")))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> AugmentationPolicy:
        return cls.from_dict(json.loads(text))


def _show(value: Any) -> str:
    if isinstance(value, (tuple, list)):
        return "(" + ", ".join(_show(v) for v in value) + ")"
    return f"{value:.2f}" if isinstance(value, float) else repr(value)


# --------------------------------------------------------------------------------------------------------------
# Policies from failure evidence
# --------------------------------------------------------------------------------------------------------------


class Strength(Protocol):
    """A measured range of a transform's strength (``debugger.failures.Darkening`` is one)."""

    @property
    def low(self) -> float: ...

    @property
    def high(self) -> float: ...

    def describe(self, concept: str) -> str: ...


class Failure(Protocol):
    """What :func:`derive_policies` reads of one failure concept (``debugger.failures.FailureEvidence`` is one).

    Shape:
        - confusion_in: ``(K, K)`` counts inside the concept's slice
        - confusion_all: ``(K, K)`` counts over the whole probe set, the slice included
    """

    @property
    def name(self) -> str: ...

    @property
    def matches(self) -> str | None: ...

    @property
    def lift(self) -> float: ...

    @property
    def confusion_in(self) -> Tensor: ...

    @property
    def confusion_all(self) -> Tensor: ...

    @property
    def darkening(self) -> Strength | None: ...


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
    failures: Sequence[Failure],
    augmentations: Mapping[str, str] = DEFAULT_AUGMENTATIONS,
    fallback: str | None = None,
    base: float = 0.0,
    max_p: float = 0.8,
    min_class_support: int = 3,
    class_names: Sequence[str] | None = None,
    strength_params: Mapping[str, str] | None = STRENGTH_PARAMS,
) -> dict[str, AugmentationPolicy]:
    """One policy per transform from the failure concepts.

    A failure's transform is ``augmentations[matches or name]`` (``fallback`` when absent; None skips it). The
    classes whose error rate inside the concept's slice exceeds their error rate outside it, with at least
    ``min_class_support`` samples in the slice, get a class rule with
    ``p = base + (max_p - base) · (err_in - err_out) / err_in``, so a class that fails only under the concept is
    augmented hardest. A class that several failures point at under the same transform keeps its strongest rule.
    A transform in ``strength_params`` whose failures carry a measured strength (``darkening``) gets ``params``
    setting that argument to the measured 10th–90th percentile range (from the failure with the largest lift);
    None or ``{}`` turns this off.

    Example:
        >>> from types import SimpleNamespace as Evidence
        >>> inside = torch.tensor([[1, 3], [0, 4]])  # class 0 wrong 3/4 times inside the slice
        >>> overall = torch.tensor([[8, 4], [1, 9]])  # ... and 1/8 outside it (4 - 3 of 12 - 4)
        >>> shadow = Evidence(name="shadow", matches="shadow", lift=2.5, confusion_in=inside, confusion_all=overall,
        ...                   darkening=None)
        >>> derive_policies([shadow])["SyntheticShadow"].probabilities(torch.tensor([0, 1])).tolist()
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
    strength: dict[str, Failure] = {}
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


def why_no_rule(failure: Failure, min_class_support: int = 3) -> str | None:
    """Why :func:`derive_policies` gives ``failure`` no class rule, or None when it gives one.

    A class gets a rule when it has at least ``min_class_support`` samples in the slice and is wrong more often
    inside the slice than outside it.

    Example:
        >>> from types import SimpleNamespace as Evidence
        >>> inside = torch.tensor([[1, 1], [0, 1]])  # two images of class 0 and one of class 1 in the slice
        >>> why_no_rule(Evidence(name="shadow", confusion_in=inside, confusion_all=inside + 5))
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
