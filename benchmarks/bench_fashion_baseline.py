"""Does the baseline classifier learn real data? ResNetClassifier on Fashion-MNIST for a few epochs.

The foundation's bar: at least 90% test accuracy within a few epochs on this 2-core machine.

Run: ``python -m benchmarks.bench_fashion_baseline [--epochs 3] [--seeds 1]``
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.harness import mean_std, record
from recipes.baseline import fit_baseline, slice_metrics
from recipes.data import FashionMNISTDataModule
from recipes.models import ResNetClassifier


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--width", type=int, default=16)
    args = parser.parse_args()
    rows = []
    for seed in range(args.seeds):
        dm = FashionMNISTDataModule(batch_size=128, seed=seed)
        start = time.perf_counter()
        model = fit_baseline(dm, ResNetClassifier(in_channels=1, width=args.width), max_epochs=args.epochs, seed=seed)
        seconds = time.perf_counter() - start
        acc = slice_metrics(model, dm.dataset("test"))["all"]
        rows.append({"seed": seed, "test_accuracy": acc, "train_seconds": seconds})
        print(rows[-1], flush=True)
    summary = mean_std([r["test_accuracy"] for r in rows])
    record("fashion_baseline", {"config": vars(args) | {"torch_threads": torch.get_num_threads()},
                                "per_seed": rows, "test_accuracy": summary,
                                "meets_90_percent": summary["mean"] >= 0.90})


if __name__ == "__main__":
    main()
