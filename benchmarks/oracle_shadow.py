"""Oracle experiment for issue 7: ``bench_loop`` with the data's own shadow generator in place of ``SyntheticShadow``.

Is "loop − untargeted ≥ +10 points on the shadow slice" reachable at all? Both augmenting arms of
:mod:`benchmarks.bench_loop` draw their shadows from the transform named ``"SyntheticShadow"``; here that name maps
to :class:`OracleShadow`, which draws shadows exactly as the data does — :func:`recipes.data.render.shadow_alpha`
with the data's strength range and cover, centred on the sample's object and darkening multiplicatively as
:func:`recipes.data.planted.plant_concepts` does. Everything else (policies, augmented share, budgets, baselines,
metrics) is ``bench_loop``'s. A perfect renderer gives the ceiling of both arms; if even it leaves the gap below
10, the target is structural (the untargeted control uses the same transform at a matched share).

The object: planted batches carry ``object_mask``, which ``PolicyJointBatch`` passes as ``object_masks``. The data's
centre and radius come from ``render.draw_objects``, which the batch does not carry: the centre is the mask's
centroid and the radius 1.16 × the farthest object pixel from it (the median ratio over 5000 drawn objects; with
``cover`` 0.5 the radius only scales the ±0.4-radius jitter of a boundary shadow's pivot).
Fashion-MNIST batches carry no object mask; the data's own rule is used: pixels brighter than 0.1, centroid and
radius √(area/π) (:class:`recipes.data.fashion.FashionMNISTDataset`).

Ablations of one aspect each: ``--oracle-scope box`` keeps the oracle's shadows inside the object's bounding box,
leaving the background unshadowed; ``--oracle-cover lo,hi`` draws the cover per sample from a range instead of the
data's fixed value (``SyntheticShadow``'s line through a uniform point of the box covers a widely varying share of
the object); ``--oracle-shape line`` / ``canopy`` draws only one of the data's two shadow shapes.

Before training, the run measures the oracle's shadows against the data's on the validation split
(``concept_darkening`` under the ``alpha ≥ 0.5`` mask, as the data's masks are made; covered share of object and
background) and records it in the results (``oracle_check``).

    OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.oracle_shadow --dataset planted --seeds 1 --eval-split val \
        --val-eval-size 3000 --finetune-epochs 5 --arms loop,untargeted --no-calibrate

Every other option is ``bench_loop``'s; the results file is ``bench_loop``'s name plus ``_oracle_shadow``, the
seeds and the ablation (e.g. ``loop_planted_ft5_val3000_oracle_shadow_seed0.json``). ``--no-calibrate`` keeps the
data's strength range in both arms (with calibration the loop's oracle would draw the measured 10th–90th percentile
instead).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, Literal

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from augment import SyntheticShadow  # noqa: E402
from augment.params import sample_applied  # noqa: E402
from benchmarks import bench_loop  # noqa: E402
from recipes.data import render  # noqa: E402

Scope = Literal["image", "box"]
Shape = Literal["data", "line", "canopy"]
RadiusRule = Literal["extent", "area"]
EXTENT_TO_RADIUS = 1.16  # draw_objects' radius / farthest object pixel from the centroid (median, 5000 objects)


def object_geometry(object_masks: Tensor, rule: RadiusRule) -> Tensor:
    """``(cx, cy, radius)`` per object from its mask: centroid, and the radius by ``rule``.

    ``extent``: 1.16 × the farthest object pixel from the centroid (planted objects); ``area``: √(area/π), the
    Fashion-MNIST data's own rule.

    Shape:
        - object_masks: ``(B, H, W)``; output: ``(B, 3)``
    """
    obj = object_masks.bool().cpu()
    _, h, w = obj.shape
    ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    area = obj.flatten(1).sum(1).clamp_min(1)
    cx = (obj * xs).flatten(1).sum(1) / area
    cy = (obj * ys).flatten(1).sum(1) / area
    if rule == "area":
        radius = (area / torch.pi).sqrt()
    else:
        dist = ((xs[None] - cx[:, None, None]) ** 2 + (ys[None] - cy[:, None, None]) ** 2).sqrt()
        radius = EXTENT_TO_RADIUS * (dist * obj).flatten(1).amax(1).clamp_min(0.5)
    return torch.stack([cx, cy, radius], dim=1)


def box_mask(object_masks: Tensor) -> Tensor:
    """Each object's bounding box as a mask (the whole image for an empty mask).

    Shape:
        - object_masks: ``(B, H, W)``; output: ``(B, H, W)`` bool
    """
    obj = object_masks.bool()
    rows, cols = obj.any(2), obj.any(1)
    empty = ~cols.any(1)
    box = rows[:, :, None] & cols[:, None, :]
    return box | empty[:, None, None]


def shadow_alpha_of_shape(g: torch.Generator, object_mask: Tensor, centre_radius: Tensor, cover: float,
                          shape: Shape) -> Tensor:
    """:func:`recipes.data.render.shadow_alpha` with the shape forced: ``data`` calls it (35% straight boundaries,
    65% canopy blobs); ``line`` / ``canopy`` draw only that branch of it, with the same code and draws.

    Shape:
        - object_mask: ``(N, H, W)``; centre_radius: ``(N, 3)``; output: ``(N, H, W)``
    """
    if shape == "data":
        return render.shadow_alpha(g, object_mask, centre_radius, cover)
    # The two branches of render.shadow_alpha (same draws, in the same order), one of them kept for every sample.
    n, h, w = object_mask.shape
    noise = render.smooth_noise(g, n, h, w, cells=int(torch.randint(3, 6, (1,), generator=g)))
    inside = noise.masked_fill(~object_mask, float("nan")).view(n, -1)
    thresh = torch.nanquantile(inside, cover, dim=1).nan_to_num(cover)
    canopy = (noise < thresh[:, None, None]).float()
    yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    cx, cy, rad = centre_radius.unbind(1)
    px = cx + (-0.4 + 0.8 * torch.rand(n, generator=g)) * rad
    py = cy + (-0.4 + 0.8 * torch.rand(n, generator=g)) * rad
    ang = 2 * torch.pi * torch.rand(n, generator=g)
    side = ((xx[None] - px[:, None, None]) * torch.cos(ang)[:, None, None]
            + (yy[None] - py[:, None, None]) * torch.sin(ang)[:, None, None])
    line = (side > (1 - 2 * cover) * rad[:, None, None]).float()
    torch.rand(n, generator=g)  # the data's line-or-canopy draw, kept so the stream stays aligned
    hard = line if shape == "line" else canopy
    soft = render.gaussian_blur(hard, sigma=max(0.6, min(h, w) / 40))
    return torch.maximum(soft, hard)


class OracleShadow(SyntheticShadow):
    """The data's own shadows as a fine-tuning transform (registered under the name ``"SyntheticShadow"``).

    A subclass so that :class:`recipes.loop.PolicyJointBatch` hands it the batch's ``object_mask``; only ``forward``
    is the oracle's (it has no replayable parameter record).

    Args:
        p: probability that a sample gets a shadow (per-sample ``probabilities`` override it).
        intensity: range of the fraction of brightness removed where the shadow fully covers (the data's
            ``shadow_strength``).
        cover: range of the share of the object covered (the data's ``shadow_cover``; lo == hi: fixed).
        scope: ``image`` — as the data, the shadow continues over the background; ``box`` — only inside the
            object's bounding box.
        shape: ``data`` — the data's mix of canopy blobs and straight boundaries; ``line`` / ``canopy`` — only one
            of them (see :func:`shadow_alpha_of_shape`).
        radius: how the object's radius is read from its mask (see :func:`object_geometry`).
        threshold: without ``object_masks``, pixels whose first channel exceeds it are the object.
        seed: seed of the module's own generator.

    Shape:
        - images: ``(B, C, H, W)`` in [0, 1]; object_masks: ``(B, H, W)``; output: like ``images``
    """

    def __init__(self, p: float = 0.5, intensity: tuple[float, float] = (0.55, 0.75),
                 cover: tuple[float, float] = (0.5, 0.5), scope: Scope = "image", shape: Shape = "data",
                 radius: RadiusRule = "extent", threshold: float = 0.1, seed: int | None = None) -> None:
        super().__init__(p=p, intensity=intensity, seed=seed)
        lo, hi = (float(v) for v in cover)
        if not 0.0 < lo <= hi < 1.0:
            raise ValueError(f"Expected `cover` to be a range (lo, hi) with 0 < lo <= hi < 1, but got {cover!r}.")
        if scope not in ("image", "box"):
            raise ValueError(f"Expected `scope` to be one of ('image', 'box'), but got {scope!r}.")
        if shape not in ("data", "line", "canopy"):
            raise ValueError(f"Expected `shape` to be one of ('data', 'line', 'canopy'), but got {shape!r}.")
        if radius not in ("extent", "area"):
            raise ValueError(f"Expected `radius` to be one of ('extent', 'area'), but got {radius!r}.")
        self.cover = (lo, hi)
        self.scope = scope
        self.shape = shape
        self.radius = radius
        self.threshold = float(threshold)

    def alpha(self, images: Tensor, object_masks: Tensor | None, generator: torch.Generator) -> Tensor:
        """Shadow coverage in [0, 1] for every sample (the data's ``shadow_alpha``).

        Shape:
            - output: ``(B, H, W)`` on the CPU
        """
        obj = (images[:, 0] > self.threshold) if object_masks is None else object_masks.bool()
        obj = obj.cpu()
        geometry = object_geometry(obj, self.radius)
        lo, hi = self.cover
        if lo == hi:
            a = shadow_alpha_of_shape(generator, obj, geometry, lo, self.shape)
        else:
            # shadow_alpha takes one cover per call: draw one per sample and render each sample at its own.
            covers = lo + (hi - lo) * torch.rand(len(obj), generator=generator)
            a = torch.cat([shadow_alpha_of_shape(generator, obj[i:i + 1], geometry[i:i + 1], float(c), self.shape)
                           for i, c in enumerate(covers)])
        if self.scope == "box":
            a = a * box_mask(obj).float()
        return a

    def forward(self, images: Tensor, params: Any = None, *, return_params: bool = False,  # type: ignore[override]
                object_masks: Tensor | None = None, generator: torch.Generator | None = None,
                probabilities: Tensor | float | None = None, **kwargs: Any) -> Tensor:
        if params is not None or return_params or kwargs:
            raise ValueError("Expected OracleShadow to be called as transform(images, object_masks=..., "
                             f"probabilities=...), but got params/return_params/{sorted(kwargs)}.")
        g = self._rng(generator)
        b = images.shape[0]
        applied = sample_applied(b, self._probabilities(probabilities), g)
        alpha = self.alpha(images, object_masks, g)
        lo, hi = self.intensity
        strength = (lo + (hi - lo) * torch.rand(b, generator=g)) * applied.float()
        factor = 1 - strength[:, None, None, None] * alpha[:, None]
        return images * factor.to(images.device, images.dtype)


def oracle_transforms(settings: dict[str, Any]) -> Callable[..., dict[str, torch.nn.Module]]:
    """``default_transforms`` with ``"SyntheticShadow"`` replaced by an :class:`OracleShadow` of ``settings``."""
    plain = bench_loop.default_transforms

    def transforms(image_size: int, seed: int = 0) -> dict[str, torch.nn.Module]:
        out = plain(image_size, seed)
        out["SyntheticShadow"] = OracleShadow(p=1.0, seed=seed, **settings)
        return out

    return transforms


def _dark_stats(values: Tensor) -> dict[str, float | int]:
    v = values[~values.isnan()]
    return {"median": round(float(v.median()), 4), "low": round(float(v.quantile(0.1)), 4),
            "high": round(float(v.quantile(0.9)), 4), "n": int(v.numel())}


def check_oracle(data: Any, settings: dict[str, Any], seed: int, limit: int = 1000) -> dict[str, Any]:
    """The oracle's shadows against the data's on ``data`` (an evaluation split).

    The data's: images carrying a ``shadow`` concept, their masks. The oracle's: images without any concept,
    shadowed by :class:`OracleShadow` (p = 1), mask ``alpha ≥ 0.5`` as the data's. For both: the darkening
    :func:`~debugger.failures.concept_darkening` measures (over the object's pixels) and the
    covered share of object and background pixels. Without an ``object_mask`` in the samples (Fashion-MNIST) the
    object is read from the shadowed image for both (pixels above the threshold): a deep shadow hides part of
    the garment from that mask, alike for the data's and the oracle's.
    """
    from debugger.failures import concept_darkening

    k = list(data.concept_names).index("shadow")
    shadowed: dict[str, list[Tensor]] = {"images": [], "masks": [], "obj": []}
    clean: dict[str, list[Tensor]] = {"images": [], "obj": []}
    oracle = OracleShadow(p=1.0, seed=seed, **settings)
    for i in range(min(len(data), 4 * limit)):
        s = data[i]
        x = s["image"]
        obj = s["object_mask"].bool() if "object_mask" in s else x[0] > oracle.threshold
        if float(s["concepts"][k]) > 0 and len(shadowed["images"]) < limit:
            shadowed["images"].append(x)
            shadowed["masks"].append(s["concept_masks"][k].bool())
            shadowed["obj"].append(obj)
        elif float(s["concepts"].sum()) == 0 and len(clean["images"]) < limit:
            clean["images"].append(x)
            clean["obj"].append(obj)
    out: dict[str, Any] = {}
    g = torch.Generator().manual_seed(seed)
    x, obj = torch.stack(clean["images"]), torch.stack(clean["obj"])
    alpha = oracle.alpha(x, obj if "object_mask" in data[0] else None, g)
    lo, hi = oracle.intensity
    strength = lo + (hi - lo) * torch.rand(len(x), generator=g)
    y = x * (1 - strength[:, None, None, None] * alpha[:, None])
    mask = alpha >= 0.5
    if "object_mask" not in data[0]:
        # The data's object mask is unknown for its shadowed images: read both the same way, from the image.
        obj = y[:, 0] > oracle.threshold
    for name, images, masks, objs in (
        ("data", torch.stack(shadowed["images"]), torch.stack(shadowed["masks"]), torch.stack(shadowed["obj"])),
        ("oracle", y, mask, obj),
    ):
        on_obj = (masks & objs).flatten(1).sum(1) / objs.flatten(1).sum(1).clamp_min(1)
        on_bg = (masks & ~objs).flatten(1).sum(1) / (~objs).flatten(1).sum(1).clamp_min(1)
        out[name] = {"darkening": _dark_stats(concept_darkening(images, masks, objs)),
                     "object_covered": _dark_stats(on_obj.float()), "background_covered": _dark_stats(on_bg.float()),
                     "images": len(images)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0], add_help=False)
    parser.add_argument("--oracle-scope", choices=("image", "box"), default="image")
    parser.add_argument("--oracle-cover", default=None,
                        help="lo,hi: draw the cover per sample from this range (default: the data's fixed cover)")
    parser.add_argument("--oracle-shape", choices=("data", "line", "canopy"), default="data",
                        help="only the data's straight-boundary or canopy shadows (default: its mix)")
    parser.add_argument("--check-only", action="store_true", help="print the oracle check and stop")
    own, rest = parser.parse_known_args()
    if "-h" in rest or "--help" in rest:
        # the oracle's own options first; bench_loop's parser then prints the rest and exits
        parser.print_help()
        print("\nand every option of benchmarks.bench_loop:\n")
    probe = argparse.ArgumentParser(add_help=False)
    probe.add_argument("--dataset", default="planted")
    probe.add_argument("--seed-offset", type=int, default=0)
    probe.add_argument("--seeds", type=int, default=3)
    known = probe.parse_known_args(rest)[0]
    dataset = known.dataset
    if dataset == "planted":
        import inspect

        from recipes.data.planted import plant_concepts

        signature = inspect.signature(plant_concepts).parameters
        strength, cover = signature["shadow_strength"].default, signature["shadow_cover"].default
        rule: RadiusRule = "extent"
    elif dataset == "fashion":
        from recipes.data.fashion import FASHION_SHADOW

        strength, cover = FASHION_SHADOW["strength"], FASHION_SHADOW["cover"]
        rule = "area"
    else:
        raise SystemExit(f"Expected `--dataset` planted or fashion for the oracle, but got {dataset!r}.")
    cover_range = (float(cover), float(cover))
    if own.oracle_cover is not None:
        try:
            lo, hi = (float(v) for v in own.oracle_cover.split(","))
        except ValueError:
            raise SystemExit(f"Expected `--oracle-cover` to be lo,hi, but got {own.oracle_cover!r}.") from None
        cover_range = (lo, hi)
    settings: dict[str, Any] = {"intensity": tuple(strength), "cover": cover_range, "scope": own.oracle_scope,
                                "shape": own.oracle_shape, "radius": rule}
    OracleShadow(**settings)  # bad settings fail before any data or training
    seed, seeds = known.seed_offset, known.seeds
    torch.set_num_threads(1)
    dm = bench_loop.make_data(dataset, seed, False)
    check = check_oracle(dm.dataset("val"), settings, seed)
    print(f"oracle check (val split, seed {seed}): {check}", flush=True)
    if own.check_only:
        return
    # bench_loop's name does not say which seeds; runs over different seeds must not overwrite each other.
    variant = f"_seed{seed}" if seeds == 1 else f"_seeds{seed}-{seed + seeds - 1}"
    variant += f"_{own.oracle_scope}" if own.oracle_scope != "image" else ""
    variant += f"_{own.oracle_shape}" if own.oracle_shape != "data" else ""
    variant += f"_cover{cover_range[0]:g}-{cover_range[1]:g}" if own.oracle_cover is not None else ""
    plain_record = bench_loop.record

    def record(name: str, results: dict[str, Any]) -> Any:
        results["config"]["oracle_shadow"] = {**settings, "check_split": "val", "check_seed": seed}
        results["oracle_check"] = check
        return plain_record(f"{name}_oracle_shadow{variant}", results)

    bench_loop.default_transforms = oracle_transforms(settings)  # type: ignore[assignment]
    bench_loop.record = record  # type: ignore[assignment]
    sys.argv = [sys.argv[0], *rest]
    bench_loop.main()


if __name__ == "__main__":
    main()
