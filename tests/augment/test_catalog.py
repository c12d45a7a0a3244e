"""The failure catalogue: every entry renders at a strength, deterministically, and reports what it changed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import augment
from augment.catalog import (
    FAMILIES,
    PerSampleAlbumentations,
    catalog,
    changed_region,
    entry,
    render,
    strength_grid,
    untargeted_control,
)

A = pytest.importorskip("albumentations")

ENTRIES = catalog()
IDS = [e.name for e in ENTRIES]


def _images(b=4, size=32, seed=0):
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def test_catalogue_covers_every_family_from_both_sources():
    assert {e.family for e in catalog(["conceptfix"])} == set(FAMILIES)
    assert {e.family for e in catalog(["albumentations"])} == set(FAMILIES)
    assert all(e.source == "conceptfix" for e in catalog(["conceptfix"]))
    ours = catalog(["conceptfix"])
    assert all(entry(e.counterpart).family == e.family for e in ours if e.counterpart)


@pytest.mark.parametrize("item", ENTRIES, ids=IDS)
def test_render_is_deterministic_and_reports_the_changed_region(item):
    x = _images()
    y, changed = render(item, x, 0.8, torch.Generator().manual_seed(1))
    y2, changed2 = render(item, x, 0.8, torch.Generator().manual_seed(1))
    assert torch.equal(y, y2) and torch.equal(changed, changed2)
    assert y.shape == x.shape and changed.shape == (4, 1, 32, 32)
    assert float(changed.min()) >= 0 and float(changed.max()) <= 1
    moved = (y - x).abs().amax(dim=1, keepdim=True)
    # Nothing moves outside the reported region (albumentations' float-through-uint8 rounding aside) ...
    assert float((moved * (changed == 0)).max()) <= 1.5 / 255
    # ... and something changed in most samples (a random polygon may fall beside the image, a random plasma
    # brightness may be near 0).
    assert float((moved.flatten(1).amax(1) > 1.5 / 255).float().mean()) >= 0.75


@pytest.mark.parametrize("item", ENTRIES, ids=IDS)
def test_strength_zero_changes_nothing_and_reports_nothing(item):
    x = _images(b=2)
    y, changed = render(item, x, 0.0, torch.Generator().manual_seed(1))
    assert torch.equal(y, x)
    assert float(changed.sum()) == 0.0


@pytest.mark.parametrize("name", [e.name for e in catalog(["conceptfix"])])
def test_other_seeds_give_other_renderings(name):
    x = _images(b=2)
    a, _ = render(name, x, 0.8, torch.Generator().manual_seed(1))
    b, _ = render(name, x, 0.8, torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)


def test_region_of_ours_is_the_transform_region():
    x = _images(b=3)
    shadow = entry("shadow-line")
    y, changed = render(shadow, x, 0.5, torch.Generator().manual_seed(4))
    module = shadow.make(0.5, 32, 32)
    params = module.sample(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(module.region(params, 32, 32), changed)
    torch.testing.assert_close(y, x * (1 - 0.5 * changed))


def test_changed_region_thresholds_the_largest_channel_move():
    x = torch.zeros(1, 3, 2, 2)
    y = x.clone()
    y[0, 2, 0, 0] = 1 / 255
    y[0, 0, 1, 1] = 2 / 255
    assert changed_region(x, y)[0, 0].tolist() == [[0.0, 0.0], [0.0, 1.0]]
    assert changed_region(x, y, tolerance=0.0)[0, 0].tolist() == [[1.0, 0.0], [0.0, 1.0]]


def test_per_sample_albumentations_replays_and_refuses_a_region():
    t = PerSampleAlbumentations(A.GaussNoise(std_range=(0.2, 0.2), p=1.0), p=1.0, seed=0)
    x = _images(b=3)
    y, params = t(x, return_params=True)
    assert torch.equal(t(x, params), y) and not torch.equal(y, x)
    assert y.dtype == x.dtype and y.device == x.device
    assert not torch.equal(y[0] - x[0], y[1] - x[1])  # every sample its own seed
    with pytest.raises(ValueError, match="does not; use augment.catalog.changed_region"):
        t.region(params, 32, 32)
    with pytest.raises(ValueError, match="Expected `transform` to be an albumentations transform"):
        PerSampleAlbumentations(torch.nn.Identity())
    part = t(x, probabilities=torch.tensor([1.0, 0.0, 1.0]))
    assert torch.equal(part[1], x[1]) and not torch.equal(part[0], x[0])


def test_untargeted_control_draws_one_catalogue_transform_per_sample_uniformly():
    control = untargeted_control(16, 16, p=1.0, seed=0)
    n = len(control.transforms)
    assert n == len(catalog(["conceptfix"]))
    x = torch.rand(700, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    y, params = control(x, return_params=True)
    counts = torch.bincount(params.choice, minlength=n)
    assert int(counts.sum()) == 700 and int(counts.min()) > 20  # ~50 each
    changed = control.region(params, 16, 16)
    moved = (y - x).abs().amax(dim=1, keepdim=True)
    assert float((moved * (changed == 0)).max()) == 0.0
    assert isinstance(control, augment.OneOfUniform)


def test_untargeted_control_with_albumentations_entries_runs():
    control = untargeted_control(16, 16, p=1.0, sources=("conceptfix", "albumentations"), seed=0)
    assert len(control.transforms) == len(catalog())
    x = torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    assert control(x).shape == x.shape


def test_strength_grid_and_lookup_errors():
    assert strength_grid(5) == (0.2, 0.4, 0.6, 0.8, 1.0)
    with pytest.raises(ValueError, match=r"Expected `name` to be a catalogue entry \(nearest: \['haze'"):
        entry("hazy")
    with pytest.raises(ValueError, match="Expected `strength` to be a number in"):
        render("haze", _images(), 1.5)
    with pytest.raises(ValueError, match="Expected every source to be one of"):
        catalog(["kornia"])
    with pytest.raises(ValueError, match="Expected `points` to be an integer >= 1"):
        strength_grid(0)
    with pytest.raises(ValueError, match="Expected `strength` to be in"):
        entry("noise").make(-0.1, 8, 8)


def test_albumentations_entries_render_float_images_like_albumentations_itself():
    x = _images(b=1)
    y, _ = render("albumentations.RandomGamma", x, 0.5, torch.Generator().manual_seed(0))
    ratio = np.log(y[0].numpy().clip(1e-3)) / np.log(x[0].numpy().clip(1e-3))
    gamma = np.median(ratio)
    assert 3.0**-0.5 - 1e-3 <= gamma <= 3.0**0.5 + 1e-3 and abs(gamma - 1.0) > 1e-3
