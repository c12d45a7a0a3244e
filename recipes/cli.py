"""The ``conceptfix`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def format_slice_table(metrics: dict[str, Any], concept_names: Sequence[str]) -> str:
    """A plain-text table of accuracy with and without each concept (classification slice metrics)."""
    rows = [f"{'slice':<12}{'with':>8}{'without':>9}{'gap':>8}{'n_with':>8}"]
    for name in concept_names:
        m = metrics[name]
        rows.append(
            f"{name:<12}{100 * m['with']:>7.1f}%{100 * m['without']:>8.1f}%"
            f"{100 * (m['with'] - m['without']):>+7.1f}{m['n_with']:>8d}"
        )
    rows.append(f"{'clean':<12}{100 * metrics['clean']:>7.1f}%")
    rows.append(f"{'all':<12}{100 * metrics['all']:>7.1f}%   (n={metrics['n']})")
    return "\n".join(rows)


def run_demo(args: argparse.Namespace) -> int:
    import torch

    from recipes.baseline import fit_baseline, slice_metrics
    from recipes.data import PlantedConceptsDataModule
    from recipes.models import ResNetClassifier

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    dm = PlantedConceptsDataModule(train_size=args.train_size, val_size=500, test_size=args.test_size, seed=args.seed)
    print(f"conceptfix demo: planted-concept data ({args.train_size} training images; shadows in "
          f"{100 * dm.dataset('train').table[0, 0]:.0f}% of training and "
          f"{100 * dm.dataset('test').table[0, 0]:.0f}% of test images)", flush=True)
    start = time.time()
    model = fit_baseline(dm, ResNetClassifier(), max_epochs=args.epochs, seed=args.seed, progress=sys.stdout.isatty())
    print(f"trained the baseline for {args.epochs} epochs in {time.time() - start:.0f} s", flush=True)
    metrics = slice_metrics(model, dm.dataset("test"))
    print("\nTest accuracy per planted concept:")
    print(format_slice_table(metrics, dm.concept_names))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="conceptfix",
        description="Find the visual concepts a model fails on while it trains, and fix them with augmentation.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    demo = sub.add_parser("demo", help="train the baseline on built-in planted-concept data and report per concept")
    demo.add_argument("--epochs", type=int, default=3, help="training epochs (default: %(default)s)")
    demo.add_argument("--train-size", type=int, default=6000, help="training images (default: %(default)s)")
    demo.add_argument("--test-size", type=int, default=2000, help="test images (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="seeds data and training (default: %(default)s)")
    demo.set_defaults(func=run_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
