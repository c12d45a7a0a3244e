"""Cost of a saliency-guided joint-batch training step against a plain step (issue 5, "Speed").

Target: one training step with ``JointBatchTraining(JointBatch(SaliencyOcclusion(...)), layer=...)`` takes
<= 2.2x the time of a plain step on the same ``B`` images (the doubled batch costs 2x; the saliency may add
<= 10%). Because a ``2B`` step need not cost exactly 2x a ``B`` step on a CPU, every case is also timed
against a plain step on the doubled batch (the same ``B`` images twice, ``2B`` rows, one pass): that ratio is
the cost of the saliency and the occlusion alone. For context the joint Cutout step (``2B`` rows, no
saliency) is timed too.

A step is what Lightning's automatic optimisation does: ``training_step`` (through the installed wrapper),
``backward`` of the returned loss, ``optimizer.step()``, ``zero_grad()``. The model is the project's
``ResNetClassifier`` (width 16, blocks (1, 1, 1), 3 x 32 x 32 inputs, batch 64) in train mode; each saliency
layer is measured. Candidate and baseline are timed interleaved in one process with one thread
(``benchmarks.harness.compare``), so the ratio is robust to the shared machine's drifting load.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_augment_step`` (about two minutes).
"""

from __future__ import annotations

import argparse
import os
import warnings
from collections.abc import Callable
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from augment import Cutout, JointBatch, SaliencyOcclusion  # noqa: E402
from benchmarks.harness import compare, record  # noqa: E402
from callbacks.joint_batch import JointBatchTraining, augment_batch  # noqa: E402
from recipes.models import ResNetClassifier  # noqa: E402


def _model(seed: int) -> ResNetClassifier:
    torch.manual_seed(seed)
    m = ResNetClassifier(num_classes=10, in_channels=3, width=16, blocks=(1, 1, 1))
    m.train()
    return m


def _stepper(model: ResNetClassifier, batch: Any, grow: Callable[[Any], Any] | None = None) -> Callable[[], None]:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        b = grow(batch) if grow is not None else batch
        loss = model.training_step(b, 0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def run(batch_size: int, size: int, repeat: int, layers: list[str]) -> dict[str, Any]:
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(batch_size, 3, size, size, generator=g),
             "target": torch.randint(0, 10, (batch_size,), generator=g)}
    plain = _stepper(_model(0), batch)
    results: dict[str, Any] = {"batch_size": batch_size, "image_size": size, "repeat": repeat, "threads": 1,
                               "model": "ResNetClassifier(width=16, blocks=(1, 1, 1))", "cases": {}}
    joint_cutout = JointBatch(Cutout(size=size // 4, seed=0))
    cases: dict[str, Callable[[], None]] = {
        "joint Cutout (2B rows, one pass)": _stepper(_model(0), batch, lambda b: augment_batch(b, joint_cutout)),
    }
    for layer in layers:
        m = _model(0)
        JointBatchTraining(JointBatch(SaliencyOcclusion(size=size // 4, jitter=2, seed=0)), layer=layer).install(m)
        cases[f"joint saliency occlusion, NormGrad at {layer}"] = _stepper(m, batch)
    doubled = _stepper(_model(0), {k: torch.cat([v, v]) for k, v in batch.items()})
    results["doubled_vs_plain"] = compare(doubled, plain, repeat=repeat, warmup=2)
    print(f"{'plain step on the doubled batch (2B rows)':55s} {results['doubled_vs_plain']['ratio']:.2f}x plain",
          flush=True)
    for name, fn in cases.items():
        r = {"vs_plain": compare(fn, plain, repeat=repeat, warmup=2),
             "vs_doubled_batch": compare(fn, doubled, repeat=repeat, warmup=2)}
        r["target_met (<= 2.2x plain)"] = bool(r["vs_plain"]["ratio"] <= 2.2)
        results["cases"][name] = r
        print(f"{name:55s} {r['vs_plain']['ratio']:.2f}x plain, {r['vs_doubled_batch']['ratio']:.2f}x the doubled "
              "batch", flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=25)
    ap.add_argument("--layers", nargs="+", default=["stem", "layer1", "layer2", "layer3"])
    args = ap.parse_args()
    warnings.filterwarnings("ignore")  # self.log without a Trainer warns once per call
    results = run(args.batch_size, args.size, args.repeat, args.layers)
    print("wrote", record("augment_step", results))


if __name__ == "__main__":
    main()
