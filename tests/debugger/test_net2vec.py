"""Net2Vec: segmentation and classification concept vectors against the best single filter."""

import pytest
import torch
from torch import nn

from debugger.net2vec import (
    Net2Vec,
    average_precision,
    binary_features,
    fit_classification_vector,
    fit_segmentation_vector,
    segmentation_iou,
    single_filter_iou,
)


def union_of_two_filters(n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random activations of 4 filters; the concept is where filter 0 *or* filter 1 exceeds 1."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(n, 4, 6, 6, generator=g)
    masks = (acts[:, 0] > 1.0) | (acts[:, 1] > 1.0)
    return acts, masks, torch.ones(4)


def test_segmentation_recovers_a_planted_union_that_no_single_filter_reaches():
    acts, masks, thresholds = union_of_two_filters()
    w = fit_segmentation_vector(acts, masks, thresholds, epochs=150, lr=0.1, batch_size=4)
    assert w[0] > 0 and w[1] > 0 and w[2] < 0 and w[3] < 0
    assert segmentation_iou(acts, masks, thresholds, w) == pytest.approx(1.0)
    single = single_filter_iou(acts, masks, thresholds)
    assert float(single.max()) < 0.7
    # filters 0 and 1 each cover their share of the union exactly: IoU = |A_k| / |A_0 ∪ A_1|
    for k in (0, 1):
        assert float(single[k]) == pytest.approx(float((acts[:, k] > 1).sum() / masks.sum()), rel=1e-6)


def test_segmentation_fit_is_seeded():
    acts, masks, thresholds = union_of_two_filters()
    a = fit_segmentation_vector(acts, masks, thresholds, epochs=3, batch_size=5, seed=4)
    b = fit_segmentation_vector(acts, masks, thresholds, epochs=3, batch_size=5, seed=4)
    c = fit_segmentation_vector(acts, masks, thresholds, epochs=3, batch_size=5, seed=5)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_binary_features_upsample_bilinearly():
    f = binary_features(torch.tensor([[[[2.0, 0.0]]]]), torch.tensor([1.0]), (1, 4))
    assert torch.allclose(f, torch.tensor([[[[1.0, 0.75, 0.25, 0.0]]]]))


def test_average_precision_matches_sklearn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40,), generator=g).float()
    labels = torch.rand(40, generator=g) > 0.6
    assert average_precision(scores, labels) == pytest.approx(
        metrics.average_precision_score(labels.numpy(), scores.numpy()), rel=1e-9
    )


def test_average_precision_by_hand():
    # ranking: +, -, +  → precision 1 at recall 1/2, 2/3 at recall 1
    assert average_precision(torch.tensor([3.0, 2.0, 1.0]), torch.tensor([1, 0, 1])) == pytest.approx(5 / 6)
    assert average_precision(torch.tensor([1.0, 2.0]), torch.tensor([0, 0])) == 0.0


def test_classification_combines_filters_a_single_one_cannot_separate():
    g = torch.Generator().manual_seed(1)
    pooled = torch.rand(200, 3, generator=g)
    present = pooled[:, 0] + pooled[:, 1] > 1.0
    w, b = fit_classification_vector(pooled, present)
    assert average_precision(pooled @ w + b, present) > 0.99
    assert max(average_precision(pooled[:, k], present) for k in range(3)) < 0.95


class Copier(nn.Module):
    """``features`` copies the 3 image channels; the concept masks below are built from channels 0 and 1."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def planted_batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 6, 6, generator=g)
    masks = ((images[:, 0] > 1.8) | (images[:, 1] > 1.8))[:, None]
    return {"image": images, "target": torch.zeros(n, dtype=torch.long), "concept_masks": masks}


def test_net2vec_fits_on_one_probe_set_and_scores_on_another():
    model = Copier().train()
    probe = Net2Vec(model, "features", quantile=0.96, epochs=60, lr=0.1, batch_size=8).fit([planted_batch(40, 0)],
                                                                                          ["either"])
    assert model.training and all(p.grad is None for p in model.parameters())
    assert probe.vectors_["either"].best_filter_segmentation in (0, 1)
    scores = probe.score([planted_batch(40, 1)])["either"]
    assert scores["iou"] > scores["single_filter_iou"] + 0.2
    assert scores["iou"] > 0.8


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="Expected `fit` to have been called"):
        Net2Vec(Copier(), "features").score([planted_batch(4, 0)])
    with pytest.raises(ValueError, match="Expected `layer`"):
        Net2Vec(Copier(), "nope").fit([planted_batch(4, 0)], ["either"])
    with pytest.raises(ValueError, match="Expected `concept_names`"):
        Net2Vec(Copier(), "features").fit([planted_batch(4, 0)], ["a", "b"])
    with pytest.raises(ValueError, match="Expected every batch to carry `concept_masks`"):
        Net2Vec(Copier(), "features").fit([(torch.zeros(2, 3, 6, 6), torch.zeros(2, dtype=torch.long))], ["a"])
    with pytest.raises(ValueError, match="Expected `masks` to hold at least one concept pixel"):
        fit_segmentation_vector(torch.zeros(2, 1, 2, 2), torch.zeros(2, 2, 2, dtype=torch.bool), torch.zeros(1))
    with pytest.raises(ValueError, match="Expected `masks` to be a tensor"):
        fit_segmentation_vector(torch.zeros(2, 1, 2, 2), torch.zeros(2, 2), torch.zeros(1))
    with pytest.raises(ValueError, match="Expected `present` to hold positives and negatives"):
        fit_classification_vector(torch.zeros(3, 2), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="Expected `pooled` to be"):
        fit_classification_vector(torch.zeros(3), torch.zeros(3, dtype=torch.bool))
