"""conceptfix recipes: the closed loop and the ``conceptfix`` command line.

- :mod:`recipes.loop`: train with the monitors → diagnose → derive the policy → fine-tune → compare, one concern a
  module (run directory, checkpoints, checks, training, diagnosis, policy, fine-tuning, comparison, tables);
- :mod:`recipes.cli`: ``conceptfix``, one function per subcommand; :mod:`recipes.parsers`: its options and hints;
- :mod:`recipes.baseline`: fit a baseline quickly, metrics per concept slice;
- :mod:`recipes.models`: the baseline models; :mod:`recipes.data`: the built-in data and the data contract;
- ``recipes/configs/*.yaml``: the shipped recipes.

The names below are imported on first use, so that ``import recipes`` stays light (the command line sets up its
environment before torch and albumentations load). Models and data modules are named by their own modules only, so
that configurations keep writing ``recipes.models.ResNetClassifier``.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    **dict.fromkeys(["AnnotatedRanking", "Diagnosis", "LoopConfig", "LoopError", "LoopResult", "RunDirectory",
                     "compare_models", "diagnose", "finetune", "load_model", "loop_policies", "run_loop",
                     "save_model", "train"], "recipes.loop"),
    **dict.fromkeys(["default_model", "fit_baseline", "slice_metrics"], "recipes.baseline"),
    "main": "recipes.cli",
}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'recipes' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOME[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
