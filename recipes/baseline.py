"""Train the baseline models quickly on CPU and measure them per concept slice."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from debugger.contract import unpack_batch
from recipes.data.base import ContractDataModule
from recipes.models import ResNetClassifier, SegmentationNet


def quiet_lightning() -> None:
    """Silence Lightning's advice that does not apply to small CPU runs."""
    import logging

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*GPU available but not used.*")
    warnings.filterwarnings("ignore", ".*smaller than the logging interval.*")
    # Lightning's own pytree copy builds torch's deprecated LeafSpec; nothing a user of conceptfix can change.
    warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)` is deprecated.*", FutureWarning)


def default_model(datamodule: ContractDataModule) -> pl.LightningModule:
    """The baseline that fits a DataModule: a segmentation net when its targets are maps, else a ResNet."""
    num_classes = int(getattr(datamodule, "num_classes", 10))
    in_channels = int(getattr(datamodule, "in_channels", 3))
    sample = datamodule.dataset("val")[0]
    if unpack_batch({k: v.unsqueeze(0) for k, v in sample.items()}).is_segmentation:
        return SegmentationNet(num_classes=num_classes, in_channels=in_channels)
    return ResNetClassifier(num_classes=num_classes, in_channels=in_channels)


def fit_baseline(
    datamodule: ContractDataModule,
    model: nn.Module | Callable[[], nn.Module] | None = None,
    max_epochs: int = 4,
    seed: int = 0,
    progress: bool = False,
    **trainer_kwargs: Any,
) -> nn.Module:
    """Fit ``model`` (default: :func:`default_model`; a ``LightningModule`` of either flavour) on ``datamodule`` on the
    CPU, seeded, without checkpoints.

    Pass a model class or factory (``model=ResNetClassifier``) to have its initial weights drawn after seeding,
    so that the same ``seed`` gives the same run whatever ran before in the process; an instance keeps the
    weights it was built with.

    Extra keyword arguments go to ``pl.Trainer`` (e.g. ``callbacks``, ``logger``, ``default_root_dir``).

    Example:
        >>> from recipes.data import PlantedConceptsDataModule
        >>> dm = PlantedConceptsDataModule(train_size=64, val_size=32, test_size=32, batch_size=32, cache_dir=None)
        >>> model = fit_baseline(dm, max_epochs=1)
    """
    if not isinstance(max_epochs, int) or max_epochs < 1:
        raise ValueError(f"Expected `max_epochs` to be a positive integer, but got {max_epochs!r}.")
    quiet_lightning()
    pl.seed_everything(seed, workers=True, verbose=False)
    if model is None:
        model = default_model(datamodule)
    elif not isinstance(model, nn.Module):
        model = model()
    kwargs: dict[str, Any] = {
        "accelerator": "cpu",
        "devices": 1,
        "max_epochs": max_epochs,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": progress,
        "enable_model_summary": False,
        "deterministic": True,
        "num_sanity_val_steps": 0,
    }
    kwargs.update(trainer_kwargs)
    _flavour_of(model).Trainer(**kwargs).fit(model, datamodule=datamodule)
    model.eval()
    return model


def _flavour_of(model: nn.Module) -> Any:
    """The Lightning package whose Trainer takes ``model``: a user's own module may be of either flavour (the
    built-in ones are of both)."""
    if not isinstance(model, pl.LightningModule):
        try:
            import lightning.pytorch as L
        except ImportError:  # pragma: no cover - depends on the environment
            return pl
        if isinstance(model, L.LightningModule):
            return L
    return pl


@torch.no_grad()
def predict(model: nn.Module, data: Dataset | Iterable[Any], batch_size: int = 256) -> dict[str, Tensor]:
    """Predictions and the contract fields over a dataset or an iterable of batches (model restored after).

    Returns:
        ``pred`` and ``target`` (``(N,)`` or ``(N, H, W)``), and ``concepts`` ``(N, K)`` when the data has them.
    """
    loader = DataLoader(data, batch_size=batch_size) if isinstance(data, Dataset) else data
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    preds, targets, concepts = [], [], []
    try:
        for batch in loader:
            b = unpack_batch(batch)
            preds.append(model(b.images.to(device)).argmax(1).cpu())
            targets.append(b.targets)
            if b.concepts is not None:
                concepts.append(b.concepts)
    finally:
        model.train(was_training)
    out = {"pred": torch.cat(preds), "target": torch.cat(targets)}
    if concepts:
        out["concepts"] = torch.cat(concepts)
    return out


def slice_metrics(model: nn.Module, dataset: Dataset, batch_size: int = 256) -> dict[str, Any]:
    """Accuracy (classification) or pixel accuracy and per-class IoU (segmentation) per concept slice.

    Returns:
        ``{"all": m, "clean": m, "<concept>": {"with": m, "without": m, "n_with": int, "n_without": int}, ...}``
        where ``m`` is accuracy, or ``{"pixel_acc": ..., "iou": [...]}`` for segmentation; ``clean`` holds the
        images with no concept at all.
    """
    out = predict(model, dataset, batch_size)
    pred, target = out["pred"], out["target"]
    concepts = out.get("concepts")
    names = tuple(getattr(dataset, "concept_names", ()))
    seg = target.dim() == 3
    num_classes = int(getattr(dataset, "num_classes", int(target.max()) + 1))

    def metric(sel: Tensor) -> Any:
        if not bool(sel.any()):
            return float("nan") if not seg else {"pixel_acc": float("nan"), "iou": [float("nan")] * num_classes}
        p, t = pred[sel], target[sel]
        if not seg:
            return float((p == t).float().mean())
        iou = []
        for c in range(num_classes):
            inter = ((p == c) & (t == c)).sum()
            union = ((p == c) | (t == c)).sum()
            iou.append(float(inter / union) if union > 0 else float("nan"))
        return {"pixel_acc": float((p == t).float().mean()), "iou": iou}

    everything = torch.ones(len(pred), dtype=torch.bool)
    result: dict[str, Any] = {"all": metric(everything), "n": len(pred)}
    if concepts is not None and names:
        present = concepts > 0.5
        result["clean"] = metric(~present.any(1))
        for k, name in enumerate(names):
            result[name] = {
                "with": metric(present[:, k]),
                "without": metric(~present[:, k]),
                "n_with": int(present[:, k].sum()),
                "n_without": int((~present[:, k]).sum()),
            }
    return result
