"""The common benchmark harness: timing as ratios within one process, results as JSON with machine facts.

Machines here are shared and noisy, so a benchmark never states a bare number of seconds as its result:
it times the candidate and its baseline in the same process, interleaved, and records their ratio.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine_info() -> dict[str, Any]:
    """CPU, memory, Python and library versions of the machine running the benchmark."""
    import numpy
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": numpy.__version__,
    }
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_kb"] = int(f.readline().split()[1])
        with open("/proc/cpuinfo") as f:
            models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu_model"] = models[0] if models else ""
        info["load_avg"] = os.getloadavg()
    except OSError:
        pass
    try:
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=RESULTS.parent, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def timeit(fn: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds over ``repeat`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]


def looped(fn: Callable[[], Any], seconds: float = 0.05) -> tuple[Callable[[], Any], int]:
    """``fn`` repeated enough times per call to last about ``seconds``, and that count: per-image operations
    too short to time one by one are timed in loops of equal length."""
    t0 = time.perf_counter()
    fn()
    n = max(1, int(seconds / max(time.perf_counter() - t0, 1e-6)))

    def many() -> None:
        for _ in range(n):
            fn()

    return many, n


def compare(candidate: Callable[[], Any], baseline: Callable[[], Any], repeat: int = 5, warmup: int = 1) -> dict:
    """Time ``candidate`` and ``baseline`` interleaved (so drifting machine load hits both alike).

    Returns:
        ``{"candidate_s": median, "baseline_s": median, "ratio": candidate / baseline}``
    """
    for _ in range(warmup):
        candidate()
        baseline()
    c, b = [], []
    for _ in range(repeat):
        t = time.perf_counter()
        candidate()
        c.append(time.perf_counter() - t)
        t = time.perf_counter()
        baseline()
        b.append(time.perf_counter() - t)
    c.sort()
    b.sort()
    cm, bm = c[len(c) // 2], b[len(b) // 2]
    return {"candidate_s": cm, "baseline_s": bm, "ratio": cm / bm}


def record(name: str, results: dict[str, Any], results_dir: Path | None = None) -> Path:
    """Write ``results`` with machine facts and a UTC timestamp to ``results/<name>.json`` (atomically)."""
    out_dir = results_dir or RESULTS
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "results": results,
    }
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)
    return path


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"Expected JSON-serialisable results, but got {type(x).__name__}.")


def mean_std(values: list[float]) -> dict[str, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    n = len(values)
    m = sum(values) / n
    sd = (sum((v - m) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0
    return {"mean": m, "std": sd, "n": n}
