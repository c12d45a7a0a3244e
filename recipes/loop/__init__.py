"""The closed loop: train with the monitors, find failure concepts, fine-tune with the policy they imply, compare.

Every step is a plain function on a model and a :class:`~recipes.data.base.ContractDataModule`, so the command
line (:mod:`recipes.cli`), the benchmarks and a user's notebook run the same code. One concern a module:

- :mod:`~recipes.loop.run`: :class:`RunDirectory`, where a run writes everything (write-then-rename) and which
  stages finished (``state.json``): the same command on the same directory resumes;
- :mod:`~recipes.loop.checkpoints`: :func:`save_model` / :func:`load_model` (weights-only unless trusted) and the
  resume points of training stages;
- :mod:`~recipes.loop.checks`: the data fits the model, the layer exists — before any work;
- :mod:`~recipes.loop.training`: :func:`train` a stage with the :func:`monitors`;
- :mod:`~recipes.loop.diagnosis`: :func:`diagnose` → a :class:`Diagnosis` (concept report, the annotated concepts'
  :class:`AnnotatedRanking`, test metrics), reused on resume by :func:`diagnose_once`;
- :mod:`~recipes.loop.policy`: :func:`matched_policies`, the augmentation policy the discovered failure concepts
  choose by matching the transform catalogue (:func:`loop_policies`: by the annotated concepts they show);
- :mod:`~recipes.loop.finetuning`: :func:`finetune` on joint batches (:class:`PolicyJointBatch` through
  :class:`callbacks.JointBatchTraining`);
- :mod:`~recipes.loop.comparison`: :func:`compare_models`, two models on the same concepts;
- :mod:`~recipes.loop.tables`: the metrics tables (:func:`format_before_after`);
- :mod:`~recipes.loop.closed_loop`: :func:`run_loop` with its :class:`LoopConfig`.
"""

from __future__ import annotations

from recipes.loop.checkpoints import KNOWN_MODELS, load_model, save_model
from recipes.loop.checks import check_contract_data, check_data, check_layer, default_layer, model_kind
from recipes.loop.closed_loop import LoopConfig, LoopResult, run_loop
from recipes.loop.comparison import compare_markdown, compare_models
from recipes.loop.diagnosis import (
    AnnotatedRanking,
    Diagnosis,
    annotated_darkening,
    annotated_ranking,
    diagnose,
    diagnose_once,
    diagnosis_markdown,
    probe_folder,
    probe_images,
    probe_loader,
)
from recipes.loop.finetuning import (
    PolicyJointBatch,
    configure_transforms,
    default_transforms,
    finetune,
    loop_transforms,
    with_params,
)
from recipes.loop.policy import (
    MatchedStrength,
    catalogue_renderers,
    clean_probe_images,
    loop_policies,
    matched_policies,
    mean_probability,
    policies_from_match,
    uniform_policies,
)
from recipes.loop.run import LoopError, RunDirectory, default_run_dir
from recipes.loop.tables import format_before_after, format_metrics, headline
from recipes.loop.training import monitors, train

__all__ = [
    "KNOWN_MODELS",
    "AnnotatedRanking",
    "Diagnosis",
    "LoopConfig",
    "LoopError",
    "LoopResult",
    "MatchedStrength",
    "PolicyJointBatch",
    "RunDirectory",
    "annotated_darkening",
    "annotated_ranking",
    "catalogue_renderers",
    "check_contract_data",
    "check_data",
    "check_layer",
    "clean_probe_images",
    "compare_markdown",
    "compare_models",
    "configure_transforms",
    "default_layer",
    "default_run_dir",
    "default_transforms",
    "diagnose",
    "diagnose_once",
    "diagnosis_markdown",
    "finetune",
    "format_before_after",
    "format_metrics",
    "headline",
    "load_model",
    "loop_policies",
    "loop_transforms",
    "matched_policies",
    "mean_probability",
    "model_kind",
    "monitors",
    "policies_from_match",
    "probe_folder",
    "probe_images",
    "probe_loader",
    "run_loop",
    "save_model",
    "train",
    "uniform_policies",
    "with_params",
]
