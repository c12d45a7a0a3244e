"""Tiny data and models for real Trainer runs in the callback tests (both Lightning flavours)."""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from debugger.contract import as_sample

FLAVOURS = ["pytorch_lightning", "lightning.pytorch"]


def lightning(flavour: str) -> Any:
    """The Lightning package of a flavour (skips the test when it is not installed)."""
    import pytest

    return pytest.importorskip(flavour)


class TinyConcepts(Dataset):
    """Contract samples: 3x8x8 images, 3 classes, two planted concepts ("bright", "stripe") with masks."""

    concept_names = ("bright", "stripe")

    def __init__(self, n: int = 24, seed: int = 0, num_classes: int = 3) -> None:
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 3, 8, 8, generator=g)
        self.y = torch.randint(0, num_classes, (n,), generator=g)
        self.c = (torch.rand(n, 2, generator=g) < 0.5).float()
        self.m = torch.zeros(n, 2, 8, 8, dtype=torch.bool)
        for i in range(n):
            self.x[i, self.y[i]] += 1.5  # learnable
            if self.c[i, 0]:
                self.m[i, 0, :4, :4] = True
                self.x[i, :, :4, :4] += 2.0
            if self.c[i, 1]:
                self.m[i, 1, :, ::3] = True
                self.x[i, :, :, ::3] -= 1.0

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> Any:
        return as_sample(self.x[i], self.y[i], self.c[i], self.m[i])


def make_module(
    flavour: str,
    num_classes: int = 3,
    n_train: int = 24,
    n_val: int = 16,
    batch_size: int = 8,
    lr: float = 0.1,
    batchnorm: bool = True,
) -> Any:
    """A small conv classifier as a LightningModule of the given flavour, with its own loaders."""
    L = lightning(flavour)

    class TinyNet(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8) if batchnorm else nn.Identity(), nn.ReLU()
            )
            self.layer1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.drop = nn.Dropout(0.2)
            self.fc = nn.Linear(8, num_classes)
            self.losses: list[float] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.drop(self.pool(self.layer1(self.stem(x))).flatten(1)))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = nn.functional.cross_entropy(self(batch["image"]), batch["target"])
            self.losses.append(float(loss.detach()))
            self.log("train_loss", loss)
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.log("val_loss", nn.functional.cross_entropy(self(batch["image"]), batch["target"]))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=lr, momentum=0.9)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(TinyConcepts(n_train, seed=1, num_classes=num_classes), batch_size=batch_size,
                              shuffle=True)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(TinyConcepts(n_val, seed=2, num_classes=num_classes), batch_size=batch_size)

    return TinyNet()


def make_trainer(flavour: str, tmp_path: Any, callbacks: list[Any], logger: Any = "tb", **kw: Any) -> Any:
    L = lightning(flavour)
    if logger == "tb":
        logger = L.loggers.TensorBoardLogger(str(tmp_path), name="run", version=0)
    opts: dict[str, Any] = dict(
        max_epochs=2,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path),
        num_sanity_val_steps=0,
        deterministic=True,
    )
    opts.update(kw)
    return L.Trainer(**opts)


def event_tags(log_dir: Any) -> dict[str, list[str]]:
    """Tags of the TensorBoard event files in ``log_dir`` by kind (scalars, images, tensors)."""
    ea_mod = importlib.import_module("tensorboard.backend.event_processing.event_accumulator")
    acc = ea_mod.EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc.Tags()


def event_accumulator(log_dir: Any) -> Any:
    ea_mod = importlib.import_module("tensorboard.backend.event_processing.event_accumulator")
    acc = ea_mod.EventAccumulator(str(log_dir), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc
