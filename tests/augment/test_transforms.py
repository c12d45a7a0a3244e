"""Front ends: parity between the torch and albumentations paths, identity, replay, shapes, serialisation, errors."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch

import augment
from augment import albu
from augment.params import OcclusionParams, ShadowParams

A = pytest.importorskip("albumentations")

FILLS = ("mean", "noise", "blur")


def _images(b=3, c=3, h=20, w=24, seed=0, dtype=torch.float32):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _saliency(b=3, seed=1):
    return torch.rand(b, 5, 6, generator=torch.Generator().manual_seed(seed))


# (torch module, albumentations twin, extra sample kwargs) for every transform and option worth pinning.
def _pairs():
    out = []
    for kind in ("line", "polygon", "canopy"):
        out.append((f"shadow-{kind}", augment.SyntheticShadow(p=1.0, kind=kind, softness=(0.02, 0.1), floor=0.1,
                                                               seed=0),
                    albu.SyntheticShadow(kind=kind, softness=(0.02, 0.1), floor=0.1, p=1.0), {}))
    for fill in FILLS:
        kw = {"fill": fill, "value": (0.1, 0.2, 0.3), "noise_std": 0.5, "blur_sigma": 1.5}
        out.append((f"cutout-{fill}", augment.Cutout(count=3, size=7, seed=0, **kw),
                    albu.Cutout(count=3, size=7, p=1.0, **kw), {}))
        out.append((f"hs-{fill}", augment.HideAndSeek(grid=3, p_keep_patch=0.5, seed=0, **kw),
                    albu.HideAndSeek(grid=3, p_keep_patch=0.5, p=1.0, **kw), {}))
        out.append((f"sal-{fill}", augment.SaliencyOcclusion(size=6, count=2, jitter=2, seed=0, **kw),
                    albu.SaliencyOcclusion(size=6, count=2, jitter=2, p=1.0, **kw), {"saliency": _saliency()}))
    return out


PAIRS = _pairs()
IDS = [p[0] for p in PAIRS]


@pytest.mark.parametrize(("name", "module", "twin", "kw"), PAIRS, ids=IDS)
def test_torch_and_albumentations_paths_give_the_same_pixels(name, module, twin, kw):
    x = _images()
    y, params = module(x, return_params=True, **kw)
    assert not torch.equal(y, x)
    for i in range(x.shape[0]):
        img = x[i].permute(1, 2, 0).numpy()
        theirs = twin.apply(img, **params.item(i))
        np.testing.assert_allclose(y[i].permute(1, 2, 0).numpy(), theirs, atol=2e-5, err_msg=name)


@pytest.mark.parametrize(("name", "module", "twin", "kw"), PAIRS, ids=IDS)
def test_p_zero_is_identity_on_both_paths(name, module, twin, kw):
    x = _images()
    m = copy.deepcopy(module)
    m.p = 0.0
    assert torch.equal(m(x, **kw), x)
    assert torch.equal(module(x, probabilities=torch.zeros(3), **kw), x)
    t = copy.deepcopy(twin)
    t.p = 0.0
    img = x[0].permute(1, 2, 0).numpy()
    data = {"image": img}
    if "saliency" in kw:
        data["saliency"] = kw["saliency"][0].numpy()
    assert np.array_equal(t(**data)["image"], img)


@pytest.mark.parametrize(("name", "module", "twin", "kw"), PAIRS, ids=IDS)
def test_replay_gives_the_same_pixels_and_records_round_trip(name, module, twin, kw):
    x = _images()
    y, params = module(x, return_params=True, **kw)
    assert torch.equal(module(x, params), y)
    restored = type(params).from_dict(params.to_dict())
    assert torch.equal(module(x, restored), y)
    import json

    assert json.loads(json.dumps(params.to_dict())) == params.to_dict()


@pytest.mark.parametrize(("name", "module", "twin", "kw"), PAIRS, ids=IDS)
def test_explicit_generator_and_seed_reproduce(name, module, twin, kw):
    x = _images()
    a = module(x, generator=torch.Generator().manual_seed(5), **kw)
    b = module(x, generator=torch.Generator().manual_seed(5), **kw)
    assert torch.equal(a, b)
    fresh1, fresh2 = copy.deepcopy(module), copy.deepcopy(module)
    fresh1._generator = fresh2._generator = None
    assert torch.equal(fresh1(x, **kw), fresh2(x, **kw))
    data = {"image": x[0].permute(1, 2, 0).numpy()}
    if "saliency" in kw:
        data["saliency"] = kw["saliency"][0].numpy()
    c1 = A.Compose([copy.deepcopy(twin)], seed=11)(**data)["image"]
    c2 = A.Compose([copy.deepcopy(twin)], seed=11)(**data)["image"]
    assert np.array_equal(c1, c2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize(("name", "module", "twin", "kw"), PAIRS, ids=IDS)
def test_shapes_dtypes_and_devices_are_kept(name, module, twin, kw, dtype):
    x = _images(dtype=dtype)
    y = module(x, **kw)
    assert y.shape == x.shape and y.dtype == dtype and y.device == x.device
    one = module(_images(b=1, dtype=dtype), **{k: v[:1] for k, v in kw.items()})
    assert one.shape == (1, 3, 20, 24)


@pytest.mark.parametrize(("name", "module", "twin", "kw"), PAIRS, ids=IDS)
def test_meta_device_images_stay_on_their_device(name, module, twin, kw):
    if name.endswith("noise") or name.endswith("blur"):
        pytest.skip("noise/blur fills read pixel values")
    x = torch.empty(2, 3, 20, 24, device="meta")
    kw = {k: v[:2] for k, v in kw.items()}
    params = module.sample(torch.zeros(2, 3, 20, 24), **kw)
    assert module(x, params).device.type == "meta"


@pytest.mark.parametrize(("name", "module", "twin", "kw"), PAIRS, ids=IDS)
def test_albumentations_twin_keeps_uint8_and_grayscale(name, module, twin, kw):
    rng = np.random.default_rng(0)
    data = {"image": rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)}
    if "saliency" in kw:
        data["saliency"] = kw["saliency"][0].numpy()
    out = twin(**data)["image"]
    assert out.dtype == np.uint8 and out.shape == (20, 24, 3)
    gray_twin = copy.deepcopy(twin)
    gray_twin.floor = gray_twin.value = 0.5  # a per-channel fill would not fit one channel
    gray = dict(data, image=rng.random((20, 24, 1)).astype(np.float32))
    out = gray_twin(**gray)["image"]
    assert out.dtype == np.float32 and out.shape == (20, 24, 1)


@pytest.mark.parametrize(("name", "module", "twin", "kw"), PAIRS, ids=IDS)
def test_serialisation_and_pickling(name, module, twin, kw):
    data = {"image": _images(b=1)[0].permute(1, 2, 0).numpy()}
    if "saliency" in kw:
        data["saliency"] = kw["saliency"][0].numpy()
    pipe = A.Compose([twin], seed=3)
    restored = A.from_dict(A.to_dict(pipe))
    restored.set_random_seed(3)
    assert type(restored.transforms[0]) is type(twin)
    assert np.array_equal(A.Compose([twin], seed=3)(**data)["image"], restored(**data)["image"])
    unpickled = pickle.loads(pickle.dumps(pipe))
    assert repr(unpickled) == repr(pipe)
    # The torch module pickles with its generator state: the next draws agree.
    x = _images()
    module(x, **kw)
    clone = pickle.loads(pickle.dumps(module))
    assert torch.equal(clone(x, **kw), module(x, **kw))


def test_shadow_mask_is_the_ground_truth_of_the_darkened_pixels():
    x = torch.ones(4, 3, 16, 16)
    shadow = augment.SyntheticShadow(p=1.0, intensity=(0.5, 0.5), softness=(0.0, 0.0), seed=0)
    y, params = shadow(x, return_params=True)
    region = shadow.region(params, 16, 16)
    assert torch.allclose(y, x * (1 - 0.5 * region))
    assert ((region > 0.5).float().mean((1, 2, 3)) > 0).all()


def test_line_shadow_crosses_the_object_box():
    masks = torch.zeros(64, 32, 32, dtype=torch.bool)
    masks[:, 10:20, 4:14] = True
    shadow = augment.SyntheticShadow(p=1.0, softness=(0.0, 0.0), seed=0)
    params = shadow.sample(torch.zeros(64, 1, 32, 32), object_masks=masks)
    px, py = params.geometry[:, 0], params.geometry[:, 1]
    assert ((px >= 4) & (px <= 14) & (py >= 10) & (py <= 20)).all()
    region = shadow.region(params, 32, 32)[:, 0]
    inside = region[:, 10:20, 4:14].flatten(1)
    # Every line goes through the box; almost always both sides of it are within the box.
    both = ((inside > 0.5).any(1) & (inside < 0.5).any(1)).float().mean()
    assert both > 0.9


def test_albumentations_shadow_uses_the_object_mask_and_its_mask_follows_a_flip():
    img = np.full((24, 24, 3), 0.8, np.float32)
    obj = np.zeros((24, 24), np.uint8)
    obj[2:8, 3:9] = 1
    pipe = A.Compose(
        [albu.SyntheticShadow(p=1.0, softness=(0.0, 0.0), intensity=(0.5, 0.5), object_key="mask"),
         A.HorizontalFlip(p=1.0)],
        additional_targets={"shadow_mask": "mask"}, seed=0,
    )
    out = pipe(image=img, mask=obj, shadow_mask=np.zeros((24, 24), np.float32))
    assert np.array_equal(out["mask"], obj[:, ::-1])
    darkened = out["image"][..., 0] < 0.8 - 1e-6
    assert np.array_equal(darkened, out["shadow_mask"] > 0.5)
    params = pipe.transforms[0].params
    px, py = params["geometry"][:2]
    assert 3 <= px <= 9 and 2 <= py <= 8


def test_cutout_squares_overflow_the_border():
    x = torch.ones(256, 1, 16, 16)
    cut = augment.Cutout(count=2, size=8, seed=0)
    y, params = cut(x, return_params=True)
    assert (params.boxes[..., :2] < 0).any() and (params.boxes[..., 2:] > 16).any()
    occluded = (y == 0).float().sum((1, 2, 3))
    assert (occluded <= 2 * 64).all() and (occluded > 0).all()


def test_hide_and_seek_keeps_the_expected_fraction():
    x = torch.ones(200, 1, 16, 16)
    y = augment.HideAndSeek(grid=4, p_keep_patch=0.75, seed=0)(x)
    assert abs(float(y.mean()) - 0.75) < 0.03
    assert torch.equal(augment.HideAndSeek(grid=4, p_keep_patch=1.0, seed=0)(x), x)


def test_saliency_occlusion_hits_the_salient_spot():
    sal = torch.zeros(2, 8, 8)
    sal[0, 1, 6] = 1.0
    sal[1, 6, 1] = 1.0
    y = augment.SaliencyOcclusion(size=8, jitter=0, seed=0)(torch.ones(2, 1, 32, 32), saliency=sal)
    assert y[0, 0, 4:8, 24:28].sum() == 0 and y[0, 0, 28:, :4].sum() == 16
    assert y[1, 0, 24:28, 4:8].sum() == 0


def test_per_sample_probabilities_select_samples():
    x = torch.ones(4, 1, 8, 8)
    y = augment.Cutout(size=4, seed=0)(x, probabilities=torch.tensor([1.0, 0.0, 1.0, 0.0]))
    changed = (y != x).flatten(1).any(1)
    assert changed.tolist() == [True, False, True, False]


def test_params_select_and_item():
    params = augment.Cutout(count=2, size=3, seed=0).sample(torch.zeros(3, 1, 8, 8))
    assert isinstance(params, OcclusionParams) and len(params.select(1)) == 1
    assert params.item(2)["boxes"].shape == (2, 4)
    s = augment.SyntheticShadow(kind="polygon", seed=0).sample(torch.zeros(2, 1, 8, 8))
    assert isinstance(s, ShadowParams) and s.item(0)["geometry"].shape == (5, 2)


# ---- documented errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: augment.SyntheticShadow(p=1.5), "Expected `p` to be a probability"),
        (lambda: augment.SyntheticShadow(kind="cloud"), "Expected `kind` to be one of"),
        (lambda: augment.SyntheticShadow(intensity=(0.8, 0.2)), "Expected `intensity` to be a pair"),
        (lambda: augment.SyntheticShadow(softness=0.1), "Expected `softness` to be a pair"),
        (lambda: augment.SyntheticShadow(vertices=2), "Expected `vertices` to be an integer >= 3"),
        (lambda: augment.SyntheticShadow(seed=1.5), "Expected `seed` to be an integer or None"),
        (lambda: augment.Cutout(count=0), "Expected `count` to be an integer >= 1"),
        (lambda: augment.Cutout(fill="zeros"), "Expected `fill` to be one of"),
        (lambda: augment.Cutout(noise_std=-1), "Expected `noise_std` to be a non-negative"),
        (lambda: augment.Cutout(blur_sigma=0), "Expected `blur_sigma` to be a positive"),
        (lambda: augment.Cutout(value="x"), "Expected `value` to be a number"),
        (lambda: augment.HideAndSeek(p_keep_patch=-0.1), "Expected `p_keep_patch` to be a probability"),
        (lambda: augment.HideAndSeek(grid=0), "Expected `grid` to be an integer >= 1"),
        (lambda: augment.SaliencyOcclusion(jitter=-1), "Expected `jitter` to be an integer >= 0"),
        (lambda: albu.SyntheticShadow(kind="cloud"), "Expected `kind` to be one of"),
        (lambda: albu.SyntheticShadow(p=2), "Expected `p` to be a probability"),
        (lambda: albu.Cutout(size=0), "Expected `size` to be an integer >= 1"),
        (lambda: albu.Cutout(fill="zeros"), "Expected `fill` to be one of"),
        (lambda: albu.Cutout(noise_std=-1), "Expected `noise_std` to be a non-negative"),
        (lambda: albu.Cutout(blur_sigma=-1), "Expected `blur_sigma` to be a positive"),
        (lambda: albu.HideAndSeek(p_keep_patch=3), "Expected `p_keep_patch` to be a probability"),
        (lambda: albu.SaliencyOcclusion(count=0), "Expected `count` to be an integer >= 1"),
    ],
)
def test_constructor_errors(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_call_errors():
    with pytest.raises(ValueError, match="Expected `images` to be a floating-point tensor"):
        augment.Cutout()(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match="Expected `images` to be a floating-point tensor"):
        augment.Cutout()(torch.zeros(1, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="Expected `saliency` to be a tensor of shape"):
        augment.SaliencyOcclusion()(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="Expected `saliency` to be a tensor of shape"):
        augment.SaliencyOcclusion()(torch.zeros(2, 1, 8, 8), saliency=torch.zeros(3, 4, 4))
    with pytest.raises(ValueError, match="Expected `size` to be in"):
        augment.SaliencyOcclusion(size=9)(torch.zeros(1, 1, 8, 8), saliency=torch.zeros(1, 4, 4))
    with pytest.raises(ValueError, match="Expected `object_masks` to have shape"):
        augment.SyntheticShadow()(torch.zeros(2, 1, 8, 8), object_masks=torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match=r"Expected `boxes` to have shape \(2, 4\)"):
        augment.SyntheticShadow()(torch.zeros(2, 1, 8, 8), boxes=torch.zeros(3, 4))
    with pytest.raises(ValueError, match="Expected `probabilities` to be a scalar or a"):
        augment.Cutout()(torch.zeros(2, 1, 8, 8), probabilities=torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="Expected `generator` to be a CPU torch.Generator"):
        augment.Cutout()(torch.zeros(2, 1, 8, 8), generator=np.random.default_rng(0))
    with pytest.raises(ValueError, match="Expected `value` to be a number or 1 numbers"):
        augment.Cutout(value=(0.0, 0.0))(torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="Expected `floor` to be a number or 2 numbers"):
        augment.SyntheticShadow(p=1.0, floor=(0.0, 0.0, 0.0))(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="Expected `value` to be a number or 1 numbers"):
        albu.Cutout(value=(0.0, 0.0), p=1.0)(image=np.zeros((8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="Expected `floor` to be a number or 1 numbers"):
        albu.SyntheticShadow(floor=(0.0, 0.0), p=1.0)(image=np.zeros((8, 8, 1), np.float32))
    with pytest.raises(ValueError, match="Expected `grid` to be at most the image side"):
        augment.HideAndSeek(grid=9)(torch.zeros(1, 1, 8, 8))
    params = augment.Cutout().sample(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="Expected `params` for 3 samples"):
        augment.Cutout()(torch.zeros(3, 1, 8, 8), params)
    shadow_params = augment.SyntheticShadow().sample(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match="Expected `params` for 3 samples"):
        augment.SyntheticShadow()(torch.zeros(3, 1, 8, 8), shadow_params)
    with pytest.raises(ValueError, match="Expected a dict made by ShadowParams.to_dict"):
        ShadowParams.from_dict(params.to_dict())
    with pytest.raises(ValueError, match=r"Expected `saliency` to be an \(h, w\) array"):
        albu.SaliencyOcclusion(p=1.0)(image=np.zeros((8, 8, 1), np.float32), saliency=np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="requires"):
        albu.SaliencyOcclusion(p=1.0)(image=np.zeros((8, 8, 1), np.float32))


@pytest.mark.parametrize(("name", "module", "twin", "kw"), [p for p in PAIRS if not p[3]], ids=[p[0] for p in PAIRS
                                                                                              if not p[3]])
def test_albumentations_replay_reapplies_the_same_parameters(name, module, twin, kw):
    rng = np.random.default_rng(0)
    a, b = (rng.random((20, 24, 3)).astype(np.float32) for _ in range(2))
    pipe = A.ReplayCompose([copy.deepcopy(twin)])
    first = pipe(image=a)
    again = A.ReplayCompose.replay(first["replay"], image=a)["image"]
    other = A.ReplayCompose.replay(first["replay"], image=b)["image"]
    assert np.array_equal(first["image"], again)
    params = first["replay"]["transforms"][0]["params"]
    np.testing.assert_allclose(other, twin.apply(b, **params), atol=1e-6)


def _one_of(p=0.6, seed=0):
    # The children's own p is 0: only OneOfUniform decides who is augmented.
    return augment.OneOfUniform([augment.SyntheticShadow(p=0.0, seed=1), augment.Cutout(p=0.0, size=3, seed=2),
                                 augment.HideAndSeek(p=0.0, grid=4, p_keep_patch=0.0, seed=3)], p=p, seed=seed)


def test_one_of_uniform_gives_each_augmented_sample_exactly_one_transform_uniformly():
    n, p = 6000, 0.6
    pick = _one_of(p)
    x = torch.ones(n, 1, 8, 8)
    params = pick.sample(x)
    shares = [float((params.choice == i).float().mean()) for i in (-1, 0, 1, 2)]
    # Binomial standard error ~0.006 at n = 6000.
    assert shares[0] == pytest.approx(1 - p, abs=0.03)
    assert shares[1:] == pytest.approx([p / 3] * 3, abs=0.03)
    # Each transform's own record marks exactly the rows that chose it, so no sample gets two.
    for i, child in enumerate(params.children):
        assert torch.equal(child.applied, params.choice == i)
    y = pick.apply_params(x, params)
    changed = (y != x).flatten(1).any(1)
    assert not changed[params.choice < 0].any()
    assert changed[params.choice >= 1].all()  # occluders always hit; a few line shadows fall beside the pixels
    assert float(changed[params.choice == 0].float().mean()) > 0.95
    regions = torch.stack([t.region(c, 8, 8)[:, 0] for t, c in zip(pick.transforms, params.children, strict=True)])
    assert int(((regions > 0).flatten(2).any(2).sum(0) > 1).sum()) == 0
    assert torch.equal(pick.region(params, 8, 8) > 0, regions.amax(0, keepdim=False)[:, None] > 0)


def test_one_of_uniform_per_sample_probabilities_replay_and_seed():
    x = _images(b=6)
    probabilities = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    y, params = _one_of(seed=5)(x, probabilities=probabilities, return_params=True)
    assert torch.equal(params.choice >= 0, probabilities > 0)
    torch.testing.assert_close(y[1::2], x[1::2])
    torch.testing.assert_close(_one_of(seed=5).apply_params(x, params), y)
    torch.testing.assert_close(_one_of(seed=5)(x, probabilities=probabilities), y)
    assert _one_of(p=0.0)(x).equal(x)


def test_one_of_uniform_passes_object_masks_only_to_the_transforms_that_take_them():
    masks = torch.zeros(64, 32, 32, dtype=torch.bool)
    masks[:, 10:20, 4:14] = True
    pick = augment.OneOfUniform([augment.SyntheticShadow(softness=(0.0, 0.0), seed=0), augment.Cutout(seed=1)],
                                p=1.0, seed=0)
    params = pick.sample(torch.zeros(64, 1, 32, 32), object_masks=masks)  # Cutout.sample would reject the keyword
    shadow = params.children[0]
    rows = params.choice == 0
    assert 10 < int(rows.sum()) < 54
    px, py = shadow.geometry[rows, 0], shadow.geometry[rows, 1]
    assert ((px >= 4) & (px <= 14) & (py >= 10) & (py <= 20)).all()  # placed across the object's box


def test_one_of_uniform_errors():
    with pytest.raises(ValueError, match="Expected `transforms` to be a non-empty sequence"):
        augment.OneOfUniform([])
    with pytest.raises(ValueError, match="Expected `transforms` to be a non-empty sequence"):
        augment.OneOfUniform(augment.Cutout())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected every entry of `transforms` to be an augmentation"):
        augment.OneOfUniform([augment.Cutout(), torch.nn.Identity()])
    with pytest.raises(ValueError, match="Expected `p` to be a probability"):
        augment.OneOfUniform([augment.Cutout()], p=1.5)
    pick = augment.OneOfUniform([augment.Cutout()])
    with pytest.raises(ValueError, match="Expected `probabilities` to be a scalar or a"):
        pick(torch.zeros(2, 1, 8, 8), probabilities=torch.tensor([0.5, 1.5]))
    with pytest.raises(ValueError, match="Expected `images` to be a floating-point tensor"):
        pick(torch.zeros(2, 8, 8))
    with pytest.raises(ValueError, match=r"Expected `params` for 3 samples and 1 transforms, but got 2 samples"):
        pick.apply_params(torch.zeros(3, 1, 8, 8), pick.sample(torch.zeros(2, 1, 8, 8)))
    assert augment.OneOfUniform(torch.nn.ModuleList([augment.Cutout()])).transforms[0].size == 8
