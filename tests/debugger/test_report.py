import json
import math

import pytest
import torch

from debugger.confusion import concept_confusion, concept_membership, confusion_difference, ensemble_check
from debugger.ranking import rank_failures
from debugger.report import SCHEMA_VERSION, ConceptReport, decode_tensor, encode_tensor
from debugger.structures import Concept, PatchSet


def _report(with_masks=True):
    gen = torch.Generator().manual_seed(0)
    n, p, c, k = 12, 30, 3, 4
    image_index = torch.randint(0, n, (p,), generator=gen)
    boxes = torch.randint(0, 8, (p, 4), generator=gen)
    masks = torch.rand(p, 8, 8, generator=gen) > 0.5 if with_masks else None
    patches = PatchSet(image_index, boxes, masks, torch.rand(p, 2, generator=gen), ("shadow", "tint"), "slic")
    scores = torch.rand(c, p, generator=gen)
    scores[1, 0] = float("nan")
    concepts = [
        Concept(i, f"cluster-{i}", torch.arange(i, p, 3), scores[i], coherence=0.5 if i else float("nan"),
                meta={"seed": i, "weights": torch.arange(3.0), "ratio": float("inf"), "pair": [1, "a"]})
        for i in range(c)
    ]
    clean = torch.nan_to_num(scores, nan=-1.0)
    membership = concept_membership(clean, image_index, n, top_k=5)
    preds = torch.randint(0, k, (n,), generator=gen)
    target = torch.randint(0, k, (n,), generator=gen)
    cm = concept_confusion(preds, target, membership, k)
    probs = torch.rand(n, k, generator=gen).softmax(1)
    return ConceptReport(
        task="classification",
        layer="layer2",
        num_classes=k,
        concepts=concepts,
        patches=patches,
        membership=membership,
        top_patches=torch.topk(clean, 5, dim=1).indices,
        confusion=cm,
        ranking=rank_failures(preds != target, membership, names=[x.name for x in concepts], min_support=1),
        class_names=tuple("abcd"),
        overall_confusion=concept_confusion(preds, target, torch.ones(1, n, dtype=torch.bool), k)[0],
        iou=torch.tensor([[0.5, float("nan"), 1.0, 0.0]] * c),
        image_accuracy=(preds == target).float(),
        ground_truth_precision=torch.tensor([[0.9, 0.1], [0.2, 0.4], [0.0, 0.0]]),
        diffs={"epoch1->epoch2": confusion_difference(cm, cm.flip(0))},
        ensembles={"a+b": ensemble_check(probs, probs.flip(1), target, membership, k)},
        config={"top_k": 5, "patches": "superpixel", "scales": (1, 2)},
        meta={"epoch": 3, "global_step": 120},
    )


def test_json_round_trip_loses_nothing():
    report = _report()
    text = report.to_json()
    again = ConceptReport.from_json(text)
    assert again.to_json() == text
    for name in ("membership", "top_patches", "confusion", "overall_confusion", "iou", "image_accuracy",
                 "ground_truth_precision"):
        a, b = getattr(report, name), getattr(again, name)
        assert a.dtype == b.dtype and a.shape == b.shape
        assert torch.equal(torch.nan_to_num(a.float(), nan=-7.0), torch.nan_to_num(b.float(), nan=-7.0))
    assert torch.equal(again.patches.masks, report.patches.masks)
    assert torch.equal(again.patches.concept_overlap, report.patches.concept_overlap)
    assert again.patches.concept_names == ("shadow", "tint") and again.patches.method == "slic"
    assert math.isnan(again.concepts[1].scores[0]) and math.isnan(again.concepts[0].coherence)
    assert again.concepts[2].meta["ratio"] == math.inf
    assert torch.equal(again.concepts[2].meta["weights"], torch.arange(3.0))
    assert [r.name for r in again.ranking] == [r.name for r in report.ranking]
    assert torch.equal(again.ensembles["a+b"].fixed_a, report.ensembles["a+b"].fixed_a)
    assert torch.equal(again.diffs["epoch1->epoch2"], report.diffs["epoch1->epoch2"])
    assert again.class_names == tuple("abcd") and again.meta == {"epoch": 3, "global_step": 120}


def test_json_is_standard_and_carries_the_schema_version():
    data = json.loads(_report().to_json(), parse_constant=lambda c: pytest.fail(f"non-standard constant {c}"))
    assert data["schema_version"] == SCHEMA_VERSION


def test_float_bits_survive_the_round_trip():
    t = torch.tensor([0.1, 1 / 3, -1e-30, 3.4e38, float("-inf")], dtype=torch.float32)
    assert torch.equal(decode_tensor(json.loads(json.dumps(encode_tensor(t)))), t)
    h = torch.tensor([0.1, 65504.0], dtype=torch.float16)
    assert torch.equal(decode_tensor(encode_tensor(h)), h)
    b = torch.rand(3, 5, 7) > 0.5
    assert torch.equal(decode_tensor(encode_tensor(b)), b)


def test_window_masks_are_stored_as_their_boxes_and_come_back_equal():
    from debugger.report import box_masks

    report = _report(with_masks=False)
    boxes = torch.tensor([[0, 0, 4, 4], [2, 3, 8, 8], [0, 0, 0, 0]])
    report.patches.boxes = boxes.repeat(10, 1)
    report.patches.masks = box_masks(report.patches.boxes, (8, 8))
    data = report.to_dict()
    assert data["patches"]["masks"] == {"from_boxes": [8, 8]}
    again = ConceptReport.from_dict(json.loads(json.dumps(data)))
    assert again.patches.masks.dtype == torch.bool and torch.equal(again.patches.masks, report.patches.masks)
    assert int(box_masks(boxes[1:2], (8, 8)).sum()) == 6 * 5


def test_save_is_atomic_and_load_reads_it_back(tmp_path):
    report = _report(with_masks=False)
    path = report.save(tmp_path / "run" / "concepts.json")
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["concepts.json"]
    assert ConceptReport.load(path).to_json() == report.to_json()


def test_load_names_a_file_that_is_not_a_report(tmp_path):
    (tmp_path / "model.ckpt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(ValueError, match=r"Expected '.*model\.ckpt' to hold a ConceptReport's JSON, but it is not"):
        ConceptReport.load(tmp_path / "model.ckpt")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json' to hold a ConceptReport's JSON object, but it holds a list"):
        ConceptReport.load(tmp_path / "list.json")


def test_failed_save_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    report = _report(with_masks=False)
    path = report.save(tmp_path / "concepts.json")
    before = path.read_text()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("debugger.report.os.replace", broken)
    with pytest.raises(OSError, match="disk full"):
        report.save(path)
    assert path.read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["concepts.json"]


def test_markdown_summary_lists_ranking_and_concepts():
    report = _report()
    md = report.to_markdown()
    assert md.startswith("# Concept report — classification, layer `layer2`")
    for c in report.concepts:
        assert f"| {c.name} |" in md
    assert "| rank | concept |" in md and "Ensemble check `a+b`" in md and "Difference `epoch1->epoch2`" in md
    assert "Epoch: 3." in md
    assert "| cluster-0 |" in md and "shadow (90.0%) |" in md and "tint (40.0%) |" in md


def test_scores_and_lookup_helpers():
    report = _report()
    assert report.scores.shape == (3, 30)
    assert report.concept("cluster-2").id == 2 and report.concept(1).name == "cluster-1"
    assert all(f.is_failure for f in report.failures)


def test_documented_errors():
    report = _report()
    with pytest.raises(KeyError, match="id or name of a concept"):
        report.concept("sky")
    d = report.to_dict()
    d["schema_version"] = SCHEMA_VERSION + 1
    with pytest.raises(ValueError, match="`schema_version` to be between 1 and"):
        ConceptReport.from_dict(d)
    with pytest.raises(ValueError, match="tensor dtype in"):
        decode_tensor({"dtype": "complex64", "shape": [1], "data": [0]})
    with pytest.raises(ValueError, match="Expected 4 values"):
        decode_tensor({"dtype": "int64", "shape": [2, 2], "data": [0, 1]})
    with pytest.raises(ValueError, match="a tensor of one of the dtypes"):
        encode_tensor(torch.zeros(2, dtype=torch.complex64))
    report.config["model"] = object()
    with pytest.raises(ValueError, match="config/meta values to be JSON scalars"):
        report.to_json()
