"""Fault injection: every monitor, in a real tiny Trainer, against the inputs and models that used to end
``trainer.fit`` (issue 15). Each case must let ``fit`` complete, leave training exactly as without the monitors, and
make what happened visible: a warning and a TensorBoard text tag (``<prefix>/warning`` when the monitor analysed
less than asked, ``<prefix>/error`` when it skipped a run), in the user's terms."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from _cbtiny import TinyConcepts, event_accumulator, lightning, make_module, make_trainer
from torch.utils.data import DataLoader, Dataset

import callbacks

CASES = ("nan", "inf", "tiny", "single_class", "diverged", "bf16", "tuple", "uint8", "onehot")
MONITORS = ("ConceptMonitor", "ConfusionMonitor", "SaliencyMonitor", "TCAVMonitor", "FailureDrivenAugmentation")
PROBE_MONITORS = MONITORS[:4]

# What each case must show, per monitor: ("warning" | "error", words of the message). Monitors not listed for a
# case must run every time without an error.
EXPECTED: dict[str, dict[str, tuple[str, str]]] = {
    "nan": {m: ("warning", "NaN in validation image 0: left out of the probe set (1 of 12") for m in PROBE_MONITORS},
    "inf": {m: ("warning", "infinite values in validation image 0: left out of the probe set") for m in PROBE_MONITORS},
    "tiny": {"ConceptMonitor": ("warning", "3 probe images, need ≥ 8 for 8 concepts: discovering 3")},
    "single_class": {},
    "diverged": {m: ("error", "the model's parameters are not finite") for m in PROBE_MONITORS},
    "bf16": {},
    "tuple": {},
    "uint8": {},
    "onehot": {},
}


class Faulty(Dataset):
    """TinyConcepts samples with one fault: a NaN / Inf first image, a single class, uint8 images or one-hot targets."""

    def __init__(self, n: int, seed: int, case: str) -> None:
        self.inner = TinyConcepts(n, seed=seed)
        self.case = case
        if case == "single_class":
            self.inner.y.zero_()

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, i: int) -> Any:
        sample = dict(self.inner[i])
        if self.case in ("nan", "inf") and i == 0:
            sample["image"] = sample["image"].clone()
            sample["image"][1, 2, 3] = float("nan") if self.case == "nan" else float("inf")
        if self.case == "uint8":
            sample["image"] = ((sample["image"] + 4.0) * 24.0).clamp(0, 255).to(torch.uint8)
        if self.case == "onehot":
            sample["target"] = torch.nn.functional.one_hot(sample["target"], 3).float()
        return sample


def _module(case: str) -> Any:
    base = type(make_module("pytorch_lightning"))

    class Variant(base):  # type: ignore[misc, valid-type]
        def forward(self, x: torch.Tensor) -> Any:
            if case == "uint8":  # the model scales its own input: the monitors must feed it the same numbers
                x = x.float() / 255.0 * 10.0 - 4.0
            out = super().forward(x)
            return (out, x.mean()) if case == "tuple" else out

        def on_fit_start(self) -> None:
            if case == "diverged":  # as after a blown-up step: every weight of the head is NaN from the start
                with torch.no_grad():
                    self.fc.weight.fill_(float("nan"))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            out = self(batch["image"])
            logits = out[0] if case == "tuple" else out
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["target"])
            self.losses.append(float(loss.detach()))
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def train_dataloader(self) -> DataLoader:
            return DataLoader(Faulty(16, 1, case if case in ("uint8", "onehot") else "clean"), batch_size=8)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(Faulty(3 if case == "tiny" else 12, 2, case), batch_size=8)

    return Variant()


def _monitors() -> list[Any]:
    return [
        callbacks.ConceptMonitor("layer1", patches="window", probe_size=12, max_galleries=1, grid=(4, 4),
                                 max_projector_points=64, analysis_kwargs={"patch_kwargs": {"sizes": (4,)}}),
        callbacks.ConfusionMonitor(probe_size=12, min_support=1),
        callbacks.SaliencyMonitor("layer1", probe_size=12, num_images=2),
        callbacks.TCAVMonitor("layer1", probe_size=12, num_runs=3, window_sizes=(4,)),
        callbacks.FailureDrivenAugmentation(fallback="Cutout", min_class_support=1, log_only=True),
    ]


def _fit(case: str, root: Path, cbs: list[Any]) -> tuple[list[float], dict[str, torch.Tensor]]:
    lightning("pytorch_lightning").seed_everything(0, workers=True)
    module = _module(case)
    kw: dict[str, Any] = {"precision": "bf16-true"} if case == "bf16" else {}
    make_trainer("pytorch_lightning", root, cbs, max_epochs=2, **kw).fit(module)
    return module.losses, {k: v.detach().clone() for k, v in module.state_dict().items()}


def _texts(acc: Any, tag: str) -> list[str]:
    if f"{tag}/text_summary" not in acc.Tags()["tensors"]:
        return []
    return [e.tensor_proto.string_val[0].decode() for e in acc.Tensors(f"{tag}/text_summary")]


@pytest.mark.parametrize("case", CASES)
def test_every_monitor_survives_the_fault_leaves_training_alone_and_shows_it(case: str, tmp_path: Path) -> None:
    plain_losses, plain_weights = _fit(case, tmp_path / "plain", [])
    monitors = _monitors()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        losses, weights = _fit(case, tmp_path / "monitored", monitors)  # completes: nothing here may raise

    # Training is exactly what it was without the monitors (NaN where the plain run had NaN).
    assert len(losses) == len(plain_losses) == 4
    assert torch.allclose(torch.tensor(losses), torch.tensor(plain_losses), rtol=0, atol=0, equal_nan=True)
    for k, v in plain_weights.items():
        assert torch.allclose(weights[k].float(), v.float(), rtol=0, atol=0, equal_nan=True), k

    said = [str(w.message) for w in caught]
    acc = event_accumulator(tmp_path / "monitored" / "run" / "version_0")
    by_name = {type(m).__name__: m for m in monitors}
    assert sorted(by_name) == sorted(MONITORS)
    for name, m in by_name.items():
        assert [r["epoch"] for r in m.runs] == [0, 1], name  # every scheduled run happened or was skipped
        errors = [r["error"] for r in m.runs if "error" in r]
        error_texts = _texts(acc, f"{m.tag_prefix}/error")
        assert len(error_texts) == len(errors), name  # every skip is in TensorBoard, with its cause
        assert all(e in t for e, t in zip(errors, error_texts, strict=True))
        assert all(any(e in s for s in said) for e in errors)
        kind, words = EXPECTED[case].get(name, ("", ""))
        if kind == "error":
            assert len(errors) == 2 and all(words in e for e in errors), (name, errors)
            assert any(words in t for t in error_texts)
        else:
            assert not errors, (name, errors)
        if kind == "warning":
            assert any(words in s for s in said), (name, said)
            assert any(words in t for t in _texts(acc, f"{m.tag_prefix}/warning")), name
    if case in ("nan", "inf"):  # the image was left out, the rest analysed
        assert by_name["ConceptMonitor"].latest_report is not None
        assert 0 not in by_name["ConceptMonitor"].latest_report.meta["probe_indices"]
    if not EXPECTED[case] or case == "tiny":  # a clean analysis: the concept report exists and was published
        assert by_name["ConceptMonitor"].latest_report is not None


def test_a_model_whose_outputs_overflow_is_skipped_in_the_users_terms(tmp_path: Path) -> None:
    base = type(make_module("pytorch_lightning"))

    class Overflowing(base):  # type: ignore[misc, valid-type]
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = super().forward(x)
            return out if self.training else out * float("inf")

    mon = callbacks.ConfusionMonitor(probe_size=8)
    with pytest.warns(UserWarning, match="the model's outputs are not finite"):
        make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1).fit(Overflowing())
    assert "the model's outputs are not finite" in mon.runs[0]["error"]


def test_every_probe_image_non_finite_skips_with_why(tmp_path: Path) -> None:
    base = type(make_module("pytorch_lightning"))

    class AllNaN(base):  # type: ignore[misc, valid-type]
        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def val_dataloader(self) -> DataLoader:
            data = TinyConcepts(4, seed=2)
            data.x[:] = float("nan")
            return DataLoader(data, batch_size=4)

    mon = callbacks.SaliencyMonitor("layer1", probe_size=4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1).fit(AllNaN())
    said = " | ".join(str(w.message) for w in caught)
    assert "NaN in validation image" in said and "and 0 more" not in said
    assert mon.runs[0]["error"] == "no probe image is finite (every one holds NaN or infinite values)"


def test_patches_that_look_alike_give_fewer_concepts_said_plainly(tmp_path: Path) -> None:
    base = type(make_module("pytorch_lightning"))

    class DeadLayer(base):  # type: ignore[misc, valid-type]
        def on_fit_start(self) -> None:  # a dead layer: every patch of every image looks alike to the model
            for p in self.layer1.parameters():
                p.requires_grad_(False)
                p.data.zero_()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

    mon = callbacks.ConceptMonitor("layer1", patches="window", probe_size=8, grid=None, projector=False,
                                   analysis_kwargs={"patch_kwargs": {"sizes": (4,)}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1).fit(DeadLayer())
    said = " | ".join(str(w.message) for w in caught)
    assert "the 8 probe images gave 1 distinct patch embeddings at layer 'layer1', fewer than 8 concepts" in said
    assert "error" not in mon.runs[0] and mon.latest_report is not None and len(mon.latest_report.concepts) == 1


def test_a_discovery_that_finds_nothing_is_skipped_in_the_users_terms(tmp_path: Path) -> None:
    mon = callbacks.ConceptMonitor("layer1", patches="window", probe_size=8, grid=None, projector=False,
                                   analysis_kwargs={"patch_kwargs": {"sizes": (4,)},
                                                    "discovery": lambda embeddings, patches: []})
    with pytest.warns(UserWarning, match=r"skipped its analysis at epoch 0, step 3: no concepts in the 8 probe "
                                         r"images at layer 'layer1': their patches look alike to the model"):
        make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1).fit(make_module("pytorch_lightning"))
    acc = event_accumulator(tmp_path / "run" / "version_0")
    (text,) = _texts(acc, "concepts/error")
    assert "no concepts in the 8 probe images" in text and "Traceback" not in text and "```" not in text
