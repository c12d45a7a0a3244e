"""Concept-conditioned confusion: the batched counting against a per-concept loop over sklearn, same process.

Cases: classification (10k probe images, 50 concepts, 10 classes, image-level slices) and segmentation
(100 images of 64 x 128 pixels, 16 concepts, 3 classes, pixel-level slices from top-50 patch masks). Each
case checks that both give identical counts, then times them; the ratio is what to read.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_confusion.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import record  # noqa: E402


def _best_of(fn: Any, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        clock = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - clock)
    return best


def main() -> None:
    # No options, but `--help` must not run (and record) the benchmark.
    argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0]).parse_args()
    import torch
    from sklearn.metrics import confusion_matrix

    from debugger.confusion import concept_confusion, concept_membership

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    results: dict[str, Any] = {}

    n, c, k, p = 10_000, 50, 10, 120_000
    preds, target = torch.randint(0, k, (n,), generator=gen), torch.randint(0, k, (n,), generator=gen)
    membership = concept_membership(torch.rand(c, p, generator=gen), torch.randint(0, n, (p,), generator=gen), n, 50)

    def loop_cls() -> torch.Tensor:
        return torch.stack([
            torch.from_numpy(confusion_matrix(target[m].numpy(), preds[m].numpy(), labels=list(range(k))))
            for m in membership
        ])

    assert torch.equal(loop_cls(), concept_confusion(preds, target, membership, k))  # noqa: S101 - benchmark sanity
    fast = _best_of(lambda: concept_confusion(preds, target, membership, k), 5)
    slow = _best_of(loop_cls, 3)
    results["classification"] = {"images": n, "concepts": c, "classes": k, "batched_s": fast, "sklearn_loop_s": slow,
                                 "speedup": slow / fast}

    n, c, k, p, h, w = 100, 16, 3, 2000, 64, 128
    preds = torch.randint(0, k, (n, h, w), generator=gen)
    target = torch.randint(0, k, (n, h, w), generator=gen)
    masks = torch.zeros(p, h, w, dtype=torch.bool)
    ys, xs = torch.randint(0, h - 16, (p,), generator=gen), torch.randint(0, w - 16, (p,), generator=gen)
    for i in range(p):
        masks[i, ys[i] : ys[i] + 16, xs[i] : xs[i] + 16] = True
    scores, image_index = torch.rand(c, p, generator=gen), torch.randint(0, n, (p,), generator=gen)
    region = concept_membership(scores, image_index, n, 50, masks=masks)

    def loop_seg() -> torch.Tensor:
        return torch.stack([
            torch.from_numpy(confusion_matrix(target[m].numpy(), preds[m].numpy(), labels=list(range(k))))
            for m in region
        ])

    assert torch.equal(loop_seg(), concept_confusion(preds, target, region, k))  # noqa: S101 - benchmark sanity
    fast = _best_of(lambda: concept_confusion(preds, target, region, k), 5)
    slow = _best_of(loop_seg, 3)
    region_s = _best_of(lambda: concept_membership(scores, image_index, n, 50, masks=masks), 3)
    results["segmentation"] = {"images": n, "size": [h, w], "concepts": c, "classes": k,
                               "counted_pixels": int(region.sum()), "batched_s": fast, "sklearn_loop_s": slow,
                               "speedup": slow / fast, "membership_from_masks_s": region_s}
    print(json.dumps(results, indent=2))
    print(f"recorded {record('concept_confusion_speed', results)}")


if __name__ == "__main__":
    main()
