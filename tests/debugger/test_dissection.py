"""Network dissection: thresholds, set IoU over the probe set, and the per-layer result."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from debugger.dissection import Dissection, activation_thresholds, dissect, dissection_counts, dissection_iou


class MaskCopier(nn.Module):
    """``features`` copies the image's channel 0 into filter 0 and its negation into filter 1."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 2, 1, bias=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.weight[0, 0] = 1.0
            self.features.weight[1, 0] = -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def masked_batch(n: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Images whose channel 0 is a 2x2 square (1/16 of the pixels) with positive values, 0 elsewhere."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, 2, 8, 8, dtype=torch.bool)
    for i in range(n):
        r, c = torch.randint(0, 7, (2,), generator=g).tolist()
        masks[i, 0, r:r + 2, c:c + 2] = True
    masks[:, 1, :, :4] = True  # a second concept: the left half
    images = torch.zeros(n, 3, 8, 8)
    images[:, 0] = masks[:, 0] * (1.0 + torch.rand(n, 8, 8, generator=g))
    return {"image": images, "target": torch.zeros(n, dtype=torch.long), "concept_masks": masks}


def test_thresholds_keep_exactly_the_top_share_of_each_filter():
    a = torch.stack([torch.arange(400.0), -torch.arange(400.0)]).T.reshape(4, 10, 10, 2).permute(0, 3, 1, 2)
    t = activation_thresholds(a, quantile=0.995)
    assert ((a[:, 0] > t[0]).sum(), (a[:, 1] > t[1]).sum()) == (2, 2)


def test_thresholds_from_a_sample_stay_near_the_full_quantile():
    a = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    full = activation_thresholds(a, 0.99)
    sampled = activation_thresholds(a, 0.99, max_values=8000, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(full, sampled, atol=0.15)
    assert not torch.equal(full, sampled)


def test_a_filter_that_copies_a_mask_has_iou_one():
    batch = masked_batch()
    acts = batch["image"][:, :1]
    iou = dissection_iou(acts, batch["concept_masks"], quantile=1 - 1 / 16)
    assert iou[0, 0] == pytest.approx(1.0)
    # the square lies in the left half only in part: its IoU with that concept is |square ∩ left| / |left ∪ square|
    inter = (batch["concept_masks"][:, 0] & batch["concept_masks"][:, 1]).sum()
    union = (batch["concept_masks"][:, 0] | batch["concept_masks"][:, 1]).sum()
    assert iou[0, 1] == pytest.approx(float(inter / union))


def test_iou_matches_a_loop_reference_with_upsampling():
    g = torch.Generator().manual_seed(3)
    acts = torch.randn(5, 3, 4, 4, generator=g)
    masks = torch.rand(5, 2, 16, 16, generator=g) > 0.7
    iou = dissection_iou(acts, masks, quantile=0.9, chunk_size=2)
    up = F.interpolate(acts, size=(16, 16), mode="bilinear", align_corners=False).numpy()
    m = masks.numpy()
    for k in range(3):
        values = np.sort(acts[:, k].numpy().ravel())
        t = values[int(0.9 * (values.size - 1))]
        on = up[:, k] > t
        for c in range(2):
            want = (on & m[:, c]).sum() / (on | m[:, c]).sum()
            assert float(iou[k, c]) == pytest.approx(want, rel=1e-6)


def test_counts_are_exact_for_a_hand_set_map():
    acts = torch.tensor([[[[0.0, 1.0], [0.0, 0.0]]]])
    masks = torch.tensor([[[[True, True], [False, False]]]])
    inter, union = dissection_counts(acts, masks, torch.tensor([0.5]))
    assert (inter.item(), union.item()) == (1, 2)


def test_dissect_finds_the_copying_filter_and_is_chunk_invariant():
    batches = [masked_batch(4, seed=0), masked_batch(3, seed=1)]
    model = MaskCopier()
    result = dissect(model, "features", batches, concept_names=["square", "left"], quantile=1 - 1 / 16)["features"]
    assert isinstance(result, Dissection)
    assert result.iou[0, 0] == pytest.approx(1.0)
    assert result.detectors("square") == [0]
    assert result.unit_counts()["square"] == 1
    assert result.top_units(1) == [(0, "square", pytest.approx(1.0))]
    assert not result.sampled_quantile
    again = dissect(model, "features", batches, concept_names=["square", "left"], quantile=1 - 1 / 16, chunk_size=2)
    assert torch.allclose(again["features"].iou, result.iou, atol=1e-6)
    summary = result.to_dict()
    assert summary["unit_counts"]["square"] == 1 and summary["detectors"]["square"] == [0]


def test_dissect_leaves_the_model_mode_and_grads_alone():
    model = MaskCopier().train()
    dissect(model, "features", [masked_batch()], max_quantile_values=10)
    assert model.training and all(p.grad is None for p in model.parameters())


def test_dissect_says_when_the_quantile_was_sampled():
    out = dissect(MaskCopier(), "features", [masked_batch()], max_quantile_values=10)
    assert out["features"].sampled_quantile


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="Expected `layer`"):
        dissect(MaskCopier(), "nope", [masked_batch()])
    with pytest.raises(ValueError, match="Expected every batch to carry `concept_masks`"):
        dissect(MaskCopier(), "features", [(torch.zeros(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))])
    with pytest.raises(ValueError, match="Expected `concept_names`"):
        dissect(MaskCopier(), "features", [masked_batch()], concept_names=["one"])
    with pytest.raises(ValueError, match="Expected `quantile` to be in"):
        activation_thresholds(torch.zeros(1, 1, 2, 2), 1.5)
    with pytest.raises(ValueError, match="Expected `activations`"):
        activation_thresholds(torch.zeros(2, 2), 0.5)
    with pytest.raises(ValueError, match="Expected `masks`"):
        dissection_counts(torch.zeros(1, 1, 2, 2), torch.zeros(2, 1, 2, 2), torch.zeros(1))
    with pytest.raises(ValueError, match="Expected `concept`"):
        dissect(MaskCopier(), "features", [masked_batch()])["features"].detectors("cat")
