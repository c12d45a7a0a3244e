"""The shared callback mechanics: schedule, probe set, resume, budget, logging, both Lightning flavours."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import torch
from _cbtiny import FLAVOURS, event_accumulator, lightning, make_module, make_trainer

from callbacks._base import Monitor, image_grid, is_due, shrink_fraction
from callbacks._probe import RunContext
from debugger.capture import preserve_training_mode


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
        ({"strict": "yes"}, "Expected `strict` to be True or False"),
    ],
)
def test_constructor_rejects_bad_configuration(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Recorder(**kwargs)


def test_the_analysis_guard_restores_training_flags_grads_and_rng() -> None:
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(), torch.nn.BatchNorm1d(2))
    net.train()
    net[1].eval()
    net[0].weight.grad = torch.ones(2, 2)
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with torch.inference_mode(), preserve_training_mode(net, enable_grad=True, fork_rng=True):
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


# ---------------------------------------------------------------------------------------------------- artifacts


def _ctx(tmp_path: Any, zero: bool = True) -> RunContext:
    from callbacks._probe import _empty_probe

    return RunContext(trainer=None, pl_module=None, probe=_empty_probe("cpu"), epoch=0, global_step=0, run_index=0,
                      deadline=float("inf"), run_dir=tmp_path / "run", writer=None, is_global_zero=zero, rank=0,
                      world_size=1)


@pytest.mark.parametrize("failing", ["write", "fsync", "replace", "interrupt"])
def test_a_failed_artifact_write_keeps_the_previous_file_and_leaves_no_temporary(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    import os

    rec, ctx = Recorder(), _ctx(tmp_path)
    path = rec.write_artifact(ctx, "reports/latest.json", {"run": 1})
    assert path is not None and path.read_text() == '{\n "run": 1\n}'
    before = path.read_bytes()

    if failing == "write":  # the disk fills up half way through the new content
        real_fdopen = os.fdopen

        class HalfFile:
            def __init__(self, f: Any) -> None:
                self.f = f

            def __enter__(self) -> Any:
                return self

            def __exit__(self, *exc: Any) -> None:
                self.f.close()

            def fileno(self) -> int:
                return self.f.fileno()

            def write(self, data: bytes) -> int:
                self.f.write(data[: len(data) // 2])
                self.f.flush()
                raise OSError("No space left on device")

        monkeypatch.setattr(os, "fdopen", lambda *a, **k: HalfFile(real_fdopen(*a, **k)))
        error: type[BaseException] = OSError
    else:
        error = KeyboardInterrupt if failing == "interrupt" else OSError

        def boom(*_a: Any, **_k: Any) -> None:
            raise error("No space left on device")

        monkeypatch.setattr(os, "replace" if failing in ("replace", "interrupt") else "fsync", boom)
    with pytest.raises(error):
        rec.write_artifact(ctx, "reports/latest.json", {"run": 2, "padding": "x" * 10_000})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["latest.json"]


def test_artifacts_are_written_whole_by_rank_zero_only_and_bad_values_never_touch_the_disk(tmp_path: Any) -> None:
    rec = Recorder()
    assert rec.write_artifact(_ctx(tmp_path, zero=False), "a.txt", "x") is None
    assert not (tmp_path / "run").exists()
    ctx = _ctx(tmp_path)
    assert rec.write_artifact(ctx, "a.bin", b"\x00\x01").read_bytes() == b"\x00\x01"  # type: ignore[union-attr]
    assert rec.write_artifact(ctx, "a.txt", "é").read_text(encoding="utf-8") == "é"  # type: ignore[union-attr]
    rec.write_artifact(ctx, "t.json", {"t": torch.tensor([1, 2])})
    assert (tmp_path / "run" / "t.json").read_text() == '{\n "t": [\n  1,\n  2\n ]\n}'
    with pytest.raises(TypeError, match="Expected a JSON-serialisable value, but got object"):
        rec.write_artifact(ctx, "bad.json", {"x": object()})
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["a.bin", "a.txt", "t.json"]


def test_every_monitor_file_goes_through_write_artifact(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Concept store, ranking, policy and the PNGs written without TensorBoard: all via the atomic writer."""
    import callbacks
    from callbacks import _base

    written: list[str] = []
    real = _base.atomic_write

    def spy(path: Any, data: Any) -> Any:
        written.append(str(path))
        return real(path, data)

    monkeypatch.setattr(_base, "atomic_write", spy)
    L = lightning("pytorch_lightning")
    cbs = [
        callbacks.ConceptMonitor("layer1", patches="window", n_concepts=2, probe_size=8, max_galleries=1, grid=(4, 4),
                                 analysis_kwargs={"patch_kwargs": {"sizes": (4,)}}),
        callbacks.ConfusionMonitor(probe_size=8),
        callbacks.SaliencyMonitor("layer1", probe_size=8, num_images=1),
        callbacks.FailureDrivenAugmentation(fallback="Cutout", min_class_support=1),
    ]
    csv = L.loggers.CSVLogger(str(tmp_path), name="csv", version=0)
    make_trainer("pytorch_lightning", tmp_path, cbs, max_epochs=1, logger=csv).fit(make_module("pytorch_lightning"))
    root = tmp_path / "csv" / "version_0" / "conceptfix"
    on_disk = sorted(str(p) for p in root.rglob("*") if p.is_file())
    assert on_disk and sorted(set(written)) == on_disk
    names = {p.rsplit("/", 1)[-1] for p in on_disk}
    assert {"latest.json", "latest.md", "ranking.json"} <= names
    assert any(n.endswith(".png") for n in names) and not any(n.endswith(".tmp") for n in names)


def test_two_monitors_of_a_kind_without_names_are_rejected_before_they_overwrite_each_other(tmp_path: Any) -> None:
    # Different cadences give different state keys, so Lightning accepts both; their tags and files would collide.
    a, b = Recorder(every_n_epochs=1, probe_size=4), Recorder(every_n_epochs=2, probe_size=4)
    assert a.state_key != b.state_key
    trainer = make_trainer("pytorch_lightning", tmp_path, [a, b], max_epochs=1)
    with pytest.raises(ValueError, match="distinct tag prefixes .* two Recorders with 'recorder'; give each its own"):
        trainer.fit(make_module("pytorch_lightning"))


def test_without_a_logger_files_go_under_the_trainers_own_root_or_nowhere(tmp_path: Any, monkeypatch: Any,
                                                                          caplog: Any) -> None:
    rooted = Recorder(every_n_epochs=1, probe_size=4)
    make_trainer("pytorch_lightning", tmp_path / "root", [rooted], max_epochs=1, logger=False).fit(
        make_module("pytorch_lightning"))
    assert len(list((tmp_path / "root" / "conceptfix" / "recorder" / "images").glob("probe_step*.png"))) == 1

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # Lightning's default_root_dir is the working directory: no folder appears there
    unrooted = Recorder(every_n_epochs=1, probe_size=4)
    L = lightning("pytorch_lightning")
    with caplog.at_level(logging.INFO):
        L.Trainer(max_epochs=1, logger=False, callbacks=[unrooted], enable_progress_bar=False,
                  enable_checkpointing=False, enable_model_summary=False, num_sanity_val_steps=0).fit(
            make_module("pytorch_lightning"))
    assert unrooted.runs[0]["n"] == 4 and list(work.iterdir()) == []
    assert "nothing is written (the trainer has no logger and no `default_root_dir` of its own)" in caplog.text


def test_a_restored_probe_set_that_no_longer_fits_is_drawn_afresh_with_a_warning(tmp_path: Any) -> None:
    from _cbtiny import TinyConcepts

    rec = Recorder(every_n_epochs=1, probe_size=12)
    make_trainer("pytorch_lightning", tmp_path, [rec], max_epochs=1, logger=False).fit(make_module("pytorch_lightning"))
    assert max(rec.probe_indices or []) >= 6

    smaller = Recorder(every_n_epochs=1, probe_size=12, probe_dataset=TinyConcepts(6, seed=2))
    smaller.setup(_FakeTrainer(tmp_path), None, "fit")
    smaller.load_state_dict(rec.state_dict())
    with pytest.warns(UserWarning, match=r"has indices up to \d+, but the validation set has 6 samples now; a fresh"):
        probe = smaller.probe()
    assert probe is not None and sorted(probe.indices) == list(range(6))

    resized = Recorder(every_n_epochs=1, probe_size=4, probe_dataset=TinyConcepts(16, seed=2))
    resized.setup(_FakeTrainer(tmp_path), None, "fit")
    resized.load_state_dict(rec.state_dict())
    with pytest.warns(UserWarning, match=r"has 12 images, but `probe_size=4` asks for 4; a fresh probe set of 4"):
        probe = resized.probe()
    assert probe is not None and len(probe) == 4


class _FakeTrainer:
    """What Monitor.setup reads of a trainer without a logger."""

    def __init__(self, root: Any) -> None:
        self.callbacks: list[Any] = []
        self.loggers: list[Any] = []
        self.log_dir = str(root)
        self.default_root_dir = str(root)
