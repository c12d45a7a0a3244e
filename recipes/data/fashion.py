"""Fashion-MNIST, real data, read from IDX files; optionally with planted concepts drawn on top.

Debian's ``dataset-fashion-mnist`` package installs the files in :data:`DEFAULT_ROOT`; any folder with the
four standard files (gzipped or not) works. With ``planted=True`` the same ``shadow``/``occluder``/``stripes``
concepts as :mod:`recipes.data.planted` are drawn over the garments (real images, exact concept masks).

Shadows here are deeper and larger than on the planted-concept images (by default they remove 85–95% of the
brightness over about three quarters of the garment, :data:`FASHION_SHADOW`): a bright garment on a black
background stays recognisable under a half-covering shadow of the planted data's strength (55–75%) — a model
trained with 3% shadowed images lost only ~6 points of accuracy on them, too weak a failure for the loop to
fix. With these shadows it loses ~30 points (validation split, seed 0: 54% with a shadow vs 85% without;
``benchmarks/bench_loop.py --dataset fashion`` records the test split).
"""

from __future__ import annotations

import gzip
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from recipes.data.base import ChunkedDataset, ContractDataModule, to_uint8
from recipes.data.planted import DEFAULT_PREVALENCE, plant_concepts, prevalence_table

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES: tuple[str, ...] = (
    "t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot",
)
FASHION_CONCEPTS: tuple[str, ...] = ("shadow", "occluder", "stripes")
FASHION_SHADOW: dict[str, Any] = {"strength": (0.85, 0.95), "cover": 0.75}
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into an array of its declared shape and dtype.

    Raises:
        ValueError: if the file is not an IDX file, or a ``.gz`` one is not valid gzip (truncated or corrupt).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (gzip.BadGzipFile, EOFError) as err:  # EOFError: a gzip stream cut short
        raise ValueError(f"Expected {str(path)!r} to be a gzip-compressed IDX file, but it could not be "
                         f"decompressed: {err}.") from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"Expected {str(path)!r} to be an unsigned-byte IDX file, but its header is {data[:4]!r}.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise ValueError(f"Expected {str(path)!r} to hold {int(np.prod(shape))} values, but it holds {arr.size}.")
    return arr.reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Expected the Fashion-MNIST file {stem}[.gz] in {str(root)!r}, but it is not there. "
        "Install Debian's package with `apt-get install dataset-fashion-mnist`, or pass `root` pointing to a "
        "folder with the four IDX files."
    )


@lru_cache(maxsize=4)
def load_fashion_mnist(root: str | Path = DEFAULT_ROOT, split: str = "train") -> tuple[Tensor, Tensor]:
    """Images ``(N, 28, 28)`` uint8 and labels ``(N,)`` int64 of one official split (``train``/``test``)."""
    if split not in _FILES:
        raise ValueError(f"Expected `split` to be one of {list(_FILES)}, but got {split!r}.")
    root = Path(root)
    if not root.is_dir():
        _find(root, _FILES[split][0])  # raises the helpful error
    images = read_idx(_find(root, _FILES[split][0]))
    labels = read_idx(_find(root, _FILES[split][1]))
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(f"Expected IDX images (N, H, W) and labels (N,), but got {images.shape} and {labels.shape}.")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))


class FashionMNISTDataset(ChunkedDataset):
    """Fashion-MNIST following :mod:`debugger.contract`: ``image`` ``(1, 28, 28)`` in [0, 1].

    ``val`` is a seeded hold-out of ``val_size`` images from the official training split; ``train`` is the
    rest; ``test`` is the official test split.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        root: folder with the IDX files.
        planted: draw ``shadow``/``occluder``/``stripes`` with exact masks (defaults as planted concepts).
        prevalence: concept → probability (with ``planted``).
        size: use only the first ``size`` images of the split (None: all).
        val_size: images held out of training for validation.
        seed: seeds the hold-out and the planted concepts.
        cache_dir: chunk cache for planted images; ``"default"`` or None.
        shadow_strength: range of the fraction of brightness a planted shadow removes.
        shadow_cover: about which share of the garment a planted shadow covers, in (0, 1).

    Raises:
        ValueError: for an unknown split, a bad ``size``, or a shadow strength/cover out of range.

    Example:
        >>> ds = FashionMNISTDataset("test", size=8)  # doctest: +SKIP
        >>> tuple(ds[0]["image"].shape)  # doctest: +SKIP
        (1, 28, 28)
    """

    classes = CLASSES
    num_classes = len(CLASSES)

    def __init__(
        self,
        split: Literal["train", "val", "test"] = "train",
        root: str | Path = DEFAULT_ROOT,
        planted: bool = False,
        prevalence: Mapping[str, float] | None = None,
        size: int | None = None,
        val_size: int = 5000,
        seed: int = 0,
        cache_dir: str | Path | None = "default",
        shadow_strength: tuple[float, float] = FASHION_SHADOW["strength"],
        shadow_cover: float = FASHION_SHADOW["cover"],
    ) -> None:
        lo, hi = (float(v) for v in shadow_strength)
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"Expected `shadow_strength` to be a range (low, high) with 0 <= low <= high <= 1, "
                             f"but got {shadow_strength!r}.")
        if not 0.0 < float(shadow_cover) < 1.0:
            raise ValueError(f"Expected `shadow_cover` to be in (0, 1), but got {shadow_cover!r}.")
        images, labels = load_fashion_mnist(str(root), "test" if split == "test" else "train")
        if split != "test":
            order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
            keep = order[:val_size] if split == "val" else order[val_size:]
            images, labels = images[keep], labels[keep]
        if size is not None:
            if not isinstance(size, int) or size < 1:
                raise ValueError(f"Expected `size` to be a positive integer or None, but got {size!r}.")
            images, labels = images[:size], labels[:size]
        super().__init__(split, len(images), seed, cache_dir if planted else None)
        self.root = str(root)
        self.planted = planted
        self.concept_names = FASHION_CONCEPTS if planted else ()
        self._images, self._labels = images, labels
        self.shadow_strength, self.shadow_cover = (lo, hi), float(shadow_cover)
        self.table = prevalence_table(split, self.num_classes, FASHION_CONCEPTS, prevalence, None, DEFAULT_PREVALENCE)

    def _params(self) -> Any:
        return (self.root, self.size, self.table.tolist(), self.shadow_strength, self.shadow_cover)

    def _generate(self, g: torch.Generator, start: int, n: int) -> dict[str, Tensor]:
        images = self._images[start:start + n].unsqueeze(1)
        labels = self._labels[start:start + n]
        if not self.planted:
            return {"image": images, "target": labels}
        x = images.float() / 255.0
        obj = x[:, 0] > 0.1
        h, w = obj.shape[1:]
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        area = obj.flatten(1).sum(1).clamp_min(1)
        cx = (obj * xs).flatten(1).sum(1) / area
        cy = (obj * ys).flatten(1).sum(1) / area
        radius = (area / torch.pi).sqrt()
        present = torch.rand(n, len(FASHION_CONCEPTS), generator=g) < self.table[labels]
        x, masks = plant_concepts(g, x, obj, torch.stack([cx, cy, radius], 1), present, FASHION_CONCEPTS,
                                  self.shadow_strength, self.shadow_cover)
        present = present & masks.flatten(2).any(2)
        return {"image": to_uint8(x), "target": labels, "concepts": present.float(), "concept_masks": masks}


class FashionMNISTDataModule(ContractDataModule):
    """Fashion-MNIST splits as a DataModule (see :class:`FashionMNISTDataset` for the arguments).

    ``train_size``/``val_size``/``test_size`` cap each split (None: all of it).
    """

    num_classes = len(CLASSES)
    in_channels = 1

    def __init__(
        self,
        root: str = str(DEFAULT_ROOT),
        planted: bool = False,
        prevalence: dict[str, dict[str, float]] | None = None,
        train_size: int | None = None,
        val_size: int = 5000,
        test_size: int | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        cache_dir: str | None = "default",
        shadow_strength: tuple[float, float] = FASHION_SHADOW["strength"],
        shadow_cover: float = FASHION_SHADOW["cover"],
    ) -> None:
        super().__init__(batch_size, num_workers, seed)
        _find(Path(root), _FILES["test"][0])  # fail now, with the package name, when the data is missing
        self.root, self.planted, self.prevalence = root, planted, prevalence or {}
        self.train_size, self.val_size, self.test_size = train_size, val_size, test_size
        self.cache_dir = cache_dir
        self.shadow_strength, self.shadow_cover = shadow_strength, shadow_cover

    def make_dataset(self, split: str) -> FashionMNISTDataset:
        size = {"train": self.train_size, "val": None, "test": self.test_size}[split]
        return FashionMNISTDataset(split, self.root, self.planted, self.prevalence.get(split), size,  # type: ignore[arg-type]
                                   self.val_size, self.seed, self.cache_dir, self.shadow_strength, self.shadow_cover)
