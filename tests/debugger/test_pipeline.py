import math

import pytest
import torch
from _dbtiny import DarknessNet
from torch import nn

from debugger.confusion import concept_confusion
from debugger.pipeline import ConceptAnalysis, ground_truth_precision
from debugger.report import ConceptReport
from debugger.structures import Concept


def _shadow_batches(n=40, seed=0, segmentation=False):
    """Bright textured 16x16 images; half have a dark 8x8 'shadow' in a random quadrant (exact concept mask)."""
    gen = torch.Generator().manual_seed(seed)
    images = 0.7 + 0.3 * torch.rand(n, 3, 16, 16, generator=gen)
    masks = torch.zeros(n, 1, 16, 16, dtype=torch.bool)
    for i in range(0, n, 2):
        q = int(torch.randint(0, 4, (1,), generator=gen))
        y, x = 8 * (q // 2), 8 * (q % 2)
        images[i, :, y : y + 8, x : x + 8] = 0.1 * torch.rand(3, 8, 8, generator=gen)
        masks[i, 0, y : y + 8, x : x + 8] = True
    if segmentation:
        target = torch.zeros(n, 16, 16, dtype=torch.long)
    else:
        target = torch.zeros(n, dtype=torch.long)
        target[1::10] = 1  # a few errors outside the shadow slice too
    half = n // 2
    return [
        {"image": images[s], "target": target[s], "concept_masks": masks[s]}
        for s in (slice(0, half), slice(half, n))
    ]


WINDOWS = {"sizes": (8,), "strides": (8,)}


def _kmeans_by_sklearn(embeddings, patches):
    from sklearn.cluster import KMeans

    km = KMeans(n_clusters=2, n_init=4, random_state=0).fit(embeddings.numpy())
    dist = torch.from_numpy(km.transform(embeddings.numpy())).float()
    labels = torch.from_numpy(km.labels_).long()
    return [Concept(i, f"cluster-{i}", (labels == i).nonzero().squeeze(1), -dist[:, i]) for i in range(2)]


def test_planted_failure_concept_ranks_first_with_a_pluggable_discovery():
    model = DarknessNet()
    analysis = ConceptAnalysis(model, "relu", patches="window", embedding="roi", discovery=_kmeans_by_sklearn,
                               top_k=20, min_support=5, patch_kwargs=WINDOWS)
    report = analysis.run(_shadow_batches(), concept_names=["shadow"], meta={"epoch": 2})
    top = report.ranking[0]
    assert top.is_failure and top.error_in == 1.0 and top.support == 20
    idx = [c.id for c in report.concepts].index(top.concept)
    assert report.ground_truth_precision[idx, 0] >= 0.8
    assert not report.ranking[1].is_failure
    assert report.meta["epoch"] == 2 and report.meta["num_patches"] == 160
    assert report.config["discovery"] == "_kmeans_by_sklearn"
    assert ConceptReport.from_json(report.to_json()).to_json() == report.to_json()


@pytest.mark.parametrize("embedding", ["roi", "resample"])
def test_planted_failure_found_with_the_built_in_discovery(embedding):
    pytest.importorskip("debugger.discovery")
    analysis = ConceptAnalysis(DarknessNet(), "relu", patches="window", embedding=embedding, n_concepts=2,
                               top_k=20, min_support=5, patch_kwargs=WINDOWS)
    report = analysis.run(_shadow_batches(), concept_names=["shadow"])
    top = report.ranking[0]
    idx = [c.id for c in report.concepts].index(top.concept)
    assert top.is_failure and report.ground_truth_precision[idx, 0] >= 0.8


def test_confusion_in_the_report_is_on_the_top_patches_source_images():
    batches = _shadow_batches()
    report = ConceptAnalysis(DarknessNet(), "relu", patches="window", discovery=_kmeans_by_sklearn, top_k=20,
                             slices="top_k", patch_kwargs=WINDOWS).run(batches)
    image_index = report.patches.image_index
    target = torch.cat([b["target"] for b in batches])
    preds = DarknessNet()(torch.cat([b["image"] for b in batches])).argmax(1)
    for i, c in enumerate(report.concepts):
        images = image_index[torch.topk(c.scores, 20).indices].unique()
        assert report.membership[i].nonzero().squeeze(1).tolist() == images.tolist()
        sel = torch.zeros(40, dtype=torch.bool)
        sel[images] = True
        assert torch.equal(report.confusion[i], concept_confusion(preds, target, sel.unsqueeze(0), 2)[0])
    assert report.overall_confusion.sum() == 40
    torch.testing.assert_close(report.image_accuracy, (preds == target).float())


def test_segmentation_counts_pixels_inside_the_top_patches():
    batches = _shadow_batches(segmentation=True)
    report = ConceptAnalysis(DarknessNet(segmentation=True), "relu", patches="window", discovery=_kmeans_by_sklearn,
                             top_k=20, slices="top_k", min_support=5, patch_kwargs=WINDOWS).run(
        batches, concept_names=["shadow"])
    assert report.task == "segmentation" and report.iou.shape == (2, 2)
    # 20 top windows of 8x8 pixels per concept, from distinct images or not, never more pixels than that
    assert (report.confusion.sum((1, 2)) <= 20 * 64).all()
    top = report.ranking[0]
    assert top.test == "bootstrap" and top.is_failure
    idx = [c.id for c in report.concepts].index(top.concept)
    assert report.ground_truth_precision[idx, 0] >= 0.8
    assert report.confusion[idx, 0, 1] == 20 * 64  # every shadow pixel of class 0 predicted as 1


def test_analysis_does_not_disturb_the_model():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 2))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model must stay frozen
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    grads = [p.grad.clone() for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [m.training for m in model.modules()]
    for embedding in ("roi", "resample"):
        ConceptAnalysis(model, "2", patches="window", embedding=embedding, discovery=_kmeans_by_sklearn, top_k=5,
                        patch_kwargs=WINDOWS).run(_shadow_batches(n=8))
    assert [m.training for m in model.modules()] == flags
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads, strict=True))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


def test_compare_adds_differences_and_the_ensemble_check():
    batches = _shadow_batches()
    analysis = ConceptAnalysis(DarknessNet(), "relu", patches="window", discovery=_kmeans_by_sklearn, top_k=20,
                               patch_kwargs=WINDOWS)
    report = analysis.run(batches)
    same = analysis.compare(report, DarknessNet(), batches, name="twin")
    assert torch.equal(same.diffs["twin"], torch.zeros(2, 2, 2))
    assert same.ensembles["twin"].fixed_a.sum() == 0 and not report.diffs  # the input report is not modified

    class AlwaysZero(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(1, 2)

        def forward(self, x):
            return torch.tensor([[5.0, -5.0]]) + 0 * self.fc(x.mean((1, 2, 3)).unsqueeze(1))

    other = analysis.compare(report, AlwaysZero(), batches, name="constant")
    idx = [c.id for c in report.concepts].index(report.ranking[0].concept)
    # on the shadow slice (all class 0, all wrong) the constant model is right: +1 on the (0, 0) cell
    assert other.diffs["constant"][idx, 0, 0] == pytest.approx(1.0)
    check = other.ensembles["constant"]
    assert check.accuracy_a[idx] == 0.0 and check.accuracy_b[idx] == 1.0
    assert not math.isnan(float(check.accuracy_ensemble[idx]))


def test_epoch_difference_against_the_stored_confusion():
    batches = _shadow_batches()
    model = DarknessNet()
    analysis = ConceptAnalysis(model, "relu", patches="window", discovery=_kmeans_by_sklearn, top_k=20,
                               patch_kwargs=WINDOWS)
    report = analysis.run(batches)
    assert torch.equal(analysis.compare(report, model, batches, "e0", against="report").diffs["e0"],
                       torch.zeros(2, 2, 2))
    with torch.no_grad():  # "train" the model further: it now never predicts class 1
        model.fc.bias.copy_(torch.tensor([100.0, -100.0]))
    later = analysis.compare(report, model, batches, "e1", against="report")
    idx = [c.id for c in report.concepts].index(report.ranking[0].concept)
    assert later.diffs["e1"][idx, 0, 0] == pytest.approx(1.0) and "e1" not in later.ensembles
    with pytest.raises(ValueError, match="`against` to be one of"):
        analysis.compare(report, model, batches, against="epoch")


def test_ground_truth_precision_without_ground_truth_is_none():
    from debugger.structures import PatchSet

    ps = PatchSet(torch.zeros(2, dtype=torch.long), torch.zeros(2, 4, dtype=torch.long))
    assert ground_truth_precision(ps, torch.tensor([[0, 1]])) is None


class Unpoolable(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.flat = nn.Flatten(2)  # (B, D, h*w): neither a feature map nor a vector
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        return self.fc(self.flat(self.conv(x)).mean(2))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"patches": "grid"}, "`patches` to be one of"),
        ({"embedding": "pool"}, "`embedding` to be one of"),
        ({"n_concepts": 0}, "`n_concepts` to be None or a positive"),
        ({"top_k": 0}, "`top_k` to be a positive"),
        ({"discovery": "spectral"}, "`discovery` to be 'kmeans', 'nmf' or a callable"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ConceptAnalysis(DarknessNet(), "relu", **kwargs)


def test_run_errors():
    batches = _shadow_batches(n=8)
    with pytest.raises(ValueError, match=r"Nearest valid names: \['relu'"):
        ConceptAnalysis(DarknessNet(), "reluu", discovery=_kmeans_by_sklearn).run(batches)
    with pytest.raises(ValueError, match="at least one sample"):
        ConceptAnalysis(DarknessNet(), "relu", discovery=_kmeans_by_sklearn).run([])
    with pytest.raises(ValueError, match="`targets` to have batch size"):
        ConceptAnalysis(DarknessNet(), "relu", discovery=_kmeans_by_sklearn).run(
            [(torch.rand(4, 3, 16, 16), torch.zeros(3, dtype=torch.long))]
        )
    with pytest.raises(ValueError, match="to be poolable"):
        ConceptAnalysis(Unpoolable(), "flat", patches="window", embedding="resample", discovery=_kmeans_by_sklearn,
                        patch_kwargs=WINDOWS).run(batches)
    with pytest.raises(ValueError, match="spatial feature map"):
        ConceptAnalysis(DarknessNet(), "fc", patches="window", embedding="roi", discovery=_kmeans_by_sklearn,
                        patch_kwargs=WINDOWS).run(batches)
    with pytest.raises(ValueError, match="at least one concept"):
        ConceptAnalysis(DarknessNet(), "relu", patches="window", discovery=lambda e, p: [],
                        patch_kwargs=WINDOWS).run(batches)
    with pytest.raises(ValueError, match="to score all 32 patches"):
        ConceptAnalysis(DarknessNet(), "relu", patches="window", patch_kwargs=WINDOWS,
                        discovery=lambda e, p: [Concept(0, "x", torch.tensor([0]), torch.zeros(3))]).run(batches)
    analysis = ConceptAnalysis(DarknessNet(), "relu", patches="window", discovery=_kmeans_by_sklearn,
                               patch_kwargs=WINDOWS)
    report = analysis.run(batches)
    with pytest.raises(ValueError, match="the report's 8 probe images"):
        analysis.compare(report, DarknessNet(), _shadow_batches(n=4))
    three = nn.Sequential(nn.Conv2d(3, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match=r"`other` to output 2 class scores at dim 1 .* \(8, 3\)"):
        analysis.compare(report, three, batches)
    with pytest.raises(ValueError, match=r"`other` to output 2 class scores"):
        analysis.compare(report, three, batches, against="report")


def test_a_report_keeps_its_discovery_model_and_finds_its_concept_in_new_images():
    from debugger.pipeline import best_patch_scores

    analysis = ConceptAnalysis(DarknessNet(), "relu", patches="window", n_concepts=2, top_k=20, min_support=5,
                               patch_kwargs=WINDOWS)
    report = ConceptReport.from_json(analysis.run(_shadow_batches(), concept_names=["shadow"]).to_json())
    assert report.discovery is not None and report.discovery["method"] == "kmeans"
    shadow = [c.id for c in report.concepts].index(report.ranking[0].concept)

    new = _shadow_batches(n=40, seed=1)
    images = torch.cat([b["image"] for b in new])
    shadowed = torch.cat([b["concept_masks"] for b in new]).flatten(1).any(1)
    patches, scores = analysis.score(report, images)
    assert scores.shape == (len(report.concepts), len(patches)) and len(patches) == 160
    member = best_patch_scores(scores, patches.image_index, 40) >= report.slice_thresholds.view(-1, 1)
    assert torch.equal(member[shadow], shadowed)  # exactly the shadowed images of a probe set never analysed

    with pytest.raises(ValueError, match="Expected a report of layer 'features' like this analysis"):
        ConceptAnalysis(DarknessNet(), "features", patches="window", patch_kwargs=WINDOWS).score(report, images)
    callable_report = ConceptAnalysis(DarknessNet(), "relu", patches="window", discovery=_kmeans_by_sklearn,
                                      top_k=20, patch_kwargs=WINDOWS).run(_shadow_batches())
    assert callable_report.discovery is None
    with pytest.raises(ValueError, match="Expected a report that kept its k-means/NMF discovery model"):
        analysis.score(callable_report, images)


def test_extra_concepts_score_nan_on_new_images_as_the_kept_model_does_not_know_them():
    def corner(images, patches):
        return Concept(0, "corner", torch.arange(len(patches)), -patches.boxes[:, :2].sum(1).float())

    analysis = ConceptAnalysis(DarknessNet(), "relu", patches="window", n_concepts=2, top_k=20, min_support=5,
                               patch_kwargs=WINDOWS, extra_concepts=[corner])
    report = analysis.run(_shadow_batches())
    assert report.concept_names[-1] == "corner" and len(report.discovery["kept"]) == len(report.concepts) - 1
    _, scores = analysis.score(report, torch.cat([b["image"] for b in _shadow_batches(seed=1)]))
    assert scores.shape[0] == len(report.concepts)
    assert torch.isnan(scores[-1]).all() and torch.isfinite(scores[:-1]).all()


# -- slices from members, class control, merges (issue 16) ------------------------------------------------------


def _by_darkness(parts=1, overlapping=False):
    """Discovery finding the dark patches (one per shadowed image) as ``parts`` concepts, plus one for the rest.

    Shadowed images are the even ones; part ``p`` takes those with ``(i // 2) % parts == p`` (disjoint slices), or
    with ``(i // 2) % (parts + 1) != p`` when ``overlapping`` (each pair shares a third of the images).
    """

    def discover(embeddings, patches):
        dark = embeddings[:, 0] > 0.5
        step = patches.image_index // 2
        if overlapping:
            groups = [dark & (step % (parts + 1) != p) for p in range(parts)]
        else:
            groups = [dark & (step % parts == p) for p in range(parts)]
        groups.append(~dark)
        return [Concept(i, f"cluster-{i}", g.nonzero().squeeze(1), torch.where(g, embeddings[:, 0], -1.0 - i))
                for i, g in enumerate(groups)]

    return discover


def test_member_slices_hold_every_image_of_a_common_failure():
    batches = _shadow_batches(n=120)  # 60 shadowed images; the top 20 patches reach at most 20 of them
    common = {"patches": "window", "discovery": _by_darkness(1), "top_k": 20, "patch_kwargs": WINDOWS}
    members = ConceptAnalysis(DarknessNet(), "relu", **common).run(batches, concept_names=["shadow"])
    top_k = ConceptAnalysis(DarknessNet(), "relu", slices="top_k", **common).run(batches, concept_names=["shadow"])
    shadow_m = {r.concept: r for r in members.ranking}[0]
    shadow_t = {r.concept: r for r in top_k.ranking}[0]
    assert shadow_m.support == 60 and shadow_t.support == 20
    assert shadow_m.error_out < shadow_t.error_out  # the other 40 shadowed images are no longer "outside"
    assert shadow_m.lift > 2 * shadow_t.lift and shadow_m.is_failure
    assert members.config["slices"] == "members" and members.top_patches.shape == (2, 20)
    # a new image is in a member slice when a patch scores at least the weakest member's score
    shadow = members.concepts[0]
    assert members.slice_thresholds[0] == pytest.approx(float(shadow.scores[shadow.members].min()))


def test_segmentation_member_slices_count_the_member_patches_pixels():
    batches = _shadow_batches(segmentation=True)
    report = ConceptAnalysis(DarknessNet(segmentation=True), "relu", patches="window", discovery=_by_darkness(1),
                             top_k=5, min_support=5, patch_kwargs=WINDOWS).run(batches, concept_names=["shadow"])
    shadow = report.concepts[0]
    assert report.confusion[0].sum() == 64 * shadow.members.numel()  # 8x8 windows, one per shadowed image
    assert report.confusion[0, 0, 1] == 64 * 20


def test_near_duplicate_failure_concepts_are_merged_into_one():
    batches = _shadow_batches(n=120)
    analysis = ConceptAnalysis(DarknessNet(), "relu", patches="window", discovery=_by_darkness(2, overlapping=True),
                               top_k=20, patch_kwargs=WINDOWS, merge_overlap=0.3)  # the two slices' Jaccard: 1/3
    report = analysis.run(batches, concept_names=["shadow"])
    (merged,) = report.failures
    assert merged.merged_from == (0, 1) and merged.name == "cluster-0+cluster-1" and merged.support == 60
    parts = [r for r in report.ranking if r.merged_into is not None]
    assert sorted(r.concept for r in parts) == [0, 1] and all(r.is_failure for r in parts)
    assert [r.rank for r in report.ranking] == list(range(1, len(report.ranking) + 1))
    concept = report.concept(merged.concept)
    assert concept.meta == {"merged_from": [0, 1]}
    assert torch.equal(concept.members, torch.cat([report.concept(0).members, report.concept(1).members]).unique())
    back = ConceptReport.from_json(report.to_json())
    assert [r.merged_into for r in back.ranking] == [r.merged_into for r in report.ranking]
    assert "merged into `cluster-0+cluster-1`" in report.to_markdown()  # named, not numbered
    # slices that share no image are not merged
    apart = ConceptAnalysis(DarknessNet(), "relu", patches="window", discovery=_by_darkness(2), top_k=20,
                            patch_kwargs=WINDOWS).run(batches)
    assert sorted(r.concept for r in apart.failures) == [0, 1]


def test_a_concept_of_one_hard_class_is_not_a_failure_with_class_control():
    batches = _shadow_batches(n=80)
    for b in batches:  # the shadowed images are exactly class 0, the rest class 1
        b["target"] = torch.where(b["concept_masks"].flatten(1).any(1), 0, 1)
    model = DarknessNet()
    with torch.no_grad():  # always predicts class 1: wrong on every image of class 0, whatever it shows
        model.fc.weight.zero_()
        model.fc.bias.copy_(torch.tensor([0.0, 1.0]))
    common = {"patches": "window", "discovery": _by_darkness(1), "top_k": 20, "patch_kwargs": WINDOWS}
    crude = ConceptAnalysis(model, "relu", class_control=False, **common).run(batches)
    controlled = ConceptAnalysis(model, "relu", **common).run(batches)
    assert [r.concept for r in crude.failures] == [0] and crude.ranking[0].class_lift is None
    row = {r.concept: r for r in controlled.ranking}[0]
    assert not controlled.failures and row.class_confounded and math.isnan(row.class_p_value)
    assert "class mix" in controlled.to_markdown()


def test_invalid_slices_and_merge_options_are_rejected():
    with pytest.raises(ValueError, match="Expected `slices` to be one of"):
        ConceptAnalysis(DarknessNet(), "relu", slices="images")
    with pytest.raises(ValueError, match="Expected `merge_overlap` to be None or in"):
        ConceptAnalysis(DarknessNet(), "relu", merge_overlap=0.0)


def test_slices_of_the_analysis_own_patches_give_back_its_member_slices():
    from debugger.pipeline import best_patch_scores

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(4, 2))
    batches = [(b["image"], b["target"]) for b in _shadow_batches(n=60)]
    images = torch.cat([x for x, _ in batches])
    small = {"sizes": (4,), "strides": (4,)}
    analysis = ConceptAnalysis(net, "1", patches="window", n_concepts=6, min_support=3, patch_kwargs=small, seed=1)
    report = analysis.run(batches)
    assert report.discovery is not None and report.config["slices"] == "members"
    patches, scores = analysis.score(report, images)
    assert torch.equal(report.slices_of(scores, patches.image_index, 60), report.membership)
    # a threshold alone does not: an image's best patch for a concept may belong to a nearer one
    ball = best_patch_scores(scores, patches.image_index, 60) >= report.slice_thresholds.view(-1, 1)
    assert not torch.equal(ball, report.membership)
    top_k = ConceptAnalysis(net, "1", patches="window", n_concepts=6, slices="top_k", min_support=3,
                            patch_kwargs=small, seed=1).run(batches)
    patches, scores = analysis.score(top_k, images)
    assert torch.equal(top_k.slices_of(scores, patches.image_index, 60), top_k.membership)
    with pytest.raises(ValueError, match="Expected `scores` of shape"):
        report.slices_of(scores[:1], patches.image_index, 60)
