import math

import pytest
import torch

from debugger.probes import detectable_rate, probe_coverage
from debugger.ranking import (
    ConceptFailure,
    adjust_p_values,
    failure_statistics,
    rank_failures,
    slice_counts,
    wilson_interval,
)


def _planted(n=200, c=4, seed=0, failing=0, inside=0.6, outside=0.1):
    gen = torch.Generator().manual_seed(seed)
    membership = torch.rand(c, n, generator=gen) < 0.25
    p = torch.full((n,), outside)
    p[membership[failing]] = inside
    errors = torch.rand(n, generator=gen) < p
    return errors, membership


def test_wilson_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    k = torch.tensor([0, 3, 17, 50])
    n = torch.tensor([10, 40, 20, 50])
    low, high = wilson_interval(k, n)
    for i in range(4):
        ci = stats.binomtest(int(k[i]), int(n[i])).proportion_ci(confidence_level=0.95, method="wilson")
        assert low[i].item() == pytest.approx(ci.low, abs=1e-9)
        assert high[i].item() == pytest.approx(ci.high, abs=1e-9)


def test_wilson_interval_without_trials_is_nan():
    low, high = wilson_interval(torch.tensor([0]), torch.tensor([0]))
    assert math.isnan(low.item()) and math.isnan(high.item())


def test_ztest_and_katz_interval_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    contingency = pytest.importorskip("scipy.stats.contingency")
    errors, membership = _planted()
    out = failure_statistics(errors, membership, test="ztest", correction="none")
    for c in range(membership.shape[0]):
        k1, n1 = int(errors[membership[c]].sum()), int(membership[c].sum())
        k2, n2 = int(errors[~membership[c]].sum()), int((~membership[c]).sum())
        assert out["errors_in"][c] == k1 and out["count_in"][c] == n1
        assert out["errors_out"][c] == k2 and out["count_out"][c] == n2
        chi2, p_two, _, _ = stats.chi2_contingency([[k1, n1 - k1], [k2, n2 - k2]], correction=False)
        diff = k1 / n1 - k2 / n2
        want = p_two / 2 if diff > 0 else 1 - p_two / 2
        assert out["p_value"][c].item() == pytest.approx(want, rel=1e-6)
        rr = contingency.relative_risk(k1, n1, k2, n2)
        ci = rr.confidence_interval(0.95)
        assert out["lift"][c].item() == pytest.approx(rr.relative_risk, rel=1e-9)
        assert out["lift_low"][c].item() == pytest.approx(ci.low, rel=1e-6)
        assert out["lift_high"][c].item() == pytest.approx(ci.high, rel=1e-6)


def test_planted_failure_is_ranked_first_and_is_the_only_failure():
    errors, membership = _planted(failing=2)
    ranking = rank_failures(errors, membership, names=["a", "b", "shadow", "d"])
    assert ranking[0].name == "shadow" and ranking[0].rank == 1
    assert ranking[0].is_failure
    assert [f.is_failure for f in ranking[1:]] == [False, False, False]
    assert ranking[0].lift > 3


def test_failure_needs_minimum_support():
    errors = torch.zeros(100, dtype=torch.bool)
    errors[:5] = True
    membership = torch.zeros(1, 100, dtype=torch.bool)
    membership[0, :5] = True
    (row,) = rank_failures(errors, membership, min_support=10)
    assert row.support == 5 and row.p_adjusted < 0.05 and not row.is_failure
    (row,) = rank_failures(errors, membership, min_support=5)
    assert row.is_failure


def test_no_failure_when_error_rates_are_equal():
    errors = torch.arange(100) % 5 == 0
    membership = (torch.arange(100) < 50).unsqueeze(0)
    (row,) = rank_failures(errors, membership)
    assert row.lift == pytest.approx(1.0)
    assert not row.is_failure


def test_pixel_level_uses_image_bootstrap_and_finds_the_failure_region():
    gen = torch.Generator().manual_seed(3)
    n, h, w = 60, 6, 6
    membership = torch.zeros(2, n, h, w, dtype=torch.bool)
    membership[0, :30, :3] = True  # the failing region: top half of 30 images
    membership[1, 30:, :, :3] = True
    p = torch.full((n, h, w), 0.05)
    p[membership[0]] = 0.5
    errors = torch.rand(n, h, w, generator=gen) < p
    ranking = rank_failures(errors, membership, names=["shadow", "grass"], n_bootstrap=300)
    assert ranking[0].name == "shadow" and ranking[0].is_failure and ranking[0].test == "bootstrap"
    assert ranking[0].support == 30 and ranking[0].count_in == 30 * 3 * 6
    assert not ranking[1].is_failure
    again = rank_failures(errors, membership, names=["shadow", "grass"], n_bootstrap=300)
    assert again == ranking


def test_bootstrap_interval_brackets_the_lift():
    errors, membership = _planted(seed=5)
    gen = torch.Generator().manual_seed(0)
    out = failure_statistics(errors, membership, test="bootstrap", n_bootstrap=500, generator=gen)
    assert (out["lift_low"] <= out["lift"]).all() and (out["lift"] <= out["lift_high"]).all()
    assert out["p_value"][0] < 0.01


def test_slice_counts_with_image_membership_over_pixels_and_valid_mask():
    errors = torch.tensor([[[True, False], [False, False]], [[True, True], [True, True]]])
    valid = torch.ones_like(errors)
    valid[1, 0, 0] = False
    counts = slice_counts(errors, torch.tensor([[True, False]]), valid)
    assert counts["in_errors"].tolist() == [[1, 0]]
    assert counts["in_count"].tolist() == [[4, 0]]
    assert counts["errors"].tolist() == [1, 3] and counts["count"].tolist() == [4, 3]


def test_empty_outside_gives_undefined_lift_ranked_last():
    errors = torch.tensor([True, False, True, False])
    membership = torch.tensor([[True, True, True, True], [True, False, True, False]])
    ranking = rank_failures(errors, membership, min_support=1)
    assert ranking[-1].concept == 0 and math.isnan(ranking[-1].lift) and math.isnan(ranking[-1].p_value)
    assert math.isinf(ranking[0].lift)


def test_holm_adjustment_matches_hand_computation():
    p = torch.tensor([0.01, 0.04, 0.03, float("nan")])
    got = adjust_p_values(p, "holm")
    torch.testing.assert_close(got[:3], torch.tensor([0.03, 0.06, 0.06], dtype=torch.float64))
    assert math.isnan(got[3])
    bonferroni = adjust_p_values(p[:3], "bonferroni")
    torch.testing.assert_close(bonferroni, torch.tensor([0.03, 0.12, 0.09], dtype=torch.float64))


def test_concept_failure_dict_round_trip():
    errors, membership = _planted()
    row = rank_failures(errors, membership)[0]
    assert ConceptFailure.from_dict(row.to_dict()) == row


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"test": "chi2"}, "`test` to be one of"),
        ({"correction": "fdr"}, "`correction` to be one of"),
        ({"n_bootstrap": 0}, "`n_bootstrap` to be a positive"),
        ({"confidence": 1.5}, r"`confidence` to be in \(0, 1\)"),
        ({"membership": torch.ones(2, 3, dtype=torch.bool)}, r"`membership` to have shape \(C, 4\)"),
        ({"valid": torch.ones(3, dtype=torch.bool)}, "`valid` to have the shape"),
        ({"errors": torch.ones(4, 2, dtype=torch.bool)}, "`errors` to have shape"),
        ({"errors": torch.ones(0, dtype=torch.bool), "membership": torch.ones(1, 0, dtype=torch.bool)},
         "at least one probe image"),
    ],
)
def test_statistics_errors(kwargs, match):
    args = {"errors": torch.tensor([True, False, True, False]), "membership": torch.ones(2, 4, dtype=torch.bool)}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        failure_statistics(**args)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"names": ["a"]}, "`names` to hold 2 names"),
        ({"ids": [1, 2, 3]}, "`ids` to hold 2 ids"),
        ({"alpha": 0.0}, r"`alpha` to be in \(0, 1\)"),
        ({"min_support": -1}, "`min_support` to be a non-negative"),
    ],
)
def test_rank_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        rank_failures(torch.tensor([True, False]), torch.ones(2, 2, dtype=torch.bool), **kwargs)
    with pytest.raises(ValueError, match="`correction` to be one of"):
        adjust_p_values(torch.tensor([0.5]), "fdr")  # type: ignore[arg-type]


# -- within classes (Mantel–Haenszel) -------------------------------------------------------------------------


def _hard_class_case(raise_within: bool, n: int = 400, seed: int = 0):
    """Class 0 is hard (error 0.6), class 1 easy (0.1). Concept 0 holds class 0 only (hard only by its class);
    concept 1 holds half of each class and, when ``raise_within``, raises the error inside both classes."""
    gen = torch.Generator().manual_seed(seed)
    classes = torch.arange(n) % 2
    membership = torch.zeros(2, n, dtype=torch.bool)
    membership[0] = classes == 0
    membership[1] = torch.rand(n, generator=gen) < 0.5
    p = torch.where(classes == 0, 0.6, 0.1)
    if raise_within:
        p = torch.where(membership[1], p + 0.3, p)
    errors = torch.rand(n, generator=gen) < p
    return errors, membership, classes


def test_a_slice_hard_only_by_its_classes_is_not_a_failure():
    errors, membership, classes = _hard_class_case(raise_within=False)
    crude = {r.concept: r for r in rank_failures(errors, membership)}
    assert crude[0].is_failure and crude[0].lift > 3  # the old verdict: every image of the hard class
    rows = {r.concept: r for r in rank_failures(errors, membership, strata=classes)}
    assert not rows[0].is_failure and rows[0].class_confounded
    assert math.isnan(rows[0].class_p_value)  # no image of class 1 inside: nothing to compare within classes
    assert not rows[1].is_failure and not rows[1].class_confounded


def test_a_slice_that_raises_error_within_classes_is_a_failure_with_both_lifts():
    errors, membership, classes = _hard_class_case(raise_within=True)
    rows = {r.concept: r for r in rank_failures(errors, membership, strata=classes)}
    assert rows[1].is_failure and not rows[1].class_confounded
    assert rows[1].class_p_adjusted < 0.001
    assert 1.3 < rows[1].class_lift_low < rows[1].class_lift < rows[1].class_lift_high
    assert rows[1].error_in_expected < rows[1].error_in


def test_mantel_haenszel_matches_a_hand_computation():
    errors, membership, classes = _hard_class_case(raise_within=True, seed=3)
    out = failure_statistics(errors, membership, strata=classes, test="ztest", correction="none")
    c = 1
    num_r = num_q = num_p = e_sum = v_sum = a_sum = expected = n_in = 0.0
    for s in (0, 1):
        cls = classes == s
        inside, outside = cls & membership[c], cls & ~membership[c]
        a, n1 = float(errors[inside].sum()), float(inside.sum())
        b, n0 = float(errors[outside].sum()), float(outside.sum())
        t, m1 = n1 + n0, a + b
        num_r += a * n0 / t
        num_q += b * n1 / t
        num_p += (m1 * n1 * n0 - a * b * t) / t**2
        a_sum += a
        e_sum += n1 * m1 / t
        v_sum += n1 * n0 * m1 * (t - m1) / (t**2 * (t - 1))
        expected += n1 * b / n0
        n_in += n1
    rr = num_r / num_q
    se = math.sqrt(num_p / (num_r * num_q))
    assert out["class_lift"][c].item() == pytest.approx(rr, rel=1e-9)
    assert out["class_lift_low"][c].item() == pytest.approx(rr * math.exp(-1.959964 * se), rel=1e-5)
    assert out["class_lift_high"][c].item() == pytest.approx(rr * math.exp(1.959964 * se), rel=1e-5)
    z = (a_sum - e_sum) / math.sqrt(v_sum)
    assert out["class_p_value"][c].item() == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-6)
    assert out["error_in_expected"][c].item() == pytest.approx(expected / n_in, rel=1e-9)


def test_one_stratum_gives_the_crude_lift():
    errors, membership = _planted()
    out = failure_statistics(errors, membership, strata=torch.zeros(len(errors), dtype=torch.long))
    assert torch.allclose(out["class_lift"], out["lift"], rtol=1e-9)
    assert torch.allclose(out["error_in_expected"], out["error_out"], rtol=1e-9)


def test_bootstrap_within_classes_on_pixels_flags_the_raising_region_only():
    gen = torch.Generator().manual_seed(0)
    n, h, w = 60, 4, 4
    classes = torch.zeros(n, h, w, dtype=torch.long)
    classes[:, :, 2:] = 1  # right half is the hard class
    membership = torch.zeros(2, n, h, w, dtype=torch.bool)
    membership[0, :, :, 2:] = True  # the hard class's pixels, nothing else
    membership[1, : n // 2, :2, :] = True  # top rows of half the images, both classes
    p = torch.where(classes == 1, 0.6, 0.1)
    p = torch.where(membership[1], p + 0.3, p)
    errors = torch.rand(n, h, w, generator=gen) < p
    rows = {r.concept: r for r in rank_failures(errors, membership, strata=classes, n_bootstrap=300)}
    assert rows[0].class_confounded and not rows[0].is_failure
    assert rows[1].is_failure and rows[1].test == "bootstrap" and rows[1].class_lift_low > 1


def test_strata_are_validated():
    errors, membership = _planted()
    with pytest.raises(ValueError, match="Expected `strata` to have the shape"):
        slice_counts(errors, membership, strata=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"stratum to lie in \[0, 2\)"):
        slice_counts(errors, membership, strata=torch.full(errors.shape, 2), num_strata=2)


def test_failure_rows_of_older_reports_read_with_defaults():
    errors, membership = _planted()
    row = rank_failures(errors, membership, strata=torch.zeros(len(errors), dtype=torch.long))[0].to_dict()
    old = {k: v for k, v in row.items() if not k.startswith("class_") and k not in
           ("error_in_expected", "merged_from", "merged_into")}
    back = ConceptFailure.from_dict(old)
    assert back.class_lift is None and back.merged_into is None and back.merged_from == ()
    assert ConceptFailure.from_dict(dict(row, merged_from=[3, 5])).merged_from == (3, 5)


# -- probe coverage -----------------------------------------------------------------------------------------------


def test_probe_coverage_names_a_probe_set_too_small_for_a_rare_failure():
    small = probe_coverage(64, 0.03)
    assert not small.enough and small.expected == pytest.approx(1.92)
    assert small.message.startswith("64 probe images: a failure in 3% of images shows in ~2")
    assert probe_coverage(small.needed, 0.03).enough and not probe_coverage(small.needed - 1, 0.03).enough
    assert probe_coverage(300, 0.5).enough


def test_probe_coverage_matches_the_binomial_tail():
    stats = pytest.importorskip("scipy.stats")
    for n, rate, m in ((64, 0.03, 10), (200, 0.05, 10), (128, 0.2, 5)):
        want = float(stats.binom.sf(m - 1, n, rate))
        assert probe_coverage(n, rate, m).p_enough == pytest.approx(want, rel=1e-6, abs=1e-12)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"probe_size": 0, "rate": 0.1}, "probe_size"),
    ({"probe_size": 10, "rate": 0.0}, "rate"),
    ({"probe_size": 10, "rate": 0.1, "min_support": -1}, "min_support"),
    ({"probe_size": 10, "rate": 0.1, "confidence": 1.0}, "confidence"),
])
def test_probe_coverage_rejects_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=f"Expected `{match}`"):
        probe_coverage(**kwargs)


def test_detectable_rate_is_where_the_probe_set_starts_to_be_enough():
    rate = detectable_rate(128, 10)
    assert probe_coverage(128, min(1.0, rate * 1.01)).enough and not probe_coverage(128, rate * 0.99).enough
    assert detectable_rate(500) < rate < detectable_rate(64)
    assert math.isinf(detectable_rate(5, 10))


def test_without_strata_the_within_class_fields_are_not_computed():
    row = rank_failures(*_planted())[0]
    assert row.class_lift is None and row.class_p_adjusted is None and row.error_in_expected is None
    assert not row.class_confounded
