"""TCAV on the planted-concept baseline: scores and significance per concept, layer and class, and its cost vs captum.

For every seed a baseline ResNet is trained as in ``bench_planted_baseline`` (``recipes.baseline.fit_baseline``,
6,000 images, 3 epochs, planted data with the default prevalence: shadows rare in training, common at
validation). On a probe set of validation images:

1. **Scores** (what :class:`callbacks.TCAVMonitor` logs): concept examples are the 8- and 16-pixel windows at
   least half covered by a concept's ground-truth mask, the random pool is every window
   (:func:`debugger.tcav.concept_windows`); channel CAVs at ``--layers``; each probe image is explained for its
   own class; ``--runs`` concept-vs-random CAVs against as many random-vs-random ones, two-sided t-test,
   Bonferroni over the (layer, concept, class) tests of the seed. Recorded: mean score, p-value and adjusted
   p-value for shadow / occluder / stripes / tint per layer for ``--classes``.
2. **Cost**: one TCAV evaluation (one layer, flat CAVs from whole images as captum does: the probe images with
   the concept vs random probe images; ``--runs`` concept and random-vs-random CAVs; every class's images
   explained for it) against ``captum.concept.TCAV`` doing the same work (the same experimental sets, one
   ``interpret`` per class on that class's images, a fresh ``save_path`` per call so nothing is reused), timed
   interleaved in one process (``benchmarks.harness.compare``).

A fifth "concept", ``random_control``, is a random draw of windows (as many as the median concept has): a
calibrated test calls it significant at most at the nominal rate. Both tests are recorded, Bonferroni-adjusted:
``runs`` (Kim et al., captum: the concept's runs vs random-vs-random runs) and ``concepts`` (the concept's mean
score vs ``--null-concepts`` random example sets of its size, ``debugger.tcav.tcav_concept_significance``).

``--spurious-stripes C`` plants stripes on 90% of class ``C``'s training images (15% elsewhere), a cue the
model can learn: TCAV should then call stripes significant for class ``C``.

``--pixel-cost`` instead times the per-pixel (segmentation) derivatives as ``docs/tcav.md`` describes them: per
seed an untrained ``SegmentationNet``, ``--pixel-images`` road scenes, ``--pixels-per-class`` × 3 classes pixel
slots, the layer's ``2 × --runs`` CAVs for the shadow concept, layers ``--pixel-layers``;
``layer_sensitivities`` with one backward pass per slot against ``slots_per_pass`` = each of
``--slots-per-pass`` (vmapped backward), interleaved in one process (order rotated every round), with the
largest difference between their derivatives (``results/tcav_pixel_cost.json``).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_tcav`` (about 5 minutes per seed on 1 thread);
``--pixel-cost`` about 4 minutes per seed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from benchmarks.harness import compare, mean_std, record  # noqa: E402

CONCEPTS = ("shadow", "occluder", "stripes", "tint")
CONTROL = "random_control"


def train_model(seed: int, args: argparse.Namespace) -> tuple[Any, Any, float]:
    from recipes.baseline import fit_baseline
    from recipes.data import PlantedConceptsDataModule
    from recipes.models import ResNetClassifier

    class_prev = None
    if args.spurious_stripes is not None:
        class_prev = {"train": {"stripes": {args.spurious_stripes: 0.9}}}
    dm = PlantedConceptsDataModule(train_size=args.train_size, val_size=args.probe_size, test_size=32,
                                   class_prevalence=class_prev, batch_size=128, seed=seed, cache_dir=None)
    t = time.perf_counter()
    model = fit_baseline(dm, ResNetClassifier, max_epochs=args.epochs, seed=seed)
    return model, dm, time.perf_counter() - t


def probe_batch(dm: Any, n: int) -> dict[str, torch.Tensor]:
    from torch.utils.data import default_collate

    ds = dm.dataset("val")
    return default_collate([ds[i] for i in range(min(n, len(ds)))])


def scores(model: Any, batch: dict[str, torch.Tensor], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from debugger.ranking import adjust_p_values
    from debugger.tcav import TCAV, ExampleSet, concept_windows

    images, targets = batch["image"], batch["target"]
    concepts, random = concept_windows(images, batch["concept_masks"].bool(), CONCEPTS, sizes=(8, 16))
    # A false-positive control: a "concept" of windows drawn at random, as many as the median concept has.
    g = torch.Generator().manual_seed(1000 + seed)
    size = sorted(len(concepts[c]) for c in CONCEPTS)[len(CONCEPTS) // 2]
    concepts[CONTROL] = ExampleSet(images, random.patches, torch.randperm(len(random), generator=g)[:size])
    t = time.perf_counter()
    res = TCAV(model, args.layers, runs=args.runs, correction="bonferroni", random_state=seed, test="concepts",
               null_concepts=args.null_concepts).interpret(images, targets, concepts, random, classes=args.classes)
    seconds = time.perf_counter() - t
    assert res.p_runs is not None
    runs_adjusted = adjust_p_values(res.p_runs.flatten(), "bonferroni").reshape(res.p_runs.shape)
    table: dict[str, Any] = {}
    for row in res.rows():
        li, ki, ci = (res.layers.index(row["layer"]), res.concepts.index(row["concept"]),
                      res.classes.index(row["class"]))
        table.setdefault(row["layer"], {}).setdefault(row["concept"], {})[str(row["class"])] = {
            "score": row["score"], "score_std": row["score_std"], "random_score": row["random_score"],
            "null_concept_score": row["null_score"], "cav_accuracy": row["cav_accuracy"], "images": row["samples"],
            # the test over runs (Kim et al., captum) and the test against null concepts, each Bonferroni-adjusted
            "p_runs": row["p_runs"], "p_runs_adjusted": float(runs_adjusted[li, ki, ci]),
            "significant_runs": bool(runs_adjusted[li, ki, ci] < 0.05),
            "p_concepts": row["p_value"], "p_concepts_adjusted": row["p_adjusted"],
            "significant_concepts": row["significant"],
        }
    cells = [c for t in table.values() for per in t.values() for c in per.values()]
    return {"table": table, "seconds": seconds, "examples": {c: len(concepts[c]) for c in (*CONCEPTS, CONTROL)},
            "random_pool": len(random), "significant_runs": sum(c["significant_runs"] for c in cells),
            "significant_concepts": sum(c["significant_concepts"] for c in cells), "tests": len(cells)}


def cost(model: Any, batch: dict[str, torch.Tensor], args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """Ours vs captum for one layer, flat CAVs from whole images, the same experimental sets."""
    from captum.concept import TCAV as CaptumTCAV
    from captum.concept import Concept
    from torch.utils.data import DataLoader

    from debugger.tcav import TCAV, ExampleSet

    images, targets, present = batch["image"].float(), batch["target"], batch["concepts"].bool()
    layer, concept_name = args.cost_layer, args.cost_concept
    concept_images = images[present[:, CONCEPTS.index(concept_name)]][: args.max_examples]
    n = concept_images.shape[0]
    g = torch.Generator().manual_seed(seed)
    subsets = [images[torch.randperm(images.shape[0], generator=g)[:n]] for _ in range(args.runs + 1)]
    inputs = images[torch.isin(targets, torch.tensor(args.classes))]
    in_targets = targets[torch.isin(targets, torch.tensor(args.classes))]

    # Ours: the random pool is exactly the union of these subsets' draws; TCAV draws its own subsets from it.
    ours = TCAV(model, layer, runs=args.runs, space="flat", max_examples=args.max_examples, random_state=seed)

    def run_ours() -> Any:
        return ours.interpret(inputs, in_targets, {concept_name: ExampleSet(concept_images)}, ExampleSet(images),
                              classes=args.classes)

    def loader(x: torch.Tensor) -> DataLoader:
        return DataLoader(list(x), batch_size=64)

    def run_captum() -> Any:
        with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            c = Concept(0, concept_name, loader(concept_images))
            rs = [Concept(i + 1, f"random{i}", loader(s)) for i, s in enumerate(subsets)]
            sets = [[c, r] for r in rs[1:]] + [[rs[0], r] for r in rs[1:]]
            tcav = CaptumTCAV(model, [layer], save_path=d, model_id=f"bench{seed}")
            out = {}
            for cls in args.classes:
                out[cls] = tcav.interpret(inputs[in_targets == cls], sets, target=cls)
            return out

    timing = compare(run_ours, run_captum, repeat=args.repeat, warmup=1)
    ours_res = run_ours()
    captum_res = run_captum()
    key = lambda i: f"0-{i + 2}"  # noqa: E731 - concept id 0 vs random ids 2..runs+1
    captum_scores = {
        str(cls): float(torch.stack([captum_res[cls][key(i)][layer]["sign_count"][0] for i in range(args.runs)])
                        .mean()) for cls in args.classes
    }
    ours_scores = {str(cls): float(ours_res.scores[0, 0, j].mean()) for j, cls in enumerate(args.classes)}
    return {"layer": layer, "concept": concept_name, "concept_images": n, "inputs": int(inputs.shape[0]),
            "ours_s": timing["candidate_s"], "captum_s": timing["baseline_s"],
            "ours_over_captum": timing["ratio"], "ours_scores": ours_scores, "captum_scores": captum_scores,
            "ours_p_values": {str(cls): float(ours_res.p_values[0, 0, j]) for j, cls in enumerate(args.classes)}}


def pixel_cost(args: argparse.Namespace) -> dict[str, Any]:
    """Per-pixel derivatives: one backward per slot vs ``slots_per_pass`` slots per vmapped backward."""
    from debugger.tcav import TCAV, concept_windows, layer_sensitivities, sample_pixels
    from recipes.data import RoadScenesDataset
    from recipes.models import SegmentationNet

    variants = [1, *[s for s in args.slots_per_pass if s != 1]]
    rows = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        net = SegmentationNet(num_classes=3).eval()
        ds = RoadScenesDataset("val", size=args.pixel_images, seed=seed, cache_dir=None)
        items = [ds[i] for i in range(len(ds))]
        images = torch.stack([it["image"] for it in items]).float() / 255
        labels = torch.stack([it["target"] for it in items]).long()
        masks = torch.stack([it["concept_masks"] for it in items]).bool()
        h = images.shape[-2]
        concepts, random = concept_windows(images, masks, ["shadow"], sizes=(h // 4, h // 2))
        pixels, targets = sample_pixels(labels, args.pixels_per_class, [0, 1, 2],
                                        torch.Generator().manual_seed(seed))
        tcav = TCAV(net, args.pixel_layers, runs=args.runs, random_state=seed)
        cavs = {}
        for layer in args.pixel_layers:
            trained = tcav.cavs(layer, concepts, random)
            cavs[layer] = torch.cat([trained.concept_directions.flatten(0, 1), trained.random_directions])

        def run(spp: int, net: Any = net, images: torch.Tensor = images, cavs: dict[str, torch.Tensor] = cavs,
                targets: torch.Tensor = targets, pixels: torch.Tensor = pixels) -> list[torch.Tensor]:
            return [layer_sensitivities(net, layer, images, cavs[layer], targets, pixels, batch_size=32,
                                        slots_per_pass=spp) for layer in args.pixel_layers]

        reference = run(1)
        max_diff = {str(v): max(float((a - b).abs().max()) for a, b in zip(run(v), reference, strict=True))
                    for v in variants[1:]}
        times: dict[int, list[float]] = {v: [] for v in variants}
        for r in range(args.repeat):
            for v in variants[r % len(variants):] + variants[: r % len(variants)]:
                t = time.perf_counter()
                run(v)
                times[v].append(time.perf_counter() - t)
        median = {v: sorted(ts)[len(ts) // 2] for v, ts in times.items()}
        row = {"seed": seed, "cavs_per_layer": {k: int(c.shape[0]) for k, c in cavs.items()},
               "slots": int(targets.shape[1]), "used_slots": float((targets >= 0).float().mean()),
               "per_slot_s": median[1], "times_s": {str(v): ts for v, ts in times.items()},
               "batched_s": {str(v): median[v] for v in variants[1:]},
               "batched_over_per_slot": {str(v): median[v] / median[1] for v in variants[1:]},
               "max_abs_diff": max_diff, "max_abs_derivative": max(float(d.abs().max()) for d in reference)}
        print(f"seed {seed}: per slot {median[1]:.2f}s; " + ", ".join(
            f"{v} slots/pass {median[v]:.2f}s ({median[v] / median[1]:.2f}x, diff {max_diff[str(v)]:.1e})"
            for v in variants[1:]), flush=True)
        rows.append(row)
    summary = {"per_slot_s": mean_std([r["per_slot_s"] for r in rows]),
               "batched_over_per_slot": {str(v): mean_std([r["batched_over_per_slot"][str(v)] for r in rows])
                                         for v in variants[1:]},
               "max_abs_diff": max(max(r["max_abs_diff"].values()) for r in rows)}
    return {"summary": summary, "rows": rows}

def _concept_keys(args: argparse.Namespace, seeds: int) -> list[str]:
    return [c for _ in range(seeds) for _ in args.layers for c in (*CONCEPTS, CONTROL) for _ in args.classes]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--probe-size", type=int, default=256)
    p.add_argument("--layers", nargs="+", default=["layer1", "layer2", "layer3"])
    p.add_argument("--classes", type=int, nargs="+", default=[0, 1, 2, 3])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--null-concepts", type=int, default=10)
    p.add_argument("--max-examples", type=int, default=64)
    p.add_argument("--cost-layer", default="layer2")
    p.add_argument("--cost-concept", default="shadow", choices=CONCEPTS)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--spurious-stripes", type=int, default=None, metavar="CLASS")
    p.add_argument("--name", default=None, help="result file name (default tcav, or tcav_spurious)")
    p.add_argument("--pixel-cost", action="store_true", help="time per-pixel derivatives (see above) instead")
    p.add_argument("--pixel-images", type=int, default=32)
    p.add_argument("--pixels-per-class", type=int, default=8)
    p.add_argument("--pixel-layers", nargs="+", default=["enc2", "bottleneck"])
    p.add_argument("--slots-per-pass", type=int, nargs="+", default=[4, 8, 24])
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    if args.pixel_cost:
        result = pixel_cost(args)
        path = record(args.name or "tcav_pixel_cost", {"config": vars(args), **result, "threads": 1})
        print(json.dumps(result["summary"], indent=2))
        print(f"wrote {path}")
        return
    from recipes.baseline import quiet_lightning

    quiet_lightning()
    rows = []
    for seed in args.seeds:
        model, dm, train_s = train_model(seed, args)
        batch = probe_batch(dm, args.probe_size)
        with torch.no_grad():
            pred = model(batch["image"].float()).argmax(1)
        acc = float((pred == batch["target"]).float().mean())
        # Did the model learn a concept as a cue for a class? P(predict c | concept, not c) vs without the concept.
        cue = args.spurious_stripes if args.spurious_stripes is not None else 3
        other = batch["target"] != cue
        has = batch["concepts"][:, CONCEPTS.index("stripes")].bool()
        shortcut = {"class": cue, "p_pred_class_with_stripes": float((pred[other & has] == cue).float().mean()),
                    "p_pred_class_without_stripes": float((pred[other & ~has] == cue).float().mean()),
                    "images_with_stripes": int((other & has).sum())}
        row = {"seed": seed, "train_seconds": train_s, "probe_accuracy": acc, "stripes_shortcut": shortcut,
               "scores": scores(model, batch, args, seed), "cost": cost(model, batch, args, seed)}
        rows.append(row)
        sig = {k: [(layer, c, cls) for layer, t in row["scores"]["table"].items() for c, per in t.items()
                   for cls, r in per.items() if r[f"significant_{k}"]] for k in ("runs", "concepts")}
        print(f"seed {seed}: acc {acc:.3f}, shortcut {shortcut}, "
              f"of {row['scores']['tests']} significant by runs {sig['runs']}, "
              f"by null concepts {sig['concepts']}; "
              f"TCAV {row['cost']['ours_s']:.2f}s vs captum {row['cost']['captum_s']:.2f}s "
              f"({row['cost']['ours_over_captum']:.2f}x)", flush=True)

    summary: dict[str, Any] = {"ours_over_captum": mean_std([r["cost"]["ours_over_captum"] for r in rows]),
                               "ours_s": mean_std([r["cost"]["ours_s"] for r in rows]),
                               "captum_s": mean_std([r["cost"]["captum_s"] for r in rows])}
    per: dict[str, Any] = {}
    for layer in args.layers:
        for c in (*CONCEPTS, CONTROL):
            for cls in args.classes:
                cells = [r["scores"]["table"][layer][c][str(cls)] for r in rows]
                vals = [x["score"] for x in cells if x["score"] is not None]
                per[f"{layer}/{c}/{cls}"] = {
                    "score": mean_std(vals) if vals else None,
                    "null_concept_score": mean_std([x["null_concept_score"] for x in cells
                                                    if x["null_concept_score"] is not None]),
                    "significant_seeds_runs": sum(x["significant_runs"] for x in cells),
                    "significant_seeds_concepts": sum(x["significant_concepts"] for x in cells),
                    "p_runs_adjusted": [x["p_runs_adjusted"] for x in cells],
                    "p_concepts_adjusted": [x["p_concepts_adjusted"] for x in cells],
                }
    summary["per_layer_concept_class"] = per
    cells = [r["scores"]["table"][layer][c][str(cls)] for r in rows for layer in args.layers
             for c in (*CONCEPTS, CONTROL) for cls in args.classes]
    keys = _concept_keys(args, len(rows))
    n_cells = len(rows) * len(args.layers) * len(args.classes)
    summary["significant_rate"] = {
        test: {c: sum(x[f"significant_{test}"] for x, k in zip(cells, keys, strict=True) if k == c) / n_cells
               for c in (*CONCEPTS, CONTROL)}
        for test in ("runs", "concepts")
    }
    summary["uncorrected_rate_p_below_0.05"] = {
        test: {c: sum((x[f"p_{test}"] is not None and x[f"p_{test}"] < 0.05)
                      for x, k in zip(cells, keys, strict=True) if k == c) / n_cells for c in (*CONCEPTS, CONTROL)}
        for test in ("runs", "concepts")
    }
    name = args.name or ("tcav" if args.spurious_stripes is None else "tcav_spurious")
    path = record(name, {"config": vars(args), "summary": summary, "rows": rows, "threads": 1})
    print(json.dumps({k: v for k, v in summary.items() if k != "per_layer_concept_class"}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
