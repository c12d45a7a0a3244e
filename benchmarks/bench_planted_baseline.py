"""Does the planted-concept data plant a real failure? Baseline test accuracy with and without each concept.

Trains the baseline ResNet on the default planted-concept data (shadows in 3% of training images, 50% at
test) for several seeds and records per-concept slice accuracy. The shadow slice must sit at least 10 points
below the images without shadows, or the data plants no failure for the framework to find.

Run: ``python -m benchmarks.bench_planted_baseline [--seeds 3] [--epochs 3]``
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.harness import mean_std, record
from recipes.baseline import fit_baseline, slice_metrics
from recipes.data import PlantedConceptsDataModule
from recipes.models import ResNetClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-size", type=int, default=6000)
    args = parser.parse_args()
    per_seed = []
    for seed in range(args.seeds):
        dm = PlantedConceptsDataModule(train_size=args.train_size, val_size=500, test_size=2000, seed=seed)
        start = time.perf_counter()
        model = fit_baseline(dm, ResNetClassifier, max_epochs=args.epochs, seed=seed)
        seconds = time.perf_counter() - start
        m = slice_metrics(model, dm.dataset("test"))
        row = {"seed": seed, "train_seconds": seconds, "all": m["all"], "clean": m["clean"]}
        for c in dm.concept_names:
            row[c] = {"with": m[c]["with"], "without": m[c]["without"], "gap": m[c]["with"] - m[c]["without"]}
        per_seed.append(row)
        print(row, flush=True)
    summary = {"all": mean_std([r["all"] for r in per_seed]), "clean": mean_std([r["clean"] for r in per_seed])}
    for c in per_seed[0]:
        if isinstance(per_seed[0][c], dict):
            summary[c] = {k: mean_std([r[c][k] for r in per_seed]) for k in ("with", "without", "gap")}
    gap = summary["shadow"]["gap"]["mean"]
    verdict = "plants a failure" if gap <= -0.10 else "NO real failure planted"
    record(
        "planted_baseline",
        {
            "config": vars(args) | {"torch_threads": torch.get_num_threads()},
            "per_seed": per_seed,
            "summary": summary,
            "shadow_gap_points": 100 * gap,
            "verdict": verdict,
        },
    )
    print(f"shadow slice vs without shadow: {100 * gap:+.1f} points -> {verdict}")


if __name__ == "__main__":
    main()
