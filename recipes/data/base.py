"""What every built-in dataset shares: seeded chunked generation with a disk cache, and the DataModule base."""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from debugger.contract import Sample
from recipes._flavours import LightningDataModule as _LightningDataModule
from recipes.data import render

_CHUNK = 1024


def default_cache_dir() -> Path | None:
    """Where generated chunks are cached: ``$CONCEPTFIX_CACHE`` (empty string disables), else
    ``~/.cache/conceptfix/data``."""
    env = os.environ.get("CONCEPTFIX_CACHE")
    if env is not None:
        return Path(env) if env else None
    return Path.home() / ".cache" / "conceptfix" / "data"


_DIGESTS: dict[str, str] = {}


def _code_digest(cls: type) -> str:
    """A digest of the generator's source, so a cache never serves chunks made by older code."""
    key = f"{cls.__module__}.{cls.__qualname__}"
    if key in _DIGESTS:
        return _DIGESTS[key]
    h = hashlib.sha256()
    for c in cls.__mro__:
        if c.__module__.startswith("recipes."):
            h.update(inspect.getsource(sys.modules[c.__module__]).encode())
    h.update(inspect.getsource(render).encode())
    _DIGESTS[key] = h.hexdigest()[:16]
    return _DIGESTS[key]


def generator_digest(cls: type) -> str:
    """The digest of a built-in dataset class's generating code: key anything derived from its data by it (a cached
    model trained on it, say), so a change to the generator never serves results made from the older data."""
    return _code_digest(cls)


class ChunkedDataset(Dataset):
    """A generated dataset materialised lazily in seeded chunks, so ``dataset[i]`` is a pure function of
    ``(seed, split, i)`` and random access costs one chunk's generation at most once.

    Chunks are cached on disk under a hash of the generator's code and every parameter (see
    :func:`default_cache_dir`); writes go to a temporary file renamed into place, so an interrupted run
    never leaves a corrupt chunk. Subclasses implement :meth:`_generate` and :meth:`_params`.
    """

    concept_names: tuple[str, ...] = ()
    _split_ids = {"train": 0, "val": 1, "test": 2}

    def __init__(self, split: str, size: int, seed: int, cache_dir: str | Path | None = "default") -> None:
        if split not in self._split_ids:
            raise ValueError(f"Expected `split` to be one of {list(self._split_ids)}, but got {split!r}.")
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"Expected `size` to be a positive integer, but got {size!r}.")
        self.split = split
        self.size = size
        self.seed = int(seed)
        self.cache_dir = default_cache_dir() if cache_dir == "default" else (Path(cache_dir) if cache_dir else None)
        self._chunks: dict[int, dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return self.size

    def _chunk(self, k: int) -> dict[str, Tensor]:
        if k not in self._chunks:
            n = min(_CHUNK, self.size - k * _CHUNK)
            path = self._cache_path(k, n)
            chunk = _load(path) if path is not None else None
            if chunk is None:
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + self._split_ids[self.split] * 100_003 + k)
                chunk = self._generate(g, k * _CHUNK, n)
                if path is not None:
                    _save(chunk, path)
            self._chunks[k] = chunk
        return self._chunks[k]

    def _cache_path(self, k: int, n: int) -> Path | None:
        if self.cache_dir is None:
            return None
        key = repr((type(self).__name__, _code_digest(type(self)), self.split, self.seed, k, n, self._params()))
        return self.cache_dir / f"{type(self).__name__}-{hashlib.sha256(key.encode()).hexdigest()[:24]}.pt"

    def _params(self) -> Any:
        """Everything besides split, seed and chunk that the generated pixels depend on."""
        raise NotImplementedError

    def _generate(self, g: torch.Generator, start: int, n: int) -> dict[str, Tensor]:
        """Samples ``start .. start + n - 1``; image as uint8 ``(n, C, H, W)``, label maps may be uint8 (served as
        int64), the other contract keys as is."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> Sample:
        if not -self.size <= i < self.size:
            raise IndexError(f"Expected an index in [0, {self.size}), but got {i}.")
        i %= self.size
        chunk = self._chunk(i // _CHUNK)
        j = i % _CHUNK
        return _decode({k: v[j] for k, v in chunk.items()})  # type: ignore[return-value]

    def materialize(self) -> dict[str, Tensor]:
        """The whole split as batched tensors (images as float in [0, 1]), in index order."""
        parts = [self._chunk(k) for k in range((self.size + _CHUNK - 1) // _CHUNK)]
        return _decode({key: torch.cat([p[key] for p in parts]) for key in parts[0]})


def _decode(stored: dict[str, Tensor]) -> dict[str, Tensor]:
    """Stored form to the sample contract: uint8 images to float in [0, 1], uint8 label maps to int64."""
    stored["image"] = stored["image"].float() / 255.0
    if stored.get("target") is not None and stored["target"].dtype == torch.uint8:
        stored["target"] = stored["target"].long()
    return stored


def _load(path: Path) -> dict[str, Tensor] | None:
    try:
        return torch.load(path, weights_only=True)
    except Exception:  # missing, truncated or not a tensor file: regenerate
        return None


def _save(chunk: dict[str, Tensor], path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(chunk, tmp)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only or full disk only costs regeneration next time


def to_uint8(images: Tensor) -> Tensor:
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


class ContractDataModule(_LightningDataModule):
    """A DataModule over three plain Datasets that follow :mod:`debugger.contract`.

    Subclasses implement :meth:`make_dataset`; datasets are built lazily in :meth:`setup` and kept.

    Args:
        batch_size: samples per batch for every split.
        num_workers: DataLoader workers (0 loads in the training process).
        seed: seeds both the data and the training shuffle order.
    """

    def __init__(self, batch_size: int = 128, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"Expected `batch_size` to be a positive integer, but got {batch_size!r}.")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"Expected `num_workers` to be a non-negative integer, but got {num_workers!r}.")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._datasets: dict[str, Dataset] = {}

    def make_dataset(self, split: str) -> Dataset:
        raise NotImplementedError

    def dataset(self, split: str) -> Dataset:
        """The dataset of ``"train"``, ``"val"`` or ``"test"``, built on first use."""
        if split not in ("train", "val", "test"):
            raise ValueError(f"Expected `split` to be one of ['train', 'val', 'test'], but got {split!r}.")
        if split not in self._datasets:
            self._datasets[split] = self.make_dataset(split)
        return self._datasets[split]

    @property
    def concept_names(self) -> tuple[str, ...]:
        return tuple(getattr(self.dataset("test"), "concept_names", ()))

    def setup(self, stage: str | None = None) -> None:
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in splits.get(stage or "", ("train", "val", "test")):
            self.dataset(split)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size,
            shuffle=shuffle,
            generator=g,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
