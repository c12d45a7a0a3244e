"""Input checks made before any work: the data fits the model, the layer exists, the data module is a contract one."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from debugger.capture import resolve_layer
from debugger.contract import unpack_batch
from recipes.data.base import ContractDataModule
from recipes.loop.run import LoopError


def model_kind(model: nn.Module) -> str:
    """``"segmentation"`` for the baseline segmentation net (``enc1`` … ``head``), else ``"classification"``.

    :func:`check_data` decides from the model's actual output instead, so other architectures work too.
    """
    return "segmentation" if hasattr(model, "head") and hasattr(model, "enc1") else "classification"


def check_contract_data(datamodule: Any) -> None:
    """Raises :class:`LoopError` saying how to wrap it if ``datamodule`` has no per-split ``dataset(split)``.

    The loop reads each split's dataset directly (probe sets, per-concept metrics), which a plain
    ``LightningDataModule`` does not offer.
    """
    if not callable(getattr(datamodule, "dataset", None)):
        raise LoopError(
            f"Expected a `recipes.data.ContractDataModule` (the loop reads each split's dataset through "
            f"`datamodule.dataset(split)`), but got {type(datamodule).__name__}, which has no `dataset` method. "
            f"Wrap your data: subclass ContractDataModule and implement `make_dataset(split)` returning the "
            f"'train', 'val' and 'test' datasets (contract dicts or (x, y) pairs); see 'In your own training "
            f"loop' in the README."
        )


def check_data(model: nn.Module, datamodule: ContractDataModule, split: str = "val") -> None:
    """Check that ``datamodule``'s samples fit ``model`` (channels, size, task, classes) with one forward.

    Raises:
        LoopError: saying what the data gives and what the model accepts, or how to wrap a DataModule that is
            not a :class:`~recipes.data.base.ContractDataModule`.
    """
    check_contract_data(datamodule)
    sample = datamodule.dataset(split)[0]
    batch = unpack_batch({k: v.unsqueeze(0) for k, v in sample.items()} if isinstance(sample, Mapping)
                         else (sample[0].unsqueeze(0), torch.as_tensor(sample[1]).unsqueeze(0)))
    x = batch.images
    hp = dict(getattr(model, "hparams", {}))
    kind = model_kind(model)

    def accepted() -> str:
        what = " with H and W divisible by 4 and (H, W) class maps" if kind == "segmentation" else \
            " and one class index per image"
        return (f"{type(model).__name__} accepts {hp.get('in_channels', '?')}-channel images{what} "
                f"in [0, {hp.get('num_classes', '?')})")

    if "in_channels" in hp and x.shape[1] != hp["in_channels"]:
        raise LoopError(f"Expected images with {hp['in_channels']} channels, but the data gives images of shape "
                        f"{tuple(x.shape[1:])}. {accepted()}.")
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except (RuntimeError, ValueError) as err:
        raise LoopError(f"Expected data the model can read, but images of shape {tuple(x.shape[1:])} fail in "
                        f"its forward: {err} {accepted()}.") from err
    finally:
        model.train(was)
    if isinstance(out, Tensor) and out.dim() in (2, 4):
        kind = "segmentation" if out.dim() == 4 else "classification"
        hp.setdefault("num_classes", int(out.shape[1]))
    seg_data = batch.targets.dim() == 3
    if seg_data != (kind == "segmentation"):
        what = "(H, W) class maps" if seg_data else "one class index per image"
        raise LoopError(f"Expected data for a {kind} model, but the data's targets are {what}. {accepted()}.")
    num_classes = int(getattr(datamodule, "num_classes", 0) or 0)
    if num_classes and num_classes != hp.get("num_classes", num_classes):
        raise LoopError(f"Expected data with {hp['num_classes']} classes, but the data has {num_classes}. "
                        f"{accepted()}.")


def check_layer(model: nn.Module, layer: str) -> None:
    """Raises :class:`LoopError` (listing the nearest valid names) if ``layer`` is not a layer of ``model``."""
    try:
        resolve_layer(model, layer)
    except ValueError as err:
        raise LoopError(str(err).replace("Expected `layer`", "Expected `--layer`")) from err


def default_layer(model: nn.Module) -> str:
    """The layer the concepts are read from by default: ``layer1`` of the built-in ResNets (where discovery finds
    the planted failures, ``docs/concepts.md``), ``enc2`` of the segmentation net, else the middle convolution.

    Example:
        >>> from recipes.models import ResNetClassifier
        >>> default_layer(ResNetClassifier())
        'layer1'
    """
    names = dict(model.named_modules())
    for name in ("layer1", "enc2"):
        if name in names:
            return name
    convs = [n for n, m in names.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise LoopError(f"Expected a model with a convolution layer to analyse, but {type(model).__name__} has none.")
    return convs[len(convs) // 2]

