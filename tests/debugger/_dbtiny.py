"""Tiny hand-set models shared by the debugger tests."""

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
