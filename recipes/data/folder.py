"""Users' own images: one sub-folder per class, read with PIL, following :mod:`debugger.contract`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from debugger.contract import Sample, as_sample
from recipes.data.base import ContractDataModule

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def scan_folder(root: str | Path) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """Files and class indices under ``root/<class>/<image>``, classes in sorted order.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
        ValueError: if it has no class sub-folders or no images.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Expected `root` to be a folder with one sub-folder per class, but got {str(root)!r}.")
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))
    if not classes:
        raise ValueError(f"Expected {str(root)!r} to hold one sub-folder per class, but it has none.")
    files, labels = [], []
    for i, c in enumerate(classes):
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(i)
    if not files:
        raise ValueError(f"Expected image files ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {str(root)!r}.")
    return files, labels, classes


class ImageFolderDataset(Dataset):
    """Images of ``root/<class>/*`` resized to ``image_size`` (RGB or grayscale), split 80/10/10 by a seed.

    Args:
        root: the folder.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        image_size: side of the square output.
        channels: 3 for RGB, 1 for grayscale.
        seed: seeds the split.
    """

    concept_names: tuple[str, ...] = ()

    def __init__(self, root: str | Path, split: Literal["train", "val", "test", "all"] = "all",
                 image_size: int = 32, channels: Literal[1, 3] = 3, seed: int = 0) -> None:
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"Expected `split` to be one of ['train', 'val', 'test', 'all'], but got {split!r}.")
        if channels not in (1, 3):
            raise ValueError(f"Expected `channels` to be 1 or 3, but got {channels!r}.")
        files, labels, self.classes = scan_folder(root)
        self.num_classes = len(self.classes)
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
        n = len(files)
        cut = {"train": (0, int(0.8 * n)), "val": (int(0.8 * n), int(0.9 * n)), "test": (int(0.9 * n), n),
               "all": (0, n)}[split]
        keep = sorted(order[cut[0]:cut[1]]) if split != "all" else list(range(n))
        self.files = [files[i] for i in keep]
        self.targets = [labels[i] for i in keep]
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Sample:
        from PIL import Image

        with Image.open(self.files[i]) as im:
            im = im.convert("RGB" if self.channels == 3 else "L").resize((self.image_size, self.image_size))
            arr = np.asarray(im, dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1) if arr.ndim == 3 else torch.from_numpy(arr).unsqueeze(0)
        return as_sample(x.contiguous(), self.targets[i])


class ImageFolderDataModule(ContractDataModule):
    """:class:`ImageFolderDataset` splits as a DataModule."""

    in_channels = 3

    def __init__(self, root: str, image_size: int = 32, channels: Literal[1, 3] = 3, batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(batch_size, num_workers, seed)
        _, _, classes = scan_folder(root)
        self.root, self.image_size, self.channels = root, image_size, channels
        self.num_classes = len(classes)
        self.in_channels = channels

    def make_dataset(self, split: str) -> ImageFolderDataset:
        return ImageFolderDataset(self.root, split, self.image_size, self.channels, self.seed)  # type: ignore[arg-type]
