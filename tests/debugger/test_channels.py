"""Channel attribution: extremal perturbation over the channels of an intermediate layer."""

import pytest
import torch
from torch import nn

from debugger.channels import ChannelAttribution, channel_area_loss, channel_attribution, class_channel_masks


class Weighted(nn.Module):
    """``features`` gives 4 positive channels (the image's channel 0 shifted by 1); class 0's score weighs them
    3, 0, 2, 0.5, so keeping 1 channel should keep channel 0 and keeping 2 channels 0 and 2."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(1, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 2)
        with torch.no_grad():
            self.features.weight.zero_()
            self.features.bias.fill_(1.0)
            self.fc.weight.copy_(torch.tensor([[3.0, 0.0, 2.0, 0.5], [0.0, 1.0, 0.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


def test_area_loss_by_hand():
    m = torch.tensor([[0.2, 0.9, 0.0, 1.0]])
    # sorted 0, 0.2, 0.9, 1 against 0, 0, 1, 1 → (0 + 0.04 + 0.01 + 0) / 4
    assert channel_area_loss(m, torch.tensor([2])).item() == pytest.approx(0.0125)
    assert channel_area_loss(m[None], torch.tensor([4])).shape == (1, 1)


def test_masks_keep_the_channels_the_score_weighs_most():
    net = Weighted()
    res = channel_attribution(net, "features", torch.zeros(2, 1, 4, 4), 0, areas=(1, 2, 4), iterations=200)
    assert res.masks.shape == (2, 3, 4) and res.scores.shape == (2, 3) and res.maps.shape == (2, 3, 4, 4)
    kept_one = res.masks[:, 0]
    kept_two = res.masks[:, 1]
    assert torch.allclose(kept_one, torch.tensor([1.0, 0.0, 0.0, 0.0]).expand(2, 4), atol=0.05)
    assert torch.allclose(kept_two, torch.tensor([1.0, 0.0, 1.0, 0.0]).expand(2, 4), atol=0.05)
    assert torch.allclose(res.clean, torch.full((2,), 5.5))
    # the score is monotone in the number of kept channels, and all channels keep the clean score
    assert bool((res.scores[:, 1:] >= res.scores[:, :-1] - 1e-4).all())
    assert torch.equal(res.extremal_area(), torch.tensor([4, 4]))
    assert torch.allclose(res.extremal_masks(), res.masks[:, 2])
    # the CAM-like map of the kept channels: Σ_k m_k Φ_k, with Φ_k = 1 everywhere
    assert torch.allclose(res.maps[:, 1], res.masks[:, 1].sum(1).view(2, 1, 1).expand(2, 4, 4))


def test_the_model_is_left_as_it_was():
    net = Weighted().train()
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    ChannelAttribution(net, "features", areas=(2,), iterations=5).attribute(torch.zeros(1, 1, 4, 4), "predicted")
    assert all(m.training for m in net.modules())
    assert all(torch.equal(p.grad, torch.ones_like(p)) for p in net.parameters())
    assert all(not m._forward_hooks for m in net.modules())


def test_runs_inside_inference_mode():
    net = Weighted()
    with torch.inference_mode():
        res = channel_attribution(net, "features", torch.zeros(1, 1, 4, 4), 0, areas=(1,), iterations=3)
    assert res.masks.shape == (1, 1, 4)


def test_class_channel_masks_average_per_class():
    masks = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
    assert torch.allclose(class_channel_masks(masks, torch.tensor([1, 1, 0]), 2),
                          torch.tensor([[0.5, 0.5], [0.5, 0.5]]))


def test_errors_name_the_argument():
    x = torch.zeros(1, 1, 4, 4)
    with pytest.raises(ValueError, match="Expected `layer`"):
        channel_attribution(Weighted(), "nope", x, 0)
    with pytest.raises(ValueError, match=r"Expected `areas` to be channel counts in \[1, 4\]"):
        channel_attribution(Weighted(), "features", x, 0, areas=(5,), iterations=1)
    with pytest.raises(ValueError, match="Expected `iterations`"):
        channel_attribution(Weighted(), "features", x, 0, iterations=0)
