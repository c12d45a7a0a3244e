"""TCAVMonitor in real Trainer runs: tags per concept/class/layer with p-values, the JSON artifact, segmentation."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
from _cbtiny import TinyConcepts, event_accumulator, lightning, make_module, make_trainer
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from callbacks.findings import TCAVFinding
from callbacks.tcav_monitor import TCAVMonitor
from debugger.contract import as_sample


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": []}, "Expected `layers`"),
        ({"layers": "x", "num_runs": 1}, "Expected `num_runs` to be an integer >= 2"),
        ({"layers": "x", "concepts": "shadow"}, "Expected `concepts`"),
        ({"layers": "x", "classes": []}, "Expected `classes`"),
        ({"layers": "x", "window_sizes": [0]}, "Expected `window_sizes`"),
        ({"layers": "x", "min_overlap": 0.0}, "Expected `min_overlap`"),
        ({"layers": "x", "pixels_per_class": 0}, "Expected `pixels_per_class`"),
        ({"layers": "x", "correction": "fdr"}, "Expected `correction` to be one of"),
        ({"layers": "x", "significance": 0.0}, "Expected `significance`"),
        ({"layers": "x", "classifier": "tree"}, "Expected `classifier` to be one of"),
        ({"layers": "x", "test": "welch"}, "Expected `test` to be one of"),
        ({"layers": "x", "null_concepts": 1}, "Expected `null_concepts`"),
        ({"layers": "x", "max_examples": 1}, "Expected `max_examples`"),
    ],
)
def test_tcav_monitor_rejects_bad_configuration(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TCAVMonitor(**kwargs)


def test_unknown_concept_fails_at_setup(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match=r"Expected `concepts` among the dataset's \['bright', 'stripe'\]"):
        make_trainer("pytorch_lightning", tmp_path, [TCAVMonitor("layer1", concepts=["shadow"])], max_epochs=1,
                     logger=False).fit(make_module("pytorch_lightning"))


def test_unknown_layer_fails_at_setup_with_nearest_names(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="layer1"):
        make_trainer("pytorch_lightning", tmp_path, [TCAVMonitor("layr1")], max_epochs=1, logger=False).fit(
            make_module("pytorch_lightning")
        )


@pytest.mark.parametrize("flavour", ["pytorch_lightning", "lightning.pytorch"])
def test_scores_and_p_values_land_in_tensorboard_and_the_run_dir(flavour: str, tmp_path: Any) -> None:
    mon = TCAVMonitor(["stem", "layer1"], num_runs=3, probe_size=16, every_n_epochs=1, correction="bonferroni")
    make_trainer(flavour, tmp_path, [mon], max_epochs=2).fit(make_module(flavour))
    acc = event_accumulator(tmp_path / "run" / "version_0")
    scalars = set(acc.Tags()["scalars"])
    expected = {f"tcav/{kind}/{layer}/{concept}/class_{c}" for kind in ("score", "p_value")
                for layer in ("stem", "layer1") for concept in ("bright", "stripe") for c in range(3)}
    assert expected <= scalars
    assert {"tcav/significant/stem", "tcav/significant/layer1"} <= scalars
    assert [e.step for e in acc.Scalars("tcav/score/layer1/bright/class_0")] == [3, 6]  # once per epoch
    assert "tcav/table/text_summary" in acc.Tags()["tensors"]  # how TensorBoard stores add_text
    history = json.loads((tmp_path / "run" / "version_0" / "conceptfix" / "tcav" / "tcav.json").read_text())
    assert [h["step"] for h in history] == [3, 6]
    last = history[-1]
    assert last["layers"] == ["stem", "layer1"] and last["concepts"] == ["bright", "stripe"]
    assert len(last["rows"]) == 2 * 2 * 3 and len(last["scores"][0][0][0]) == 3
    assert last["correction"] == "bonferroni"
    logged = {e.step: e.value for e in acc.Scalars("tcav/score/layer1/bright/class_1")}
    row = next(r for r in last["rows"] if (r["layer"], r["concept"], r["class"]) == ("layer1", "bright", 1))
    assert logged[6] == pytest.approx(row["score"], abs=1e-6)
    # the logged p-values are Bonferroni-adjusted over the 2 layers x 2 concepts x 3 classes tested
    for row in last["rows"]:
        tag = f"tcav/p_value/{row['layer']}/{row['concept']}/class_{row['class']}"
        assert {e.step: e.value for e in acc.Scalars(tag)}[6] == pytest.approx(row["p_adjusted"], abs=1e-6)
        assert row["p_adjusted"] == pytest.approx(min(1.0, 12 * row["p_value"]))
    assert min(r["p_value"] for r in last["rows"]) < 1 / 12  # so the product, not only the cap, is checked
    assert mon.runs[-1]["tcav_tests"] == 12


def test_monitor_scores_equal_a_direct_tcav_call_on_the_trained_model(tmp_path: Any) -> None:
    from debugger.tcav import TCAV, concept_windows

    module = make_module("pytorch_lightning")
    mon = TCAVMonitor("layer1", num_runs=4, probe_size=12, every_n_epochs=1, seed=3, test="concepts",
                      null_concepts=3)
    make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1, logger=False).fit(module)
    probe = mon.probe()
    assert probe is not None and probe.batch.concept_masks is not None
    concepts, random = concept_windows(probe.batch.images, probe.batch.concept_masks.bool(), ["bright", "stripe"],
                                       sizes=(2, 4))
    targets = probe.batch.targets
    res = TCAV(module, "layer1", runs=4, random_state=3, test="concepts", null_concepts=3).interpret(
        probe.batch.images, targets, concepts, random, classes=sorted(targets.unique().tolist()))
    found = mon.finding(TCAVFinding)
    assert found is not None
    assert torch.allclose(found.result.scores.double(), res.scores)
    assert found.result.test == "concepts"
    assert [r["p_value"] for r in found.result.rows()] == [r["p_value"] for r in res.rows()]
    assert (tmp_path / "conceptfix" / "tcav" / "tcav.json").exists()  # no TensorBoard: still in the run dir


def test_time_budget_stops_before_the_next_layer(tmp_path: Any) -> None:
    mon = TCAVMonitor(["stem", "layer1"], num_runs=2, probe_size=8, every_n_epochs=1, max_seconds=1e-6)
    with pytest.warns(UserWarning, match="over its budget"):
        make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1, logger=False).fit(
            make_module("pytorch_lightning"))
    found = mon.finding(TCAVFinding)
    assert mon.runs[0]["layers_done"] == 1 and found is not None and found.result.layers == ["stem"]
    assert mon.probe_fraction < 1.0  # the next run analyses a subsample


def test_the_monitor_does_not_change_the_loss_trajectory(tmp_path: Any) -> None:
    def losses(with_monitor: bool) -> list[float]:
        lightning("pytorch_lightning").seed_everything(0, workers=True)
        module = make_module("pytorch_lightning")
        cbs = [TCAVMonitor("layer1", num_runs=2, probe_size=8, every_n_train_steps=2)] if with_monitor else []
        make_trainer("pytorch_lightning", tmp_path / str(with_monitor), cbs, max_epochs=2, logger=False).fit(module)
        return module.losses

    assert losses(False) == losses(True)


def test_probe_without_concept_masks_warns_once_and_logs_nothing(tmp_path: Any) -> None:
    probe = TensorDataset(torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,)))
    mon = TCAVMonitor("layer1", num_runs=2, probe_size=8, probe_dataset=probe)
    with pytest.warns(UserWarning, match="needs probe samples with `concept_masks`"):
        make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=2).fit(make_module("pytorch_lightning"))
    assert [r["skipped"] for r in mon.runs] == ["no concept masks"] * 2
    tags = event_accumulator(tmp_path / "run" / "version_0").Tags()
    assert not [t for t in tags["scalars"] if t.startswith("tcav/")]


class _TinySegData(Dataset):
    """TinyConcepts with a per-pixel target: class 1 where the first channel is positive, the top row void (255)."""

    concept_names = TinyConcepts.concept_names

    def __init__(self, n: int, seed: int) -> None:
        self.base = TinyConcepts(n, seed=seed)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Any:
        x, m = self.base.x[i], self.base.m[i]
        target = (x[0] > 0).long()
        target[0] = 255
        return as_sample(x, target, self.base.c[i], m)


def _seg_module() -> Any:
    L = lightning("pytorch_lightning")

    class TinySeg(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
            self.head = nn.Conv2d(6, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.enc(x))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self(batch["image"]), batch["target"], ignore_index=255)

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            loss = nn.functional.cross_entropy(self(batch["image"]), batch["target"], ignore_index=255)
            self.log("val_loss", loss)

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.1)

        def train_dataloader(self) -> DataLoader:
            return DataLoader(_TinySegData(16, 1), batch_size=8)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(_TinySegData(8, 2), batch_size=8)

    return TinySeg()


def test_segmentation_scores_pixels_of_each_class(tmp_path: Any) -> None:
    mon = TCAVMonitor("enc", num_runs=3, probe_size=8, pixels_per_class=5, every_n_epochs=1, ignore_index=255)
    make_trainer("pytorch_lightning", tmp_path, [mon], max_epochs=1).fit(_seg_module())
    found = mon.finding(TCAVFinding)
    assert found is not None
    assert found.result.classes == [0, 1]
    probe = mon.probe()
    assert probe is not None
    per_image = torch.stack([(probe.batch.targets == c).flatten(1).sum(1) for c in (0, 1)])  # (2, N)
    assert found.result.counts.tolist() == per_image.clamp(max=5).sum(1).tolist()  # ≤ 5 pixels per class and image
    assert found.result.counts[1] == 8 * 5
    tags = set(event_accumulator(tmp_path / "run" / "version_0").Tags()["scalars"])
    assert {"tcav/score/enc/bright/class_0", "tcav/p_value/enc/stripe/class_1"} <= tags
