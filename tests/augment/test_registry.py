"""Contract tests over every public augmentation: fails when a new one is not listed here."""

from __future__ import annotations

import inspect

import pytest
import torch
from torch import nn

import augment
from augment import albu

# Every batched transform with a sample/apply_params/region contract, and its albumentations twin.
TRANSFORMS = {
    "SyntheticShadow": (augment.SyntheticShadow, albu.SyntheticShadow),
    "Cutout": (augment.Cutout, albu.Cutout),
    "HideAndSeek": (augment.HideAndSeek, albu.HideAndSeek),
    "SaliencyOcclusion": (augment.SaliencyOcclusion, albu.SaliencyOcclusion),
    "SyntheticDefocus": (augment.SyntheticDefocus, albu.SyntheticDefocus),
    "SyntheticMotionBlur": (augment.SyntheticMotionBlur, albu.SyntheticMotionBlur),
    "SyntheticNoise": (augment.SyntheticNoise, albu.SyntheticNoise),
    "SyntheticBrightness": (augment.SyntheticBrightness, albu.SyntheticBrightness),
    "SyntheticContrast": (augment.SyntheticContrast, albu.SyntheticContrast),
    "SyntheticGamma": (augment.SyntheticGamma, albu.SyntheticGamma),
    "SyntheticTint": (augment.SyntheticTint, albu.SyntheticTint),
    "SyntheticTexture": (augment.SyntheticTexture, albu.SyntheticTexture),
    "SyntheticCompression": (augment.SyntheticCompression, albu.SyntheticCompression),
    "SyntheticHaze": (augment.SyntheticHaze, albu.SyntheticHaze),
}
# Public nn.Modules that are not single transforms of our own.
OTHER_MODULES = {"JointBatch", "BatchAugment", "RandomCropFlip", "OneOfUniform", "PerSampleAlbumentations"}


def test_every_public_module_is_listed():
    public = {n for n, obj in vars(augment).items() if inspect.isclass(obj) and issubclass(obj, nn.Module)}
    assert public == set(TRANSFORMS) | OTHER_MODULES
    twins = {n for n, obj in vars(albu).items() if inspect.isclass(obj) and obj.__module__ == albu.__name__
             and not n.startswith("_")}
    assert twins == set(TRANSFORMS)


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_contract(name):
    module_cls, twin_cls = TRANSFORMS[name]
    m = module_cls(p=1.0, seed=0)
    x = torch.rand(2, 3, 16, 16)
    kw = {"saliency": torch.rand(2, 4, 4)} if name == "SaliencyOcclusion" else {}
    params = m.sample(x, **kw)
    out = m.apply_params(x, params)
    region = m.region(params, 16, 16)
    assert region.shape == (2, 1, 16, 16) and float(region.min()) >= 0 and float(region.max()) <= 1
    # Pixels outside the region are untouched; the region is where things changed.
    assert torch.allclose(out * (region == 0), x * (region == 0))
    assert m.seed == 0 and m.p == 1.0  # configuration stored under its public names
    # Constructors do nothing but store configuration: no generator exists until first use.
    assert module_cls()._generator is None
    # Both front ends accept the same configuration names (besides the twin's own data keys).
    torch_args = set(inspect.signature(module_cls).parameters) - {"seed"}
    twin_args = set(inspect.signature(twin_cls).parameters) - {"object_key", "saliency_key"}
    assert torch_args == twin_args


def test_every_transform_of_ours_is_in_the_catalogue():
    from augment.catalog import FAMILIES, catalog

    ours = catalog(["conceptfix"])
    built = {type(e.make(0.5, 16, 16)).__name__ for e in ours}
    # Every single transform but the saliency-driven ones (they need a saliency map, not a strength).
    assert built == set(TRANSFORMS) - {"HideAndSeek", "SaliencyOcclusion"}
    assert {e.family for e in ours} == set(FAMILIES)
    theirs = {e.name for e in catalog(["albumentations"])}
    assert {e.counterpart for e in ours} <= theirs
    assert len({e.name for e in catalog()}) == len(catalog())


def test_augment_never_imports_debugger_or_lightning():
    import ast
    from pathlib import Path

    forbidden = ("debugger", "lightning", "pytorch_lightning", "callbacks", "recipes")
    root = Path(augment.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"
