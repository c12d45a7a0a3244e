"""Per-image speed and peak memory of every catalogue transform of ours against its albumentations counterpart.

Issue 16: every transform of the failure catalogue (:mod:`augment.catalog`) that has an albumentations
counterpart should process an image at least 2x as fast as that counterpart, at 64 and 224 px, batch 64, one
thread. Each pair renders at the same strength (0.5 by default; the catalogue maps one strength onto both).

Both sides start from what their pipeline holds: a float32 ``(B, 3, H, W)`` tensor for ours (the catalogue
entry as :func:`augment.catalog.render` builds it: a soft local region for the corruptions, the whole image
reachable for shadows and occluders), a list of ``(H, W, 3)`` arrays for albumentations, per sample, as
uint8 (its fastest dtype) and as float32 (the same data as ours). Every ratio is timed interleaved with its
baseline (``benchmarks.harness.compare``): each timed call loops enough times to last about 50 ms, the median
of ``--repeat`` calls counts. Ours also runs once with ``extent="image"`` (the whole image corrupted: the
counterpart's own extent) for the corruptions, timed interleaved against the same uint8 baseline.

Peak memory is the growth of the process's peak resident set over one call, from a freshly reset high-water
mark (``/proc/self/clear_refs``), so it counts everything the call allocates, the output batch included.

Run: ``OMP_NUM_THREADS=1 python -m benchmarks.bench_catalog_speed`` (about 15 minutes on an idle machine).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from augment.catalog import PerSampleAlbumentations, catalog, entry  # noqa: E402
from benchmarks.harness import compare, looped, record  # noqa: E402


def _interleaved(ours: Callable[[], Any], theirs: Callable[[], Any], repeat: int) -> tuple[float, float]:
    """Seconds per call of ``ours`` and ``theirs``, medians of calls timed alternately."""
    a, na = looped(ours)
    b, nb = looped(theirs)
    cmp = compare(a, b, repeat=repeat, warmup=1)
    return cmp["candidate_s"] / na, cmp["baseline_s"] / nb


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"Expected {field} in /proc/self/status.")


def peak_growth_mb(fn: Callable[[], Any]) -> float | None:
    """How far one call of ``fn`` lifts the peak resident set above the resident set before it, in MiB."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _status_kb("VmRSS")
    out = fn()
    growth = (_status_kb("VmHWM") - before) / 1024
    del out
    return growth


def _albumentations_transform(name: str, strength: float, size: int) -> Any:
    module = entry(name).make(strength, size, size)
    if not isinstance(module, PerSampleAlbumentations):
        raise RuntimeError(f"Expected {name} to wrap an albumentations transform.")
    t = module.transform
    t.set_random_seed(0)
    return t


def _measure(size: int, batch: int, strength: float, repeat: int, names: list[str] | None) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, size, size, generator=g)
    u8 = [(xi.permute(1, 2, 0).numpy() * 255).astype(np.uint8) for xi in x]
    f32 = [np.ascontiguousarray(xi.permute(1, 2, 0).numpy()) for xi in x]
    out: dict[str, Any] = {}
    for e in catalog(["conceptfix"]):
        if e.counterpart is None or (names and e.name not in names):
            continue
        ours = e.make(strength, size, size)
        ours.seed = 0  # type: ignore[assignment]
        theirs = _albumentations_transform(e.counterpart, strength, size)

        def run_ours(m: Any = ours) -> Any:
            return m(x)

        def run_u8(t: Any = theirs) -> Any:
            return [t(image=i)["image"] for i in u8]

        def run_f32(t: Any = theirs) -> Any:
            return [t(image=i)["image"] for i in f32]

        ours_s, u8_s = _interleaved(run_ours, run_u8, repeat)
        ours_s2, f32_s = _interleaved(run_ours, run_f32, repeat)
        row: dict[str, Any] = {
            "counterpart": e.counterpart,
            "ours_ms_per_image": 1e3 * ours_s / batch,
            "albumentations_uint8_ms_per_image": 1e3 * u8_s / batch,
            "albumentations_float32_ms_per_image": 1e3 * f32_s / batch,
            "speedup_vs_uint8": u8_s / ours_s,
            "speedup_vs_float32": f32_s / ours_s2,
            "peak_mb_ours": peak_growth_mb(run_ours),
            "peak_mb_albumentations_uint8": peak_growth_mb(run_u8),
            "peak_mb_albumentations_float32": peak_growth_mb(run_f32),
        }
        if hasattr(ours, "extent"):
            whole = type(ours)(**{**_config(ours), "extent": "image"})

            def run_whole(m: Any = whole) -> Any:
                return m(x)

            whole_s, u8_s2 = _interleaved(run_whole, run_u8, repeat)
            row["ours_whole_image_ms_per_image"] = 1e3 * whole_s / batch
            row["speedup_whole_image_vs_uint8"] = u8_s2 / whole_s
        row["target_met (>= 2x vs uint8 and float32)"] = bool(row["speedup_vs_uint8"] >= 2.0
                                                               and row["speedup_vs_float32"] >= 2.0)
        out[e.name] = row
        print(f"{size:4d}px B={batch}  {e.name:15s} vs {e.counterpart:42s} "
              f"{row['ours_ms_per_image']:7.3f} ms/img  x{row['speedup_vs_uint8']:5.2f} (uint8) "
              f"x{row['speedup_vs_float32']:5.2f} (float32)  peak {row['peak_mb_ours']:.0f} MiB "
              f"vs {row['peak_mb_albumentations_uint8']:.1f} / {row['peak_mb_albumentations_float32']:.1f}",
              flush=True)
    return out


def _config(module: Any) -> dict[str, Any]:
    import inspect

    return {k: getattr(module, k) for k in inspect.signature(type(module)).parameters}


def run(sizes: list[int], batch: int, strength: float, repeat: int, names: list[str] | None) -> dict[str, Any]:
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:
        pass
    results: dict[str, Any] = {"batch": batch, "strength": strength, "repeat": repeat, "threads": 1, "runs": {}}
    for size in sizes:
        results["runs"][f"{size}px_B{batch}"] = _measure(size, batch, strength, repeat, names)
    met = [r["target_met (>= 2x vs uint8 and float32)"] for run in results["runs"].values() for r in run.values()]
    results["targets_met"] = f"{sum(met)} of {len(met)}"
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 224], help="image sides in pixels")
    ap.add_argument("--batch", type=int, default=64, help="images per batch")
    ap.add_argument("--strength", type=float, default=0.5, help="catalogue strength in [0, 1] for both sides")
    ap.add_argument("--repeat", type=int, default=7, help="interleaved timed calls per comparison")
    ap.add_argument("--only", nargs="+", default=None, help="catalogue entries to measure (default: all)")
    ap.add_argument("--name", default="catalog_speed", help="results file name under benchmarks/results/")
    args = ap.parse_args()
    results = run(args.sizes, args.batch, args.strength, args.repeat, args.only)
    results["albumentations"] = A.__version__
    print("wrote", record(args.name, results))


if __name__ == "__main__":
    main()
