"""The corruption front ends: parity of both paths, strength 0, region, replay, determinism, dtypes, errors."""

from __future__ import annotations

import copy
import json
import pickle

import numpy as np
import pytest
import torch

import augment
from augment import albu
from augment.corruptions import CORRUPTIONS
from augment.params import CorruptionParams

A = pytest.importorskip("albumentations")

NAMES = [c.__name__ for c in CORRUPTIONS]
CASES = [(n, e) for n in NAMES for e in ("image", "blob")]


def _images(b=3, c=3, h=20, w=24, seed=0, dtype=torch.float32):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _pair(name, extent="blob", strength=(0.3, 1.0)):
    module = getattr(augment, name)(p=1.0, strength=strength, extent=extent, seed=0)
    twin = getattr(albu, name)(p=1.0, strength=strength, extent=extent)
    return module, twin


@pytest.mark.parametrize(("name", "extent"), CASES)
def test_torch_and_albumentations_paths_give_the_same_pixels(name, extent):
    module, twin = _pair(name, extent)
    x = _images()
    y, params = module(x, return_params=True)
    assert not torch.equal(y, x)
    for i in range(x.shape[0]):
        theirs = twin.apply(x[i].permute(1, 2, 0).numpy(), **params.item(i))
        diff = np.abs(y[i].permute(1, 2, 0).numpy() - theirs)
        if name == "SyntheticCompression":
            # Rounding DCT coefficients can flip on a last-bit difference between a batch and one image.
            assert float((diff > 1e-4).mean()) < 0.01, name
        else:
            np.testing.assert_allclose(diff, 0.0, atol=2e-5, err_msg=name)


@pytest.mark.parametrize(("name", "extent"), CASES)
def test_pixels_change_only_inside_the_region_and_do_inside_it(name, extent):
    module, _ = _pair(name, extent, strength=1.0)
    x = _images(b=4, h=32, w=32)
    y, params = module(x, return_params=True)
    region = module.region(params, 32, 32)
    assert region.shape == (4, 1, 32, 32) and float(region.min()) >= 0 and float(region.max()) <= 1
    moved = (y - x).abs().amax(dim=1, keepdim=True)
    assert float((moved * (region == 0)).max()) == 0.0
    core = region > 0.99
    assert int(core.sum()) > 0
    # Almost every pixel of the region's core moves at full strength (blurs leave locally flat pixels alone).
    assert float((moved[core] > 1e-4).float().mean()) > 0.8, name
    if extent == "image":
        assert bool((region == 1).all())


def test_region_is_the_ellipse_the_record_says():
    module = augment.SyntheticBrightness(p=1.0, strength=1.0, direction="increase", softness=(0.0, 0.0), seed=0)
    x = torch.zeros(1, 1, 16, 16)
    params = module.sample(x)
    params = CorruptionParams(params.family, params.extent, params.applied, params.strength, params.draws,
                              torch.tensor([[8.0, 5.0, 3.0, 3.0, 0.0]]), params.softness, params.seeds)
    y = module(x, params)
    ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    disc = ((xs - 8) ** 2 + (ys - 5) ** 2) < 9
    assert torch.equal(y[0, 0] > 0.25, disc)
    assert torch.equal(module.region(params, 16, 16)[0, 0] > 0.5, disc)


@pytest.mark.parametrize("name", NAMES)
def test_strength_zero_and_p_zero_keep_the_pixels(name):
    x = _images()
    module, twin = _pair(name, "image", strength=0.0)
    assert torch.equal(module(x), x)
    m = getattr(augment, name)(p=0.0, seed=0)
    assert torch.equal(m(x), x)
    assert torch.equal(getattr(augment, name)(p=1.0, seed=0)(x, probabilities=torch.zeros(3)), x)
    img = x[0].permute(1, 2, 0).numpy()
    t = getattr(albu, name)(p=0.0)
    assert np.array_equal(t(image=img)["image"], img)


@pytest.mark.parametrize("name", NAMES)
def test_stronger_means_further_from_the_original(name):
    x = _images(b=1, h=32, w=32)
    distances = []
    for s in (0.25, 0.5, 1.0):
        module = getattr(augment, name)(p=1.0, strength=s, extent="image", seed=0)
        distances.append(float((module(x, generator=torch.Generator().manual_seed(3)) - x).abs().mean()))
    assert distances[0] < distances[1] < distances[2], (name, distances)


@pytest.mark.parametrize("name", NAMES)
def test_seeded_generator_replay_and_records_round_trip(name):
    module, twin = _pair(name)
    x = _images()
    a, params = module(x, generator=torch.Generator().manual_seed(5), return_params=True)
    assert torch.equal(a, module(x, generator=torch.Generator().manual_seed(5)))
    assert torch.equal(module(x, params), a)
    restored = CorruptionParams.from_dict(json.loads(json.dumps(params.to_dict())))
    assert torch.equal(module(x, restored), a)
    fresh1, fresh2 = copy.deepcopy(module), copy.deepcopy(module)
    fresh1._generator = fresh2._generator = None
    assert torch.equal(fresh1(x), fresh2(x))
    img = x[0].permute(1, 2, 0).numpy()
    assert np.array_equal(A.Compose([copy.deepcopy(twin)], seed=11)(image=img)["image"],
                          A.Compose([copy.deepcopy(twin)], seed=11)(image=img)["image"])


def test_per_sample_probabilities_select_samples_and_strength_ranges_are_drawn_per_sample():
    x = _images(b=4)
    module = augment.SyntheticNoise(p=1.0, strength=(0.2, 0.9), seed=0)
    y, params = module(x, probabilities=torch.tensor([1.0, 0.0, 1.0, 0.0]), return_params=True)
    assert (y != x).flatten(1).any(1).tolist() == [True, False, True, False]
    assert len(set(params.strength.tolist())) == 4
    assert bool(((params.strength >= 0.2) & (params.strength <= 0.9)).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", NAMES)
def test_shapes_and_dtypes_are_kept(name, dtype):
    module, _ = _pair(name)
    x = _images(dtype=dtype)
    y = module(x)
    assert y.shape == x.shape and y.dtype == dtype
    assert module(_images(b=1, c=1, dtype=dtype)).shape == (1, 1, 20, 24)


@pytest.mark.parametrize("name", NAMES)
def test_albumentations_twin_keeps_uint8_grey_images_serialises_and_pickles(name):
    _, twin = _pair(name)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    out = A.Compose([twin], seed=3)(image=img)["image"]
    assert out.dtype == np.uint8 and out.shape == img.shape and not np.array_equal(out, img)
    grey = rng.random((20, 24)).astype(np.float32)
    assert twin(image=grey)["image"].shape == (20, 24)
    restored = A.from_dict(A.to_dict(A.Compose([twin], seed=3)))
    restored.set_random_seed(3)
    assert type(restored.transforms[0]) is type(twin)
    assert np.array_equal(restored(image=img)["image"], out)
    assert repr(pickle.loads(pickle.dumps(twin))) == repr(twin)


def test_albumentations_replay_reapplies_the_same_parameters():
    rng = np.random.default_rng(0)
    a, b = (rng.random((20, 24, 3)).astype(np.float32) for _ in range(2))
    pipe = A.ReplayCompose([albu.SyntheticTexture(p=1.0)])
    first = pipe(image=a)
    assert np.array_equal(A.ReplayCompose.replay(first["replay"], image=a)["image"], first["image"])
    assert not np.array_equal(A.ReplayCompose.replay(first["replay"], image=b)["image"], b)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: augment.SyntheticDefocus(strength=1.5), "Expected `strength` to be in"),
        (lambda: augment.SyntheticDefocus(strength=(0.8, 0.2)), "Expected `strength` to be a pair"),
        (lambda: augment.SyntheticDefocus(max_radius=0), "Expected `max_radius` to be a positive number"),
        (lambda: augment.SyntheticMotionBlur(extent="corner"), "Expected `extent` to be one of"),
        (lambda: augment.SyntheticNoise(blob_size=(0.5, 0.1)), "Expected `blob_size` to be a pair"),
        (lambda: augment.SyntheticBrightness(direction="up"), "Expected `direction` to be one of"),
        (lambda: augment.SyntheticContrast(max_factor=0.5), "Expected `max_factor` to be above 1"),
        (lambda: augment.SyntheticGamma(max_gamma=1.0), "Expected `max_gamma` to be above 1"),
        (lambda: augment.SyntheticTint(softness=0.1), "Expected `softness` to be a pair"),
        (lambda: augment.SyntheticTexture(octaves=0), "Expected `octaves` to be an integer >= 1"),
        (lambda: augment.SyntheticCompression(min_quality=0), "Expected `min_quality` to be an integer in"),
        (lambda: augment.SyntheticHaze(max_density=1.5), "Expected `max_density` to be in"),
        (lambda: augment.SyntheticHaze(airlight="white"), "Expected `airlight` to be a number"),
        (lambda: augment.SyntheticHaze(p=2.0), "Expected `p` to be a probability"),
        (lambda: albu.SyntheticHaze(p=2.0), "Expected `p` to be a probability"),
        (lambda: albu.SyntheticDefocus(strength=2.0), "Expected `strength` to be in"),
    ],
)
def test_constructor_errors(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_call_errors():
    with pytest.raises(ValueError, match="Expected `images` to be a floating-point tensor"):
        augment.SyntheticNoise()(torch.zeros(2, 8, 8))
    params = augment.SyntheticNoise().sample(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="Expected `params` for 3 samples"):
        augment.SyntheticNoise()(torch.zeros(3, 1, 8, 8), params)
    with pytest.raises(ValueError, match="Expected `params` of family 'haze'"):
        augment.SyntheticHaze()(torch.zeros(2, 1, 8, 8), params)
    tint = augment.SyntheticTint(p=1.0, extent="image")
    with pytest.raises(ValueError, match="Expected `params` drawn for 3 channels"):
        tint(torch.zeros(2, 3, 8, 8), tint.sample(torch.zeros(2, 1, 8, 8)))
    with pytest.raises(ValueError, match="Expected `airlight` to be a number or 1 numbers"):
        augment.SyntheticHaze(p=1.0, airlight=(0.1, 0.2))(torch.zeros(1, 1, 4, 4))
