"""Does occlusion help beyond the doubled batch? Fashion-MNIST, small CNN, equal compute (issue 5, "Effect").

Methods (Fong & Vedaldi, thesis appendix C.1), every one at the same compute — ``2B`` rows per step, the same
number of steps, the same model, optimiser and schedule:

- ``baseline``: ``2B`` distinct images per step (so it also sees twice the data);
- ``joint_cutout``: ``B`` images, ``(X, Cutout(X))`` (N squares of side S);
- ``joint_hide_and_seek``: ``B`` images, ``(X, HideAndSeek(X))`` (G x G grid, cells kept w.p. p_keep_patch);
- ``joint_saliency``: ``B`` images, ``(X, SaliencyOcclusion(X))`` with NormGrad at ``block2`` from the clean
  half's own backward, through ``callbacks.JointBatchTraining`` (the real integration code);
- ``batch_augment``: ``B`` images, two independently augmented clean copies (C.1's strongest control);
- ``joint_shadow`` (extra): ``B`` images, ``(X, SyntheticShadow(X))`` placed on the object.

Standard augmentation (pad 2 + random 28 crop, horizontal flip) happens before duplication for the joint
methods and per copy for batch augmentation. Test sets (5000 official test images): clean; occluded (Cutout
with 2 squares of side 10, a size no method trains with, fixed seed); shadowed (``SyntheticShadow`` line
shadows across the object's bounding box, intensity 0.5-0.8, fixed seed). Mean ± std over seeds of the
accuracy on each. Everything runs on one thread; a training subset keeps the whole run under 15 minutes.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_augment_effect`` (``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from augment import (  # noqa: E402
    BatchAugment,
    Cutout,
    HideAndSeek,
    JointBatch,
    RandomCropFlip,
    SaliencyOcclusion,
    SyntheticShadow,
)
from benchmarks.harness import mean_std, record  # noqa: E402
from callbacks.joint_batch import JointBatchTraining  # noqa: E402
from recipes.data.fashion import load_fashion_mnist  # noqa: E402

MEAN, STD = 0.2860, 0.3530
METHODS = ("baseline", "joint_cutout", "joint_hide_and_seek", "joint_saliency", "batch_augment", "joint_shadow")


def _normalise(x: Tensor) -> Tensor:
    return (x - MEAN) / STD


class SmallCNN(nn.Module):
    """Three conv blocks (16-32-64 channels), global average pooling, a linear classifier."""

    def __init__(self) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())

        self.block1 = block(1, 16)
        self.block2 = block(16, 32)
        self.block3 = block(32, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(self.block1(x), 2)
        x = F.max_pool2d(self.block2(x), 2)
        return self.fc(self.block3(x).mean((2, 3)))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch


def _data(n_train: int, n_test: int, seed: int = 0) -> dict[str, Tensor]:
    xtr, ytr = load_fashion_mnist(split="train")
    xte, yte = load_fashion_mnist(split="test")
    g = torch.Generator().manual_seed(seed)
    tr = torch.randperm(len(ytr), generator=g)[:n_train]
    te = torch.randperm(len(yte), generator=g)[:n_test]
    raw_test = xte[te].float().div(255).unsqueeze(1)
    test_objects = xte[te] > 0
    shadow = SyntheticShadow(p=1.0, intensity=(0.5, 0.8), softness=(0.0, 0.05), seed=1234)
    shadowed = shadow(raw_test, object_masks=test_objects)
    clean = _normalise(raw_test)
    occluded = Cutout(count=2, size=10, seed=4321)(clean)
    return {
        "x_train": _normalise(xtr[tr].float().div(255).unsqueeze(1)),
        "y_train": ytr[tr],
        "objects_train": xtr[tr] > 0,
        "y_test": yte[te],
        "clean": clean,
        "occluded": occluded,
        "shadowed": _normalise(shadowed),
    }


@torch.no_grad()
def _accuracy(model: nn.Module, x: Tensor, y: Tensor, chunk: int = 1000) -> float:
    model.eval()
    correct = sum(int((model(x[i:i + chunk]).argmax(1) == y[i:i + chunk]).sum()) for i in range(0, len(y), chunk))
    model.train()
    return correct / len(y)


def _train(method: str, data: dict[str, Tensor], seed: int, steps: int, batch: int, lr: float) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(10_000 + seed)
    crop = RandomCropFlip(padding=2, seed=seed)
    black = -MEAN / STD  # the normalised black the shadows darken towards
    joint: dict[str, Any] = {
        "joint_cutout": JointBatch(Cutout(count=2, size=8, seed=seed), augment=crop),
        "joint_hide_and_seek": JointBatch(HideAndSeek(grid=4, p_keep_patch=0.75, seed=seed), augment=crop),
        "batch_augment": BatchAugment(crop, copies=2),
        "joint_shadow": JointBatch(SyntheticShadow(p=1.0, intensity=(0.3, 0.8), floor=black, seed=seed),
                                   augment=crop),
    }
    if method == "joint_saliency":
        JointBatchTraining(JointBatch(SaliencyOcclusion(count=2, size=8, jitter=2, seed=seed)),
                           layer="block2").install(model)
    n = len(data["y_train"])
    rows = 2 * batch if method == "baseline" else batch
    order = torch.randperm(n, generator=g)
    pos = 0
    model.train()
    for _ in range(steps):
        if pos + rows > n:
            order, pos = torch.randperm(n, generator=g), 0
        idx = order[pos:pos + rows]
        pos += rows
        x, y = data["x_train"][idx], data["y_train"][idx]
        if method in ("baseline", "joint_saliency"):
            x, = crop(x)
            step_batch: Any = (x, y)
        elif method == "joint_shadow":
            out = joint[method](x, y, object_masks=data["objects_train"][idx])
            step_batch = (out.images, out.targets)
        else:
            out = joint[method](x, y)
            step_batch = (out.images, out.targets)
        loss = model.training_step(step_batch, 0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
    return model


def run(seeds: list[int], steps: int, batch: int, n_train: int, n_test: int, lr: float,
        methods: list[str]) -> dict[str, Any]:
    torch.set_num_threads(1)
    data = _data(n_train, n_test)
    per_run: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    t_start = time.perf_counter()
    for seed in seeds:
        for method in methods:
            t0 = time.perf_counter()
            model = _train(method, data, seed, steps, batch, lr)
            accs = {split: _accuracy(model, data[split], data["y_test"]) for split in ("clean", "occluded", "shadowed")}
            accs["seconds"] = time.perf_counter() - t0
            per_run[method].append(accs)
            print(f"seed {seed} {method:20s} clean {accs['clean']:.4f} occluded {accs['occluded']:.4f} "
                  f"shadowed {accs['shadowed']:.4f} ({accs['seconds']:.0f}s)", flush=True)
    summary = {m: {split: mean_std([r[split] for r in runs]) for split in ("clean", "occluded", "shadowed")}
               for m, runs in per_run.items()}
    return {
        "setup": {"seeds": seeds, "steps": steps, "rows_per_step": 2 * batch, "batch_B": batch, "n_train": n_train,
                  "n_test": n_test, "lr": lr, "optimizer": "SGD(momentum=0.9, nesterov, wd=5e-4), one-cycle",
                  "model": "SmallCNN 16-32-64, BN, GAP", "threads": 1,
                  "occluders": {"joint_cutout": "Cutout(count=2, size=8)",
                                "joint_hide_and_seek": "HideAndSeek(grid=4, p_keep_patch=0.75)",
                                "joint_saliency": "SaliencyOcclusion(count=2, size=8, jitter=2), NormGrad at block2",
                                "batch_augment": "2 copies, independent pad-2 crop + flip",
                                "joint_shadow": "SyntheticShadow(line, intensity 0.3-0.8) across the object box"},
                  "test_sets": {"occluded": "Cutout(count=2, size=10), seed 4321",
                                "shadowed": "SyntheticShadow(line, intensity 0.5-0.8) across the object box, "
                                            "seed 1234"}},
        "summary": summary,
        "runs": per_run,
        "total_seconds": time.perf_counter() - t_start,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=350)
    ap.add_argument("--batch", type=int, default=32, help="B: source images per step (every method runs 2B rows)")
    ap.add_argument("--n-train", type=int, default=12_000)
    ap.add_argument("--n-test", type=int, default=5_000)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--quick", action="store_true", help="smoke run: one seed, 30 steps, no result file")
    ap.add_argument("--name", default="augment_effect", help="result file name under benchmarks/results/")
    args = ap.parse_args()
    if args.quick:
        res = run([0], 30, args.batch, 2000, 1000, args.lr, args.methods)
        print({m: {k: round(v["mean"], 3) for k, v in s.items()} for m, s in res["summary"].items()})
        return
    res = run(args.seeds, args.steps, args.batch, args.n_train, args.n_test, args.lr, args.methods)
    for m, s in res["summary"].items():
        print(f"{m:20s} " + "  ".join(f"{k} {v['mean']:.4f}±{v['std']:.4f}" for k, v in s.items()))
    print("wrote", record(args.name, res))


if __name__ == "__main__":
    main()
