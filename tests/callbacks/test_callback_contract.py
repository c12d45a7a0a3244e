"""Contract tests over the registry of every public callback: both flavours, checkpoint round trip of the state a
real run leaves, no side effects."""

from __future__ import annotations

import importlib
import inspect
import os
import pkgutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from _cbtiny import FLAVOURS, lightning

import callbacks
from callbacks import CALLBACKS, Monitor

FACTORIES: dict[str, Callable[[], Any]] = {
    "ConceptMonitor": lambda: callbacks.ConceptMonitor("layer1", every_n_epochs=2, name="x"),
    "ConfusionMonitor": lambda: callbacks.ConfusionMonitor(every_n_train_steps=5),
    "FailureDrivenAugmentation": lambda: callbacks.FailureDrivenAugmentation(fallback="Cutout"),
    "JointBatchTraining": lambda: callbacks.JointBatchTraining(
        importlib.import_module("augment").JointBatch(importlib.import_module("augment").Cutout(size=2))
    ),
    "SaliencyMonitor": lambda: callbacks.SaliencyMonitor("layer1", num_images=2),
    "TCAVMonitor": lambda: callbacks.TCAVMonitor("layer1", num_runs=3, every_n_epochs=2),
}


def _public_callback_classes() -> set[str]:
    base = callbacks._base._CallbackBase
    found = set()
    for info in pkgutil.iter_modules(callbacks.__path__):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"callbacks.{info.name}")
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and issubclass(obj, base) and obj.__module__ == module.__name__ \
                    and not name.startswith("_"):
                found.add(name)
    return found


def test_every_public_callback_is_in_the_registry_and_has_a_factory() -> None:
    listed = {c.__name__ for c in CALLBACKS}
    assert _public_callback_classes() == listed
    assert set(FACTORIES) == listed
    assert listed <= set(callbacks.__all__)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_callback_is_accepted_by_both_lightning_flavours(name: str) -> None:
    cb = FACTORIES[name]()
    for flavour in FLAVOURS:
        assert isinstance(cb, lightning(flavour).Callback)


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_construction_has_no_side_effects_and_state_round_trips(name: str, tmp_path: Path) -> None:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        cb = FACTORIES[name]()
    finally:
        os.chdir(cwd)
    assert list(tmp_path.iterdir()) == []
    assert name in cb.state_key


# Configured to run within one epoch of `_cbtiny`'s data (3 training steps), all in one Trainer.
RUN_FACTORIES: dict[str, Callable[[], Any]] = {
    "ConceptMonitor": lambda: callbacks.ConceptMonitor(
        "layer1", patches="window", n_concepts=2, probe_size=8, max_galleries=1, grid=(4, 4),
        analysis_kwargs={"patch_kwargs": {"sizes": (4,)}}),
    "ConfusionMonitor": lambda: callbacks.ConfusionMonitor(probe_size=8, every_n_train_steps=2),
    "FailureDrivenAugmentation": lambda: callbacks.FailureDrivenAugmentation(fallback="Cutout"),
    "JointBatchTraining": lambda: callbacks.JointBatchTraining(
        importlib.import_module("augment").JointBatch(importlib.import_module("augment").Cutout(size=2, seed=0))
    ),
    "SaliencyMonitor": lambda: callbacks.SaliencyMonitor("layer1", probe_size=8),
    "TCAVMonitor": lambda: callbacks.TCAVMonitor("layer1", num_runs=2, probe_size=16),
}


def test_state_after_a_real_run_round_trips_for_every_callback(tmp_path: Path) -> None:
    from _cbtiny import make_module, make_trainer

    assert set(RUN_FACTORIES) == set(FACTORIES)
    ran = {name: factory() for name, factory in RUN_FACTORIES.items()}
    make_trainer("pytorch_lightning", tmp_path, list(ran.values()), max_epochs=1).fit(make_module("pytorch_lightning"))
    for name, cb in ran.items():
        state = cb.state_dict()
        assert not _same(state, RUN_FACTORIES[name]().state_dict()), f"{name} recorded no progress"
        twin = RUN_FACTORIES[name]()
        twin.load_state_dict(state)
        assert _same(twin.state_dict(), state), name
    for name, cb in ran.items():  # every monitor analysed at least once (a monitor that failed logs and skips)
        if isinstance(cb, Monitor):
            assert len(cb.runs) >= 1, name


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    return bool(a == b)


def test_monitors_have_distinct_tag_roots() -> None:
    roots = [c.tag_root for c in CALLBACKS if issubclass(c, Monitor)]
    assert len(roots) == len(set(roots)) and "monitor" not in roots


def test_the_real_monitors_do_not_change_the_loss_trajectory(tmp_path: Path) -> None:
    from _cbtiny import make_module, make_trainer

    def losses(with_monitors: bool) -> list[float]:
        lightning("pytorch_lightning").seed_everything(0, workers=True)
        module = make_module("pytorch_lightning")
        cbs = []
        if with_monitors:
            cbs = [
                callbacks.ConceptMonitor("layer1", patches="window", n_concepts=2, probe_size=8, max_galleries=1,
                                         grid=(4, 4), analysis_kwargs={"patch_kwargs": {"sizes": (4,)}}),
                callbacks.ConfusionMonitor(probe_size=8, every_n_train_steps=2),
                callbacks.SaliencyMonitor("layer1", probe_size=8, explain="target"),
                callbacks.FailureDrivenAugmentation(fallback="Cutout"),
            ]
        make_trainer("pytorch_lightning", tmp_path / str(with_monitors), cbs, max_epochs=2).fit(module)
        return module.losses

    assert losses(False) == losses(True)
