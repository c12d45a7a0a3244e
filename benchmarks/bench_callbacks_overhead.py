"""Overhead of the default monitor set on one epoch of the Fashion-MNIST baseline (target: ≤ 5% wall time).

Trains ``ResNetClassifier(in_channels=1)`` for one epoch on Fashion-MNIST (55,000 training images, 5,000
validation images, batch 128, one CPU thread) with and without ``callbacks.default_monitors("layer2", "layer3")``
(ConceptMonitor, ConfusionMonitor, SaliencyMonitor at their default cadence: once per epoch), both with a
TensorBoard logger. Runs are interleaved (plain, monitored, monitored, plain, ...) and seeded alike, so machine
drift hits both; the result is the ratio of median epoch wall times, plus the monitors' own measured time as a
fraction of the training time of the same run (robust to load drift between runs on a shared machine) and
whether the training loss trajectory is identical.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_callbacks_overhead [--repeats 2] [--train-size N]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def one_epoch(monitored: bool, train_size: int | None, root: str) -> dict[str, Any]:
    import pytorch_lightning as pl
    import torch

    from callbacks import default_monitors
    from recipes.baseline import quiet_lightning
    from recipes.data import FashionMNISTDataModule
    from recipes.models import ResNetClassifier

    quiet_lightning()
    torch.set_num_threads(1)
    pl.seed_everything(0, workers=True, verbose=False)
    dm = FashionMNISTDataModule(batch_size=128, train_size=train_size, val_size=5000)
    model = ResNetClassifier(num_classes=10, in_channels=1)
    losses: list[float] = []

    marks: dict[str, tuple[float, float]] = {}

    def mark(name: str) -> None:
        marks.setdefault(name, (time.perf_counter(), time.process_time()))

    class LossTrace(pl.Callback):
        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            mark("train")

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            losses.append(float(outputs["loss"]) if isinstance(outputs, dict) else float(outputs))

        def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
            mark("val")

        def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            mark("monitors")  # LossTrace runs first: the monitors' end-of-epoch work comes after this mark

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            mark("end")

    monitors = default_monitors("layer2", "layer3") if monitored else []
    logger = pl.loggers.TensorBoardLogger(root, name="monitored" if monitored else "plain")
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_epochs=1, logger=logger, callbacks=[LossTrace(), *monitors],
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, deterministic=True,
    )
    start, cpu = time.perf_counter(), time.process_time()
    trainer.fit(model, datamodule=dm)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu

    def span(a: str, b: str) -> dict[str, float]:
        return {"wall_s": round(marks[b][0] - marks[a][0], 3), "cpu_s": round(marks[b][1] - marks[a][1], 3)}

    phases = {"train": span("train", "val"), "validation": span("val", "monitors"),
              "after_validation": span("monitors", "end")}
    monitor_seconds = {type(m).__name__: sum(r["seconds"] for r in m.runs) for m in monitors}
    return {"wall_s": wall, "cpu_s": cpu, "phases": phases, "monitor_s": monitor_seconds, "losses": losses,
            "batches": len(losses), "runs": {type(m).__name__: len(m.runs) for m in monitors}}


def hook_cost_us(batches: int = 20000) -> float:
    """Microseconds per training batch that the default monitors' per-batch hooks cost (nothing due)."""
    from types import SimpleNamespace

    from callbacks import default_monitors

    monitors = default_monitors("layer2", "layer3")
    trainer = SimpleNamespace(sanity_checking=False, fast_dev_run=False, global_step=3, current_epoch=0)
    start = time.perf_counter()
    for i in range(batches):
        for m in monitors:
            m.on_train_batch_end(trainer, None, None, None, i)
            _ = m.state_key  # Lightning's profiler names every hook call by it
    return (time.perf_counter() - start) / batches * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--train-size", type=int, default=None, help="cap the training split (default: all)")
    parser.add_argument("--name", default="callbacks_overhead")
    parser.add_argument("--hooks-only", action="store_true", help="only the per-batch hook cost")
    args = parser.parse_args()

    from benchmarks.harness import record

    if args.hooks_only:
        us = hook_cost_us()
        path = record("callbacks_hook_cost", {"monitors": "default_monitors('layer2', 'layer3')",
                                              "hook_us_per_training_batch": round(us, 2)})
        print(f"{us:.1f} us per training batch -> {path}")
        return

    plain: list[dict[str, Any]] = []
    monitored: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as root:
        for r in range(args.repeats):
            order = (False, True) if r % 2 == 0 else (True, False)
            for flag in order:
                out = one_epoch(flag, args.train_size, root)
                (monitored if flag else plain).append(out)
                print(f"repeat {r} {'monitored' if flag else 'plain'}: {out['wall_s']:.1f}s {out['monitor_s']}",
                      flush=True)

    def median(xs: list[float]) -> float:
        xs = sorted(xs)
        n = len(xs)
        return xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2

    p_med = median([o["wall_s"] for o in plain])
    m_med = median([o["wall_s"] for o in monitored])
    own = [sum(o["monitor_s"].values()) for o in monitored]
    # The monitors' time against the training time of the same run: load drift on a shared machine hits
    # both parts of one run alike, unlike two different runs.
    same_run = [s / (o["wall_s"] - s) for s, o in zip(own, monitored, strict=True)]
    results = {
        "setup": {
            "data": "Fashion-MNIST train (55,000 unless capped) / val 5,000, batch 128",
            "model": "ResNetClassifier(in_channels=1, width=16, blocks=(1,1,1))",
            "monitors": "default_monitors('layer2', 'layer3'): ConceptMonitor, ConfusionMonitor, SaliencyMonitor",
            "cadence": "every_n_epochs=1 (default); one run each per epoch",
            "threads": 1,
            "train_size": args.train_size,
            "repeats": args.repeats,
        },
        "plain_epoch_s": [round(o["wall_s"], 3) for o in plain],
        "plain_epoch_cpu_s": [round(o["cpu_s"], 3) for o in plain],
        "monitored_epoch_cpu_s": [round(o["cpu_s"], 3) for o in monitored],
        "cpu_overhead_ratio": round(median([o["cpu_s"] for o in monitored]) / median([o["cpu_s"] for o in plain]) - 1,
                                    4),
        "plain_phases": [o["phases"] for o in plain],
        "monitored_phases": [o["phases"] for o in monitored],
        "monitored_epoch_s": [round(o["wall_s"], 3) for o in monitored],
        "median_plain_s": round(p_med, 3),
        "median_monitored_s": round(m_med, 3),
        "wall_overhead_ratio": round(m_med / p_med - 1, 4),
        "monitor_own_s": [{k: round(v, 3) for k, v in o["monitor_s"].items()} for o in monitored],
        "monitor_own_fraction_of_plain_epoch": round(median(own) / p_med, 4),
        "monitor_overhead_same_run": [round(x, 4) for x in same_run],
        "median_monitor_overhead_same_run": round(median(same_run), 4),
        "target": "<= 0.05",
        "meets_target_wall": m_med / p_med - 1 <= 0.05,
        "meets_target_own_time": median(same_run) <= 0.05,
        "identical_loss_trajectory": all(o["losses"] == plain[0]["losses"] for o in plain + monitored),
        "batches_per_epoch": plain[0]["batches"],
    }
    path = record(args.name, results)
    print(f"wall overhead {results['wall_overhead_ratio']:+.2%}, monitors' own time "
          f"{results['median_monitor_overhead_same_run']:.2%} of the same run's training; identical losses: "
          f"{results['identical_loss_trajectory']} -> {path}")


if __name__ == "__main__":
    main()
