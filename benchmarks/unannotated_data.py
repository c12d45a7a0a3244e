"""Users' own image folders with failures this project did not make: the data of ``bench_unannotated`` (issue 16).

A folder holds clean images of a built-in dataset (``planted``: :class:`recipes.data.PlantedConceptsDataset` with
every planted concept switched off; ``fashion``: Fashion-MNIST) and, in some of them, a failure drawn by
albumentations, a generator this project did not write:

- ``shadow``: :class:`albumentations.RandomShadow` (hard-edged dark polygons anywhere in the image);
- ``blur``: :class:`albumentations.MotionBlur` over a random rectangle of the image;
- ``noise``: :class:`albumentations.GaussNoise` over a random rectangle of the image.

The failure is rare where the model learns (3% of ``train`` and ``val``) and common where it is deployed (50% of
``test`` and ``probe``), the story of DESIGN.md. The layout is the one :class:`recipes.data.ImageFolderDataModule`
reads, with the deployment probe beside it::

    <entry>/images/{train,val,test,probe}/<class>/<index>.png   what the product sees: no masks, no concept names
    <entry>/truth/<split>.json                                   which files carry the failure (scoring only)
    <entry>/truth/footprints.npz                                 where the generator acted, per failure file
    <entry>/generator.json                                       every option the pixels depend on

File names are indices that say nothing about the failure. The ground truth lives outside ``images/`` so that
nothing reading the image folder can see it; only scorers read it (:meth:`UnannotatedFolder.truth`).

Randomness: which images carry the failure and the rectangles come from a ``numpy.random.Generator``, the
failures from albumentations' own generators seeded through ``Compose(seed=...)``; the global numpy RNG is never
used, so a folder is a pure function of its options.

Run: ``python -m benchmarks.unannotated_data --dataset planted --failure shadow`` (prints the folder).
"""

from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

Dataset = Literal["planted", "fashion"]
Failure = Literal["shadow", "blur", "noise"]
DATASETS: tuple[str, ...] = ("planted", "fashion")
FAILURES: tuple[str, ...] = ("shadow", "blur", "noise")
SPLITS: tuple[str, ...] = ("train", "val", "test", "probe")

# Sized like the built-in recipes (configs/planted_shadows.yaml, fashion_shadows_occluders.yaml).
DEFAULT_SIZES: dict[str, int] = {"train": 6000, "val": 500, "test": 2000, "probe": 500}
DEFAULT_RATES: dict[str, float] = {"train": 0.03, "val": 0.03, "test": 0.5, "probe": 0.5}

# Keyword arguments of each albumentations transform (p is always 1: which images carry the failure is chosen
# here, exactly).
FAILURE_PARAMS: dict[str, dict[str, Any]] = {
    "shadow": {"shadow_roi": (0.0, 0.0, 1.0, 1.0), "num_shadows_limit": (2, 3), "shadow_dimension": 5,
               "shadow_intensity_range": (0.8, 0.9)},
    "blur": {"blur_limit": (15, 19), "allow_shifted": True},
    "noise": {"std_range": (0.3, 0.5), "per_channel": False},
}
# Sides of the rectangle that ``blur`` and ``noise`` cover, as fractions of the image side.
DEFAULT_COVER: tuple[float, float] = (0.7, 1.0)
# The strength of each failure per dataset (over FAILURE_PARAMS, and the rectangle's cover), chosen so that the
# baseline loses at least 25 points of accuracy on failure images: benchmarks/bench_unannotated_baseline.py
# records it (and benchmarks/results/archive/ the weaker settings tried first). A bright garment on black stays
# recognisable under shadows that ruin a planted object on its textured background, so Fashion-MNIST needs more and
# deeper shadows, a longer blur and stronger noise.
STRENGTH: dict[str, dict[str, dict[str, Any]]] = {
    "planted": {
        "shadow": {"params": {}, "cover": None},
        "blur": {"params": {}, "cover": DEFAULT_COVER},
        "noise": {"params": {}, "cover": (0.5, 0.8)},
    },
    "fashion": {
        "shadow": {"params": {"num_shadows_limit": (4, 5), "shadow_intensity_range": (0.95, 1.0)}, "cover": None},
        "blur": {"params": {"blur_limit": (17, 21)}, "cover": DEFAULT_COVER},
        "noise": {"params": {"std_range": (0.7, 0.9)}, "cover": DEFAULT_COVER},
    },
}


# -- clean images ---------------------------------------------------------------------------------------------


def clean_images(dataset: Dataset, split: str, sizes: Mapping[str, int] = DEFAULT_SIZES, seed: int = 0
                 ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The clean images of one split of a built-in dataset, as a user's camera would hand them over.

    ``probe`` is drawn from the same source as ``val`` (the images after the first ``sizes["val"]``), so it is
    disjoint from ``train`` and ``test``.

    Args:
        dataset: ``"planted"`` (every planted concept off) or ``"fashion"`` (Fashion-MNIST from Debian's package).
        split: one of :data:`SPLITS`.
        sizes: images per split.
        seed: seeds the built-in data.

    Returns:
        uint8 images ``(N, H, W, C)``, class indices ``(N,)`` and the class names.

    Raises:
        ValueError: for an unknown dataset or split.

    Example:
        >>> x, y, classes = clean_images("planted", "test", {"train": 4, "val": 2, "test": 3, "probe": 2})
        >>> x.shape, x.dtype.name, len(y), classes[0]
        ((3, 32, 32, 3), 'uint8', 3, 'circle')
    """
    if dataset not in DATASETS:
        raise ValueError(f"Expected `dataset` to be one of {list(DATASETS)}, but got {dataset!r}.")
    if split not in SPLITS:
        raise ValueError(f"Expected `split` to be one of {list(SPLITS)}, but got {split!r}.")
    n_val, n_probe = int(sizes["val"]), int(sizes["probe"])
    source = "val" if split == "probe" else split
    if dataset == "planted":
        from recipes.data import PlantedConceptsDataset
        from recipes.data.planted import CONCEPTS

        size = n_val + n_probe if source == "val" else int(sizes[split])
        ds = PlantedConceptsDataset(source, size=size, seed=seed, prevalence=dict.fromkeys(CONCEPTS, 0.0),  # type: ignore[arg-type]
                                    cache_dir="default")
        data = ds.materialize()
        images, labels, classes = data["image"], data["target"], ds.classes
    else:
        from recipes.data import FashionMNISTDataset

        # val and probe share Fashion-MNIST's hold-out from its training split; test is its test split.
        cap = None if source == "val" else int(sizes[split])
        fds = FashionMNISTDataset(source, size=cap, val_size=n_val + n_probe, seed=seed, cache_dir=None)  # type: ignore[arg-type]
        data = fds.materialize()
        images, labels, classes = data["image"], data["target"], fds.classes
    if split == "val":
        images, labels = images[:n_val], labels[:n_val]
    elif split == "probe":
        images, labels = images[n_val:n_val + n_probe], labels[n_val:n_val + n_probe]
    x = (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).contiguous().numpy()
    return x, labels.numpy().astype(np.int64), tuple(classes)


# -- failures -------------------------------------------------------------------------------------------------


def failure_transform(failure: Failure, params: Mapping[str, Any] | None = None) -> Any:
    """The albumentations transform that draws ``failure`` (always applied), with ``params`` over the defaults.

    Raises:
        ValueError: for an unknown failure.

    Example:
        >>> type(failure_transform("blur", {"blur_limit": (5, 5)})).__name__
        'MotionBlur'
    """
    import albumentations as A

    if failure not in FAILURES:
        raise ValueError(f"Expected `failure` to be one of {list(FAILURES)}, but got {failure!r}.")
    # Options read back from JSON hold lists where albumentations documents tuples.
    merged = {**FAILURE_PARAMS[failure], **(params or {})}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in merged.items()}
    cls = {"shadow": A.RandomShadow, "blur": A.MotionBlur, "noise": A.GaussNoise}[failure]
    return cls(p=1.0, **kwargs)


def rectangles(rng: np.random.Generator, n: int, h: int, w: int, cover: tuple[float, float] = DEFAULT_COVER
               ) -> np.ndarray:
    """``n`` random axis-aligned rectangles as masks, each side a fraction in ``cover`` of the image side.

    Shape:
        - output: ``(n, h, w)`` bool

    Example:
        >>> m = rectangles(np.random.default_rng(0), 2, 10, 10, (0.5, 0.5))
        >>> m.shape, m.sum(axis=(1, 2)).tolist()
        ((2, 10, 10), [25, 25])
    """
    lo, hi = cover
    if not 0.0 < lo <= hi <= 1.0:
        raise ValueError(f"Expected `cover` to be a range (low, high) with 0 < low <= high <= 1, but got {cover!r}.")
    rh = np.maximum(1, np.round(rng.uniform(lo, hi, n) * h)).astype(int)
    rw = np.maximum(1, np.round(rng.uniform(lo, hi, n) * w)).astype(int)
    y0 = np.floor(rng.uniform(0, 1, n) * (h - rh + 1)).astype(int)
    x0 = np.floor(rng.uniform(0, 1, n) * (w - rw + 1)).astype(int)
    ys, xs = np.arange(h)[None, :, None], np.arange(w)[None, None, :]
    return ((ys >= y0[:, None, None]) & (ys < (y0 + rh)[:, None, None])
            & (xs >= x0[:, None, None]) & (xs < (x0 + rw)[:, None, None]))


def apply_failure(images: np.ndarray, failure: Failure, seed: int, params: Mapping[str, Any] | None = None,
                  cover: tuple[float, float] = DEFAULT_COVER) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``failure`` on every image, and say where the generator acted.

    The footprint of a shadow is the polygon area RandomShadow darkened, read off a white canvas it shadows with
    the same parameters (so it includes black pixels a shadow cannot change); of ``blur`` and ``noise`` it is the
    rectangle the transformed pixels were pasted into. Pixels outside the footprint are never changed.

    Args:
        images: uint8 images.
        failure: one of :data:`FAILURES`.
        seed: seeds albumentations' generators and the rectangles.
        params: keyword arguments of the albumentations transform, over :data:`FAILURE_PARAMS`.
        cover: side fractions of the rectangles of ``blur`` and ``noise``.

    Shape:
        - images: ``(N, H, W, C)``, C = 1 or 3
        - output: images ``(N, H, W, C)`` uint8 and footprints ``(N, H, W)`` bool

    Example:
        >>> x = np.full((2, 16, 16, 3), 200, np.uint8)
        >>> out, where = apply_failure(x, "shadow", seed=0)
        >>> bool((out[where] < 200).all()), bool((out[~where] == 200).all())
        (True, True)
    """
    import albumentations as A

    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"Expected `images` to be uint8 (N, H, W, C) with C in (1, 3), but got "
                         f"{images.dtype} {images.shape}.")
    n, h, w, _ = images.shape
    region_seed, albu_seed = np.random.SeedSequence(seed).generate_state(2)
    pipeline = A.Compose([failure_transform(failure, params)], additional_targets={"canvas": "image"},
                         seed=int(albu_seed))
    out = np.empty_like(images)
    canvas = np.full((h, w, images.shape[-1]), 255, np.uint8)
    footprints = np.zeros((n, h, w), bool)
    for i in range(n):
        result = pipeline(image=images[i], canvas=canvas)
        out[i] = result["image"].reshape(h, w, -1)
        if failure == "shadow":
            footprints[i] = (result["canvas"].reshape(h, w, -1) < 255).any(-1)
    if failure != "shadow":
        footprints = rectangles(np.random.default_rng(region_seed), n, h, w, cover)
        out = np.where(footprints[..., None], out, images)
    return out, footprints


def choose_failures(n: int, rate: float, rng: np.random.Generator) -> np.ndarray:
    """Exactly ``round(rate * n)`` of ``n`` images, chosen at random, as a bool mask.

    Example:
        >>> int(choose_failures(100, 0.03, np.random.default_rng(0)).sum())
        3
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"Expected `rate` to be a probability in [0, 1], but got {rate!r}.")
    chosen = np.zeros(n, bool)
    chosen[rng.permutation(n)[:round(rate * n)]] = True
    return chosen


# -- writing and caching --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class UnannotatedFolder:
    """A written folder (see the module docstring): the image root the product reads, and the scorer's truth.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     f = unannotated_folder("planted", "shadow", {"train": 40, "val": 20, "test": 20, "probe": 20},
        ...                            cache_dir=d)
        ...     sum(f.truth("test").values()), f.root.name, sorted(p.name for p in f.root.iterdir())
        (10, 'images', ['probe', 'test', 'train', 'val'])
    """

    path: Path

    @property
    def root(self) -> Path:
        """The image folder: ``root/{train,val,test,probe}/<class>/<index>.png``."""
        return self.path / "images"

    @property
    def probe_root(self) -> Path:
        """The deployment probe folder, ``root/probe/<class>/<index>.png``."""
        return self.root / "probe"

    def options(self) -> dict[str, Any]:
        """Every option the pixels depend on, as written to ``generator.json``."""
        return json.loads((self.path / "generator.json").read_text())

    def truth(self, split: str) -> dict[str, bool]:
        """File (relative to :attr:`root`) → whether it carries the failure, for one split. Scoring only."""
        if split not in SPLITS:
            raise ValueError(f"Expected `split` to be one of {list(SPLITS)}, but got {split!r}.")
        data = json.loads((self.path / "truth" / f"{split}.json").read_text())
        return {**dict.fromkeys(data["clean_files"], False), **dict.fromkeys(data["failure_files"], True)}

    def footprints(self, split: str) -> dict[str, np.ndarray]:
        """File (relative to :attr:`root`) → ``(H, W)`` bool mask of where the generator acted, per failure file."""
        if split not in SPLITS:
            raise ValueError(f"Expected `split` to be one of {list(SPLITS)}, but got {split!r}.")
        with np.load(self.path / "truth" / "footprints.npz") as z:
            files, packed = z[f"{split}_files"], z[f"{split}_packed"]
            h, w = (int(v) for v in z["shape"])
        masks = np.unpackbits(packed, axis=1, count=h * w).astype(bool).reshape(-1, h, w)
        return {str(f): m for f, m in zip(files, masks, strict=True)}


def write_folder(out: str | Path, dataset: Dataset, failure: Failure, sizes: Mapping[str, int] = DEFAULT_SIZES,
                 rates: Mapping[str, float] = DEFAULT_RATES, params: Mapping[str, Any] | None = None,
                 cover: tuple[float, float] | None = None, seed: int = 0, progress: bool = False
                 ) -> UnannotatedFolder:
    """Write one folder (layout in the module docstring) into ``out``, which must not exist yet.

    Args:
        out: the folder to create.
        dataset: ``"planted"`` or ``"fashion"``.
        failure: one of :data:`FAILURES`.
        sizes: images per split (keys :data:`SPLITS`).
        rates: share of each split's images that carry the failure.
        params: keyword arguments of the albumentations transform, over :data:`FAILURE_PARAMS` and the dataset's
            :data:`STRENGTH`.
        cover: side fractions of the rectangles of ``blur`` and ``noise`` (None: the dataset's :data:`STRENGTH`).
        seed: seeds the data, the choice of failure images and the failures.
        progress: print a line per split to stderr.

    Raises:
        FileExistsError: if ``out`` exists.
        ValueError: for an unknown dataset or failure, or sizes/rates missing a split.
    """
    from PIL import Image

    options = folder_options(dataset, failure, sizes, rates, params, cover, seed)
    out = Path(out)
    if out.exists():
        raise FileExistsError(f"Expected `out` to be a path that does not exist yet, but got {str(out)!r}.")
    (out / "truth").mkdir(parents=True)
    packed: dict[str, np.ndarray] = {}
    shape = (0, 0)
    for k, split in enumerate(SPLITS):
        images, labels, classes = clean_images(dataset, split, sizes, seed)
        n, h, w, c = images.shape
        shape = (h, w)
        entropy = [seed, DATASETS.index(dataset), FAILURES.index(failure), k]
        choose_seq, failure_seq = np.random.SeedSequence(entropy).spawn(2)
        chosen = choose_failures(n, float(rates[split]), np.random.default_rng(choose_seq))
        idx = np.flatnonzero(chosen)
        changed, where = apply_failure(images[idx], failure, int(failure_seq.generate_state(1)[0]),
                                       options["params"], tuple(options["cover"] or DEFAULT_COVER))
        images[idx] = changed
        names = [f"{split}/{classes[labels[i]]}/{i:05d}.png" for i in range(n)]
        for name in set(str(Path(s).parent) for s in names):
            (out / "images" / name).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            Image.fromarray(images[i, ..., 0] if c == 1 else images[i]).save(out / "images" / name, compress_level=1)
        truth = {"split": split, "failure": failure, "rate": float(rates[split]),
                 "failure_files": [names[i] for i in idx], "clean_files": [names[i] for i in np.flatnonzero(~chosen)]}
        (out / "truth" / f"{split}.json").write_text(json.dumps(truth, indent=1))
        packed[f"{split}_files"] = np.array([names[i] for i in idx], dtype=str)
        packed[f"{split}_packed"] = np.packbits(where.reshape(len(idx), -1), axis=1)
        if progress:
            print(f"unannotated_data {dataset}/{failure}: {split} {n} images, {len(idx)} with the failure",
                  file=sys.stderr, flush=True)
    np.savez_compressed(out / "truth" / "footprints.npz", shape=np.array(shape), **packed)  # type: ignore[arg-type]
    (out / "generator.json").write_text(json.dumps(options, indent=1))
    return UnannotatedFolder(out)


def folder_options(dataset: Dataset, failure: Failure, sizes: Mapping[str, int] = DEFAULT_SIZES,
                   rates: Mapping[str, float] = DEFAULT_RATES, params: Mapping[str, Any] | None = None,
                   cover: tuple[float, float] | None = None, seed: int = 0) -> dict[str, Any]:
    """Every option a folder's pixels depend on, checked, with the transform's full keyword arguments: ``params``
    over the dataset's :data:`STRENGTH` over :data:`FAILURE_PARAMS`; ``cover`` (None: the dataset's) for ``blur``
    and ``noise``.

    Raises:
        ValueError: for an unknown dataset or failure, sizes/rates missing a split, a size below 1 or a rate
            outside [0, 1].

    Example:
        >>> options = folder_options("fashion", "shadow", params={"num_shadows_limit": (1, 1)})
        >>> options["params"]["num_shadows_limit"], options["params"]["shadow_intensity_range"]
        ([1, 1], [0.95, 1.0])
    """
    if dataset not in DATASETS:
        raise ValueError(f"Expected `dataset` to be one of {list(DATASETS)}, but got {dataset!r}.")
    if failure not in FAILURES:
        raise ValueError(f"Expected `failure` to be one of {list(FAILURES)}, but got {failure!r}.")
    for name, table in (("sizes", sizes), ("rates", rates)):
        if set(table) != set(SPLITS):
            raise ValueError(f"Expected the keys of `{name}` to be {list(SPLITS)}, but got {sorted(table)}.")
    for split in SPLITS:
        if not isinstance(sizes[split], int) or sizes[split] < 1:
            raise ValueError(f"Expected `sizes[{split!r}]` to be a positive integer, but got {sizes[split]!r}.")
        if not 0.0 <= float(rates[split]) <= 1.0:
            raise ValueError(f"Expected `rates[{split!r}]` to be a probability in [0, 1], but got {rates[split]!r}.")
    import albumentations

    strength = STRENGTH[dataset][failure]
    full = {**FAILURE_PARAMS[failure], **strength["params"], **(params or {})}
    if failure == "shadow":
        cover = None
    else:
        cover = tuple(cover if cover is not None else strength["cover"])
        if len(cover) != 2 or not 0.0 < cover[0] <= cover[1] <= 1.0:
            raise ValueError(f"Expected `cover` to be a range (low, high) with 0 < low <= high <= 1, but got "
                             f"{cover!r}.")
    return json.loads(json.dumps({
        "dataset": dataset, "failure": failure, "sizes": {s: int(sizes[s]) for s in SPLITS},
        "rates": {s: float(rates[s]) for s in SPLITS}, "params": full, "cover": cover, "seed": int(seed),
        "albumentations": albumentations.__version__,
    }))


_OWN_SOURCE: list[str] = []


def folder_digest(options: Mapping[str, Any]) -> str:
    """A digest of the options and of the code that turns them into pixels (this module and the source data's
    generator, :func:`recipes.data.base.generator_digest`), so a cache never serves a folder older code made."""
    from recipes.data import FashionMNISTDataset, PlantedConceptsDataset
    from recipes.data.base import generator_digest

    source = PlantedConceptsDataset if options["dataset"] == "planted" else FashionMNISTDataset
    if not _OWN_SOURCE:  # read once, so editing this file mid-run cannot change the key of a running benchmark
        _OWN_SOURCE.append(inspect.getsource(sys.modules[__name__]))
    h = hashlib.sha256(_OWN_SOURCE[0].encode())
    h.update(generator_digest(source).encode())
    h.update(json.dumps(options, sort_keys=True).encode())
    return h.hexdigest()[:16]


def unannotated_folder(dataset: Dataset, failure: Failure, sizes: Mapping[str, int] = DEFAULT_SIZES,
                       rates: Mapping[str, float] = DEFAULT_RATES, params: Mapping[str, Any] | None = None,
                       cover: tuple[float, float] | None = None, seed: int = 0,
                       cache_dir: str | Path | None = "default", progress: bool = False) -> UnannotatedFolder:
    """The folder for these options, written once under ``cache_dir`` and reused (see :func:`write_folder`).

    Args:
        cache_dir: ``"default"`` for ``<recipes.data.base.default_cache_dir()>/unannotated``; a folder.

    Raises:
        ValueError: as :func:`folder_options`, or when ``cache_dir`` is None and no default cache exists.
    """
    from recipes.data.base import default_cache_dir

    options = folder_options(dataset, failure, sizes, rates, params, cover, seed)
    if cache_dir == "default":
        base = default_cache_dir()
        cache = base / "unannotated" if base is not None else None
    else:
        cache = Path(cache_dir) if cache_dir is not None else None
    if cache is None:
        raise ValueError("Expected a cache folder for the written images (`cache_dir`, or $CONCEPTFIX_CACHE not "
                         "empty), but got none.")
    path = cache / f"{dataset}-{failure}-seed{seed}-{folder_digest(options)}"
    if (path / "generator.json").is_file():
        return UnannotatedFolder(path)
    # Written beside its final place and renamed into it, so an interrupted run never leaves half a folder.
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    write_folder(tmp, dataset, failure, sizes, rates, params, cover, seed, progress)
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished the same folder first
        shutil.rmtree(tmp, ignore_errors=True)
    return UnannotatedFolder(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--dataset", choices=DATASETS, default="planted")
    parser.add_argument("--failure", choices=FAILURES, default="shadow")
    parser.add_argument("--seed", type=int, default=0)
    for split in SPLITS:
        parser.add_argument(f"--{split}-size", type=int, default=DEFAULT_SIZES[split])
    parser.add_argument("--cache-dir", default="default")
    args = parser.parse_args()
    sizes = {s: getattr(args, f"{s}_size") for s in SPLITS}
    folder = unannotated_folder(args.dataset, args.failure, sizes, seed=args.seed, cache_dir=args.cache_dir,
                                progress=True)
    print(folder.root)


if __name__ == "__main__":
    main()
