"""Concept extractors by active learning on planted concepts: seed 000 Fig. 9 and §8.2 on this CPU.

For every seed a baseline ResNet is trained (``recipes.baseline.fit_baseline``, shadows rare in training, common in
the probe split), SLIC superpixels are cut from ``--probe-images`` validation images (~26 per image, ~2,500 patches
for 96 images: the size of seed 000's lost-cargo pool) and their spatial latent tensors at ``--layer`` are embedded
once (``ConceptExtractor.embed``, resampled patches as seed 000 §7.1). Then, for each planted concept (``shadow``,
``occluder``, ``stripes``) and each schedule (2-2-2-2, 6-4-4-4, 10-4-4-4):

- ``confident_wrong`` (seed 000's: the labeller is shown the most confident candidates and picks the wrong ones as
  hard negatives, the right ones as positives), ``least_confidence`` (uncertainty sampling; margin and entropy give
  the same order for one binary concept) and ``random`` run the stages with the simulated :class:`Oracle`
  (positive: ≥ 50% of the patch's pixels show the concept; negative: none do; in between: skipped);
- after every stage, precision@{10, 50, 100} of the extractor's confidence on the **unlabelled** patches, with a
  patch counting as a hit when it overlaps the concept at all (as ``ground_truth_precision``);
- an upper bound: the same head trained on every patch the oracle can label (80/20 stratified split for early
  stopping, no augmentation), scored on all patches.

The first stage of every strategy is the same (the labeller's own random finds, same seed), so the strategies are
compared paired. ``10-4-4-4`` with brushed rectangles as positives is run as an extra arm.

§8.2's analogue: the same concepts (10-4-4-4, ``confident_wrong``, and the upper bound) on latents of a weak model
(the same architecture trained for ``--weak-epochs`` epochs) and of an untrained one (initial weights), same pool.

Stage time: the seconds of each ``ConceptExtractor.fit`` (augmented re-embedding of 2 × 200 training + 2 × 50
validation draws through the model, plus head training), timed in the run on one torch thread; the machine's load
is recorded beside it.

Run: ``OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.bench_active_learning --cache-dir /tmp/al/cache``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from benchmarks.harness import mean_std, record  # noqa: E402

CONCEPTS = ("shadow", "occluder", "stripes", "tint")
KS = (10, 50, 100)


def prevalence() -> dict[str, dict[str, float]]:
    return {
        "train": {"shadow": 0.03, "occluder": 0.10},
        "val": {"shadow": 0.50, "occluder": 0.30},
        "test": {"shadow": 0.50, "occluder": 0.30},
    }


def train_model(seed: int, epochs: int, args: argparse.Namespace) -> tuple[Any, Any]:
    """The baseline (cached by seed, epochs and the data generator's code); ``epochs=0`` is the untrained model with
    its seeded initial weights."""
    from recipes.baseline import fit_baseline
    from recipes.data import PlantedConceptsDataModule
    from recipes.data.base import generator_digest
    from recipes.data.planted import PlantedConceptsDataset
    from recipes.models import ResNetClassifier

    dm = PlantedConceptsDataModule(train_size=args.train_size, val_size=args.probe_images,
                                   test_size=args.probe_images, prevalence=prevalence(), batch_size=128, seed=seed,
                                   cache_dir=None)
    if epochs == 0:
        torch.manual_seed(seed)
        return ResNetClassifier().eval(), dm
    data = generator_digest(PlantedConceptsDataset)
    path = args.cache_dir / f"al_resnet_s{seed}_n{args.train_size}_e{epochs}_{data}.pt" if args.cache_dir else None
    if path is not None and path.exists():
        model = ResNetClassifier()
        model.load_state_dict(torch.load(path))
        return model.eval(), dm
    model = fit_baseline(dm, ResNetClassifier, max_epochs=epochs, seed=seed)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval(), dm


def upper_bound(extractor: Any, latents: torch.Tensor, oracle: Any) -> dict[str, Any]:
    from debugger.active import precision_at_k

    labels = oracle.label(torch.arange(latents.shape[0]))
    keep = labels >= 0
    t = time.perf_counter()
    extractor.fit_latents(latents[keep], labels[keep])
    secs = time.perf_counter() - t
    scores = extractor.score_latents(latents)
    return {"precision": precision_at_k(scores, oracle.truth(), KS), "labels": int(keep.sum()), "seconds": secs}


def run_arm(model: Any, layer: str, concept: str, schedule: str, strategy: str, images: torch.Tensor, ps: Any,
            latents: torch.Tensor, oracle: Any, seed: int, kernel_size: int, brush: bool = False) -> dict[str, Any]:
    from debugger.active import ActiveLearner
    from debugger.extractor import ConceptExtractor

    learner = ActiveLearner(ConceptExtractor(model, layer, concept, seed=seed, kernel_size=kernel_size), schedule,
                            strategy, brush=brush, eval_ks=KS, seed=seed)  # type: ignore[arg-type]
    learner.run(images, ps, oracle, latents=latents)
    return {"stages": learner.stages_, "label_fraction": learner.stages_[-1]["labels"] / len(ps)}


def analyse_seed(seed: int, args: argparse.Namespace) -> dict[str, Any]:
    from debugger.active import Oracle
    from debugger.capture import run_capture
    from debugger.extractor import ConceptExtractor
    from debugger.patches import extract_patches

    t = time.perf_counter()
    model, dm = train_model(seed, args.epochs, args)
    train_s = time.perf_counter() - t
    cap = run_capture(model, "fc", dm.val_dataloader(), keep_images=True)
    images, masks = cap.images, cap.concept_masks
    ps = extract_patches(images, "slic", concept_masks=masks, concept_names=CONCEPTS)
    t = time.perf_counter()
    latents = ConceptExtractor(model, args.layer).embed(images, ps)
    embed_s = time.perf_counter() - t
    row: dict[str, Any] = {
        "seed": seed, "train_seconds": train_s, "probe_images": len(cap), "accuracy": cap.accuracy,
        "patches": len(ps), "latent_shape": list(latents.shape[1:]), "pool_embed_seconds": embed_s, "concepts": {},
    }
    print(f"seed {seed}: {len(ps)} patches, latents {tuple(latents.shape[1:])}, acc {cap.accuracy:.3f}", flush=True)
    for concept in args.concepts:
        oracle = Oracle(ps, concept, positive_min=args.positive_min, concept_masks=masks)
        labels = oracle.label(torch.arange(len(ps)))
        out: dict[str, Any] = {
            "base_rate": float(oracle.truth().float().mean()),
            "oracle_positives": int((labels == 1).sum()), "oracle_negatives": int((labels == 0).sum()),
            "upper_bound": upper_bound(
                ConceptExtractor(model, args.layer, concept, seed=seed, kernel_size=args.kernel_size), latents, oracle),
            "arms": {},
        }
        for schedule in args.schedules:
            for strategy in args.strategies:
                out["arms"][f"{schedule}/{strategy}"] = run_arm(model, args.layer, concept, schedule, strategy,
                                                                 images, ps, latents, oracle, seed, args.kernel_size)
        if args.brush:
            out["arms"]["10-4-4-4/confident_wrong+brush"] = run_arm(
                model, args.layer, concept, "10-4-4-4", "confident_wrong", images, ps, latents, oracle, seed,
                args.kernel_size, brush=True)
        row["concepts"][concept] = out
        p50 = {k: round(v["stages"][-1]["precision"][50], 2) for k, v in out["arms"].items()}
        print(f"  {concept}: base {out['base_rate']:.3f}, upper p@50 {out['upper_bound']['precision'][50]:.2f}, "
              f"final p@50 {p50}", flush=True)
    # seed 000 §8.2: the same concepts on the latents of weaker models (and of the same model at other layers)
    row["latent_quality"] = {}
    variants = [(e, args.layer, f"epochs_{e}") for e in args.weak_epochs]
    variants += [(args.epochs, layer, f"layer_{layer}") for layer in args.extra_layers]
    for epochs, layer, key in variants:
        other = model if epochs == args.epochs else train_model(seed, epochs, args)[0]
        lat = ConceptExtractor(other, layer).embed(images, ps)
        res: dict[str, Any] = {}
        for concept in args.concepts:
            oracle = Oracle(ps, concept, positive_min=args.positive_min, concept_masks=masks)
            res[concept] = {
                "active": run_arm(other, layer, concept, "10-4-4-4", "confident_wrong", images, ps, lat, oracle, seed,
                                  args.kernel_size),
                "upper_bound": upper_bound(
                    ConceptExtractor(other, layer, concept, seed=seed, kernel_size=args.kernel_size), lat, oracle),
            }
        row["latent_quality"][key] = res
        print(f"  {key}: final p@50 "
              f"{ {c: round(r['active']['stages'][-1]['precision'][50], 2) for c, r in res.items()} }", flush=True)
    return row


def summarise(rows: list[dict[str, Any]], args: argparse.Namespace) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for concept in args.concepts:
        per = [r["concepts"][concept] for r in rows]
        arms: dict[str, Any] = {}
        for arm in per[0]["arms"]:
            n_stages = len(per[0]["arms"][arm]["stages"])
            arms[arm] = {
                "precision_per_stage": [
                    {k: mean_std([p["arms"][arm]["stages"][s]["precision"][k] for p in per]) for k in KS}
                    for s in range(n_stages)
                ],
                "label_fraction": mean_std([p["arms"][arm]["label_fraction"] for p in per]),
                "reviewed_last_stage": mean_std([float(p["arms"][arm]["stages"][-1]["reviewed"]) for p in per]),
            }
        summary[concept] = {
            "base_rate": mean_std([p["base_rate"] for p in per]),
            "upper_bound": {k: mean_std([p["upper_bound"]["precision"][k] for p in per]) for k in KS},
            "arms": arms,
        }
    goal = summary.get("shadow", {}).get("arms", {}).get("10-4-4-4/confident_wrong")
    if goal is not None:
        final = [r["concepts"]["shadow"]["arms"]["10-4-4-4/confident_wrong"] for r in rows]
        summary["goal_shadow_10-4-4-4"] = {
            "precision_at_50_per_seed": [f["stages"][-1]["precision"][50] for f in final],
            "label_fraction_per_seed": [f["label_fraction"] for f in final],
            "met_per_seed": [f["stages"][-1]["precision"][50] >= 0.9 and f["label_fraction"] < 0.05 for f in final],
        }
    quality: dict[str, Any] = {}
    for key in rows[0]["latent_quality"]:
        quality[key] = {c: {
            "active_final": {k: mean_std([r["latent_quality"][key][c]["active"]["stages"][-1]["precision"][k]
                                          for r in rows]) for k in KS},
            "upper_bound": {k: mean_std([r["latent_quality"][key][c]["upper_bound"]["precision"][k] for r in rows])
                            for k in KS},
        } for c in args.concepts}
    quality[f"epochs_{args.epochs}"] = {c: {
        "active_final": summary[c]["arms"].get("10-4-4-4/confident_wrong", {}).get("precision_per_stage", [{}])[-1],
        "upper_bound": summary[c]["upper_bound"],
    } for c in args.concepts}
    summary["latent_quality"] = quality
    fits = [s["fit_seconds"] for r in rows for c in r["concepts"].values() for a in c["arms"].values()
            for s in a["stages"]]
    heads = [s["head_seconds"] for r in rows for c in r["concepts"].values() for a in c["arms"].values()
             for s in a["stages"]]
    embeds = [s["embed_seconds"] for r in rows for c in r["concepts"].values() for a in c["arms"].values()
              for s in a["stages"]]
    summary["stage_seconds"] = {
        "stages": len(fits),
        "fit_median": statistics.median(fits), "fit_p90": sorted(fits)[int(0.9 * (len(fits) - 1))],
        "fit_max": max(fits), "share_at_most_2s": sum(f <= 2.0 for f in fits) / len(fits),
        "augment_embed_median": statistics.median(embeds), "head_train_median": statistics.median(heads),
        "pool_embed_seconds": mean_std([r["pool_embed_seconds"] for r in rows]),
        "patches": mean_std([float(r["patches"]) for r in rows]),
    }
    return summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--weak-epochs", type=int, nargs="*", default=[1, 0], help="0 = untrained")
    p.add_argument("--probe-images", type=int, default=96)
    p.add_argument("--layer", default="layer2", help="8x8 latents; layer3 (4x4) is run as an extra layer")
    p.add_argument("--extra-layers", nargs="*", default=["layer3"])
    p.add_argument("--concepts", nargs="+", default=["shadow", "occluder", "stripes"])
    p.add_argument("--schedules", nargs="+", default=["2-2-2-2", "6-4-4-4", "10-4-4-4"])
    p.add_argument("--strategies", nargs="+", default=["confident_wrong", "least_confidence", "random"])
    p.add_argument("--positive-min", type=float, default=0.5)
    p.add_argument("--kernel-size", type=int, default=3, help="the extractor head's convolution size")
    p.add_argument("--no-brush", dest="brush", action="store_false")
    p.add_argument("--cache-dir", type=Path, default=None)
    p.add_argument("--name", default="active_learning")
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from recipes.baseline import quiet_lightning

    quiet_lightning()
    t = time.perf_counter()
    rows = [analyse_seed(seed, args) for seed in args.seeds]
    summary = summarise(rows, args)
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path = record(args.name, {"config": config, "summary": summary, "rows": rows, "threads": 1,
                              "wall_seconds": time.perf_counter() - t})
    print(f"stage seconds: {summary['stage_seconds']}")
    print(f"goal: {summary.get('goal_shadow_10-4-4-4')}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
