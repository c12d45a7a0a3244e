"""Do the unannotated folders plant real failures? The baseline's accuracy on clean vs failure images (issue 16).

For each dataset × failure kind × seed, writes (or reuses) the folder of :mod:`benchmarks.unannotated_data`,
trains the baseline as ``conceptfix fit`` would on it (``ImageFolderDataModule`` → the default
``ResNetClassifier``, the folder recipe's batch size and epochs, seeded, deterministic, on the CPU), and measures
accuracy on the test and probe images with and without the failure. The ground truth is read only here, to score.
The drop must be at least 25 points for every dataset × failure kind, or the loop has no failure worth fixing.

Run: ``python -m benchmarks.bench_unannotated_baseline [--seeds 3] [--datasets planted fashion]
[--failures shadow blur]``
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from benchmarks.harness import mean_std, record
from benchmarks.unannotated_data import (
    DATASETS,
    DEFAULT_SIZES,
    FAILURES,
    SPLITS,
    UnannotatedFolder,
    unannotated_folder,
)

# How a user reads each folder: the planted images as they are (32 px RGB), Fashion-MNIST as 28 px grayscale.
READ_AS: dict[str, dict[str, int]] = {"planted": {"image_size": 32, "channels": 3},
                                      "fashion": {"image_size": 28, "channels": 1}}
TARGET_DROP_POINTS = 25.0


def split_accuracy(model: torch.nn.Module, folder: UnannotatedFolder, split: str, image_size: int, channels: int,
                   classes: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy of ``model`` on the clean and the failure images of one split, and the drop in points."""
    from recipes.baseline import predict
    from recipes.data import ImageFolderDataset

    ds = ImageFolderDataset(folder.root / split, "all", image_size, channels)  # type: ignore[arg-type]
    if ds.classes != classes:
        raise ValueError(f"Expected the {split} folder to hold the training classes {list(classes)}, but got "
                         f"{list(ds.classes)}.")
    out = predict(model, ds)
    correct = (out["pred"] == out["target"]).float()
    truth = folder.truth(split)
    failure = torch.tensor([truth[str(f.relative_to(folder.root))] for f in ds.files])
    clean_acc, failure_acc = float(correct[~failure].mean()), float(correct[failure].mean())
    return {"clean": clean_acc, "failure": failure_acc, "drop_points": 100 * (clean_acc - failure_acc),
            "n_clean": int((~failure).sum()), "n_failure": int(failure.sum())}


def run_one(dataset: str, failure: str, seed: int, sizes: dict[str, int], epochs: int, batch_size: int
            ) -> tuple[dict[str, Any], UnannotatedFolder]:
    from recipes.baseline import fit_baseline
    from recipes.data import ImageFolderDataModule

    folder = unannotated_folder(dataset, failure, sizes, seed=seed, progress=True)  # type: ignore[arg-type]
    read = READ_AS[dataset]
    dm = ImageFolderDataModule(str(folder.root), batch_size=batch_size, seed=seed, **read)  # type: ignore[arg-type]
    start = time.perf_counter()
    model = fit_baseline(dm, max_epochs=epochs, seed=seed)
    seconds = time.perf_counter() - start
    classes = dm.dataset("train").classes  # type: ignore[attr-defined]
    row: dict[str, Any] = {"seed": seed, "folder": folder.path.name, "train_seconds": seconds}
    for split in ("test", "probe"):
        row[split] = split_accuracy(model, folder, split, read["image_size"], read["channels"], classes)
    row["train_failure_images"] = sum(folder.truth("train").values())
    print(f"{dataset}/{failure} seed {seed}: test clean {row['test']['clean']:.3f}, failure "
          f"{row['test']['failure']:.3f} (drop {row['test']['drop_points']:.1f} points), {seconds:.0f} s", flush=True)
    return row, folder


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--failures", nargs="+", choices=FAILURES, default=["shadow", "blur"])
    parser.add_argument("--epochs", type=int, default=3, help="as the image-folder recipe trains without --ckpt")
    parser.add_argument("--batch-size", type=int, default=64, help="as the image-folder recipe")
    for split in SPLITS:
        parser.add_argument(f"--{split}-size", type=int, default=DEFAULT_SIZES[split])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the CPU is shared)")
    parser.add_argument("--name", default="unannotated_baseline", help="results/<name>.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = {s: getattr(args, f"{s}_size") for s in SPLITS}
    cases: dict[str, Any] = {}
    for dataset in args.datasets:
        for failure in args.failures:
            runs = [run_one(dataset, failure, seed, sizes, args.epochs, args.batch_size) for seed in range(args.seeds)]
            rows = [row for row, _ in runs]
            options = runs[0][1].options()
            summary = {split: {k: mean_std([r[split][k] for r in rows]) for k in ("clean", "failure", "drop_points")}
                       for split in ("test", "probe")}
            cases[f"{dataset}/{failure}"] = {
                "generator": {k: options[k] for k in ("failure", "params", "cover", "rates", "albumentations")},
                "read_as": READ_AS[dataset],
                "per_seed": rows,
                "summary": summary,
                "meets_target": summary["test"]["drop_points"]["mean"] >= TARGET_DROP_POINTS,
            }
            drop = summary["test"]["drop_points"]
            print(f"== {dataset}/{failure}: test drop {drop['mean']:.1f} ± {drop['std']:.1f} points", flush=True)
    record(args.name, {
        "config": vars(args) | {"torch_threads": torch.get_num_threads(), "sizes": sizes},
        "target_drop_points": TARGET_DROP_POINTS,
        "cases": cases,
        "all_meet_target": all(c["meets_target"] for c in cases.values()),
    })


if __name__ == "__main__":
    main()
