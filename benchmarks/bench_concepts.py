"""Concept discovery on planted-concept data: embedding modes side by side, and "finds the planted failure".

For every seed a baseline ResNet is trained (``recipes.baseline.fit_baseline``) on planted-concept data in
which the failure concept (``shadow`` by default) is rare in training (3%) and common in the probe split (50%),
so the baseline fails on it. On a probe set of validation images it then runs, for both embedding modes:

1. capture (predictions, correctness) → SLIC superpixels (or windows) with their ground-truth concept overlap;
2. patch embeddings at ``--layer``, ``roi`` and ``resample``, timed in the same process (patches/s);
3. k-means discovery (k by silhouette in ``--k-range``);
4. concept slices (sources of each concept's top-50 patches, ``debugger.confusion.concept_membership``) and
   the failure ranking of ``debugger.ranking.rank_failures``.

Recorded per seed and mode: throughput, precision@50 of the best discovered concept for every ground-truth
concept, and whether the #1 failure concept's top-50 patches are ≥ 80% on the planted failure concept (a
patch counts when it overlaps the concept's mask). Target: success in ≥ 4 of 5 seeds per mode.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_concepts.py`` (about 5 minutes per seed on 1 thread);
``--failure occluder`` plants the occluder as the failure instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from benchmarks.bench_discovery_scale import _record  # noqa: E402

CONCEPTS = ("shadow", "occluder", "stripes", "tint")


def prevalence(failure: str) -> dict[str, dict[str, float]]:
    """Rare in training, common in the probe split; the other concept of the pair stays moderate."""
    other = "occluder" if failure == "shadow" else "shadow"
    return {
        "train": {failure: 0.03, other: 0.10},
        "val": {failure: 0.50, other: 0.30},
        "test": {failure: 0.50, other: 0.30},
    }


def train_model(seed: int, failure: str, train_size: int, epochs: int, probe_size: int, cache: Path | None):
    from recipes.baseline import fit_baseline
    from recipes.data import PlantedConceptsDataModule
    from recipes.models import ResNetClassifier

    dm = PlantedConceptsDataModule(train_size=train_size, val_size=probe_size, test_size=probe_size,
                                   prevalence=prevalence(failure), batch_size=128, seed=seed, cache_dir=None)
    path = cache / f"resnet_{failure}_s{seed}_n{train_size}_e{epochs}.pt" if cache else None
    t = time.perf_counter()
    if path is not None and path.exists():
        model = ResNetClassifier()
        model.load_state_dict(torch.load(path))
        model.eval()
    else:
        model = fit_baseline(dm, ResNetClassifier(), max_epochs=epochs, seed=seed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save(model.state_dict(), path)
    return model, dm, time.perf_counter() - t


def analyse(model, dm, args, seed: int) -> dict[str, Any]:
    from debugger.capture import run_capture
    from debugger.confusion import concept_membership
    from debugger.discovery import concept_precision, discover_concepts
    from debugger.embed import embed_patches
    from debugger.patches import extract_patches
    from debugger.ranking import rank_failures

    cap = run_capture(model, "fc", dm.val_dataloader(), keep_images=True)
    images, masks = cap.images, cap.concept_masks
    fi = CONCEPTS.index(args.failure)
    present = cap.concepts[:, fi] > 0
    out: dict[str, Any] = {
        "seed": seed,
        "probe_images": len(cap),
        "accuracy": cap.accuracy,
        "accuracy_with_failure_concept": float(cap.correct[present].float().mean()),
        "accuracy_without_failure_concept": float(cap.correct[~present].float().mean()),
    }
    t = time.perf_counter()
    kw: dict[str, Any] = {"sizes": (8, 16)} if args.patches == "windows" else {}
    ps = extract_patches(images, args.patches, concept_masks=masks, concept_names=CONCEPTS, **kw)
    out["patches"] = len(ps)
    out["patch_seconds"] = time.perf_counter() - t
    out["base_rate"] = dict(zip(CONCEPTS, (ps.concept_overlap > 0).float().mean(0).tolist(), strict=True))
    out["modes"] = {}
    for mode in ("roi", "resample"):
        t = time.perf_counter()
        emb = embed_patches(model, args.layer, images, ps, mode=mode, batch_size=128)
        embed_s = time.perf_counter() - t
        t = time.perf_counter()
        concepts = discover_concepts(emb, n_concepts=args.n_concepts, k_range=tuple(args.k_range),
                                     image_index=ps.image_index, min_images=5, seed=seed)
        disc_s = time.perf_counter() - t
        prec = concept_precision(concepts, ps, k=args.top_k)  # (C, K)
        scores = torch.stack([c.scores for c in concepts])
        membership = concept_membership(scores, ps.image_index, len(cap), top_k=args.top_k)
        ranking = rank_failures(~cap.correct, membership, names=[c.name for c in concepts],
                                ids=list(range(len(concepts))), min_support=10)
        top = ranking[0]
        top_prec = float(prec[top.concept, fi])
        best_failure_concept = int(prec[:, fi].argmax())
        rank_of_best = next(r.rank for r in ranking if r.concept == best_failure_concept)
        out["modes"][mode] = {
            "embed_seconds": embed_s,
            "patches_per_second": len(ps) / embed_s,
            "discovery_seconds": disc_s,
            "k": len(concepts),
            "precision_at_k_best": dict(zip(CONCEPTS, prec.max(0).values.tolist(), strict=True)),
            "top_failure": {
                "name": top.name,
                "is_failure": top.is_failure,
                "lift": top.lift,
                "lift_low": top.lift_low,
                "error_in": top.error_in,
                "error_out": top.error_out,
                "support": top.support,
                f"{args.failure}_precision_at_k": top_prec,
                "precision_at_k": dict(zip(CONCEPTS, prec[top.concept].tolist(), strict=True)),
            },
            f"rank_of_best_{args.failure}_concept": rank_of_best,
            "success": bool(top.is_failure and top_prec >= 0.8),
        }
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--failure", choices=("shadow", "occluder"), default="shadow")
    p.add_argument("--train-size", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--probe-size", type=int, default=400)
    p.add_argument("--layer", default="layer3", help="the last conv stage, as seed 000 §7.1 takes the final conv layer")
    p.add_argument("--patches", choices=("slic", "quickshift", "windows"), default="slic")
    p.add_argument("--n-concepts", type=int, default=None)
    p.add_argument("--k-range", type=int, nargs=2, default=[8, 16])
    p.add_argument("--top-k", type=int, default=50)
    p.add_argument("--cache-dir", type=Path, default=None, help="keep trained baselines here between runs")
    p.add_argument("--name", default=None, help="result file name (default concepts_<failure>)")
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    from recipes.baseline import quiet_lightning

    quiet_lightning()
    rows = []
    for seed in args.seeds:
        model, dm, train_s = train_model(seed, args.failure, args.train_size, args.epochs, args.probe_size,
                                         args.cache_dir)
        row = analyse(model, dm, args, seed)
        row["train_seconds"] = train_s
        rows.append(row)
        summary = {m: (r["success"], round(r["top_failure"][f"{args.failure}_precision_at_k"], 2),
                       round(r["patches_per_second"]), r[f"rank_of_best_{args.failure}_concept"])
                   for m, r in row["modes"].items()}
        print(f"seed {seed}: acc {row['accuracy']:.3f} (with {args.failure} "
              f"{row['accuracy_with_failure_concept']:.3f}, without {row['accuracy_without_failure_concept']:.3f}) "
              f"(success, top-1 precision, patches/s, rank of best concept): {summary}", flush=True)
    summary: dict[str, Any] = {}
    for mode in ("roi", "resample"):
        ms = [r["modes"][mode] for r in rows]
        summary[mode] = {
            "successes": sum(m["success"] for m in ms),
            "seeds": len(ms),
            "mean_patches_per_second": sum(m["patches_per_second"] for m in ms) / len(ms),
            "mean_precision_at_k_best": {
                c: sum(m["precision_at_k_best"][c] for m in ms) / len(ms) for c in CONCEPTS
            },
        }
    summary["roi_over_resample_throughput"] = (
        summary["roi"]["mean_patches_per_second"] / summary["resample"]["mean_patches_per_second"]
    )
    config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    path = _record(args.name or f"concepts_{args.failure}", {"config": config, "summary": summary,
                                                                     "rows": rows, "threads": 1})
    print(json.dumps(summary, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
