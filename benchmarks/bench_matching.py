"""Failure concept → transform without labels, on planted data: does the shadow cluster pick the shadow?

For each scenario of :mod:`benchmarks.bench_planted_failure` (``shadow``: shadows rare in training, common in the
probe set; ``occluder``: the same for the foreign speckled occluder) and seed, the baseline ResNet is trained as
that benchmark trains it (kept in ``--baseline-cache``), ``ConceptAnalysis`` discovers concepts on a validation
probe set (SLIC superpixels, roi embedding, k-means), and :class:`debugger.matching.TransformMatcher` matches every
failure concept against a catalogue rendered on *clean* validation images (no planted concept; another seed),
by default these renderers (``--catalog``: every entry of :mod:`augment.catalog` instead, plus the control):

- ``SyntheticShadow`` (line across the object, ``intensity`` = strength);
- ``Cutout`` (one black square, side = strength × half the image) and ``Cutout(noise)`` (the same squares filled
  with grey noise, the closest the catalogue has to the speckled occluder);
- ``Blur`` and ``Noise`` inside the very regions the shadow darkens (same draws), so that against the shadow only
  *what* changes differs, not where;
- a positive control outside the catalogue, ``oracle:OccluderMaterial``: Cutout's squares filled with the data's
  own occluder material (:func:`recipes.data.render.foreign_material`). Each concept's pick is recorded without
  it (the catalogue a user has) and with it: when only the oracle is claimed, matching works and the catalogue
  lacks the look.

Annotations only score the choice: a failure concept "shows" a planted concept when at least ``--min-precision``
of its top patches overlap that concept's masks; a run passes when the best-ranked failure concept showing the
scenario's concept picks its transform (shadow → ``SyntheticShadow``; occluder → either ``Cutout``). Recorded per
run: every failure concept's match (transform, strength range, claim on changed vs the same patches clean, the
evidence sentence), the ground-truth concept it shows, and the whole claim table of the concept that shows the
planted one, and how much brightness the probe set's planted shadows remove (the strength a matched
``SyntheticShadow`` range can be compared with). Run:
``OMP_NUM_THREADS=1 python -m benchmarks.bench_matching`` (``--seeds 0 --quick`` for a smoke run, not recorded).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from benchmarks.bench_planted_failure import SCENARIOS  # noqa: E402
from benchmarks.harness import record  # noqa: E402

EXPECTED = {"shadow": ("SyntheticShadow",), "occluder": ("Cutout", "Cutout(noise)")}
# the data's own occluder material in Cutout's squares: a positive control, not part of the catalogue
ORACLE = "oracle:OccluderMaterial"
CLEAN = {"shadow": 0.0, "occluder": 0.0, "stripes": 0.0, "tint": 0.0}


def baseline(scenario: str, seed: int, args: argparse.Namespace) -> Any:
    """The scenario's baseline, trained as bench_planted_failure trains it, or read from the cache."""
    from recipes.baseline import fit_baseline
    from recipes.data.base import generator_digest
    from recipes.data.planted import PlantedConceptsDataModule
    from recipes.loop import load_model, save_model
    from recipes.models import ResNetClassifier

    dm = PlantedConceptsDataModule(train_size=args.train_size, val_size=args.probe_size, test_size=8, batch_size=64,
                                   seed=seed, prevalence=SCENARIOS[scenario], cache_dir=None)
    digest = generator_digest(type(dm.dataset("train")))
    path = Path(args.baseline_cache) / (f"planted_{scenario}_seed{seed}_w{args.width}_e{args.epochs}_"
                                        f"n{args.train_size}_{digest}.ckpt")
    clock = time.perf_counter()
    if path.exists():
        model = load_model(path, ResNetClassifier(width=args.width))
    else:
        torch.manual_seed(seed)  # the initial weights too, as bench_planted_failure does
        model = fit_baseline(dm, ResNetClassifier(width=args.width), max_epochs=args.epochs, seed=seed)
        if not args.quick:
            save_model(model, path)
    return dm, model.eval(), time.perf_counter() - clock


def clean_probe(seed: int, n: int) -> tuple[Tensor, Tensor]:
    """Validation images without any planted concept (another seed than the analysis' probe set), object masks."""
    from recipes.data.planted import PlantedConceptsDataModule

    dm = PlantedConceptsDataModule(train_size=8, val_size=n, test_size=8, seed=seed + 1000,
                                   prevalence={"val": CLEAN}, cache_dir=None)
    dm.setup("validate")
    ds = dm.dataset("val")
    samples = [ds[i] for i in range(len(ds))]
    return torch.stack([s["image"] for s in samples]), torch.stack([s["object_mask"] for s in samples])


def planted_darkening(batches: list[Any], shadow: int) -> dict[str, Any] | None:
    """How much brightness the planted shadows of the probe set remove (median, 10th–90th percentile): what a
    matched ``SyntheticShadow`` strength range can be compared with."""
    from debugger.failures import Darkening, concept_darkening

    values = []
    for b in batches:
        sel = b["concepts"][:, shadow] > 0
        if bool(sel.any()):
            values.append(concept_darkening(b["image"][sel], b["concept_masks"][sel, shadow], b["object_mask"][sel]))
    d = Darkening.from_values(torch.cat(values)) if values else None
    return None if d is None else d.to_dict()


def renderers(object_masks: Tensor, size: int) -> dict[str, Any]:
    """The catalogue as ``(images, strength, generator) -> (augmented, changed)`` callables over augment's modules."""
    from augment import Cutout, SyntheticShadow
    from augment import functional as AF

    def shadow_draw(images: Tensor, strength: float, g: torch.Generator) -> tuple[Any, Any, Tensor]:
        module = SyntheticShadow(p=1.0, kind="line", intensity=(strength, strength))
        params = module.sample(images, object_masks=object_masks.to(images.device), generator=g)
        region = module.region(params, size, size, images.device)[:, 0]
        return module, params, region

    def shadow(images: Tensor, strength: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
        module, params, region = shadow_draw(images, strength, g)
        return module.apply_params(images, params), region

    def blur(images: Tensor, strength: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
        _, _, region = shadow_draw(images, strength, g)
        w = region[:, None]
        return images * (1 - w) + AF.gaussian_blur(images, 2.0 * strength) * w, region

    def noise(images: Tensor, strength: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
        _, _, region = shadow_draw(images, strength, g)
        n = torch.randn(images.shape, generator=g).to(images.device)
        return (images + 0.3 * strength * n * region[:, None]).clamp(0, 1), region

    def cutout(fill: str) -> Any:
        def render(images: Tensor, strength: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
            side = max(2, round(strength * size / 2))
            module = Cutout(p=1.0, count=1, size=side, fill=fill, value=0.0 if fill == "mean" else 0.5,
                            noise_std=0.3)
            params = module.sample(images, generator=g)
            out = module.apply_params(images, params)
            return (out.clamp(0, 1) if fill == "noise" else out), module.region(params, size, size, images.device)
        return render

    def oracle_occluder(images: Tensor, strength: float, g: torch.Generator) -> tuple[Tensor, Tensor]:
        from recipes.data.render import foreign_material

        module = Cutout(p=1.0, count=1, size=max(2, round(strength * size / 2)))
        region = module.region(module.sample(images, generator=g), size, size, images.device)
        speckle = foreign_material(g, images.shape[0], size, size).to(images.device)
        return images * (1 - region) + speckle * region, region

    return {"SyntheticShadow": shadow, "Cutout": cutout("mean"), "Cutout(noise)": cutout("noise"), "Blur": blur,
            "Noise": noise, ORACLE: oracle_occluder}


FAMILY: dict[str, str] = {}


def catalog_renderers() -> dict[str, Any]:
    """Every entry of :func:`augment.catalog.catalog` (our transforms) as a renderer; fills :data:`FAMILY`."""
    from functools import partial

    from augment.catalog import catalog, render

    entries = catalog(("conceptfix",))
    FAMILY.update({e.name: e.family for e in entries})
    return {e.name: partial(render, e) for e in entries}


def without(table: Any, drop: str) -> Any:
    """The claim table without one transform's column."""
    from dataclasses import replace

    keep = [j for j, t in enumerate(table.transforms) if t != drop]
    return replace(table, transforms=tuple(table.transforms[j] for j in keep), changed=table.changed[:, keep],
                   clean=table.clean[:, keep], counts=table.counts[keep])


def run(scenario: str, seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from debugger.matching import TransformMatcher
    from debugger.pipeline import ConceptAnalysis

    dm, model, train_s = baseline(scenario, seed, args)
    dm.setup("validate")
    ds = dm.dataset("val")
    names = list(ds.concept_names)
    clock = time.perf_counter()
    analysis = ConceptAnalysis(model, args.layer, patches="superpixel", embedding="roi", n_concepts=args.n_concepts,
                               top_k=args.top_k, seed=seed)
    batches = list(DataLoader(ds, batch_size=100))
    report = analysis.run(batches, concept_names=names)
    analysis_s = time.perf_counter() - clock
    darkening = planted_darkening(batches, names.index("shadow"))
    images, objects = clean_probe(seed, args.clean_size)
    catalogue = renderers(objects, int(images.shape[-1]))
    if args.catalog:
        catalogue = {**catalog_renderers(), ORACLE: catalogue[ORACLE]}
    matcher = TransformMatcher(catalogue, strengths=args.strengths,
                               min_patches=args.min_patches, min_contrast=args.min_contrast, within=args.within,
                               seed=seed)
    clock = time.perf_counter()
    result = matcher.match(analysis, report, images)
    match_s = time.perf_counter() - clock
    from debugger.matching import match_transforms

    ranks = {r.name: r.rank for r in report.ranking}
    lifts = {r.name: float(r.lift) for r in report.ranking}
    shows = {m.concept: (m.shows, m.shows_precision) for m in result.matches if m.shows is not None}
    catalogue = match_transforms(without(result.table, ORACLE), [m.concept for m in result.matches],
                                 args.min_contrast, args.min_patches, lifts=lifts, shows=shows,
                                 ids={c.name: c.id for c in report.concepts})
    rows = [dict(m.to_dict(), rank=ranks[m.concept], with_oracle=o.to_dict())
            for m, o in zip(catalogue, result.matches, strict=True)]
    target = [r for r in rows if r["shows"] == scenario and (r["shows_precision"] or 0) >= args.min_precision]
    best = min(target, key=lambda r: r["rank"]) if target else None
    out = {
        "scenario": scenario,
        "seed": seed,
        "train_or_load_seconds": round(train_s, 1),
        "analysis_seconds": round(analysis_s, 1),
        "match_seconds": round(match_s, 1),
        "num_patches": len(report.patches),
        "failures": len(report.failures),
        "matches": rows,
        "planted_concept_failure": best,
        "planted_shadow_darkening": darkening,
        "passed": bool(best is not None and (FAMILY.get(best["transform"]) == scenario if args.catalog
                                              else best["transform"] in EXPECTED[scenario])),
        "with_oracle_picked": None if best is None else best["with_oracle"]["transform"],
    }
    if best is not None:
        i = result.table.concepts.index(best["concept"])
        t = result.table
        out["planted_concept_claims"] = {
            name: {"changed": [round(float(v), 3) for v in t.changed[i, j]],
                   "clean": [round(float(v), 3) for v in t.clean[i, j]],
                   "counts": t.counts[j].tolist()}
            for j, name in enumerate(t.transforms)
        }
    print(json.dumps({k: v for k, v in out.items() if k != "planted_concept_claims"}), flush=True)
    for r in rows:
        print("   ", r["evidence"], "| with the oracle:", r["with_oracle"]["transform"], flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    parser.add_argument("--train-size", type=int, default=3000)
    parser.add_argument("--probe-size", type=int, default=300, help="validation images the analysis runs on")
    parser.add_argument("--clean-size", type=int, default=128, help="clean validation images the catalogue is "
                        "rendered on")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--width", type=int, default=48, help="ResNet width (bench_planted_failure's default)")
    parser.add_argument("--layer", default="layer1")
    parser.add_argument("--n-concepts", type=int, default=16)
    parser.add_argument("--top-k", type=int, default=50)
    parser.add_argument("--strengths", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8, 1.0])
    parser.add_argument("--min-patches", type=int, default=30)
    parser.add_argument("--min-contrast", type=float, default=0.1)
    parser.add_argument("--within", type=lambda v: None if v == "none" else float(v), default=1.0,
                        help="a concept claims patches only within this many of its radii ('none': no limit)")
    parser.add_argument("--min-precision", type=float, default=0.5,
                        help="share of a concept's top patches on a planted concept for it to 'show' that concept")
    parser.add_argument("--baseline-cache", default="/tmp/match/baselines",
                        help="folder keeping the trained baselines (same scenario, seed, size, epochs and data "
                             "generator code → same model)")
    parser.add_argument("--catalog", action="store_true",
                        help="match against augment.catalog's entries (passed: the pick is of the planted concept's "
                             "family) instead of the five renderers above")
    parser.add_argument("--name", default="matching", help="result file name under benchmarks/results/")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, not recorded")
    args = parser.parse_args()
    if args.quick:
        args.train_size, args.probe_size, args.clean_size, args.epochs = 256, 60, 24, 1
        args.min_patches = 5
    Path(args.baseline_cache).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    from recipes.baseline import quiet_lightning

    quiet_lightning()
    runs = [run(scenario, seed, args) for scenario in args.scenarios for seed in args.seeds]
    summary = {s: {"passed": sum(r["passed"] for r in runs if r["scenario"] == s),
                   "runs": sum(r["scenario"] == s for r in runs),
                   "picked": [r["planted_concept_failure"]["transform"] if r["planted_concept_failure"] else None
                              for r in runs if r["scenario"] == s],
                   "picked_with_oracle": [r["with_oracle_picked"] for r in runs if r["scenario"] == s]}
               for s in args.scenarios}
    print(json.dumps(summary, indent=2))
    if not args.quick:
        config = {k: v for k, v in vars(args).items() if k not in ("quick", "name", "baseline_cache")}
        path = record(args.name, {"config": config, "summary": summary, "runs": runs})
        print(f"recorded {path}")


if __name__ == "__main__":
    main()
