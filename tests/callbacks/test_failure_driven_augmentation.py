"""FailureDrivenAugmentation: policies derived from failure evidence, applied, logged, kept across resumes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from _cbtiny import event_accumulator, lightning, make_module, make_trainer
from torch import nn

from augment.policy import AugmentationPolicy, derive_policies
from callbacks.failure_driven_augmentation import FailureDrivenAugmentation


class Holder:
    def __init__(self) -> None:
        self.policy = AugmentationPolicy()


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

