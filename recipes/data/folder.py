"""Users' own images, read with PIL, following :mod:`debugger.contract`.

Two layouts are read:

- **one folder**: ``root/<class>/<image>``, split 80/10/10 into train/val/test by a seed;
- **split folders**: ``root/train/<class>/…`` with ``root/val/…`` (or ``valid``/``validation``) and
  ``root/test/…``, used as they are. A missing val or test folder is carved from train (10% of it each, seeded).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from debugger.contract import Sample, as_sample
from recipes.data.base import ContractDataModule

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLIT_FRACTIONS = {"train": (0.0, 0.8), "val": (0.8, 0.9), "test": (0.9, 1.0)}
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "valid", "validation"), "test": ("test",)}
# Concept discovery slides windows of 8 and 16 pixels over each image by default.
MIN_IMAGE_SIZE = 16


def split_range(split: str, n: int) -> tuple[int, int]:
    """Start and end of ``split`` among ``n`` shuffled files (80/10/10).

    Example:
        >>> [split_range(s, 20) for s in ("train", "val", "test")]
        [(0, 16), (16, 18), (18, 20)]
    """
    lo, hi = SPLIT_FRACTIONS[split]
    return int(lo * n), (n if hi == 1.0 else int(hi * n))


def class_folders(root: str | Path) -> tuple[str, ...]:
    """The class sub-folders of ``root`` in sorted order (hidden folders skipped).

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Expected `root` to be a folder with one sub-folder per class, but got {str(root)!r}.")
    return tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")))


def split_folders(root: str | Path) -> dict[str, Path]:
    """The split sub-folders of ``root`` (``train``, ``val``/``valid``/``validation``, ``test``) that exist.

    Empty when ``root`` has no ``train`` folder: then it is read as one folder of class sub-folders.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     for name in ("train", "valid"):
        ...         (Path(d) / name).mkdir()
        ...     sorted(split_folders(d))
        ['train', 'val']
    """
    root = Path(root)
    found: dict[str, Path] = {}
    for split, names in SPLIT_FOLDERS.items():
        for name in names:
            if (root / name).is_dir():
                found[split] = root / name
                break
    return found if "train" in found else {}


def scan_folder(root: str | Path, classes: tuple[str, ...] | None = None
                ) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """Files and class indices under ``root/<class>/<image>``, classes in sorted order.

    Args:
        root: the folder.
        classes: the class names to index by (a split folder may lack some); default: ``root``'s own.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
        ValueError: if it has no class sub-folders, a class sub-folder not in ``classes``, or no images.
    """
    root = Path(root)
    own = class_folders(root)
    if not own:
        raise ValueError(f"Expected {str(root)!r} to hold one sub-folder per class, but it has none.")
    if classes is None:
        classes = own
    elif set(own) - set(classes):
        raise ValueError(f"Expected the class sub-folders of {str(root)!r} to be among the training classes "
                         f"{list(classes)}, but got {sorted(set(own) - set(classes))} as well.")
    files, labels = [], []
    for i, c in enumerate(classes):
        if c not in own:
            continue
        for f in sorted((root / c).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append(f)
                labels.append(i)
    if not files:
        raise ValueError(f"Expected image files ({', '.join(IMAGE_SUFFIXES)}) in the class folders of {str(root)!r}.")
    return files, labels, classes


def folder_split(root: str | Path, split: str, seed: int = 0) -> tuple[list[Path], list[int], tuple[str, ...]]:
    """Files, class indices and class names of one split of ``root``, in either layout (see the module docstring).

    Args:
        root: the folder.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (every split together).
        seed: seeds the split of a single folder, or the val/test carved from ``train`` where their folder is missing.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
        ValueError: for an unknown ``split``, a folder without class sub-folders or images, or a val/test class
            folder that ``train`` does not have.
    """
    if split not in ("train", "val", "test", "all"):
        raise ValueError(f"Expected `split` to be one of ['train', 'val', 'test', 'all'], but got {split!r}.")
    folders = split_folders(root)
    if not folders:
        files, labels, classes = scan_folder(root)
        if split == "all":
            return files, labels, classes
        order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
        lo, hi = split_range(split, len(files))
        keep = sorted(order[lo:hi])
        return [files[i] for i in keep], [labels[i] for i in keep], classes
    files, labels, classes = scan_folder(folders["train"])
    parts: dict[str, tuple[list[Path], list[int]]] = {}
    missing = [s for s in ("val", "test") if s not in folders]
    order = torch.randperm(len(files), generator=torch.Generator().manual_seed(seed)).tolist()
    share = len(files) // 10
    for k, s in enumerate(missing):
        keep = sorted(order[k * share:(k + 1) * share])
        parts[s] = ([files[i] for i in keep], [labels[i] for i in keep])
    rest = sorted(order[len(missing) * share:])
    parts["train"] = ([files[i] for i in rest], [labels[i] for i in rest])
    for s in ("val", "test"):
        if s in folders:
            f, lab, _ = scan_folder(folders[s], classes)
            parts[s] = (f, lab)
    if split == "all":
        return ([f for s in ("train", "val", "test") for f in parts[s][0]],
                [c for s in ("train", "val", "test") for c in parts[s][1]], classes)
    return parts[split][0], parts[split][1], classes


def unreadable_images(files: list[Path]) -> list[tuple[Path, str]]:
    """The files among ``files`` that PIL cannot identify or whose data fails its integrity check, with why.

    Reads each file once without decoding its pixels, so a broken file is named before training starts rather
    than when a loader reaches it.
    """
    from PIL import Image, UnidentifiedImageError

    bad = []
    for path in files:
        try:
            with Image.open(path) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:  # PIL raises each for broken files
            bad.append((path, str(err) or type(err).__name__))
    return bad


class ImageFolderDataset(Dataset):
    """Images of one split of an image folder, resized to ``image_size`` (RGB or grayscale).

    Args:
        root: the folder, in either layout of :mod:`recipes.data.folder`.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        image_size: side of the square output.
        channels: 3 for RGB, 1 for grayscale.
        seed: seeds the split.
        classes: read ``root/<class>/<image>`` indexed by these class names (another data's, e.g. a probe
            folder read with the training data's classes); ``split`` must then be ``"all"``.

    Raises:
        ValueError: on reading an image file PIL cannot open (naming the file).
    """

    concept_names: tuple[str, ...] = ()

    def __init__(self, root: str | Path, split: Literal["train", "val", "test", "all"] = "all",
                 image_size: int = 32, channels: Literal[1, 3] = 3, seed: int = 0,
                 classes: Sequence[str] | None = None) -> None:
        if channels not in (1, 3):
            raise ValueError(f"Expected `channels` to be 1 or 3, but got {channels!r}.")
        if classes is not None:
            if split != "all":
                raise ValueError(f"Expected `split` 'all' with `classes` (a folder read by another data's class "
                                 f"list), but got {split!r}.")
            self.files, self.targets, self.classes = scan_folder(root, tuple(classes))
        else:
            self.files, self.targets, self.classes = folder_split(root, split, seed)
        self.root = str(root)
        self.num_classes = len(self.classes)
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
    """An image folder's train/val/test splits as a DataModule (either layout of :mod:`recipes.data.folder`).

    Every file is checked once on construction, so a broken image stops the command before any training.

    Args:
        root: the folder.
        image_size: side of the square images the model sees.
        channels: 3 for RGB, 1 for grayscale.
        batch_size: samples per batch.
        num_workers: DataLoader workers.
        seed: seeds the splits and the training order.

    Raises:
        FileNotFoundError: if ``root`` is not a folder.
        ValueError: if ``image_size`` or ``channels`` is invalid, fewer than 2 class sub-folders hold training
            images, a class sub-folder has none, a split would be empty, or an image file cannot be read.
    """

    in_channels = 3

    def __init__(self, root: str, image_size: int = 32, channels: Literal[1, 3] = 3, batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(batch_size, num_workers, seed)
        if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"Expected `image_size` to be an integer >= {MIN_IMAGE_SIZE} (concept discovery slides "
                             f"{MIN_IMAGE_SIZE}-pixel windows over each image), but got {image_size!r}.")
        if channels not in (1, 3):
            raise ValueError(f"Expected `channels` to be 1 or 3, but got {channels!r}.")
        layout = "train/val/test folders" if split_folders(root) else "80/10/10"
        # Classes are counted where they come from: the whole folder, or its train folder.
        files, labels, classes = folder_split(root, "all" if layout == "80/10/10" else "train", seed)
        # A training run on such a folder would fail much later, or learn nothing, with a less helpful message.
        found = {c: labels.count(i) for i, c in enumerate(classes)}
        if len(classes) < 2 or 0 in found.values():
            where = f"{root!r}" if layout == "80/10/10" else f"the train folder of {root!r}"
            raise ValueError(f"Expected {where} to hold at least 2 class sub-folders, each with images, but got "
                             f"images per class {found}.")
        for split in ("train", "val", "test"):
            if not folder_split(root, split, seed)[0]:
                total = len(folder_split(root, "all", seed)[0])
                raise ValueError(f"Expected enough images in {root!r} for non-empty train/val/test splits "
                                 f"({layout}), but got {total} images, which leaves the {split} split empty.")
        bad = unreadable_images(folder_split(root, "all", seed)[0])
        if bad:
            shown = "; ".join(f"{str(p)!r}: {why}" for p, why in bad[:5])
            more = f" (and {len(bad) - 5} more)" if len(bad) > 5 else ""
            raise ValueError(f"Expected every image under {root!r} to be readable, but {len(bad)} could not be "
                             f"read: {shown}{more}. Remove or replace them.")
        self.root, self.image_size, self.channels = root, image_size, channels
        self.num_classes = len(classes)
        self.in_channels = channels

    def make_dataset(self, split: str) -> ImageFolderDataset:
        return ImageFolderDataset(self.root, split, self.image_size, self.channels, self.seed)  # type: ignore[arg-type]
