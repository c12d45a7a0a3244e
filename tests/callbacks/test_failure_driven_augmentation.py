"""FailureDrivenAugmentation: policies from the findings on the trainer, published, logged, kept across resumes."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from _cbtiny import event_accumulator, lightning, make_module, make_trainer
from _dbtiny import bright_report

from augment import Cutout, JointBatch, SyntheticShadow
from augment.policy import AugmentationPolicy, derive_policies
from callbacks.failure_driven_augmentation import FailureDrivenAugmentation
from callbacks.findings import ConceptReportFinding, PolicyFinding, Publisher, SliceConfusion
from callbacks.joint_batch import JointBatchTraining
from debugger.ranking import ConceptFailure


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": "oracle"}, "Expected `source` to be one of"),
        ({"base": 0.5, "max_p": 0.2}, "Expected 0 <= `base` <= `max_p` <= 1"),
        ({"min_precision": 2.0}, "Expected `min_precision` to be in"),
        ({"min_class_support": 0}, "Expected `min_class_support`"),
        ({"log_only": True, "on_update": print}, "Expected no `on_update` with `log_only=True`"),
    ],
)
def test_failure_driven_augmentation_rejects_bad_configuration(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FailureDrivenAugmentation(**kwargs)


def _row(concept: int, name: str, is_failure: bool, lift: float) -> ConceptFailure:
    fields: dict[str, Any] = dict.fromkeys(ConceptFailure.__dataclass_fields__, 0)
    fields.update(rank=concept + 1, concept=concept, name=name, is_failure=is_failure, lift=lift, test="fisher",
                  merged_from=(), merged_into=None)
    return ConceptFailure(**fields)


def _confusion_source(flavour: str = "pytorch_lightning") -> Any:
    """A producer of a SliceConfusion in which class 1 fails on 'bright' images (and a discovered 'cluster-0')."""
    L = lightning(flavour)

    class FakeConfusion(Publisher, L.Callback):
        publishes = (SliceConfusion,)

    source = FakeConfusion()
    counts = torch.tensor([[[4, 0, 0], [3, 1, 0], [0, 0, 4]], [[2, 0, 0], [0, 2, 0], [0, 0, 2]],
                           [[4, 0, 0], [0, 4, 0], [0, 0, 4]], [[4, 0, 0], [3, 1, 0], [0, 0, 0]]])
    rows = (_row(0, "bright", True, 4.0), _row(3, "cluster-0", True, 3.0), _row(1, "stripe", False, 1.0),
            _row(2, "clean", False, 0.0))
    source.publish(SliceConfusion(0, 3, ("bright", "stripe", "clean", "cluster-0"),
                                  ("annotated", "annotated", "annotated", "discovered"), counts,
                                  torch.tensor([[8, 0, 0], [3, 7, 0], [0, 0, 8]]), rows))
    return source


def _report_source(report: Any, flavour: str = "pytorch_lightning") -> Any:
    L = lightning(flavour)

    class FakeConcepts(Publisher, L.Callback):
        publishes = (ConceptReportFinding,)

    source = FakeConcepts()
    source.publish(ConceptReportFinding(0, 5, report, tuple(range(24))))
    return source


def test_policy_is_published_logged_written_and_restored(tmp_path: Path) -> None:
    seen: list[dict[str, AugmentationPolicy]] = []
    shadow = JointBatchTraining(JointBatch(SyntheticShadow()))
    fda = FailureDrivenAugmentation(on_update=seen.append, augmentations={"bright": "SyntheticShadow"},
                                    min_class_support=2, source="auto")
    trainer = make_trainer("pytorch_lightning", tmp_path, [_confusion_source(), shadow, fda], max_epochs=2)
    trainer.fit(make_module("pytorch_lightning"))

    # the joint batches train with the published policy of their occluder's transform
    assert shadow.active_policy is fda.policies["SyntheticShadow"]
    (rule,) = fda.policies["SyntheticShadow"].rules
    assert (rule.index, rule.p) == (1, pytest.approx(0.8 * (0.75 - 0.0) / 0.75, abs=1e-4))  # right outside
    assert len(seen) == 1  # the second epoch changed nothing
    acc = event_accumulator(tmp_path / "run" / "version_0")
    assert "augmentation/policy/text_summary" in acc.Tags()["tensors"]
    assert {"augmentation/SyntheticShadow/max_p", "augmentation/failures"} <= set(acc.Tags()["scalars"])
    history = json.loads((tmp_path / "run" / "version_0" / "conceptfix" / "augmentation" / "policy.json").read_text())
    assert [len(h["changes"]) for h in history] == [1, 0]
    # without a report, the discovered slice is evidence too (it matches no transform here)
    assert history[0]["failures"] == ["bright", "cluster-0"]
    assert "FakeConfusion of step 3" in history[0]["evidence"]

    again: list[dict[str, AugmentationPolicy]] = []
    resumed = FailureDrivenAugmentation(on_update=again.append)
    resumed.load_state_dict(fda.state_dict())
    found = resumed.finding(PolicyFinding)
    assert found is not None and found.policies == fda.policies  # a resumed run trains with the policy it had
    resumed.on_fit_start(None, None)
    assert again == [fda.policies]


def test_joint_batches_use_the_policy_of_their_own_transform(tmp_path: Path) -> None:
    cutout = JointBatchTraining(JointBatch(Cutout(size=2)))
    assert (cutout.transform, JointBatchTraining(JointBatch(SyntheticShadow())).transform) == \
        ("Cutout", "SyntheticShadow")
    before = AugmentationPolicy(base=0.5)
    cutout.policy = before
    fda = FailureDrivenAugmentation(augmentations={"bright": "SyntheticShadow"}, min_class_support=2)
    trainer = make_trainer("pytorch_lightning", tmp_path, [_confusion_source(), cutout, fda], max_epochs=1,
                           logger=False)
    assert cutout.active_policy is before  # nothing published yet
    trainer.fit(make_module("pytorch_lightning"))
    # the failures call for shadows only: no Cutout on any sample
    assert cutout.active_policy == AugmentationPolicy(base=0.0, augmentation="Cutout")


def test_policy_from_a_saved_concept_report_uses_the_ground_truth_its_patches_show(tmp_path: Path) -> None:
    report = bright_report()
    assert [f.name for f in report.failures] == ["cluster-0"]
    path = report.save(tmp_path / "report.json")

    fda = FailureDrivenAugmentation(report_path=str(path), augmentations={"bright": "SyntheticShadow"})
    assert fda.needs() == ()  # no producer needed on the trainer
    found = fda.evidence()
    assert found is not None
    failures, _, where = found
    assert failures[0].matches == "bright" and where == str(path)
    policy = derive_policies(failures, {"bright": "SyntheticShadow"})["SyntheticShadow"]
    assert sorted(r.index for r in policy.rules) == [1, 2]  # class 0 is never wrong
    # classes 1 and 2 are always wrong when bright and always right otherwise: the full max_p
    assert all(r.p == pytest.approx(0.8 * (1.0 - 0.0) / 1.0) for r in policy.rules)


def test_a_missing_or_late_producer_fails_at_setup_with_what_to_do(tmp_path: Path) -> None:
    def fit(callbacks: list[Any]) -> None:
        make_trainer("pytorch_lightning", tmp_path, callbacks, max_epochs=1, logger=False).fit(
            make_module("pytorch_lightning"))

    with pytest.raises(ValueError, match="Expected a ConceptMonitor or a ConfusionMonitor before "
                                         "FailureDrivenAugmentation"):
        fit([FailureDrivenAugmentation(log_only=True)])
    with pytest.raises(ValueError, match=r"publishes ConceptReportFinding .* add ConceptMonitor\(layer=\.\.\.\)"):
        fit([_confusion_source(), FailureDrivenAugmentation(source="concepts", log_only=True)])
    with pytest.raises(ValueError, match="Expected FakeConfusion .* before FailureDrivenAugmentation .* move it ahead"):
        fit([FailureDrivenAugmentation(log_only=True), _confusion_source()])


def test_a_policy_with_nothing_to_drive_is_said_at_setup(tmp_path: Path) -> None:
    trainer = make_trainer("pytorch_lightning", tmp_path, [_confusion_source(), FailureDrivenAugmentation()],
                           max_epochs=1, logger=False)
    with pytest.warns(UserWarning, match="nothing to drive"):
        trainer.fit(make_module("pytorch_lightning"))


def test_a_log_only_policy_does_not_warn_and_drives_nothing(tmp_path: Path) -> None:
    shadow = JointBatchTraining(JointBatch(SyntheticShadow()))
    fda = FailureDrivenAugmentation(augmentations={"bright": "SyntheticShadow"}, min_class_support=2, log_only=True)
    trainer = make_trainer("pytorch_lightning", tmp_path, [_confusion_source(), shadow, fda],
                           max_epochs=1, logger=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*nothing to drive")
        trainer.fit(make_module("pytorch_lightning"))
    assert fda.policies  # decided and stored ...
    assert fda.finding(PolicyFinding) is None and shadow.active_policy is None  # ... but not published


def test_auto_source_combines_the_concept_report_and_annotated_confusion_failures(tmp_path: Path) -> None:
    report = bright_report()

    def evidence(source: str) -> list[dict[str, Any]]:
        fda = FailureDrivenAugmentation(source=source, log_only=True)  # type: ignore[arg-type]
        make_trainer("pytorch_lightning", tmp_path / source, [_report_source(report), _confusion_source(), fda],
                     max_epochs=1, logger=False).fit(make_module("pytorch_lightning"))
        return [r["policy_entry"] for r in fda.runs]

    (auto,) = evidence("auto")
    # the discovered slice of the confusion finding is the report's concept again: counted once
    assert auto["failures"] == ["cluster-0", "bright"]
    assert auto["evidence"] == "FakeConcepts report of step 5 and FakeConfusion of step 3"
    (confusion,) = evidence("confusion")
    assert confusion["failures"] == ["bright", "cluster-0"]
