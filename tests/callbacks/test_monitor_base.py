"""The shared callback mechanics: schedule, probe set, resume, budget, logging, both Lightning flavours."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from _cbtiny import FLAVOURS, event_accumulator, lightning, make_module, make_trainer

from callbacks._base import (
    Monitor,
    RunContext,
    analysis_mode,
    image_grid,
    is_due,
    select_probe_indices,
    shrink_fraction,
)


class Recorder(Monitor):
    """A monitor whose analysis records what it saw, takes a gradient and draws random numbers."""

    tag_root = "recorder"

    def __init__(self, sleep: float = 0.0, **kw: Any) -> None:
        super().__init__(**kw)
        self.sleep = sleep
        self.seen: list[tuple[int, int, list[int]]] = []

    def analyse(self, ctx: RunContext) -> dict[str, Any]:
        import time

        self.seen.append((ctx.epoch, ctx.global_step, list(ctx.probe.indices)))
        x = ctx.probe.batch.images.clone().requires_grad_(True)
        x = x + 0.1 * torch.randn(x.shape)  # global RNG on purpose: must not leak into training
        (g,) = torch.autograd.grad(ctx.pl_module(x).sum(), x)
        assert torch.is_grad_enabled() and g.shape == x.shape
        assert not ctx.pl_module.training
        self.log_scalars(ctx, {"mean_grad": g.abs().mean().item()})
        self.log_image(ctx, "probe", image_grid(ctx.probe.batch.images[:4].sigmoid()))
        if self.sleep:
            time.sleep(self.sleep)
        return {"n": len(ctx.probe)}


# ---------------------------------------------------------------------------------------------------- pure


def test_is_due_follows_lightning_epoch_and_step_counting() -> None:
    assert [e for e in range(7) if is_due(epoch=e, every_n_epochs=3)] == [2, 5]
    assert [s for s in range(0, 9) if is_due(step=s, every_n_train_steps=4)] == [4, 8]
    assert not is_due(epoch=3, every_n_epochs=None)
    assert not is_due(step=4, every_n_train_steps=0)


def test_select_probe_indices_is_seeded_distinct_and_bounded() -> None:
    a = select_probe_indices(100, 10, seed=3)
    assert a == select_probe_indices(100, 10, seed=3)
    assert a != select_probe_indices(100, 10, seed=4)
    assert len(set(a)) == 10 and all(0 <= i < 100 for i in a)
    assert sorted(select_probe_indices(5, 10, seed=0)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="Expected `size` to be a positive integer"):
        select_probe_indices(5, 0, seed=0)


def test_shrink_fraction_scales_by_overrun_with_floor() -> None:
    assert shrink_fraction(1.0, 30.0, 10.0) == pytest.approx(0.8 / 3, abs=1e-4)
    assert shrink_fraction(0.3, 5.0, 10.0) == 0.3
    assert shrink_fraction(0.1, 1000.0, 1.0) == 0.05


def test_image_grid_places_images_row_major_with_padding() -> None:
    imgs = torch.stack([torch.full((1, 2, 2), float(i)) for i in range(3)])
    g = image_grid(imgs, nrow=2, padding=1, pad_value=-1.0)
    assert g.shape == (1, 7, 7)
    assert g[0, 1, 1] == 0 and g[0, 1, 4] == 1 and g[0, 4, 1] == 2 and g[0, 4, 4] == -1 and g[0, 0, 0] == -1
    with pytest.raises(ValueError, match="Expected `images` of shape"):
        image_grid(torch.zeros(3, 4, 4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_epochs": -1}, "Expected `every_n_epochs` to be a non-negative integer"),
        ({"every_n_epochs": None}, "Expected `every_n_epochs` or `every_n_train_steps` to be positive"),
        ({"probe_size": 0}, "Expected `probe_size` to be a positive integer"),
        ({"max_seconds": 0}, "Expected `max_seconds` to be positive"),
        ({"chunk_size": 0}, "Expected `chunk_size` to be a positive integer"),
        ({"probe_dataset": 3}, "Expected `probe_dataset` to be a map-style dataset"),
    ],
)
def test_constructor_rejects_bad_configuration(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Recorder(**kwargs)


def test_analysis_mode_restores_training_flags_grads_and_rng() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(), torch.nn.BatchNorm1d(2))
    net.train()
    net[1].eval()
    net[0].weight.grad = torch.ones(2, 2)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with torch.inference_mode(), analysis_mode(net):
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        assert not net.training and not net[2].training
        torch.rand(100)
        net[0].weight.grad = None
    assert torch.equal(torch.rand(3), expected)
    assert net.training and not net[1].training and net[2].training
    assert torch.equal(net[0].weight.grad, torch.ones(2, 2))


def test_one_class_passes_both_flavours_callback_checks() -> None:
    for flavour in FLAVOURS:
        L = lightning(flavour)
        assert isinstance(Recorder(), L.Callback)


# ---------------------------------------------------------------------------------------------------- trainer runs


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_runs_at_the_scheduled_epochs_with_either_flavour(flavour: str, tmp_path: Any) -> None:
    rec = Recorder(every_n_epochs=2, probe_size=6)
    trainer = make_trainer(flavour, tmp_path, [rec], max_epochs=5, num_sanity_val_steps=2)
    trainer.fit(make_module(flavour))
    assert [e for e, _, _ in rec.seen] == [1, 3]
    assert all(len(idx) == 6 for _, _, idx in rec.seen)
    assert rec.seen[0][2] == rec.seen[1][2]  # fixed probe set


def test_runs_every_n_train_steps_and_skips_fast_dev_run(tmp_path: Any) -> None:
    rec = Recorder(every_n_epochs=None, every_n_train_steps=2, probe_size=4)
    make_trainer("pytorch_lightning", tmp_path, [rec], max_epochs=2).fit(make_module("pytorch_lightning"))
    assert [s for _, s, _ in rec.seen] == [2, 4, 6]  # 3 steps per epoch, 6 steps
    rec2 = Recorder(every_n_epochs=1, every_n_train_steps=1)
    make_trainer("pytorch_lightning", tmp_path, [rec2], fast_dev_run=True, logger=False).fit(
        make_module("pytorch_lightning")
    )
    assert rec2.seen == []


def test_two_instances_coexist_with_distinct_state_keys(tmp_path: Any) -> None:
    a, b = Recorder(name="a", probe_size=4), Recorder(name="b", probe_size=4, seed=1)
    assert a.state_key != b.state_key
    trainer = make_trainer("pytorch_lightning", tmp_path, [a, b], max_epochs=1)
    trainer.fit(make_module("pytorch_lightning"))
    assert len(a.seen) == len(b.seen) == 1 and a.seen[0][2] != b.seen[0][2]
    tags = event_accumulator(tmp_path / "run" / "version_0").Tags()
    assert "recorder-a/probe" in tags["images"] and "recorder-b/probe" in tags["images"]
    assert "recorder-a/mean_grad" in tags["scalars"]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_checkpoint_resume_keeps_probe_set_and_schedule(flavour: str, tmp_path: Any) -> None:
    L = lightning(flavour)
    rec = Recorder(every_n_epochs=2, probe_size=5, seed=7)
    ckpt = L.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True, every_n_epochs=1)
    make_trainer(flavour, tmp_path, [rec, ckpt], max_epochs=2, enable_checkpointing=True).fit(make_module(flavour))
    assert [e for e, _, _ in rec.seen] == [1]
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"][rec.state_key]
    assert saved["probe_indices"] == rec.probe_indices and [r["epoch"] for r in saved["runs"]] == [1]

    resumed = Recorder(every_n_epochs=2, probe_size=5, seed=999)  # a different seed must not matter
    make_trainer(flavour, tmp_path, [resumed], max_epochs=6).fit(
        make_module(flavour), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert [e for e, _, _ in resumed.seen] == [3, 5]
    assert resumed.seen[0][2] == rec.seen[0][2]
    assert [r["epoch"] for r in resumed.runs] == [1, 3, 5]


def test_monitor_does_not_change_the_loss_trajectory(tmp_path: Any) -> None:
    def losses(callbacks: list[Any]) -> list[float]:
        lightning("pytorch_lightning").seed_everything(0, workers=True)
        module = make_module("pytorch_lightning")
        make_trainer("pytorch_lightning", tmp_path, callbacks, max_epochs=3, logger=False).fit(module)
        return module.losses

    base = losses([])
    with_monitor = losses([Recorder(every_n_epochs=1, every_n_train_steps=2, probe_size=8)])
    assert len(base) == 9 and base == with_monitor


def test_time_budget_subsamples_the_next_run_and_warns(tmp_path: Any) -> None:
    rec = Recorder(every_n_epochs=1, probe_size=10, max_seconds=0.05, sleep=0.2)
    with pytest.warns(UserWarning, match="over its budget of max_seconds=0.05"):
        make_trainer("pytorch_lightning", tmp_path, [rec], max_epochs=2, logger=False).fit(
            make_module("pytorch_lightning")
        )
    sizes = [len(idx) for _, _, idx in rec.seen]
    assert sizes[0] == 10 and sizes[1] < 10
    assert rec.seen[1][2] == rec.seen[0][2][: sizes[1]]


def test_without_tensorboard_images_go_to_the_run_dir_and_the_log_says_where(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    L = lightning("pytorch_lightning")
    rec = Recorder(probe_size=4)
    csv = L.loggers.CSVLogger(str(tmp_path), name="csv", version=0)
    with caplog.at_level(logging.INFO, logger="conceptfix.callbacks"):
        make_trainer("pytorch_lightning", tmp_path, [rec], max_epochs=1, logger=csv).fit(
            make_module("pytorch_lightning")
        )
    pngs = list((tmp_path / "csv" / "version_0" / "conceptfix" / "recorder" / "images").glob("*.png"))
    assert len(pngs) == 1
    assert any("no TensorBoardLogger" in r.message and "csv" in r.message for r in caplog.records)
    metrics = (tmp_path / "csv" / "version_0" / "metrics.csv").read_text()
    assert "recorder/mean_grad" in metrics
