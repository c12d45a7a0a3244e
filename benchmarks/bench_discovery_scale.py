"""Discovery time and peak memory for 1k, 10k and 100k patch embeddings of 256 dimensions.

Each size runs in its own subprocess so its peak resident memory (``ru_maxrss``) is its own. The embeddings
are a seeded mixture of 10 Gaussian clusters passed through a ReLU (like post-ReLU conv activations), so both
k-means and NMF apply. The full path is timed: near-duplicate removal, k chosen by silhouette in 2..12 on a
subsample, the final (mini-batch) fit on all rows, outlier handling and coherence.

Run: ``OMP_NUM_THREADS=1 python benchmarks/bench_discovery_scale.py`` (target: 100k × 256 in ≤ 60 s and ≤ 2 GiB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.harness import record  # noqa: E402


def mixture(n: int, dim: int, clusters: int = 10, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (clusters, dim)).astype(np.float32) * 2
    labels = rng.integers(0, clusters, n)
    x = centres[labels] + rng.normal(0.0, 1.0, (n, dim)).astype(np.float32)
    return np.maximum(x, 0.0), labels


def run_one(n: int, dim: int, method: str, seed: int) -> dict:
    import torch

    torch.set_num_threads(1)
    import sklearn.cluster  # noqa: F401 - imported before the clock starts: import time is not discovery time
    import sklearn.decomposition  # noqa: F401
    import sklearn.metrics  # noqa: F401

    from debugger.discovery import ConceptDiscovery

    x, labels = mixture(n, dim, seed=seed)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    t = time.perf_counter()
    d = ConceptDiscovery(method=method, k_range=(2, 12), seed=seed).fit(x)
    elapsed = time.perf_counter() - t
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # purity: fraction of each concept's members that share the majority planted cluster
    import numpy as np

    pure = [np.bincount(labels[c.members.numpy()]).max() / len(c.members) for c in d.concepts_]
    return {
        "n": n,
        "dim": dim,
        "method": method,
        "seconds": elapsed,
        "peak_rss_mib": peak,
        "rss_before_fit_mib": rss_before,
        "k": d.k_,
        "n_concepts": d.n_concepts_,
        "mean_purity": float(np.mean(pure)) if pure else float("nan"),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--methods", nargs="+", default=["kmeans", "nmf"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(run_one(args.sizes[0], args.dim, args.methods[0], args.seed)))
        return
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    rows = []
    for method in args.methods:
        for n in args.sizes:
            cmd = [sys.executable, __file__, "--one", "--sizes", str(n), "--dim", str(args.dim), "--methods", method,
                   "--seed", str(args.seed)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"{method:7s} n={n:>7d}  {row['seconds']:7.2f} s  peak {row['peak_rss_mib']:7.1f} MiB  "
                  f"k={row['k']} kept={row['n_concepts']} purity={row['mean_purity']:.3f}", flush=True)
    growth = {}
    for method in args.methods:
        sub = [r for r in rows if r["method"] == method]
        for a, b in zip(sub, sub[1:], strict=False):
            growth[f"{method}:{a['n']}->{b['n']}"] = {
                "size_ratio": b["n"] / a["n"],
                "time_ratio": b["seconds"] / a["seconds"],
            }
    big = [r for r in rows if r["n"] >= 100000 and r["dim"] >= 256]
    verdict = {
        f"{r['method']}_100k_within_60s_2GiB": bool(r["seconds"] <= 60 and r["peak_rss_mib"] <= 2048) for r in big
    }
    path = record("discovery_scale", {"rows": rows, "growth": growth, "targets": verdict, "threads": 1})
    print(json.dumps({"growth": growth, "targets": verdict}, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
