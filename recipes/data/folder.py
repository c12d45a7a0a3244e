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
SPLIT_FRACTIONS = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}


def split_range(split: str, n: int) -> tuple[int, int]:
    """Start and end of ``split`` among ``n`` shuffled files (80/10/10).

    Example:
        >>> [split_range(s, 20) for s in ("train", "val", "test")]
        [(0, 16), (16, 18), (18, 20)]
    """
    lo, hi = SPLIT_FRACTIONS[split]
    return int(lo * n), (n if hi == 1.0 else int(hi * n))


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

    Raises:
        ValueError: on reading an image file PIL cannot open (naming the file).
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
        cut = split_range(split, n) if split != "all" else (0, n)
        keep = sorted(order[cut[0]:cut[1]]) if split != "all" else list(range(n))
        self.files = [files[i] for i in keep]
        self.targets = [labels[i] for i in keep]
        self.image_size, self.channels = image_size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Sample:
        from PIL import Image, UnidentifiedImageError

        path = self.files[i]
        try:
            with Image.open(path) as im:
                im = im.convert("RGB" if self.channels == 3 else "L").resize((self.image_size, self.image_size))
                arr = np.asarray(im, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError, SyntaxError) as err:  # PIL raises all three for broken files
            raise ValueError(f"Expected {str(path)!r} to be a readable image, but it could not be read: {err}. "
                             "Remove or replace it.") from err
        x = torch.from_numpy(arr).permute(2, 0, 1) if arr.ndim == 3 else torch.from_numpy(arr).unsqueeze(0)
        return as_sample(x.contiguous(), self.targets[i])


class ImageFolderDataModule(ContractDataModule):
    """:class:`ImageFolderDataset` splits as a DataModule.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
        ValueError: if ``image_size`` or ``channels`` is invalid, fewer than 2 class sub-folders hold images, a
            class sub-folder has none, or there are too few images for non-empty train/val/test splits.
    """

    in_channels = 3

    def __init__(self, root: str, image_size: int = 32, channels: Literal[1, 3] = 3, batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(batch_size, num_workers, seed)
        if not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"Expected `image_size` to be a positive integer, but got {image_size!r}.")
        if channels not in (1, 3):
            raise ValueError(f"Expected `channels` to be 1 or 3, but got {channels!r}.")
        files, labels, classes = scan_folder(root)
        # A training run on such a folder would fail much later, or learn nothing, with a less helpful message.
        found = {c: labels.count(i) for i, c in enumerate(classes)}
        if len(classes) < 2 or 0 in found.values():
            raise ValueError(f"Expected {root!r} to hold at least 2 class sub-folders, each with images, but got "
                             f"images per class {found}.")
        for split in SPLIT_FRACTIONS:
            lo, hi = split_range(split, len(files))
            if hi <= lo:
                raise ValueError(f"Expected enough images in {root!r} for non-empty train/val/test splits "
                                 f"(80/10/10), but got {len(files)} images, which leaves the {split} split empty.")
        self.root, self.image_size, self.channels = root, image_size, channels
        self.num_classes = len(classes)
        self.in_channels = channels

    def make_dataset(self, split: str) -> ImageFolderDataset:
        return ImageFolderDataset(self.root, split, self.image_size, self.channels, self.seed)  # type: ignore[arg-type]
