"""Failure evidence: slices from annotations, their quality, darkening, and evidence from reports and rankings."""

from __future__ import annotations

import pytest
import torch
from _dbtiny import bright_report

from debugger.failures import (
    Darkening,
    FailureEvidence,
    annotated_membership,
    concept_darkening,
    evidence_from_ranking,
    evidence_from_report,
    slice_quality,
)


def test_annotated_membership_adds_a_clean_slice_and_uses_masks_for_segmentation() -> None:
    concepts = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]])
    m = annotated_membership(concepts, None, segmentation=False)
    assert m is not None and m.tolist() == [[True, False, True], [False, False, True], [False, True, False]]
    masks = torch.zeros(3, 2, 2, 2, dtype=torch.bool)
    masks[0, 0, 0, 0] = True
    seg = annotated_membership(None, masks, segmentation=True)
    assert seg is not None and seg.shape == (3, 3, 2, 2)
    assert seg[0].sum() == 1 and seg[2, 1].all() and not seg[2, 0].any()  # clean = all pixels of clean images
    assert annotated_membership(None, None, segmentation=False) is None


def test_slice_quality_is_accuracy_or_mean_iou() -> None:
    cm = torch.tensor([[[2, 1], [0, 1]]])
    assert slice_quality(cm, segmentation=False).tolist() == [0.75]
    assert slice_quality(cm, segmentation=True).item() == pytest.approx((2 / 3 + 1 / 2) / 2)


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


def test_evidence_from_a_report_names_the_ground_truth_its_top_patches_show() -> None:
    report = bright_report()
    failures, class_names = evidence_from_report(report)
    assert [(f.name, f.matches) for f in failures] == [("cluster-0", "bright")]
    assert class_names is None  # the report was given none
    (f,) = failures
    assert torch.equal(f.confusion_all, report.overall_confusion)
    assert torch.equal(f.confusion_in, report.confusion[0]) and f.lift == report.failures[0].lift
    # a discovered concept shows a ground-truth concept only when enough of its top patches do
    report.ground_truth_precision[0] = 0.4
    assert [f.matches for f in evidence_from_report(report, min_precision=0.5)[0]] == [None]
    assert [f.matches for f in evidence_from_report(report, min_precision=0.4)[0]] == ["bright"]
    with pytest.raises(ValueError, match="Expected `min_precision` to be in"):
        evidence_from_report(report, min_precision=1.5)


def test_evidence_from_a_ranking_keeps_failing_slices_but_never_clean() -> None:
    from dataclasses import replace

    from debugger.ranking import rank_failures

    errors = torch.tensor([True] * 6 + [False] * 12)
    member = torch.zeros(3, 18, dtype=torch.bool)
    member[0, :6] = True
    member[1, 6:12] = True
    member[2, 12:] = True
    rows = rank_failures(errors, member, names=["shadow", "stripes", "clean"], ids=[0, 1, 2], min_support=3)
    failing = {"shadow", "clean"}  # set by hand: significance is rank_failures' business, not this test's
    rows = [replace(r, is_failure=r.name in failing) for r in rows]
    counts = torch.arange(3 * 4).view(3, 2, 2)
    overall = counts.sum(0)
    (e,) = evidence_from_ranking(rows, counts, overall)
    assert (e.name, e.matches) == ("shadow", "shadow") and torch.equal(e.confusion_in, counts[0])
    assert e.lift == next(r.lift for r in rows if r.name == "shadow")
    (d,) = evidence_from_ranking(rows, counts, overall, annotated=False)
    assert d.matches is None
    # a failure merged into another concept is evidence only through that concept
    rows = [replace(r, is_failure=r.name in {"shadow", "stripes"}, merged_into=0 if r.name == "stripes" else None)
            for r in rows]
    assert [e.name for e in evidence_from_ranking(rows, counts, overall)] == ["shadow"]


def test_failure_evidence_drives_the_augment_policy_rule() -> None:
    from augment.policy import derive_policies

    inside, overall = torch.tensor([[1, 3], [0, 4]]), torch.tensor([[8, 4], [1, 9]])
    deep = Darkening(median=0.9, low=0.85, high=0.95, n=40)
    policy = derive_policies([FailureEvidence("shadow", "shadow", 2.5, inside, overall, deep)])["SyntheticShadow"]
    assert [r.index for r in policy.rules] == [0]
    assert policy.params == {"intensity": (0.85, 0.95)} and "removes 90% of the brightness" in policy.params_reason
