"""FailureDrivenAugmentation: policies derived from failure evidence, applied, logged, kept across resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _cbtiny import event_accumulator, lightning, make_module, make_trainer
from torch import nn

from augment.policy import AugmentationPolicy
from callbacks.failure_driven_augmentation import (
    Darkening,
    FailureDrivenAugmentation,
    FailureEvidence,
    class_error_rates,
    concept_darkening,
    derive_policies,
    policy_changes,
    why_no_rule,
)


class Holder:
    def __init__(self) -> None:
        self.policy = AugmentationPolicy()


def test_class_error_rates_are_per_true_class() -> None:
    err, n = class_error_rates(torch.tensor([[3, 1, 0], [2, 2, 0], [0, 0, 0]]))
    assert err[:2].tolist() == [0.25, 0.5] and torch.isnan(err[2]) and n.tolist() == [4, 4, 0]


def test_derive_policies_targets_classes_that_fail_more_inside_the_slice() -> None:
    inside = torch.tensor([[4, 0, 0], [3, 1, 0], [0, 0, 1]])  # class 1 wrong 3/4 inside
    overall = torch.tensor([[20, 0, 0], [5, 19, 0], [0, 0, 9]])  # 5/24 overall, 2/20 outside the slice
    policies = derive_policies(
        [FailureEvidence("cluster-2", "shadow", 3.0, inside, overall)], base=0.1, max_p=0.9,
        min_class_support=2, class_names=["a", "b", "c"],
    )
    assert list(policies) == ["SyntheticShadow"]
    (rule,) = policies["SyntheticShadow"].rules
    assert (rule.kind, rule.index, rule.name) == ("class", 1, "b")
    # compared with the error outside the slice (10%), not the overall error (21%) that includes the slice
    assert rule.p == pytest.approx(0.1 + 0.8 * (0.75 - 0.10) / 0.75, abs=1e-4)
    assert "75%" in rule.reason and "10% outside" in rule.reason and "shows shadow" in rule.reason
    # class 2 has one sample in the slice: below min_class_support; class 0 never fails
    assert derive_policies([FailureEvidence("stripes", None, 2.0, inside, overall)]) == {}
    fb = derive_policies([FailureEvidence("stripes", None, 2.0, inside, overall)], fallback="HideAndSeek")
    assert list(fb) == ["HideAndSeek"]
    with pytest.raises(ValueError, match="Expected 0 <= `base` <= `max_p` <= 1"):
        derive_policies([], base=0.9, max_p=0.5)


def test_the_strongest_rule_wins_when_two_failures_share_a_transform() -> None:
    overall = torch.tensor([[10, 0], [5, 10]])
    weak = FailureEvidence("shadow", None, 1.5, torch.tensor([[5, 0], [2, 3]]), overall)  # 40% in, 30% out
    strong = FailureEvidence("cluster-1", "shadow", 4.0, torch.tensor([[5, 0], [4, 1]]), overall)  # 80% in, 10% out
    (rule,) = derive_policies([weak, strong])["SyntheticShadow"].rules
    assert rule.p == pytest.approx(0.8 * (0.8 - 0.1) / 0.8) and "cluster-1" in rule.reason


def test_a_class_failing_only_inside_the_slice_gets_max_p_even_when_the_slice_dominates_the_errors() -> None:
    # Every error of class 1 is inside the slice: outside it class 1 is always right. Compared with its overall
    # error (50%, which includes the slice) it would get only half of max_p.
    inside = torch.tensor([[3, 0], [3, 0]])
    overall = torch.tensor([[6, 0], [3, 3]])
    policies = derive_policies([FailureEvidence("shadow", None, 3.0, inside, overall)], max_p=0.9)
    (rule,) = policies["SyntheticShadow"].rules
    assert rule.index == 1 and rule.p == pytest.approx(0.9)


def test_concept_darkening_reads_the_brightness_removed_under_the_mask() -> None:
    x = torch.full((3, 3, 8, 8), 0.6)
    mask = torch.zeros(3, 8, 8, dtype=torch.bool)
    mask[:, :, :4] = True
    x[0, :, :, :4] *= 1 - 0.9  # 90% removed on the left half
    x[1, :, :, :4] *= 1 - 0.5
    # image 2: a bright object on a black background, shadowed by 80% over its left half; the shadow mask
    # also covers black background (as on Fashion-MNIST), which must not count as darkening
    x[2] = 0.0
    x[2, :, 2:6, 2:6] = 0.7
    x[2, :, 2:6, 2:4] *= 0.2
    d = concept_darkening(x, mask)
    assert d.tolist() == pytest.approx([0.9, 0.5, 0.8], abs=1e-5)
    # with object masks only the object's pixels count; an image without object pixels outside is not measured
    obj = torch.zeros(3, 8, 8, dtype=torch.bool)
    obj[:, 2:6, 2:6] = True
    obj[1] = mask[1]
    d = concept_darkening(x, mask, obj)
    assert d[0].item() == pytest.approx(0.9, abs=1e-5) and torch.isnan(d[1]) and d[2].item() == pytest.approx(0.8)
    with pytest.raises(ValueError, match=r"Expected `concept_masks` to have shape \(3, 8, 8\)"):
        concept_darkening(x, mask[:, :4])
    with pytest.raises(ValueError, match=r"Expected `images` to have shape \(B, C, H, W\)"):
        concept_darkening(x[0], mask)
    with pytest.raises(ValueError, match="Expected `quantile` to be in"):
        concept_darkening(x, mask, quantile=1.5)


def test_darkening_summary_needs_enough_images() -> None:
    d = Darkening.from_values(torch.linspace(0.5, 0.9, 11))
    assert d is not None and (d.median, d.low, d.high, d.n) == pytest.approx((0.7, 0.54, 0.86, 11))
    assert Darkening.from_dict(d.to_dict()) == d
    assert Darkening.from_values(torch.tensor([0.5, float("nan"), 0.6]), min_images=3) is None


def test_a_measured_darkening_sets_the_shadow_strength_of_the_policy() -> None:
    inside = torch.tensor([[1, 3], [0, 4]])
    overall = torch.tensor([[8, 4], [1, 9]])
    deep = Darkening(median=0.9, low=0.85, high=0.95, n=40)
    shadow = FailureEvidence("shadow", "shadow", 2.5, inside, overall, darkening=deep)
    occluder = FailureEvidence("occluder", "occluder", 2.0, inside, overall, darkening=deep)
    policies = derive_policies([shadow, occluder])
    assert policies["SyntheticShadow"].params == {"intensity": (0.85, 0.95)}
    assert "removes 90% of the brightness" in policies["SyntheticShadow"].params_reason
    assert policies["Cutout"].params == {}  # Cutout has no strength to set
    # the failure with the largest lift decides when two measured failures drive the same transform
    weaker = FailureEvidence("cluster-0", "shadow", 1.5, inside, overall, darkening=Darkening(0.5, 0.4, 0.6, 9))
    assert derive_policies([weaker, shadow])["SyntheticShadow"].params == {"intensity": (0.85, 0.95)}
    # switched off, or nothing measured: the transform keeps its own settings
    assert derive_policies([shadow], strength_params=None)["SyntheticShadow"].params == {}
    unmeasured = FailureEvidence("shadow", "shadow", 2.5, inside, overall)
    assert derive_policies([unmeasured])["SyntheticShadow"].params == {}


def test_slice_counts_larger_than_the_probe_set_are_rejected() -> None:
    with pytest.raises(ValueError, match="Expected the slice counts of 'shadow'"):
        derive_policies([FailureEvidence("shadow", None, 2.0, torch.tensor([[5, 0], [4, 1]]),
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


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": "oracle"}, "Expected `source` to be one of"),
        ({"base": 0.5, "max_p": 0.2}, "Expected 0 <= `base` <= `max_p` <= 1"),
        ({"min_precision": 2.0}, "Expected `min_precision` to be in"),
        ({"min_class_support": 0}, "Expected `min_class_support`"),
        ({"targets": {"Cutout": object()}}, "Expected target 'Cutout' to have a `policy` attribute"),
    ],
)
def test_failure_driven_augmentation_rejects_bad_configuration(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FailureDrivenAugmentation(**kwargs)


def _confusion_source(flavour: str) -> Any:
    """A callback carrying a ConfusionMonitor-style result in which class 1 fails on 'bright' images."""
    L = lightning(flavour)

    class FakeConfusion(L.Callback):
        latest = {
            "step": 3,
            "names": ["bright", "stripe", "clean"],
            "counts": [[[4, 0, 0], [3, 1, 0], [0, 0, 4]], [[2, 0, 0], [0, 2, 0], [0, 0, 2]],
                       [[4, 0, 0], [0, 4, 0], [0, 0, 4]]],
            "overall": [[8, 0, 0], [3, 7, 0], [0, 0, 8]],
            "ranking": [
                {"name": "bright", "is_failure": True, "lift": 4.0},
                {"name": "stripe", "is_failure": False, "lift": 1.0},
                {"name": "clean", "is_failure": False, "lift": 0.0},
            ],
        }

    return FakeConfusion()


def test_policy_is_applied_logged_written_and_restored(tmp_path: Path) -> None:
    holder = Holder()
    seen: list[dict[str, AugmentationPolicy]] = []
    fda = FailureDrivenAugmentation(targets={"SyntheticShadow": holder}, on_update=seen.append,
                                    augmentations={"bright": "SyntheticShadow"}, min_class_support=2)
    trainer = make_trainer("pytorch_lightning", tmp_path, [_confusion_source("pytorch_lightning"), fda], max_epochs=2)
    trainer.fit(make_module("pytorch_lightning"))

    (rule,) = holder.policy.rules
    assert (rule.index, rule.p) == (1, pytest.approx(0.8 * (0.75 - 0.0) / 0.75, abs=1e-4))  # right outside
    assert len(seen) == 1  # the second epoch changed nothing
    acc = event_accumulator(tmp_path / "run" / "version_0")
    assert "augmentation/policy/text_summary" in acc.Tags()["tensors"]
    assert {"augmentation/SyntheticShadow/max_p", "augmentation/failures"} <= set(acc.Tags()["scalars"])
    history = json.loads((tmp_path / "run" / "version_0" / "conceptfix" / "augmentation" / "policy.json").read_text())
    assert [len(h["changes"]) for h in history] == [1, 0] and history[0]["failures"] == ["bright"]
    assert "FakeConfusion of step 3" in history[0]["evidence"]

    holder2 = Holder()
    resumed = FailureDrivenAugmentation(targets={"SyntheticShadow": holder2})
    resumed.load_state_dict(fda.state_dict())
    resumed.on_fit_start(None, None)
    assert holder2.policy == holder.policy


def _bright_report() -> Any:
    """A real ConceptReport in which discovered 'cluster-0' shows the 'bright' concept and is a failure."""
    from debugger.pipeline import ConceptAnalysis
    from debugger.structures import Concept

    # class c has channel c raised; a "bright" top-left quarter on channel 0 flips classes 1 and 2 to class 0
    n = 24
    targets = torch.arange(n) % 3
    images = torch.zeros(n, 3, 8, 8)
    images[torch.arange(n), targets] = 1.0
    bright = torch.arange(n) % 2 == 0
    images[bright, 0, :4, :4] += 8.0
    masks = torch.zeros(n, 1, 8, 8, dtype=torch.bool)
    masks[bright, 0, :4, :4] = True
    model = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def by_ground_truth(embeddings: torch.Tensor, patches: Any) -> list[Concept]:
        s = patches.concept_overlap[:, 0].float()
        return [Concept(0, "cluster-0", (s > 0).nonzero().flatten(), s),
                Concept(1, "cluster-1", (s == 0).nonzero().flatten(), 1 - s)]

    batch = {"image": images, "target": targets, "concepts": bright.float()[:, None], "concept_masks": masks}
    return ConceptAnalysis(model, "0", patches="window", discovery=by_ground_truth, top_k=12, min_support=2,
                           patch_kwargs={"sizes": (4,), "strides": (4,)}).run([batch], concept_names=["bright"])


def test_policy_from_a_saved_concept_report_uses_the_ground_truth_its_patches_show(tmp_path: Path) -> None:
    report = _bright_report()
    assert [f.name for f in report.failures] == ["cluster-0"]
    path = report.save(tmp_path / "report.json")

    fda = FailureDrivenAugmentation(report_path=str(path), augmentations={"bright": "SyntheticShadow"})
    found = fda.evidence(trainer=None)
    assert found is not None
    failures, _, where = found
    assert failures[0].matches == "bright" and where == str(path)
    policy = derive_policies(failures, {"bright": "SyntheticShadow"})["SyntheticShadow"]
    assert sorted(r.index for r in policy.rules) == [1, 2]  # class 0 is never wrong
    # classes 1 and 2 are always wrong when bright and always right otherwise: the full max_p
    assert all(r.p == pytest.approx(0.8 * (1.0 - 0.0) / 1.0) for r in policy.rules)


def test_joint_batch_training_callbacks_are_targeted_by_occluder_name(tmp_path: Path) -> None:
    from augment import Cutout, JointBatch, SyntheticShadow
    from callbacks.failure_driven_augmentation import training_targets
    from callbacks.joint_batch import JointBatchTraining

    shadow = JointBatchTraining(JointBatch(SyntheticShadow()))
    cutout = JointBatchTraining(JointBatch(Cutout(size=2)))
    assert training_targets([shadow, cutout, Holder()]) == {"SyntheticShadow": shadow, "Cutout": cutout}

    fda = FailureDrivenAugmentation(augmentations={"bright": "SyntheticShadow"}, min_class_support=2)
    callbacks = [_confusion_source("pytorch_lightning"), shadow, fda]
    make_trainer("pytorch_lightning", tmp_path, callbacks, max_epochs=1, logger=False).fit(
        make_module("pytorch_lightning")
    )
    assert shadow.policy is not None and [r.index for r in shadow.policy.rules] == [1]


def test_a_policy_with_nothing_to_drive_is_said_at_setup(tmp_path: Path) -> None:
    trainer = make_trainer("pytorch_lightning", tmp_path, [FailureDrivenAugmentation()], max_epochs=1, logger=False)
    with pytest.warns(UserWarning, match="nothing to drive"):
        trainer.fit(make_module("pytorch_lightning"))


def test_a_log_only_policy_does_not_warn_and_drives_nothing(tmp_path: Path) -> None:
    import warnings

    from augment import JointBatch, SyntheticShadow
    from callbacks.joint_batch import JointBatchTraining

    shadow = JointBatchTraining(JointBatch(SyntheticShadow()))
    before = shadow.policy
    fda = FailureDrivenAugmentation(augmentations={"bright": "SyntheticShadow"}, min_class_support=2, log_only=True)
    trainer = make_trainer("pytorch_lightning", tmp_path, [_confusion_source("pytorch_lightning"), shadow, fda],
                           max_epochs=1, logger=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*nothing to drive")
        trainer.fit(make_module("pytorch_lightning"))
    assert fda.policies  # decided and stored ...
    assert shadow.policy is before  # ... but not applied
    with pytest.raises(ValueError, match="Expected no `targets` and no `on_update` with `log_only=True`"):
        FailureDrivenAugmentation(log_only=True, on_update=print)


def test_auto_source_combines_the_concept_report_and_annotated_confusion_failures() -> None:
    L = lightning("pytorch_lightning")
    report = _bright_report()

    class ReportHolder(L.Callback):
        latest_report = report

    trainer = type("T", (), {"callbacks": [ReportHolder(), _confusion_source("pytorch_lightning")]})()
    found = FailureDrivenAugmentation().evidence(trainer)
    assert found is not None
    failures, _, where = found
    assert [f.name for f in failures] == ["cluster-0", "bright"]
    assert where.startswith("ReportHolder report") and "FakeConfusion of step 3" in where
    only = FailureDrivenAugmentation(source="confusion").evidence(trainer)
    assert only is not None and [f.name for f in only[0]] == ["bright"]


def test_why_no_rule_is_none_exactly_when_the_failure_yields_a_policy():
    g = torch.Generator().manual_seed(0)
    outcomes = set()
    for _ in range(200):
        inside = torch.randint(0, 3, (3, 3), generator=g)
        overall = inside + torch.randint(0, 4, (3, 3), generator=g)
        f = FailureEvidence("shadow", "shadow", 1.5, inside, overall)
        why = why_no_rule(f, min_class_support=3)
        assert (why is None) == bool(derive_policies([f], min_class_support=3)), (inside, overall, why)
        outcomes.add("rule" if why is None else why.split()[0])
    assert outcomes == {"rule", "no", "none"}  # every branch was exercised
