"""Fingerprints change with any parameter or buffer and with the examples, and with nothing else."""

from __future__ import annotations

import torch
from torch import nn

import debugger
from debugger.fingerprint import model_fingerprint, tensors_fingerprint


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))


def test_model_fingerprint_is_stable_and_ignores_mode_and_grads() -> None:
    net = _net()
    fp = model_fingerprint(net)
    net.eval()
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    assert model_fingerprint(net) == fp
    assert model_fingerprint(_net()) == fp  # same seed, same weights


def test_model_fingerprint_changes_with_a_parameter_a_buffer_or_a_dtype() -> None:
    net = _net()
    fp = model_fingerprint(net)
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] += 1e-6
    assert model_fingerprint(net) != fp
    fp = model_fingerprint(net)
    net[1].running_var.add_(0.25)
    assert model_fingerprint(net) != fp
    fp = model_fingerprint(net)
    assert model_fingerprint(net.double()) != fp


def test_tensors_fingerprint_depends_on_order_shape_and_values() -> None:
    a, b = torch.arange(6.0), torch.ones(2)
    assert tensors_fingerprint(a, b) != tensors_fingerprint(b, a)
    assert tensors_fingerprint(a) != tensors_fingerprint(a.reshape(2, 3))
    assert tensors_fingerprint(a) != tensors_fingerprint(a.long())
    assert tensors_fingerprint(a, None) == tensors_fingerprint(a)


def test_the_package_and_tcav_export_the_one_fingerprint() -> None:
    from debugger import tcav

    assert debugger.model_fingerprint is model_fingerprint
    assert tcav.model_fingerprint is model_fingerprint
