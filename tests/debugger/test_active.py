import pytest
import torch
from torch import nn

from debugger.active import (
    STRATEGIES,
    ActiveLearner,
    Oracle,
    entropy,
    least_confidence,
    margin,
    parse_schedule,
    precision_at_k,
    query_order,
    select_labels,
)
from debugger.extractor import ConceptExtractor
from debugger.patches import sliding_windows
from debugger.structures import PatchSet


def _pool(overlap: list[float]) -> PatchSet:
    n = len(overlap)
    return PatchSet(
        image_index=torch.zeros(n, dtype=torch.long),
        boxes=torch.tensor([[0, 0, 4, 4]] * n),
        concept_overlap=torch.tensor(overlap).view(n, 1),
        concept_names=("shadow",),
    )


def test_uncertainty_measures_exact_values():
    p = torch.tensor([[0.7, 0.2, 0.1], [0.4, 0.35, 0.25], [1.0, 0.0, 0.0]])
    torch.testing.assert_close(least_confidence(p), torch.tensor([0.3, 0.6, 0.0]))
    torch.testing.assert_close(margin(p), torch.tensor([0.5, 0.05, 1.0]))
    # least confidence and margin disagree on three classes: row 0 is less confident, row 1 has the smaller margin
    q = torch.tensor([[0.5, 0.25, 0.25], [0.55, 0.45, 0.0]])
    assert int(least_confidence(q).argmax()) == 0 and int(margin(q).argmin()) == 1
    # binary scores are P(positive)
    torch.testing.assert_close(least_confidence(torch.tensor([0.9, 0.5, 0.2])), torch.tensor([0.1, 0.5, 0.2]))
    torch.testing.assert_close(margin(torch.tensor([0.9, 0.5, 0.2])), torch.tensor([0.8, 0.0, 0.6]))


def test_entropy_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    p = torch.tensor([[0.7, 0.2, 0.1], [0.5, 0.5, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(entropy(p), torch.tensor(stats.entropy(p.numpy(), axis=1)))
    b = torch.tensor([0.3, 0.5, 0.99], dtype=torch.float64)
    ref = stats.entropy(torch.stack([1 - b, b], 1).numpy(), axis=1)
    torch.testing.assert_close(entropy(b), torch.tensor(ref))


def test_query_orders_are_what_each_strategy_claims():
    scores = torch.tensor([0.95, 0.1, 0.52, 0.7, 0.25, 0.02])
    cand = torch.tensor([0, 1, 2, 3, 4, 5])
    g = torch.Generator().manual_seed(0)
    assert query_order("confident_wrong", scores, cand, g).tolist() == [0, 3, 2, 4, 1, 5]  # most confident first
    for strategy in ("least_confidence", "margin", "entropy"):
        assert query_order(strategy, scores, cand, g).tolist() == [2, 3, 4, 1, 0, 5]  # by distance from 0.5
    sub = torch.tensor([3, 5])
    assert query_order("least_confidence", scores, sub, g).tolist() == [3, 5]
    r1 = query_order("random", None, cand, torch.Generator().manual_seed(3))
    r2 = query_order("random", None, cand, torch.Generator().manual_seed(3))
    assert r1.equal(r2) and sorted(r1.tolist()) == cand.tolist()
    with pytest.raises(ValueError, match="strategy"):
        query_order("bald", scores, cand, g)
    with pytest.raises(ValueError, match="scores"):
        query_order("margin", None, cand, g)


def test_select_labels_takes_the_first_positives_and_negatives_along_the_orders():
    oracle = Oracle(_pool([0.0, 0.9, 0.1, 0.0, 0.6, 0.0]), "shadow", positive_min=0.25, negative_max=0.0)
    scores = torch.tensor([0.9, 0.05, 0.8, 0.7, 0.2, 0.1])
    labelled = torch.tensor([False, False, False, False, False, True])
    pos, neg, reviewed = select_labels("confident_wrong", scores, oracle, labelled, 1, 2, torch.Generator())
    assert neg.tolist() == [0, 3]  # the two highest-scored negatives: hard negatives (2 is ambiguous: skipped)
    assert pos.tolist() == [4]  # the highest-scored positive
    assert reviewed == 4  # order 0, 2, 3, 4: the labeller looked at four patches
    pos, neg, _ = select_labels("least_confidence", scores, oracle, labelled, 5, 5, torch.Generator())
    assert pos.tolist() == [4, 1] and neg.tolist() == [3, 0]  # pool exhausted, labelled 5 never offered


def test_oracle_labels_truth_and_brush():
    masks = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    masks[0, 0, 1:3, 2:5] = True
    images = torch.rand(1, 3, 8, 8)
    ps = sliding_windows(images, sizes=(4, 8), strides=(4, 8), concept_masks=masks, concept_names=("shadow",))
    oracle = Oracle(ps, "shadow", positive_min=0.25, concept_masks=masks)
    ov = ps.concept_overlap[:, 0]
    assert oracle.label(torch.arange(len(ps))).tolist() == [1 if o >= 0.25 else 0 if o == 0 else -1 for o in ov]
    assert oracle.truth().tolist() == (ov > 0).tolist()
    boxes = oracle.brush(torch.arange(len(ps)))
    assert boxes[0].tolist() == [2, 1, 4, 3]  # the concept's part inside the top-left window
    assert boxes[1].tolist() == [4, 1, 5, 3]
    assert boxes[2].tolist() == ps.boxes[2].tolist()  # no concept pixel: the patch box
    assert boxes[4].tolist() == [2, 1, 5, 3]  # the whole-image window
    with pytest.raises(ValueError, match="concept_masks"):
        Oracle(ps, 0).brush(torch.tensor([0]))
    with pytest.raises(ValueError, match="one of"):
        Oracle(ps, "tint")
    with pytest.raises(ValueError, match="concept_overlap"):
        Oracle(PatchSet(ps.image_index, ps.boxes), "shadow")
    with pytest.raises(ValueError, match="negative_max"):
        Oracle(ps, "shadow", positive_min=0.1, negative_max=0.2)


def test_parse_schedule_and_errors():
    assert parse_schedule("10-4-4-4") == [(10, 10), (4, 4), (4, 4), (4, 4)]
    assert parse_schedule([2, (3, 1)]) == [(2, 2), (3, 1)]
    for bad in ("", "10--4", "a-b", "0-4", [], [(1, 0)], [True]):
        with pytest.raises(ValueError, match="schedule"):
            parse_schedule(bad)  # type: ignore[arg-type]


def test_precision_at_k_excludes_labelled():
    s = torch.tensor([0.9, 0.8, 0.7, 0.6])
    t = torch.tensor([False, True, True, False])
    assert precision_at_k(s, t, ks=(1, 2)) == {1: 0.0, 2: 0.5}
    assert precision_at_k(s, t, ks=(1, 2, 10), exclude=torch.tensor([True, False, False, False])) == {
        1: 1.0, 2: 1.0, 10: pytest.approx(2 / 3)}


def _toy(n: int = 16):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    images = 0.4 + 0.2 * torch.rand(n, 3, 16, 16, generator=g)
    masks = torch.zeros(n, 1, 16, 16, dtype=torch.bool)
    for i in range(0, n, 2):
        images[i, 0, 2:8, 2:8] = 1.0
        images[i, 1:, 2:8, 2:8] = 0.0
        masks[i, 0, 2:8, 2:8] = True
    ps = sliding_windows(images, sizes=(8,), strides=(8,), concept_masks=masks, concept_names=("red",))
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
    with torch.no_grad():
        net[0].weight[0].zero_()
        net[0].weight[0, 0, 1, 1], net[0].weight[0, 1, 1, 1], net[0].bias[0] = 4.0, -4.0, 0.0
    return images, ps, masks, net


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_active_learner_stages(strategy):
    images, ps, masks, net = _toy()
    oracle = Oracle(ps, "red", concept_masks=masks)
    ex = ConceptExtractor(net, "1", "red", n_augment=32, batch_size=16, max_epochs=15, patience=3)
    latents = ex.embed(images, ps)
    learner = ActiveLearner(ex, "2-1-1", strategy, brush=strategy == "confident_wrong", eval_ks=(4,), seed=0)
    learner.run(images, ps, oracle, latents=latents)
    assert [s["labels"] for s in learner.stages_] == [4, 6, 8]
    assert learner.stages_[0]["strategy"] == "random" and learner.stages_[1]["strategy"] == strategy
    labels = oracle.label(torch.cat([learner.positives_, learner.negatives_]))
    assert labels.tolist() == [1] * 4 + [0] * 4
    assert int(learner.labelled_.sum()) == 8
    assert learner.stages_[-1]["precision"][4] == 1.0  # the red quadrant is easy once labelled
    if strategy == "confident_wrong":
        assert all(e["box"] is not None for e in ex.examples_ if e["label"] == 1)


def test_active_learner_errors():
    images, ps, masks, net = _toy()
    ex = ConceptExtractor(net, "1", n_augment=8, max_epochs=2)
    with pytest.raises(ValueError, match="strategy"):
        ActiveLearner(ex, strategy="bald")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="schedule"):
        ActiveLearner(ex, schedule="4-0")
    with pytest.raises(ValueError, match="cached latents"):
        ActiveLearner(ex, "1").run(images, ps, Oracle(ps, "red"), latents=torch.zeros(3, 4, 16, 16))
    none = PatchSet(ps.image_index, ps.boxes, ps.masks, torch.zeros(len(ps), 1), ("red",))
    with pytest.raises(ValueError, match="positives and negatives"):
        ActiveLearner(ex, "1").run(images, none, Oracle(none, "red"))


def test_precision_cut_offs_must_be_positive_integers():
    from debugger.active import precision_at_k

    with pytest.raises(ValueError, match="positive integers"):
        precision_at_k(torch.tensor([0.9, 0.1]), torch.tensor([True, False]), ks=(0,))
    with pytest.raises(ValueError, match="positive integers"):
        precision_at_k(torch.tensor([0.9, 0.1]), torch.tensor([True, False]), ks=(-1, 2))
