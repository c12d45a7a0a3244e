"""Policies from failure evidence: which classes a failure concept targets, how hard, and what changed.

The evidence here is a local dataclass with the fields of :class:`augment.policy.Failure`: augment never
imports debugger (``tests/debugger/test_failures.py`` checks that debugger's ``FailureEvidence`` fits).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from augment.policy import AugmentationPolicy, class_error_rates, derive_policies, policy_changes, why_no_rule


@dataclass(frozen=True)
class Measured:
    median: float
    low: float
    high: float

    def describe(self, concept: str) -> str:
        return f"'{concept}' removes {self.median:.0%} of the brightness"


@dataclass(frozen=True)
class Evidence:
    name: str
    matches: str | None
    lift: float
    confusion_in: Tensor
    confusion_all: Tensor
    darkening: Measured | None = None


def test_class_error_rates_are_per_true_class() -> None:
    err, n = class_error_rates(torch.tensor([[3, 1, 0], [2, 2, 0], [0, 0, 0]]))
    assert err[:2].tolist() == [0.25, 0.5] and torch.isnan(err[2]) and n.tolist() == [4, 4, 0]


def test_derive_policies_targets_classes_that_fail_more_inside_the_slice() -> None:
    inside = torch.tensor([[4, 0, 0], [3, 1, 0], [0, 0, 1]])  # class 1 wrong 3/4 inside
    overall = torch.tensor([[20, 0, 0], [5, 19, 0], [0, 0, 9]])  # 5/24 overall, 2/20 outside the slice
    policies = derive_policies(
        [Evidence("cluster-2", "shadow", 3.0, inside, overall)], base=0.1, max_p=0.9,
        min_class_support=2, class_names=["a", "b", "c"],
    )
    assert list(policies) == ["SyntheticShadow"]
    (rule,) = policies["SyntheticShadow"].rules
    assert (rule.kind, rule.index, rule.name) == ("class", 1, "b")
    # compared with the error outside the slice (10%), not the overall error (21%) that includes the slice
    assert rule.p == pytest.approx(0.1 + 0.8 * (0.75 - 0.10) / 0.75, abs=1e-4)
    assert "75%" in rule.reason and "10% outside" in rule.reason and "shows shadow" in rule.reason
    # class 2 has one sample in the slice: below min_class_support; class 0 never fails
    assert derive_policies([Evidence("stripes", None, 2.0, inside, overall)]) == {}
    fb = derive_policies([Evidence("stripes", None, 2.0, inside, overall)], fallback="HideAndSeek")
    assert list(fb) == ["HideAndSeek"]
    with pytest.raises(ValueError, match="Expected 0 <= `base` <= `max_p` <= 1"):
        derive_policies([], base=0.9, max_p=0.5)


def test_the_strongest_rule_wins_when_two_failures_share_a_transform() -> None:
    overall = torch.tensor([[10, 0], [5, 10]])
    weak = Evidence("shadow", None, 1.5, torch.tensor([[5, 0], [2, 3]]), overall)  # 40% in, 30% out
    strong = Evidence("cluster-1", "shadow", 4.0, torch.tensor([[5, 0], [4, 1]]), overall)  # 80% in, 10% out
    (rule,) = derive_policies([weak, strong])["SyntheticShadow"].rules
    assert rule.p == pytest.approx(0.8 * (0.8 - 0.1) / 0.8) and "cluster-1" in rule.reason


def test_a_class_failing_only_inside_the_slice_gets_max_p_even_when_the_slice_dominates_the_errors() -> None:
    # Every error of class 1 is inside the slice: outside it class 1 is always right. Compared with its overall
    # error (50%, which includes the slice) it would get only half of max_p.
    inside = torch.tensor([[3, 0], [3, 0]])
    overall = torch.tensor([[6, 0], [3, 3]])
    policies = derive_policies([Evidence("shadow", None, 3.0, inside, overall)], max_p=0.9)
    (rule,) = policies["SyntheticShadow"].rules
    assert rule.index == 1 and rule.p == pytest.approx(0.9)


def test_a_measured_darkening_sets_the_shadow_strength_of_the_policy() -> None:
    inside = torch.tensor([[1, 3], [0, 4]])
    overall = torch.tensor([[8, 4], [1, 9]])
    deep = Measured(median=0.9, low=0.85, high=0.95)
    shadow = Evidence("shadow", "shadow", 2.5, inside, overall, darkening=deep)
    occluder = Evidence("occluder", "occluder", 2.0, inside, overall, darkening=deep)
    policies = derive_policies([shadow, occluder])
    assert policies["SyntheticShadow"].params == {"intensity": (0.85, 0.95)}
    assert "removes 90% of the brightness" in policies["SyntheticShadow"].params_reason
    assert policies["Cutout"].params == {}  # Cutout has no strength to set
    # the failure with the largest lift decides when two measured failures drive the same transform
    weaker = Evidence("cluster-0", "shadow", 1.5, inside, overall, darkening=Measured(0.5, 0.4, 0.6))
    assert derive_policies([weaker, shadow])["SyntheticShadow"].params == {"intensity": (0.85, 0.95)}
    # switched off, or nothing measured: the transform keeps its own settings
    assert derive_policies([shadow], strength_params=None)["SyntheticShadow"].params == {}
    unmeasured = Evidence("shadow", "shadow", 2.5, inside, overall)
    assert derive_policies([unmeasured])["SyntheticShadow"].params == {}


def test_slice_counts_larger_than_the_probe_set_are_rejected() -> None:
    with pytest.raises(ValueError, match="Expected the slice counts of 'shadow'"):
        derive_policies([Evidence("shadow", None, 2.0, torch.tensor([[5, 0], [4, 1]]),
                                         torch.tensor([[10, 0], [2, 8]]))])


def test_policy_changes_report_added_removed_and_reweighted_rules() -> None:
    old = {"Cutout": AugmentationPolicy().with_class(1, 0.5).with_class(2, 0.3)}
    new = {"Cutout": AugmentationPolicy().with_class(1, 0.7, "worse"), "SyntheticShadow":
           AugmentationPolicy().with_class(0, 0.2, "new", name="cat")}
    assert policy_changes(old, new) == [
        "Cutout: class 1 p 0.50 → 0.70 (worse)",
        "Cutout: − class 2 (no longer a failure)",
        "SyntheticShadow: + class cat p=0.20 (new)",
    ]
    assert policy_changes(new, new) == []


def test_why_no_rule_is_none_exactly_when_the_failure_yields_a_policy() -> None:
    g = torch.Generator().manual_seed(0)
    outcomes = set()
    for _ in range(200):
        inside = torch.randint(0, 3, (3, 3), generator=g)
        overall = inside + torch.randint(0, 4, (3, 3), generator=g)
        f = Evidence("shadow", "shadow", 1.5, inside, overall)
        why = why_no_rule(f, min_class_support=3)
        assert (why is None) == bool(derive_policies([f], min_class_support=3)), (inside, overall, why)
        outcomes.add("rule" if why is None else why.split()[0])
    assert outcomes == {"rule", "no", "none"}  # every branch was exercised
