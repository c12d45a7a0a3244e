"""Failure concept → transform without labels: a concept picks the transform whose changed patches it claims."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor, nn

from debugger.matching import (
    ClaimTable,
    MatchResult,
    TransformMatch,
    TransformMatcher,
    analysis_for,
    centroid_claims,
    changed_fraction,
    match_transforms,
    measure_claims,
    outside_slices,
    strength_range,
)
from debugger.patches import sliding_windows
from debugger.pipeline import ConceptAnalysis
from debugger.report import ConceptReport

SIZE = 24
WINDOWS = {"sizes": (8,), "strides": (4,)}


class TextureNet(nn.Module):
    """Hand-set: channel 0 is local brightness, channels 1/2 the positive/negative parts of a Laplacian.

    Darkening lowers both brightness and texture; blurring lowers texture only; noise raises texture only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 3, 3, padding=1, padding_mode="replicate")
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))
        lap = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, 8.0, -1.0], [-1.0, -1.0, -1.0]]) / 3
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.bias.zero_()
            self.features.weight[0] = 1 / 9  # 3 × the mean: brightness weighs as much as texture
            self.features.weight[1] = lap
            self.features.weight[2] = -lap

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.relu(self.features(x)))


def textured(n: int, seed: int = 0) -> Tensor:
    """Mid-grey images with a 2-pixel checkerboard texture at a random phase and contrast."""
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    out = []
    for _ in range(n):
        dy, dx = (int(v) for v in torch.randint(0, 2, (2,), generator=g))
        contrast = 0.15 + 0.05 * float(torch.rand(1, generator=g))
        board = (((ys + dy) // 2 + (xs + dx) // 2) % 2).float() * 2 - 1
        out.append((0.5 + contrast * board).expand(3, SIZE, SIZE))
    return torch.stack(out)


def regions(images: Tensor, generator: torch.Generator | None) -> Tensor:
    """A random half-image rectangle per image (left/right or top/bottom), drawn from ``generator``."""
    n = images.shape[0]
    side = torch.randint(0, 4, (n,), generator=generator)
    mask = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    half = SIZE // 2
    for i, s in enumerate(side.tolist()):
        if s == 0:
            mask[i, :, :half] = True
        elif s == 1:
            mask[i, :, half:] = True
        elif s == 2:
            mask[i, :half] = True
        else:
            mask[i, half:] = True
    return mask.to(images.device)


def darken(images: Tensor, strength: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    mask = regions(images, generator)
    return images * (1 - 0.8 * strength * mask[:, None]), mask


def box_blur(images: Tensor, strength: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    mask = regions(images, generator)
    k = 1 + 2 * max(1, round(2 * strength))
    blurred = nn.functional.avg_pool2d(nn.functional.pad(images, [k // 2] * 4, mode="replicate"), k, stride=1)
    return torch.where(mask[:, None], blurred, images), mask


def noise(images: Tensor, strength: float, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    mask = regions(images, generator)
    n = torch.randn(images.shape, generator=generator).to(images.device)
    return images + 0.3 * strength * n * mask[:, None], mask


RENDERERS = {"darken": darken, "blur": box_blur, "noise": noise}


def analysis(model: nn.Module) -> ConceptAnalysis:
    return ConceptAnalysis(model, "relu", patches="window", patch_kwargs=WINDOWS)


def concept_of(a: ConceptAnalysis, images: Tensor) -> Tensor:
    """A concept made of every patch of ``images``: its centroid."""
    return a.embed(images)[1].mean(0, keepdim=True)


@pytest.fixture(scope="module")
def table() -> ClaimTable:
    """Concepts of shadowed, blurred, clean and (unrelated) bright patches, claims of the three renderers."""
    model = TextureNet().eval()
    a = analysis(model)
    probe = textured(8, seed=1)
    whole = torch.ones(probe.shape[0], SIZE, SIZE, dtype=torch.bool)
    shadowed = probe * (1 - 0.8 * 0.7 * whole[:, None])
    blurred = nn.functional.avg_pool2d(nn.functional.pad(probe, [2] * 4, mode="replicate"), 5, stride=1)
    bright = torch.full_like(probe, 0.97)
    centroids = torch.cat([concept_of(a, x) for x in (shadowed, blurred, probe, bright)])
    matcher = TransformMatcher(RENDERERS, strengths=(0.25, 0.5, 0.75, 1.0), min_patches=10)
    return matcher.measure(a, textured(12, seed=2), centroids, ("shadowed", "blurred", "clean", "bright"))


def test_a_concept_of_shadowed_patches_picks_the_darkening_over_blur_and_noise(table: ClaimTable):
    m = match_transforms(table, ["shadowed"], min_patches=10)[0]
    assert m.transform == "darken"
    assert m.source == "matched"
    assert m.claim_changed > 0.9 and m.claim_clean < 0.05
    i = table.concepts.index("shadowed")
    # the other transforms' changed patches are not shadowed patches to the model
    assert float(torch.nan_to_num(table.contrast[i, 1:], nan=0).max()) < 0.2
    assert m.strength_range is not None and m.strength_range[1] == 1.0
    assert "darken" in m.evidence and f"{m.claim_changed:.0%}" in m.evidence


def test_a_concept_of_blurred_patches_picks_blur(table: ClaimTable):
    m = match_transforms(table, ["blurred"], min_patches=10)[0]
    assert m.transform == "blur"
    # windows half across the region's edge keep half their texture: most, not all, look blurred
    assert m.claim_changed > 0.6 and m.claim_clean < 0.05
    assert "next best" in m.evidence


def test_nothing_claimed_means_no_match_and_the_evidence_says_why(table: ClaimTable):
    m = match_transforms(table, ["bright"], min_patches=10)[0]
    assert m.transform is None and m.strength_range is None and m.source == "none"
    assert "no match" in m.evidence and "fallback" in m.evidence
    assert "below 0.10" in m.evidence


def test_weak_darkening_claims_less_than_strong(table: ClaimTable):
    i, j = table.concepts.index("shadowed"), table.transforms.index("darken")
    row = table.contrast[i, j]
    assert float(row[0]) < float(row[-1])


def test_too_few_changed_patches_is_no_match_with_its_reason(table: ClaimTable):
    m = match_transforms(table, ["shadowed"], min_patches=10_000)[0]
    assert m.transform is None
    assert "10000 or more patches" in m.evidence


def test_a_bound_concept_keeps_its_transform_and_gets_its_measured_range(table: ClaimTable):
    m = match_transforms(table, ["shadowed"], min_patches=10, bind={"shadowed": "noise"})[0]
    assert (m.transform, m.source) == ("noise", "bound")
    assert m.strength_range is not None
    assert "bound by a person" in m.evidence and "Unbound, it would match darken" in m.evidence
    unknown = match_transforms(table, [], min_patches=10, bind={"bright": "Mixup"})[0]
    assert (unknown.concept, unknown.transform, unknown.strength_range) == ("bright", "Mixup", None)


def test_match_transforms_rejects_unknown_concepts_and_thresholds(table: ClaimTable):
    with pytest.raises(ValueError, match="Expected a concept of the claim table"):
        match_transforms(table, ["cluster-99"])
    with pytest.raises(ValueError, match="Expected a concept of the claim table"):
        match_transforms(table, [], bind={"cluster-99": "blur"})
    with pytest.raises(ValueError, match="Expected `min_contrast` to be in"):
        match_transforms(table, min_contrast=0.0)
    with pytest.raises(ValueError, match="Expected `min_patches` to be a positive integer"):
        match_transforms(table, min_patches=0)
    with pytest.raises(ValueError, match="Expected `range_fraction` to be in"):
        match_transforms(table, range_fraction=1.5)


def test_claim_table_and_matches_round_trip_through_json(table: ClaimTable):
    import json

    result = MatchResult(tuple(match_transforms(table, min_patches=10)), table, {"rule": "centroid"})
    again = MatchResult.from_dict(json.loads(json.dumps(result.to_dict(), allow_nan=False)))
    assert again.matches == result.matches or all(
        a.to_dict() == b.to_dict() for a, b in zip(again.matches, result.matches, strict=True))
    assert torch.allclose(again.table.changed, table.changed, equal_nan=True)
    assert torch.equal(again.table.counts, table.counts)
    assert again.transform_for("blurred").transform == "blur"
    with pytest.raises(KeyError, match="Expected one of the matched concepts"):
        result.transform_for("nope")
    text = result.to_markdown()
    assert "| shadowed |" in text and "darken" in text


def test_strength_range_is_the_run_around_the_best():
    c = torch.tensor([0.5, 0.1, 0.4, 0.6, 0.35, float("nan")])
    grid = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
    assert strength_range(c, grid, 3) == (0.3, 0.5)  # 0.5 at 0.1 is beyond the gap
    assert strength_range(c, grid, 3, fraction=1.0) == (0.4, 0.4)


def test_changed_fraction_counts_pixels_of_masks_and_boxes():
    images = torch.zeros(2, 1, 4, 4)
    changed = torch.zeros(2, 4, 4, dtype=torch.bool)
    changed[1, :2, :2] = True
    boxes_only = sliding_windows(images, sizes=(2,), strides=(2,), with_masks=False)
    with_masks = sliding_windows(images, sizes=(2,), strides=(2,))
    expected = [0.0] * 4 + [1.0, 0.0, 0.0, 0.0]
    assert changed_fraction(boxes_only, changed).tolist() == expected
    assert changed_fraction(with_masks, changed).tolist() == expected
    with pytest.raises(ValueError, match="Expected `changed` of shape"):
        changed_fraction(with_masks, changed[:1])


def test_centroid_claims_are_exclusive_and_skip_missing_centroids():
    cents = torch.tensor([[0.0, 0.0], [float("nan"), 0.0], [3.0, 0.0]])
    claims = centroid_claims(torch.tensor([[0.1, 0.0], [2.0, 0.0]]), cents)
    assert claims.tolist() == [[True, False], [False, False], [False, True]]
    with pytest.raises(ValueError, match="Expected embeddings of dimension 2"):
        centroid_claims(torch.zeros(1, 3), cents)


def test_centroid_claims_within_radii_leave_far_patches_unclaimed():
    cents = torch.tensor([[0.0, 0.0], [3.0, 0.0]])
    far = torch.tensor([[0.5, 0.0], [0.0, 2.0], [3.0, 0.2]])
    assert centroid_claims(far, cents).tolist() == [[True, True, False], [False, False, True]]
    within = centroid_claims(far, cents, torch.tensor([1.0, float("nan")]))  # NaN radius: no limit
    assert within.tolist() == [[True, False, False], [False, False, True]]


def test_measure_claims_rejects_bad_renderers_and_grids():
    a = analysis(TextureNet())
    images = textured(2)

    def claim(e: Tensor) -> Tensor:
        return torch.ones(1, e.shape[0], dtype=torch.bool)

    def call(renderers: dict, strengths: tuple = (0.5,), min_changed: float = 0.5) -> ClaimTable:
        return measure_claims(images, renderers, strengths, a.make_patches, lambda x, p: a.embed(x, p)[1], claim,
                              ["c"], min_changed)

    with pytest.raises(ValueError, match="strictly ascending"):
        call(RENDERERS, (0.5, 0.2))
    with pytest.raises(ValueError, match="Expected `min_changed` to be in"):
        call(RENDERERS, min_changed=0.0)
    with pytest.raises(ValueError, match="Expected `renderers` to map names to callables"):
        call({})
    with pytest.raises(ValueError, match="to return images of shape"):
        call({"crop": lambda x, s, g: (x[..., :4], x[:, 0] > 0)})
    with pytest.raises(ValueError, match="to return a changed mask of shape"):
        call({"flat": lambda x, s, g: (x, torch.ones(2, 5, 5, dtype=torch.bool))})
    with pytest.raises(ValueError, match=r"to return \(augmented, changed_mask\)"):
        call({"one": lambda x, s, g: x})
    nothing = call({"none": lambda x, s, g: (x, torch.zeros(2, 1, SIZE, SIZE))})
    assert nothing.counts.tolist() == [[0]] and math.isnan(float(nothing.changed[0, 0, 0]))


def test_transform_matcher_validates_its_settings():
    with pytest.raises(ValueError, match="Expected `rule` to be one of"):
        TransformMatcher(RENDERERS, rule="nearest")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected `renderers` to map transform names"):
        TransformMatcher({})
    with pytest.raises(ValueError, match="strictly ascending"):
        TransformMatcher(RENDERERS, strengths=(0.5, 0.5))
    with pytest.raises(ValueError, match="Expected `min_patches` to be a positive integer"):
        TransformMatcher(RENDERERS, min_patches=0)
    with pytest.raises(ValueError, match="Expected `min_contrast` to be in"):
        TransformMatcher(RENDERERS, min_contrast=2.0)
    with pytest.raises(ValueError, match="Expected `min_changed` to be in"):
        TransformMatcher(RENDERERS, min_changed=1.5)
    with pytest.raises(ValueError, match="Expected `range_fraction` to be in"):
        TransformMatcher(RENDERERS, range_fraction=-0.1)
    with pytest.raises(ValueError, match="Expected `within` to be None or a positive number"):
        TransformMatcher(RENDERERS, within=0.0)


# -- end to end: discovered concepts, matched from the report -------------------------------------------------------


@pytest.fixture(scope="module")
def discovered() -> tuple[TextureNet, ConceptReport]:
    """k-means concepts of a probe set with shadowed and blurred halves (ground-truth masks for scoring only)."""
    model = TextureNet().eval()
    probe = textured(24, seed=3)
    g = torch.Generator().manual_seed(5)
    shadowed, shadow_mask = darken(probe[:8], 0.8, g)
    blurred, blur_mask = box_blur(probe[8:16], 1.0, g)
    images = torch.cat([shadowed, blurred, probe[16:]])
    masks = torch.zeros(24, 2, SIZE, SIZE, dtype=torch.bool)
    masks[:8, 0], masks[8:16, 1] = shadow_mask, blur_mask
    batch = {"image": images, "target": torch.zeros(24, dtype=torch.long), "concept_masks": masks}
    report = ConceptAnalysis(model, "relu", patches="window", patch_kwargs=WINDOWS, n_concepts=3, top_k=20,
                             discovery_kwargs={"outlier_mad": float("inf")}).run(
        [batch], concept_names=["shadow", "blur"])
    return model, report


def test_report_keeps_concept_centroids_through_json(discovered: tuple[TextureNet, ConceptReport]):
    _, report = discovered
    assert report.centroids is not None and report.centroids.shape == (3, 3)
    assert report.radii is not None and report.radii.shape == (3,) and bool((report.radii >= 0).all())
    again = ConceptReport.from_json(report.to_json())
    assert again.centroids is not None and torch.equal(again.centroids, report.centroids)
    assert again.radii is not None and torch.equal(again.radii, report.radii)
    old = report.to_dict()
    del old["centroids"], old["radii"]  # a report written before they were kept still reads
    assert ConceptReport.from_dict(old).centroids is None


def test_discovered_concepts_match_their_transforms_and_annotations_only_score_it(
        discovered: tuple[TextureNet, ConceptReport]):
    model, report = discovered
    matcher = TransformMatcher(RENDERERS, strengths=(0.25, 0.5, 0.75, 1.0), min_patches=10)
    result = matcher.match(model, report, textured(12, seed=4), concepts=report.concept_names)
    by_truth = {m.shows: m for m in result.matches if m.shows_precision >= 0.8}
    assert by_truth["shadow"].transform == "darken"
    assert by_truth["blur"].transform == "blur"
    assert "ground-truth `shadow`" in by_truth["shadow"].evidence
    # the same through the analysis object, and with the discovery model's slice thresholds instead of centroids
    a = ConceptAnalysis(model, "relu", patches="window", patch_kwargs=WINDOWS)
    again = matcher.match(a, report, textured(12, seed=4), concepts=report.concept_names)
    assert [m.transform for m in again.matches] == [m.transform for m in result.matches]
    threshold = TransformMatcher(RENDERERS, strengths=(0.25, 0.5, 0.75, 1.0), min_patches=10, rule="threshold")
    by_threshold = threshold.match(model, report, textured(12, seed=4), concepts=report.concept_names)
    shadow = next(m for m in by_threshold.matches if m.shows == "shadow" and m.shows_precision >= 0.8)
    assert shadow.transform == "darken"


def test_match_defaults_to_failure_concepts_and_checks_the_report(discovered: tuple[TextureNet, ConceptReport]):
    model, report = discovered
    matcher = TransformMatcher(RENDERERS, strengths=(0.5,), min_patches=10)
    assert report.failures == []  # TextureNet's head is constant: no failure concept, nothing rendered
    empty = matcher.match(model, report, textured(2))
    assert empty.matches == () and int(empty.table.counts.sum()) == 0
    assert "No failure concepts" in empty.to_markdown()
    with pytest.raises(ValueError, match="Expected every bound concept to be one of the report's"):
        TransformMatcher(RENDERERS, bind={"cluster-9": "blur"}).match(model, report, textured(2))
    with pytest.raises(ValueError, match="Expected an analysis of the report's layer"):
        matcher.match(ConceptAnalysis(model, "features"), report, textured(2))
    from dataclasses import replace

    with pytest.raises(ValueError, match="Expected a report with concept `centroids`"):
        matcher.match(model, replace(report, centroids=None), textured(2), concepts=["cluster-0"])
    with pytest.raises(ValueError, match="Expected a report with concept `radii`"):
        TransformMatcher(RENDERERS, within=1.0).match(model, replace(report, radii=None), textured(2),
                                                      concepts=["cluster-0"])
    with pytest.raises(ValueError, match="names its `patches` and `embedding`"):
        analysis_for(replace(report, config={}), model)


def test_matching_leaves_the_model_as_it_was(discovered: tuple[TextureNet, ConceptReport]):
    model, report = discovered
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    TransformMatcher(RENDERERS, strengths=(0.5,), min_patches=10).match(model, report, textured(4),
                                                                        concepts=["cluster-0"])
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_transform_match_round_trips_without_optional_fields():
    m = TransformMatch("cluster-1", None, None, float("nan"), float("nan"), "no match")
    assert math.isnan(TransformMatch.from_dict(m.to_dict()).claim_changed)
    assert TransformMatch.from_dict(m.to_dict()).evidence == "no match"


def test_outside_slices_are_the_images_of_no_chosen_slice(discovered: tuple[TextureNet, ConceptReport]):
    _, report = discovered
    clean = outside_slices(report.membership, [0, 1])
    assert clean.shape == (report.membership.shape[1],)
    assert not bool((report.membership[:2] & clean).any())
    assert torch.equal(outside_slices(report.membership, []), torch.ones_like(clean))


def test_a_merged_concept_claims_what_its_parts_claim_and_does_not_compete():
    a = analysis(TextureNet().eval())
    probe = textured(6, seed=1)
    shadowed = probe * (1 - 0.8 * 0.7)
    cents = torch.cat([concept_of(a, shadowed), concept_of(a, probe), concept_of(a, shadowed)])  # row 2: merged
    matcher = TransformMatcher({"darken": darken}, strengths=(1.0,), min_patches=10)
    alone = matcher.measure(a, textured(6, seed=2), cents[:2], ("shadowed", "clean"))
    merged = matcher.measure(a, textured(6, seed=2), cents, ("shadowed", "clean", "shadowed+clean"), parts={2: [0, 1]})
    assert torch.equal(merged.changed[:2], alone.changed)  # the merged row took nothing from its parts
    assert float(merged.changed[2, 0, 0]) == pytest.approx(1.0)
    # as a report keeps them: centroids for the discovered concepts only, the merged one after them
    kept = matcher.measure(a, textured(6, seed=2), cents[:2], ("shadowed", "clean", "shadowed+clean"),
                           parts={2: [0, 1]})
    assert torch.equal(kept.changed, merged.changed) and torch.equal(kept.clean, merged.clean)
