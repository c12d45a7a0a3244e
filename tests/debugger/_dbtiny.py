"""Tiny hand-set models and reports shared by the debugger and callbacks tests."""

from typing import Any

import torch
from torch import nn


class DarknessNet(nn.Module):
    """Hand-set weights: channel 0 of ``features`` is darkness (1 - mean intensity), channel 1 brightness.

    Predicts class 1 when any pixel is dark, class 0 otherwise — so it fails on every shadowed image of class 0.
    """

    def __init__(self, segmentation: bool = False) -> None:
        super().__init__()
        self.segmentation = segmentation
        self.features = nn.Conv2d(3, 2, 1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([[-1 / 3] * 3, [1 / 3] * 3]).view(2, 3, 1, 1))
            self.features.bias.copy_(torch.tensor([1.0, 0.0]))
            self.fc.weight.copy_(torch.tensor([[-10.0, 0.0], [10.0, 0.0]]))
            self.fc.bias.copy_(torch.tensor([6.0, -6.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.relu(self.features(x))
        if self.segmentation:  # per-pixel logits from the same rule
            return torch.einsum("kd,bdhw->bkhw", self.fc.weight, f) + self.fc.bias.view(1, -1, 1, 1)
        return self.fc(self.pool(f).flatten(1))


def bright_report() -> Any:
    """A real ConceptReport in which discovered 'cluster-0' shows the 'bright' concept and is a failure."""
    from debugger.pipeline import ConceptAnalysis
    from debugger.structures import Concept

    # class c has channel c raised; a "bright" top-left quarter on channel 0 flips classes 1 and 2 to class 0
    n = 24
    targets = torch.arange(n) % 3
    images = torch.zeros(n, 3, 8, 8)
    images[torch.arange(n), targets] = 1.0
    bright = torch.arange(n) % 2 == 0
    images[bright, 0, :4, :4] += 8.0
    masks = torch.zeros(n, 1, 8, 8, dtype=torch.bool)
    masks[bright, 0, :4, :4] = True
    model = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def by_ground_truth(embeddings: torch.Tensor, patches: Any) -> list[Concept]:
        s = patches.concept_overlap[:, 0].float()
        return [Concept(0, "cluster-0", (s > 0).nonzero().flatten(), s),
                Concept(1, "cluster-1", (s == 0).nonzero().flatten(), 1 - s)]

    batch = {"image": images, "target": targets, "concepts": bright.float()[:, None], "concept_masks": masks}
    return ConceptAnalysis(model, "0", patches="window", discovery=by_ground_truth, top_k=12, min_support=2,
                           patch_kwargs={"sizes": (4,), "strides": (4,)}).run([batch], concept_names=["bright"])
