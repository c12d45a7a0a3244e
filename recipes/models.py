"""Baseline models: a small ResNet-style classifier and a small U-Net-style segmentation net.

Both are LightningModules with readable layer names (the dotted names the debugger's layer arguments take),
torchmetrics metrics, AdamW and a cosine learning-rate schedule, and accept contract dict batches as well as
plain ``(x, y)`` batches.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
import torchmetrics
from torch import Tensor, nn

from debugger.contract import unpack_batch
from recipes._flavours import LightningModule as _LightningModule


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with BatchNorm and a residual connection (projected when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.shortcut = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def _stage(c_in: int, c_out: int, blocks: int, stride: int) -> nn.Sequential:
    first = BasicBlock(c_in, c_out, stride)
    return nn.Sequential(first, *[BasicBlock(c_out, c_out) for _ in range(blocks - 1)])


class _Trainable(_LightningModule):
    """Optimiser, schedule and the train/val/test steps shared by both baselines."""

    metrics: nn.ModuleDict

    def __init__(self, lr: float, weight_decay: float) -> None:
        super().__init__()
        if lr <= 0:
            raise ValueError(f"Expected `lr` to be positive, but got {lr!r}.")
        if weight_decay < 0:
            raise ValueError(f"Expected `weight_decay` to be non-negative, but got {weight_decay!r}.")

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets)

    def _step(self, batch: Any, stage: str) -> Tensor:
        b = unpack_batch(batch)
        logits = self(b.images)
        loss = self.loss(logits, b.targets)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "train", batch_size=len(b.images))
        self.update_metrics(stage, logits.detach(), b.targets)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self(unpack_batch(batch).images).argmax(1)

    def update_metrics(self, stage: str, logits: Tensor, targets: Tensor) -> None:
        raise NotImplementedError

    def _metric(self, stage: str) -> torchmetrics.Metric:
        return cast(torchmetrics.Metric, self.metrics[stage + "_"])

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"])
        steps = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ResNetClassifier(_Trainable):
    """A small ResNet: ``stem`` → ``layer1`` … ``layerN`` (each stage halves the resolution after the first) →
    ``pool`` → ``fc``.

    Args:
        num_classes: output classes.
        in_channels: image channels.
        width: channels of ``layer1``; each later stage doubles them.
        blocks: residual blocks per stage; its length is the number of stages.
        stem_stride: stride of the stem convolution (2 halves the work of every later layer).
        lr: AdamW learning rate (cosine-annealed per step to 0).
        weight_decay: AdamW weight decay.

    Shape:
        - input: ``(B, in_channels, H, W)``
        - output: ``(B, num_classes)`` logits

    Example:
        >>> m = ResNetClassifier(num_classes=10, in_channels=3, width=8)
        >>> tuple(m(torch.zeros(2, 3, 32, 32)).shape)
        (2, 10)
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 3,
        width: int = 16,
        blocks: tuple[int, ...] = (1, 1, 1),
        stem_stride: int = 2,
        lr: float = 3e-3,
        weight_decay: float = 5e-4,
    ) -> None:
        super().__init__(lr, weight_decay)
        for name, v in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Expected `{name}` to be a positive integer, but got {v!r}.")
        if num_classes < 2:
            raise ValueError(f"Expected `num_classes` to be at least 2, but got {num_classes!r}.")
        blocks = tuple(blocks)
        if not blocks or any(not isinstance(b, int) or b < 1 for b in blocks):
            raise ValueError(f"Expected `blocks` to be a non-empty sequence of positive integers, but got {blocks!r}.")
        self.save_hyperparameters()
        if stem_stride not in (1, 2):
            raise ValueError(f"Expected `stem_stride` to be 1 or 2, but got {stem_stride!r}.")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        c = width
        for i, n in enumerate(blocks):
            c_out = width * 2**i
            self.add_module(f"layer{i + 1}", _stage(c, c_out, n, 1 if i == 0 else 2))
            c = c_out
        self.layer_names = tuple(f"layer{i + 1}" for i in range(len(blocks)))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        self.metrics = nn.ModuleDict(
            {s: torchmetrics.Accuracy(task="multiclass", num_classes=num_classes) for s in ("train_", "val_", "test_")}
        )

    def features(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for name in self.layer_names:
            x = getattr(self, name)(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))

    def update_metrics(self, stage: str, logits: Tensor, targets: Tensor) -> None:
        metric = self._metric(stage)
        metric(logits, targets)
        self.log(f"{stage}/acc", metric, prog_bar=stage != "train", batch_size=len(targets))


class SegmentationNet(_Trainable):
    """A small U-Net: ``enc1`` → ``enc2`` → ``bottleneck`` → ``dec2`` → ``dec1`` → ``head`` (1×1 conv).

    Args:
        num_classes: output classes per pixel.
        in_channels: image channels.
        width: channels of ``enc1``; deeper levels double them.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.

    Shape:
        - input: ``(B, in_channels, H, W)`` with H and W divisible by 4
        - output: ``(B, num_classes, H, W)`` logits

    Example:
        >>> m = SegmentationNet(num_classes=3, width=8)
        >>> tuple(m(torch.zeros(1, 3, 64, 128)).shape)
        (1, 3, 64, 128)
    """

    def __init__(
        self, num_classes: int = 3, in_channels: int = 3, width: int = 16, lr: float = 3e-3, weight_decay: float = 1e-4
    ) -> None:
        super().__init__(lr, weight_decay)
        for name, v in (("num_classes", num_classes), ("in_channels", in_channels), ("width", width)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"Expected `{name}` to be a positive integer, but got {v!r}.")
        self.save_hyperparameters()
        w = width
        self.enc1 = _conv_block(in_channels, w)
        self.enc2 = _conv_block(w, 2 * w)
        self.bottleneck = _conv_block(2 * w, 4 * w)
        self.up2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, 2)
        self.dec2 = _conv_block(4 * w, 2 * w)
        self.up1 = nn.ConvTranspose2d(2 * w, w, 2, 2)
        self.dec1 = _conv_block(2 * w, w)
        self.head = nn.Conv2d(w, num_classes, 1)
        self.metrics = nn.ModuleDict(
            {
                s: torchmetrics.JaccardIndex(task="multiclass", num_classes=num_classes, average="none")
                for s in ("train_", "val_", "test_")
            }
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"Expected image height and width divisible by 4, but got {tuple(x.shape[-2:])}.")
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottleneck(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], 1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
        return self.head(d1)

    def update_metrics(self, stage: str, logits: Tensor, targets: Tensor) -> None:
        self._metric(stage).update(logits.argmax(1), targets)

    def _log_iou(self, stage: str) -> None:
        metric = self._metric(stage)
        iou = metric.compute()
        for c, v in enumerate(iou):
            self.log(f"{stage}/iou_{c}", v)
        self.log(f"{stage}/miou", iou.mean(), prog_bar=True)
        metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_iou("train")

    def on_validation_epoch_end(self) -> None:
        self._log_iou("val")

    def on_test_epoch_end(self) -> None:
        self._log_iou("test")


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )
