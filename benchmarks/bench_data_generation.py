"""How fast do the built-in datasets come into being? Images per second, generated and served from the cache.

Run: ``python -m benchmarks.bench_data_generation``
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from benchmarks.harness import record
from recipes.data import PlantedConceptsDataset, RoadScenesDataset
from recipes.data.render import texture_bank


def rate(make, cache_dir: str | None, n: int) -> float:
    start = time.perf_counter()
    make(cache_dir).materialize()
    return n / (time.perf_counter() - start)


def main() -> None:
    # No options, but `--help` must not run (and record) the benchmark.
    argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0]).parse_args()
    texture_bank()  # the one-off texture load is not per-image work
    results = {}
    cases = {
        "planted_32px": lambda d: PlantedConceptsDataset("test", size=8192, image_size=32, cache_dir=d),
        "planted_64px": lambda d: PlantedConceptsDataset("test", size=4096, image_size=64, cache_dir=d),
        "roads_64x128": lambda d: RoadScenesDataset("test", size=2048, cache_dir=d),
    }
    sizes = {"planted_32px": 8192, "planted_64px": 4096, "roads_64x128": 2048}
    for name, make in cases.items():
        with tempfile.TemporaryDirectory() as d:
            generated = rate(make, None, sizes[name])
            rate(make, d, sizes[name])  # fills the cache
            cached = rate(make, d, sizes[name])
        results[name] = {"generated_img_per_s": generated, "cached_img_per_s": cached, "images": sizes[name]}
        print(name, results[name], flush=True)
    record("data_generation", {"torch_threads": torch.get_num_threads(), "cases": results})


if __name__ == "__main__":
    main()
