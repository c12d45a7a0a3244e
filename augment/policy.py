"""Concept-targeted augmentation: per-sample probabilities that the closed loop sets and explains.

An :class:`AugmentationPolicy` maps each sample to the probability that it is augmented, from its target
class(es) and its concept vector. The analysis side (which never needs to be imported here) adds rules such
as "augment class 3 with p = 0.8 because its error rate inside the shadow slice is 41% vs 9% outside"; the
augmentation modules take the result as ``probabilities=``. Policies are immutable, JSON-serialisable and
say in words why they are set the way they are.

A sample's probability is the largest of the base probability and every rule that matches it:
a class rule matches when the sample's target is that class (for segmentation: when the class occurs in the
target map); a concept rule matches with strength ``concepts[b, k]`` (so a soft concept score scales it).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
from torch import Tensor

from augment.params import check_probability

RuleKind = Literal["class", "concept"]


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
            :func:`callbacks.failure_driven_augmentation.derive_policies`); whoever builds the transform applies
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
