"""scikit-learn's bundled 8×8 digits (1,797 images, no download), resized, following :mod:`debugger.contract`."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from debugger.contract import Sample, as_sample
from recipes.data.base import ContractDataModule


class DigitsDataset(Dataset):
    """The digits of ``sklearn.datasets.load_digits`` as ``(1, image_size, image_size)`` images in [0, 1].

    A seeded permutation splits them 70/15/15 into train, val and test.

    Example:
        >>> ds = DigitsDataset("val", image_size=16)
        >>> tuple(ds[0]["image"].shape), len(ds)
        ((1, 16, 16), 269)
    """

    classes = tuple(str(d) for d in range(10))
    num_classes = 10
    concept_names: tuple[str, ...] = ()

    def __init__(self, split: Literal["train", "val", "test"] = "train", image_size: int = 32, seed: int = 0) -> None:
        from sklearn.datasets import load_digits

        if split not in ("train", "val", "test"):
            raise ValueError(f"Expected `split` to be one of ['train', 'val', 'test'], but got {split!r}.")
        if not isinstance(image_size, int) or image_size < 8:
            raise ValueError(f"Expected `image_size` to be an integer >= 8, but got {image_size!r}.")
        d = load_digits()
        x = torch.from_numpy(d.images).float().unsqueeze(1) / 16.0
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(0, 1)
        y = torch.from_numpy(d.target).long()
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        n_train, n_val = int(0.7 * len(x)), int(0.15 * len(x))
        part = {"train": order[:n_train], "val": order[n_train:n_train + n_val], "test": order[n_train + n_val:]}[split]
        self.images, self.targets = x[part], y[part]

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> Sample:
        return as_sample(self.images[i], self.targets[i])


class DigitsDataModule(ContractDataModule):
    """:class:`DigitsDataset` splits as a DataModule."""

    num_classes = 10
    in_channels = 1

    def __init__(self, image_size: int = 32, batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(batch_size, num_workers, seed)
        self.image_size = image_size

    def make_dataset(self, split: str) -> DigitsDataset:
        return DigitsDataset(split, self.image_size, self.seed)  # type: ignore[arg-type]
