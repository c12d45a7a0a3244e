"""ConceptMonitor in real Trainer runs: galleries, grid, projector within its limits, the concept store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from _cbtiny import event_accumulator, make_module, make_trainer

from callbacks.concept_monitor import ConceptMonitor, pca_layout, select_points, sprite_thumbnail_size
from callbacks.findings import ConceptReportFinding


def _monitor(**kw: Any) -> ConceptMonitor:
    opts: dict[str, Any] = dict(
        patches="window",
        n_concepts=3,
        top_k=8,
        min_support=2,
        max_galleries=2,
        grid=(4, 4),
        probe_size=12,
        analysis_kwargs={"patch_kwargs": {"sizes": (4,), "strides": (2,)}},
    )
    opts.update(kw)
    return ConceptMonitor("layer1", **opts)


def test_sprite_thumbnails_shrink_to_keep_the_sprite_within_8192_px() -> None:
    for n in (1, 50, 2000, 10_000):
        size = sprite_thumbnail_size(n, 64)
        assert size <= 64 and size * int(torch.tensor(n).sqrt().ceil()) <= 8192
    assert sprite_thumbnail_size(10_000, 128) == 81
    with pytest.raises(ValueError, match="Expected positive `num_points`"):
        sprite_thumbnail_size(0, 32)


def test_select_points_is_seeded_sorted_and_capped() -> None:
    a = select_points(50, 10, seed=1)
    assert a.tolist() == sorted(a.tolist()) and len(set(a.tolist())) == 10
    assert torch.equal(a, select_points(50, 10, seed=1))
    assert select_points(5, 10, seed=1).tolist() == [0, 1, 2, 3, 4]


def test_pca_layout_matches_sklearn_up_to_sign() -> None:
    decomposition = pytest.importorskip("sklearn.decomposition")
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(0)) * torch.tensor([5.0, 3, 1, 1, 1, 1])
    ours = pca_layout(x)
    ref = torch.from_numpy(decomposition.PCA(2).fit_transform(x.double().numpy())).float()
    assert torch.allclose(ours.abs(), ref.abs(), atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layer": ""}, "Expected `layer` to be a dotted module name"),
        ({"layer": "a", "max_projector_points": 20_000}, r"Expected `max_projector_points` to be in \[1, 10000\]"),
        ({"layer": "a", "grid": (0, 4)}, "Expected `grid` to be None or"),
        ({"layer": "a", "grid_layout": "umap"}, "Expected `grid_layout` to be one of"),
        ({"layer": "a", "gallery_size": 0}, "Expected `gallery_size` to be a positive integer"),
    ],
)
def test_concept_monitor_rejects_bad_configuration(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ConceptMonitor(**kwargs)


def test_galleries_grid_projector_and_store_after_a_real_run(tmp_path: Path) -> None:
    from debugger.report import ConceptReport

    mon = _monitor()
    make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=2).fit(make_module("pytorch_lightning"))
    log_dir = tmp_path / "run" / "version_0"
    acc = event_accumulator(log_dir)
    tags = acc.Tags()
    galleries = {t for t in tags["images"] if t.startswith("concepts/gallery/concept_")}
    assert len(galleries) >= 2 and "concepts/grid" in tags["images"]
    assert all(len(acc.Images(t)) <= 2 for t in galleries)  # one per run per concept number
    assert sum(len(acc.Images(t)) for t in galleries) == 4  # max_galleries per run
    assert [e.step for e in acc.Images("concepts/grid")] == [3, 6]
    assert {"concepts/count", "concepts/failures", "concepts/top/error_in"} <= set(tags["scalars"])
    assert "concepts/summary/text_summary" in tags["tensors"]

    config = (log_dir / "projector_config.pbtxt").read_text()
    assert config.count("embeddings {") == 2 and "sprite" in config
    names = [line.split('"')[1] for line in config.splitlines() if "tensor_name" in line]
    assert names == ["concepts/patches (latest) layer1 epoch 1:00006", "concepts/patches layer1 epoch 0:00003"]
    assert min(names) == names[0]  # the projector opens on the first name in its order: the latest run
    sprite_dirs = sorted(p.parent for p in log_dir.glob("*/*/sprite.png"))
    assert len(sprite_dirs) == 2
    from PIL import Image

    n_points = len((sprite_dirs[-1] / "metadata.tsv").read_text().strip().splitlines()) - 1
    assert n_points == len(mon.latest_report.patches)  # type: ignore[union-attr]
    assert max(Image.open(sprite_dirs[-1] / "sprite.png").size) <= 8192
    header = (sprite_dirs[-1] / "metadata.tsv").read_text().splitlines()[0].split("\t")
    assert header == ["concept", "correct", "concept and correct", "class", "image", "ground truth"]
    first = (sprite_dirs[-1] / "metadata.tsv").read_text().splitlines()[1].split("\t")
    assert first[0].startswith("concept ") and first[2] == f"{first[0]} {'right' if first[1] == 'yes' else 'wrong'}"

    store = log_dir / "conceptfix" / "concepts" / "reports"
    assert len(list(store.glob("report-epoch*.json"))) == 2
    latest = ConceptReport.load(store / "latest.json")
    assert latest.concept_names == mon.latest_report.concept_names  # type: ignore[union-attr]
    assert latest.meta["epoch"] == 1 and latest.meta["probe_indices"] == mon.probe_indices


def test_projector_points_are_capped_and_the_report_survives_resume(tmp_path: Path) -> None:
    mon = _monitor(max_projector_points=10, thumbnail_size=8)
    make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1).fit(make_module("pytorch_lightning"))
    assert mon.runs[-1]["projector_points"] == 10
    meta = next((tmp_path / "run" / "version_0").glob("*/*/metadata.tsv"))
    assert len(meta.read_text().strip().splitlines()) == 11

    restored = _monitor()
    restored.load_state_dict(mon.state_dict())
    assert restored.latest_report is not None
    assert restored.latest_report.concept_names == mon.latest_report.concept_names  # type: ignore[union-attr]
    found = restored.finding(ConceptReportFinding)
    assert found is not None and list(found.probe_indices) == mon.probe_indices  # what consumers read on resume
    # concept numbers go on from the stored report: the same concepts keep their numbers after a resume
    from debugger.identity import member_keys

    report = mon.latest_report
    assert report is not None
    assert restored._tracker.update(report.centroids, member_keys(report)) == report.meta["concept_ids"]


def test_the_report_finding_maps_its_concept_slices_onto_another_probe_by_dataset_index(tmp_path: Path) -> None:
    mon = _monitor()
    make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1, logger=False).fit(
        make_module("pytorch_lightning")
    )
    probe = mon.probe()
    assert probe is not None and mon.latest_report is not None
    reversed_probe = probe.take(len(probe))
    reversed_probe.indices = list(reversed(probe.indices)) + [10_000]
    found = mon.finding(ConceptReportFinding)
    assert found is not None and found.report is mon.latest_report
    names, member, covered = found.slices(reversed_probe.indices)
    assert names == mon.latest_report.concept_names
    expected = mon.latest_report.membership.bool().flip(1)
    assert torch.equal(member[:, :-1], expected) and not member[:, -1].any()
    assert covered.tolist() == [True] * len(probe) + [False]


def test_concepts_of_a_run_score_new_images_also_after_a_resume(tmp_path: Path) -> None:
    from _cbtiny import TinyConcepts

    from debugger.report import ConceptReport

    mon = _monitor()
    module = make_module("pytorch_lightning")
    make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1, logger=False).fit(module)
    report, probe = mon.latest_report, mon.probe()
    assert report is not None and probe is not None and report.discovery is not None
    stored = ConceptReport.load(mon.latest_report_path)  # type: ignore[arg-type]
    assert torch.equal(stored.discovery["weights"], report.discovery["weights"])  # type: ignore[index]

    # Re-scoring the run's own probe images with the unchanged model gives back the run's scores and slices.
    restored = _monitor()
    restored.load_state_dict(mon.state_dict())  # what a resumed run has: the report re-read from the store
    best, member = restored.score_images(probe.batch.images, module)
    expected = torch.zeros_like(best).fill_(-torch.inf).scatter_reduce(
        1, report.patches.image_index.view(1, -1).expand_as(report.scores), report.scores, "amax")
    torch.testing.assert_close(best, expected, atol=1e-4, rtol=1e-4)
    assert torch.equal(member, report.membership.bool())

    # New images: scored for every concept, by their own patches; the model as trained further scores differently.
    fresh = torch.stack([TinyConcepts(6, seed=5)[i]["image"] for i in range(6)])
    best_new, member_new = restored.score_images(fresh, module)
    assert best_new.shape == member_new.shape == (len(report.concepts), 6) and torch.isfinite(best_new).all()
    with torch.no_grad():
        module.layer1[0].weight.mul_(1.5)
    assert not torch.allclose(restored.score_images(fresh, module)[0], best_new)
    assert module.training  # scoring left the module's mode alone


def test_scoring_without_a_run_or_a_discovery_model_says_what_is_missing() -> None:
    import dataclasses

    from torch import nn

    mon = _monitor()
    with pytest.raises(ValueError, match="Expected a ConceptMonitor that has run"):
        mon.score_images(torch.zeros(1, 3, 8, 8), nn.Conv2d(3, 3, 1))
    from debugger.report import ConceptReport
    from debugger.structures import PatchSet

    empty = ConceptReport("classification", "layer1", 2, [], PatchSet(torch.zeros(0, dtype=torch.long),
                          torch.zeros(0, 4, dtype=torch.long)), torch.zeros(0, 1, dtype=torch.bool),
                          torch.zeros(0, 0, dtype=torch.long), torch.zeros(0, 2, 2, dtype=torch.long), [])
    with pytest.raises(ValueError, match="Expected a report that kept its k-means/NMF discovery model"):
        dataclasses.replace(empty).score(torch.zeros(2, 4))


def test_keep_last_bounds_the_projector_tensors_and_reports_on_disk(tmp_path: Path) -> None:
    mon = _monitor(keep_last=1, max_projector_points=40)
    make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=3).fit(make_module("pytorch_lightning"))
    log_dir = tmp_path / "run" / "version_0"
    config = (log_dir / "projector_config.pbtxt").read_text()
    assert config.count("embeddings {") == 1
    assert 'tensor_name: "concepts/patches (latest) layer1 epoch 2:00009"' in config
    assert [p.parent.parent.name for p in log_dir.glob("*/*/tensors.tsv")] == ["00009"]
    assert sorted(p.name for p in log_dir.iterdir() if p.name.isdigit()) == ["00009"]  # empty step folders go too
    store = log_dir / "conceptfix" / "concepts" / "reports"
    assert [p.name for p in store.glob("report-epoch*.json")] == ["report-epoch0002-step0000009.json"]
    assert mon.latest_report_path == str(store / "report-epoch0002-step0000009.json")
    assert (store / "latest.json").exists()


def test_keep_last_must_be_positive_or_none() -> None:
    with pytest.raises(ValueError, match=r"Expected `keep_last` to be a positive integer or None, but got 0\."):
        _monitor(keep_last=0)
    assert _monitor(keep_last=None).keep_last is None


def test_without_a_logger_or_a_root_of_its_own_the_report_is_published_but_not_written(tmp_path: Path,
                                                                                       monkeypatch: Any) -> None:
    from _cbtiny import lightning

    monkeypatch.chdir(tmp_path)
    mon = _monitor(grid=None)
    lightning("pytorch_lightning").Trainer(
        max_epochs=1, logger=False, callbacks=[mon], enable_progress_bar=False, enable_checkpointing=False,
        enable_model_summary=False, num_sanity_val_steps=0).fit(make_module("pytorch_lightning"))
    assert mon.latest_report is not None and mon.finding(ConceptReportFinding) is not None
    assert mon.latest_report_path is None and list(tmp_path.iterdir()) == []


def test_a_concept_found_again_keeps_its_number_and_its_gallery_tag_across_epochs(tmp_path: Path) -> None:
    from debugger.identity import member_keys
    from debugger.report import ConceptReport

    torch.manual_seed(0)  # the loader's shuffle: the same run whatever ran before in this process
    mon = _monitor(grid=None, projector=False, max_galleries=3)
    module = make_module("pytorch_lightning", lr=0.001)
    make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=3).fit(module)
    log_dir = tmp_path / "run" / "version_0"
    store = log_dir / "conceptfix" / "concepts" / "reports"
    reports = [ConceptReport.load(p) for p in sorted(store.glob("report-epoch*.json"))]
    assert len(reports) == 3
    kept = 0
    for before, after in zip(reports, reports[1:], strict=False):
        ids_before, ids_after = before.meta["concept_ids"], after.meta["concept_ids"]
        assert len(set(ids_after)) == len(ids_after)  # one number per concept
        old = dict(zip(member_keys(before), ids_before, strict=True))
        for keys, number in zip(member_keys(after), ids_after, strict=True):
            if keys in old:  # the same member patches: the same concept, so the same number
                assert number == old[keys]
                kept += 1
    assert kept >= 1  # a slow learning rate leaves some concepts unchanged between epochs
    acc = event_accumulator(log_dir)
    steps = {t: [e.step for e in acc.Images(t)] for t in acc.Tags()["images"] if "/gallery/" in t}
    ranked = [[after.meta["concept_ids"][[c.id for c in after.concepts].index(r.concept)] for r in after.ranking[:3]]
              for after in reports]
    for run, numbers in enumerate(ranked):
        for n in numbers:
            assert 3 * (run + 1) in steps[f"concepts/gallery/concept_{n:02d}"]
    assert any(len(v) > 1 for v in steps.values())  # the step slider of one tag shows one concept over time


def test_galleries_carry_a_caption_band_above_the_patches(tmp_path: Path) -> None:
    import io

    import numpy as np
    from PIL import Image

    mon = _monitor(grid=None, projector=False, gallery_size=16)
    make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1).fit(make_module("pytorch_lightning"))
    acc = event_accumulator(tmp_path / "run" / "version_0")
    tag = next(t for t in acc.Tags()["images"] if t.startswith("concepts/gallery/concept_"))
    event = acc.Images(tag)[0]
    img = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    mosaic_height = 2 + 2 * (48 + 2)  # 16 tiles of 48 px in rows of 8
    assert img.shape[0] > mosaic_height + 20 and img.shape[1] == 2 + 8 * (48 + 2)
    band = img[: img.shape[0] - mosaic_height]
    dark = (band.mean(axis=2) < 100).mean()
    assert 0.01 < dark < 0.5  # text is drawn on the white band


def test_a_failure_concept_shows_whole_misclassified_images_with_true_and_predicted_class(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    import numpy as np
    from PIL import Image

    from debugger.ranking import ConceptFailure

    # Tiny data holds no significant failure: every ranked concept is taken for one, to draw its images.
    monkeypatch.setattr(ConceptFailure, "reported", property(lambda self: True))
    torch.manual_seed(0)
    mon = _monitor(grid=None, projector=False, max_galleries=1)
    make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1).fit(make_module("pytorch_lightning"))
    report = mon.latest_report
    assert report is not None and report.image_accuracy is not None
    number = report.meta["concept_ids"][[c.id for c in report.concepts].index(report.ranking[0].concept)]
    acc = event_accumulator(tmp_path / "run" / "version_0")
    tag = f"concepts/failure_images/concept_{number:02d}"
    assert tag in acc.Tags()["images"]
    img = np.asarray(Image.open(io.BytesIO(acc.Images(tag)[0].encoded_image_string)).convert("RGB"))
    i = [c.id for c in report.concepts].index(report.ranking[0].concept)
    top_images = report.patches.image_index[report.top_patches[i]].tolist()
    wrong = {m for m in top_images if float(report.image_accuracy[m]) < 0.5}
    tiles = min(8, len(wrong))
    assert img.shape[1] == 2 + min(4, tiles) * (96 + 2)  # whole images, 96 px, 4 a row
    rows = -(-tiles // 4)
    band = img[: img.shape[0] - (2 + rows * (96 + 2))]
    assert band.shape[0] >= 3 * 14  # name, count, and true → predicted lines
    assert 0.005 < (band.mean(axis=2) < 100).mean() < 0.5  # text on the white band
