"""A monitor that fails never ends ``trainer.fit``: it warns, logs why, skips that analysis, and leaves training as it
was; ``strict=True`` raises instead."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from _cbtiny import TinyConcepts, event_accumulator, lightning, make_module, make_trainer
from torch.utils.data import DataLoader, Dataset

import callbacks


class NaNFirst(Dataset):
    """TinyConcepts validation samples whose first image is NaN everywhere."""

    def __init__(self, n: int) -> None:
        self.inner = TinyConcepts(n, seed=2)

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> Any:
        sample = dict(self.inner[i])
        if i == 0:
            sample["image"] = torch.full_like(sample["image"], float("nan"))
        return sample


def _module(case: str) -> Any:
    """The tiny classifier with a NaN validation image, a 3-image validation set, or a forward returning a tuple."""
    base = type(make_module("pytorch_lightning"))

    class Variant(base):  # type: ignore[misc, valid-type]
        def forward(self, x: torch.Tensor) -> Any:
            out = super().forward(x)
            return (out, x.mean()) if case == "tuple" else out

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            out = self(batch["image"])
            loss = torch.nn.functional.cross_entropy(out[0] if case == "tuple" else out, batch["target"])
            self.losses.append(float(loss.detach()))
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def val_dataloader(self) -> DataLoader:
            data = NaNFirst(16) if case == "nan" else TinyConcepts(3 if case == "three" else 16, seed=2)
            return DataLoader(data, batch_size=8)

    return Variant()


def _monitors(**kw: Any) -> list[Any]:
    return [
        callbacks.ConceptMonitor("layer1", patches="window", probe_size=16, max_galleries=1, grid=(4, 4),
                                 analysis_kwargs={"patch_kwargs": {"sizes": (4,)}}, **kw),
        callbacks.ConfusionMonitor(probe_size=16, min_support=1, **kw),
        callbacks.SaliencyMonitor("layer1", probe_size=16, **kw),
    ]


def _fit(case: str, tmp_path: Path, cbs: list[Any]) -> tuple[list[float], dict[str, torch.Tensor]]:
    lightning("pytorch_lightning").seed_everything(0, workers=True)
    module = _module(case)
    make_trainer("pytorch_lightning", tmp_path, cbs, max_epochs=2).fit(module)
    return module.losses, {k: v.clone() for k, v in module.state_dict().items()}


# Nothing fails any more: a NaN image is dropped from the probe set (and named), a 3-image set is analysed with
# fewer concepts, a tuple output is read through its first tensor. The skip path itself is exercised per fault in
# test_fault_injection.py; here every run must happen.
MUST_FAIL: dict[str, set[str]] = {"nan": set(), "three": set(), "tuple": set()}


@pytest.mark.parametrize("case", sorted(MUST_FAIL))
def test_a_failing_analysis_is_skipped_and_training_goes_on_bit_identically(case: str, tmp_path: Path) -> None:
    plain_losses, plain_weights = _fit(case, tmp_path / "plain", [])
    monitors = _monitors()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses, weights = _fit(case, tmp_path / "monitored", monitors)
    assert losses == plain_losses and len(losses) == 6
    assert all(torch.equal(weights[k], plain_weights[k]) for k in plain_weights)

    failed = [m for m in monitors if any("error" in r for r in m.runs)]
    assert MUST_FAIL[case] <= {type(m).__name__ for m in failed}
    said = [str(w.message) for w in caught if "skipped its analysis" in str(w.message)]
    assert len(said) == sum("error" in r for m in monitors for r in m.runs)  # one warning per skipped run
    acc = event_accumulator(tmp_path / "monitored" / "run" / "version_0")
    for m in failed:
        errors = [r["error"] for r in m.runs if "error" in r]
        assert any(f"{type(m).__name__} skipped its analysis at epoch" in s and errors[0] in s for s in said)
        texts = [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(f"{m.tag_prefix}/error/text_summary")]
        assert len(texts) == len(errors) and errors[0] in texts[0]  # what failed and why, in TensorBoard
    for m in monitors:
        assert [r["epoch"] for r in m.runs] == [0, 1]  # every scheduled run either happened or was skipped
    if case == "three":
        assert all(len(m.probe_indices or []) == 3 for m in monitors)
    if case == "nan":  # every monitor names the image it left out, once
        named = [s for s in (str(w.message) for w in caught) if "NaN in validation image 0: left out" in s]
        assert len(named) == len(monitors)
        texts = acc.Tensors("concepts/warning/text_summary")
        assert "NaN in validation image 0" in texts[0].tensor_proto.string_val[0].decode()


def test_strict_monitors_raise_what_they_would_degrade_or_skip(tmp_path: Path) -> None:
    from callbacks._probe import AnalysisSkipped

    with pytest.raises(AnalysisSkipped, match=r"NaN in validation image 0: left out of the probe set \(1 of 16"):
        _fit("nan", tmp_path, [callbacks.ConfusionMonitor(probe_size=16, strict=True)])
