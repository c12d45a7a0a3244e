"""ConfusionMonitor in real Trainer runs: slice confusion equals sklearn's, tags, ranking, diffs."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from _cbtiny import event_accumulator, make_module, make_trainer

from callbacks.confusion_monitor import ConfusionMonitor, ProbePredictions
from callbacks.findings import SliceConfusion


def test_probe_predictions_restore_probe_order() -> None:
    m = ProbePredictions()
    m.update(torch.tensor([0, 2]), torch.tensor([10, 12]))
    m.update(torch.tensor([1]), torch.tensor([11]))
    assert m.compute().tolist() == [10, 11, 12]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"source": "oracle"}, "Expected `source` to be one of"),
        ({"top_k": 0}, "Expected `top_k`"),
        ({"min_support": -1}, "Expected `min_support`"),
        ({"max_matrix_slices": 0}, "Expected `max_matrix_slices`"),
    ],
)
def test_confusion_monitor_rejects_bad_configuration(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ConfusionMonitor(**kwargs)


def test_slice_confusion_equals_sklearn_and_lands_in_tensorboard(tmp_path: Any) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    module = make_module("pytorch_lightning")
    mon = ConfusionMonitor(source="annotated", probe_size=16, min_support=2)
    make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=2).fit(module)

    probe = mon.probe()
    found = mon.finding(SliceConfusion)
    assert probe is not None and found is not None and found.step == 6
    with torch.no_grad():
        module.eval()
        preds = module(probe.batch.images).argmax(1)
    assert found.names == ("bright", "stripe", "clean") and set(found.sources) == {"annotated"}
    counts = found.counts
    assert found.overall.tolist() == metrics.confusion_matrix(probe.batch.targets, preds, labels=[0, 1, 2]).tolist()
    concepts = probe.batch.concepts
    assert concepts is not None
    slices = [concepts[:, 0].bool(), concepts[:, 1].bool(), ~concepts.bool().any(1)]
    for i, keep in enumerate(slices):
        expected = metrics.confusion_matrix(probe.batch.targets[keep], preds[keep], labels=[0, 1, 2])
        assert counts[i].tolist() == expected.tolist()

    acc = event_accumulator(tmp_path / "run" / "version_0")
    tags = acc.Tags()
    assert {"confusion/matrix/bright", "confusion/matrix/clean", "confusion/diff/stripe"} <= set(tags["images"])
    assert [e.step for e in acc.Images("confusion/matrix/bright")] == [3, 6]
    assert [e.step for e in acc.Images("confusion/diff/bright")] == [6]
    expected_scalars = {"confusion/accuracy/all", "confusion/accuracy/bright", "confusion/accuracy_change/clean"}
    assert expected_scalars <= set(tags["scalars"])
    assert "confusion/failure_ranking/text_summary" in tags["tensors"]
    last_bright = acc.Scalars("confusion/accuracy/bright")[-1].value
    assert last_bright == pytest.approx(float((preds[slices[0]] == probe.batch.targets[slices[0]]).float().mean()))

    history = json.loads((tmp_path / "run" / "version_0" / "conceptfix" / "confusion" / "ranking.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert {r["name"] for r in history[-1]["ranking"]} == {"bright", "stripe", "clean"}


def test_previous_counts_survive_a_checkpoint_for_epoch_diffs(tmp_path: Any) -> None:
    mon = ConfusionMonitor(source="annotated", probe_size=8)
    make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1, logger=False).fit(make_module("pytorch_lightning"))
    restored = ConfusionMonitor(source="annotated", probe_size=8)
    restored.load_state_dict(mon.state_dict())
    assert set(restored._previous) == {"bright", "stripe", "clean"}
    assert all(torch.equal(restored._previous[k], mon._previous[k]) for k in mon._previous)


def test_discovered_slices_come_from_the_concept_monitor_and_count_only_its_images(tmp_path: Any) -> None:
    metrics = pytest.importorskip("sklearn.metrics")
    from callbacks.concept_monitor import ConceptMonitor

    concepts = ConceptMonitor(
        "layer1", patches="window", n_concepts=2, top_k=6, probe_size=10, max_galleries=1, grid=None,
        projector=False, analysis_kwargs={"patch_kwargs": {"sizes": (4,), "strides": (4,)}},
    )
    confusion = ConfusionMonitor(source="both", probe_size=14, min_support=1)  # same seed: a superset probe
    module = make_module("pytorch_lightning")
    make_trainer("pytorch_lightning", tmp_path, [concepts, confusion], max_epochs=1, logger=False).fit(module)

    found = confusion.finding(SliceConfusion)
    assert found is not None and concepts.latest_report is not None
    discovered = list(concepts.latest_report.concept_names)
    assert found.names == ("bright", "stripe", "clean", *discovered)
    assert found.sources == ("annotated",) * 3 + ("discovered",) * len(discovered)
    probe = confusion.probe()
    assert probe is not None and probe.indices[:10] == concepts.probe_indices
    with torch.no_grad():
        module.eval()
        preds = module(probe.batch.images).argmax(1)
    counts = found.counts
    for c in range(len(discovered)):
        keep = torch.zeros(14, dtype=torch.bool)
        keep[:10] = concepts.latest_report.membership[c].bool()
        expected = metrics.confusion_matrix(probe.batch.targets[keep], preds[keep], labels=[0, 1, 2])
        assert counts[3 + c].tolist() == expected.tolist()
    rows = {r.name: r for r in found.ranking}
    for name in discovered:  # ranked against the 10 images discovery saw, not all 14
        assert rows[name].count_in + rows[name].count_out == 10
    assert rows["bright"].count_in + rows["bright"].count_out == 14
    assert sorted(r.rank for r in found.ranking) == list(range(1, len(rows) + 1))
    assert all(found.names[r.concept] == r.name for r in found.ranking)
    # discovered concepts change with every discovery: ranked and published, but no TensorBoard tags of their own
    history = json.loads((tmp_path / "conceptfix" / "confusion" / "ranking.json").read_text())
    assert history[-1]["sources"] == list(found.sources)


def test_discovered_slices_need_a_concept_monitor_before_the_confusion_monitor(tmp_path: Any) -> None:
    from callbacks.concept_monitor import ConceptMonitor

    def fit(callbacks: list[Any]) -> None:
        make_trainer("pytorch_lightning", tmp_path, callbacks, max_epochs=1, logger=False).fit(
            make_module("pytorch_lightning"))

    with pytest.raises(ValueError, match=r"publishes ConceptReportFinding .* add ConceptMonitor\(layer=\.\.\.\) to the "
                                         "trainer's `callbacks`, before ConfusionMonitor"):
        fit([ConfusionMonitor(source="discovered")])
    with pytest.raises(ValueError, match="Expected ConceptMonitor .* before ConfusionMonitor .* move it ahead"):
        fit([ConfusionMonitor(source="both"), ConceptMonitor("layer1")])
