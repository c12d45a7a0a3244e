"""Dissection and Net2Vec on the built-in planted data, whose concept masks are the ground truth.

A hand-set "speckle" unit (the magnitude of a Laplacian, filter 0) fires on the occluder's fine-grained speckle and
a brightness unit (filter 1) on light pixels; nothing else is learned.
"""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

from debugger.dissection import dissect
from debugger.net2vec import Net2Vec

planted = pytest.importorskip("recipes.data.planted")

PREVALENCE = {"shadow": 0.5, "occluder": 0.5, "stripes": 0.3, "tint": 0.0}


class Speckle(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1, bias=False)
        self.features = nn.Identity()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[0] = torch.tensor([[0.0, -1, 0], [-1, 4, -1], [0, -1, 0]]) / 3
            self.conv.weight[1, :, 1, 1] = 1 / 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.conv(x)
        f = self.features(torch.stack([f[:, 0].abs(), f[:, 1]], 1))
        return self.fc(f.mean((2, 3)))


def batches(seed: int) -> list[dict]:
    ds = planted.PlantedConceptsDataset("test", size=48, seed=seed, prevalence=PREVALENCE, cache_dir=None)
    return list(DataLoader(ds, batch_size=16))


def test_dissection_labels_the_speckle_unit_occluder_at_the_papers_threshold():
    names = list(planted.CONCEPTS)
    d = dissect(Speckle(), "features", batches(0), concept_names=names)["features"]
    assert d.detectors("occluder") == [0]
    assert d.unit_counts() == {"shadow": 0, "occluder": 1, "stripes": 0, "tint": 0}
    assert d.top_units(1)[0][:2] == (0, "occluder")


def test_net2vec_combines_both_units_for_the_occluder_on_held_out_images():
    names = list(planted.CONCEPTS)
    probe = Net2Vec(Speckle(), "features", quantile=0.97, epochs=30, batch_size=16).fit(batches(0), names)
    scores = probe.score(batches(1))
    occluder = scores["occluder"]
    assert occluder["iou"] > occluder["single_filter_iou"] + 0.05
    assert occluder["ap"] > 0.9
    assert scores["tint"]["iou"] is None  # no tint in this data: nothing to fit
