"""The closed loop: train with the monitors, find failure concepts, fine-tune with the policy they imply, compare.

Every step is a plain function on a model and a :class:`~recipes.data.base.ContractDataModule`, so the command
line (:mod:`recipes.cli`), the benchmarks and a user's notebook run the same code:

1. :func:`train` — fit with the monitors (``ConceptMonitor``, ``ConfusionMonitor``, ``SaliencyMonitor``,
   ``FailureDrivenAugmentation``) logging to TensorBoard;
2. :func:`diagnose` — a :class:`~debugger.report.ConceptReport` on a seeded probe set (discovered concepts) plus
   the failure ranking of the annotated concepts, and the per-concept metrics on the test split;
3. :func:`loop_policies` — the failure concepts (discovered ones matched to a ground-truth concept, and
   annotated ones) become one :class:`augment.AugmentationPolicy` per transform
   (:func:`callbacks.failure_driven_augmentation.derive_policies`), the shadow transform as strong as the
   shadows measured in the failing slice (``calibrate``);
4. :func:`finetune` — joint batches ``(X, augment(X))`` where each transform's policy says which samples it
   touches (:class:`PolicyAugmentedData`);
5. the same diagnosis again, and a before/after table (:func:`format_before_after`).

Everything a run writes goes to one :class:`RunDirectory`, through write-then-rename, with the finished stages
in ``state.json``: an interrupted run is resumed by running the same command on the same directory (a training
stage restarts from its last epoch's checkpoint).
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from augment import AugmentationPolicy, Cutout, HideAndSeek, SyntheticShadow
from augment.modules import sample_accepts
from debugger.contract import IMAGE, unpack_batch
from debugger.files import atomic_write
from debugger.report import ConceptReport
from recipes.baseline import quiet_lightning, slice_metrics
from recipes.data.base import ContractDataModule

CHECKPOINT_FORMAT = 1
STATE_FILE = "state.json"


class LoopError(ValueError):
    """Bad input to the loop (missing checkpoint, wrong architecture, unknown layer, data of the wrong shape)."""


# -- the run directory ----------------------------------------------------------------------------------------


def _json_default(o: Any) -> Any:
    if isinstance(o, Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"Expected JSON-serialisable values, but got {type(o).__name__}.")


class RunDirectory:
    """One run's directory: resolved config, checkpoints, TensorBoard logs, reports and the resumable state.

    Layout: ``config.yaml``, ``state.json``, ``checkpoints/*.ckpt``, ``tb/`` (TensorBoard), ``report.json`` /
    ``report.md`` (and ``report_after.json`` after fine-tuning), ``policy.json``, ``metrics.json``.

    Example:
        >>> import tempfile
        >>> run = RunDirectory(tempfile.mkdtemp())
        >>> run.mark_done("train", epochs=3)
        >>> run.done("train")["epochs"]
        3
        >>> run.mark_done("finetune", checkpoint="checkpoints/finetune.ckpt")  # a file that is not there
        >>> run.done("finetune") is None
        True
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"

    def file(self, relpath: str) -> Path:
        return self.path / relpath

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    def write_text(self, relpath: str, text: str) -> Path:
        return atomic_write(self.file(relpath), text)

    def write_json(self, relpath: str, obj: Any) -> Path:
        return atomic_write(self.file(relpath), json.dumps(obj, indent=1, default=_json_default) + "\n")

    def read_json(self, relpath: str) -> Any:
        return json.loads(self.file(relpath).read_text(encoding="utf-8"))

    def state(self) -> dict[str, Any]:
        """The finished stages (empty for a new run)."""
        try:
            return dict(self.read_json(STATE_FILE))
        except (OSError, ValueError):
            return {"stages": {}}

    def done(self, stage: str) -> dict[str, Any] | None:
        """What a finished stage recorded, or None when it has not finished (or its files are gone)."""
        entry = self.state().get("stages", {}).get(stage)
        if entry is None:
            return None
        for value in entry.values():
            if isinstance(value, str) and value.endswith((".ckpt", ".json")) and not self.file(value).exists():
                return None
        return dict(entry)

    def mark_done(self, stage: str, **info: Any) -> None:
        state = self.state()
        state.setdefault("stages", {})[stage] = dict(info, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.write_json(STATE_FILE, state)


def default_run_dir(command: str, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/<command>-<UTC time>`` (a fresh directory per invocation)."""
    return Path(root) / f"{command}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


# -- checkpoints ---------------------------------------------------------------------------------------------


def save_model(model: pl.LightningModule, path: str | os.PathLike[str], **extra: Any) -> Path:
    """Save a Lightning-compatible checkpoint (``state_dict``, ``hyper_parameters``) plus the model's class path,
    atomically. ``Model.load_from_checkpoint`` reads it as well as :func:`load_model`."""
    import io

    cls = type(model)
    payload = {
        "state_dict": model.state_dict(),
        "hyper_parameters": dict(model.hparams),
        "pytorch-lightning_version": pl.__version__,
        "conceptfix": {"format": CHECKPOINT_FORMAT, "class_path": f"{cls.__module__}.{cls.__qualname__}", **extra},
    }
    buf = io.BytesIO()
    torch.save(payload, buf)
    return atomic_write(path, buf.getvalue())


KNOWN_MODELS = ("recipes.models.ResNetClassifier", "recipes.models.SegmentationNet")


def _import(class_path: str) -> type:
    import importlib

    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    except (ImportError, AttributeError, ValueError) as err:
        raise LoopError(f"Expected a class path like {KNOWN_MODELS[0]!r}, but got {class_path!r} ({err}).") from err


def _read_checkpoint(path: Path, allow_pickle: bool) -> Any:
    """``torch.load`` without unpickling arbitrary objects, unless ``allow_pickle`` (a file you trust).

    Raises:
        pickle.UnpicklingError: (``allow_pickle=False``) when the file needs a Python object that torch does
            not allow by default; the message names it.
        Exception: whatever torch raises for a file that is not a checkpoint.
    """
    import pickle

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if not allow_pickle or _refused_global(err) is None:
            raise
    return torch.load(path, map_location="cpu", weights_only=False)


def _refused_global(err: BaseException) -> str | None:
    """The Python object a weights-only load refused (``module.name``), or None for any other failure."""
    import re

    found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)", str(err))
    return found.group(1) if found else None


def load_model(
    ckpt: str | os.PathLike[str], model: nn.Module | None = None, allow_pickle: bool = False,
    what: str = "`--ckpt`",
) -> pl.LightningModule:
    """Load a checkpoint into ``model``, or into the class it names (conceptfix and Lightning checkpoints).

    Without ``model``, the class is the one recorded by :func:`save_model`, else guessed from the
    hyper-parameters among :data:`KNOWN_MODELS`.

    The file is read with ``torch.load(weights_only=True)``: tensors and plain Python values only, so a
    malicious checkpoint cannot run code. Checkpoints written by :func:`save_model`, by ``conceptfix fit`` /
    ``finetune`` and by a Lightning ``Trainer`` load this way.

    Args:
        ckpt: the checkpoint file.
        model: the module to load the weights into; None builds the class the checkpoint names.
        allow_pickle: when the safe load refuses the file because it holds other Python objects (e.g. custom
            classes in its hyper-parameters), unpickle it fully. Unpickling can run arbitrary code: only for
            files from a source you trust.
        what: how error messages name the checkpoint, e.g. the command-line option it came from (``"`--ckpt-b`"``).

    Raises:
        LoopError: if the file is missing or not a checkpoint, holds other Python objects than tensors and
            plain values (without ``allow_pickle``), or its weights do not fit the architecture (the message lists
            missing/unexpected/mismatched parameters and the architecture that was expected).
    """
    path = Path(ckpt)
    if not path.is_file():
        why = "which is a directory" if path.is_dir() else "which does not exist"
        raise LoopError(
            f"Expected {what} to be an existing checkpoint file (.ckpt from `conceptfix fit`/`finetune` or a "
            f"Lightning Trainer), but got {str(path)!r}, {why}."
        )
    try:
        payload = _read_checkpoint(path, allow_pickle)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a file that is not a checkpoint
        refused = _refused_global(err)
        if refused is not None:
            raise LoopError(
                f"Expected {what} to hold only tensors and plain Python values, but {str(path)!r} also holds "
                f"the Python object {refused}, and loading it means unpickling, which can run arbitrary code. "
                f"If you trust the file's source, load it with `load_model(..., allow_pickle=True)` "
                f"(`--allow_pickle true` on the command line); otherwise save the weights again as a plain "
                f"checkpoint (`recipes.loop.save_model`)."
            ) from err
        raise LoopError(
            f"Expected {what} to be a PyTorch/Lightning checkpoint, but could not read {str(path)!r}: {err}"
        ) from err
    if not isinstance(payload, Mapping) or "state_dict" not in payload:
        got = sorted(payload)[:8] if isinstance(payload, Mapping) else type(payload).__name__
        raise LoopError(
            f"Expected {what} to hold a Lightning checkpoint (a dict with 'state_dict'), but got {got!r} in "
            f"{str(path)!r}."
        )
    hparams = dict(payload.get("hyper_parameters") or {})
    if model is None:
        class_path = (payload.get("conceptfix") or {}).get("class_path")
        if class_path is None:
            keys = set(payload["state_dict"])
            class_path = KNOWN_MODELS[1] if any(k.startswith("enc1.") for k in keys) else KNOWN_MODELS[0]
        cls = _import(class_path)
        try:
            model = cls(**hparams)
        except TypeError as err:
            raise LoopError(
                f"Expected the hyper-parameters in {str(path)!r} to fit {class_path}, but got {err}."
            ) from err
    _load_weights(model, payload["state_dict"], path)
    model.eval()
    return model  # type: ignore[return-value]


def _load_weights(model: nn.Module, state: Mapping[str, Tensor], path: Path) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        hp = dict(getattr(model, "hparams", {}))
        parts = []
        if missing:
            parts.append(f"missing {missing[:4]}" + (f" (+{len(missing) - 4})" if len(missing) > 4 else ""))
        if unexpected:
            parts.append(f"unexpected {unexpected[:4]}" + (f" (+{len(unexpected) - 4})" if len(unexpected) > 4 else ""))
        if mismatched:
            parts.append(f"shape mismatch {mismatched[:3]}")
        raise LoopError(
            f"Expected a checkpoint of {type(model).__name__}({', '.join(f'{k}={v!r}' for k, v in hp.items())}), "
            f"but {str(path)!r} is for another architecture: {'; '.join(parts)}. Pass the matching `--model` "
            f"(class_path and init_args) or a checkpoint written by this architecture."
        )
    model.load_state_dict(state)


# -- input checks --------------------------------------------------------------------------------------------


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
    from debugger.capture import resolve_layer

    try:
        resolve_layer(model, layer)
    except ValueError as err:
        raise LoopError(str(err).replace("Expected `name`", "Expected `--layer`")) from err


def default_layer(model: nn.Module) -> str:
    """The layer the concepts are read from by default: the baseline's middle stage."""
    names = dict(model.named_modules())
    for name in ("layer2", "enc2", "layer1"):
        if name in names:
            return name
    convs = [n for n, m in names.items() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise LoopError(f"Expected a model with a convolution layer to analyse, but {type(model).__name__} has none.")
    return convs[len(convs) // 2]


# -- training ------------------------------------------------------------------------------------------------


class AtomicLastCheckpoint(pl.Callback):
    """Saves the full training state to ``path`` after every epoch, through write-then-rename (resume point)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not trainer.is_global_zero:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        trainer.save_checkpoint(tmp)
        os.replace(tmp, self.path)


def _resume_point(last: Path, stage: str) -> str | None:
    """``last`` if it holds a training state Lightning can resume from; None to start the stage from epoch 0.

    A truncated or corrupt file (a copy cut short, a full disk) is moved aside to ``<name>.corrupt`` with a
    warning, and the stage starts again.

    Raises:
        LoopError: if the file is readable but holds Python objects that a weights-only load refuses (Lightning
            would refuse them too), saying to delete it.
    """
    if not last.exists():
        return None
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
        problem = None if isinstance(state, Mapping) and {"state_dict", "epoch"} <= set(state) else \
            "it is not a Lightning training state (no 'state_dict' and 'epoch')"
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file
        refused = _refused_global(err)
        if refused is not None:
            raise LoopError(
                f"Expected the resume point {str(last)!r} of stage {stage!r} to hold only tensors and plain Python "
                f"values, but it holds the Python object {refused}, which is not loaded (unpickling can run code). "
                f"Delete it to start the stage again."
            ) from err
        problem = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else 'no data'}"
    if problem is None:
        return str(last)
    aside = last.with_name(last.name + ".corrupt")
    os.replace(last, aside)
    warnings.warn(
        f"The resume point of stage {stage!r} could not be read ({problem}); moved it to {str(aside)!r} and "
        f"training the stage again from epoch 0.",
        stacklevel=3,
    )
    return None


def _trainer(epochs: int, run: RunDirectory | None, name: str, callbacks: Sequence[Any], seed: int,
             progress: bool) -> pl.Trainer:
    quiet_lightning()
    pl.seed_everything(seed, workers=True, verbose=False)
    logger: Any = False
    if run is not None:
        from pytorch_lightning.loggers import TensorBoardLogger

        logger = TensorBoardLogger(str(run.tensorboard), name=name, version="")
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        logger=logger,
        callbacks=list(callbacks),
        enable_checkpointing=False,
        enable_progress_bar=progress,
        enable_model_summary=False,
        deterministic=True,
        num_sanity_val_steps=0,
        default_root_dir=str(run.path) if run is not None else None,
    )


def monitors(layer: str, every_n_epochs: int = 1, probe_size: int = 64, seed: int = 0) -> list[pl.Callback]:
    """The monitors the loop trains with: concepts, confusion, saliency, and the policy they imply.

    The policy is only logged while training (``FailureDrivenAugmentation(log_only=True)``): the loop derives
    the fine-tuning policy from its own diagnosis afterwards (:func:`loop_policies`).
    """
    from callbacks import FailureDrivenAugmentation, default_monitors

    found: list[pl.Callback] = list(
        default_monitors(layer, every_n_epochs=every_n_epochs, probe_size=probe_size, seed=seed)
    )
    found.append(FailureDrivenAugmentation(every_n_epochs=every_n_epochs, log_only=True))
    return found


def train(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule,
    epochs: int,
    run: RunDirectory | None = None,
    stage: str = "train",
    callbacks: Sequence[Any] = (),
    seed: int = 0,
    progress: bool = False,
) -> pl.LightningModule:
    """Fit ``model`` for ``epochs`` on the CPU, with ``callbacks``, TensorBoard logs under ``run/tb/<stage>`` and
    a resumable ``checkpoints/<stage>-last.ckpt``; the finished model goes to ``checkpoints/<stage>.ckpt``.

    A stage already recorded as finished in ``run`` is loaded instead of trained; an unfinished one resumes.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise LoopError(f"Expected `epochs` to be a positive integer, but got {epochs!r}.")
    final = f"checkpoints/{stage}.ckpt"
    if run is not None and run.done(stage) is not None:
        try:
            return load_model(run.file(final), model, what=f"the finished stage's checkpoint `{final}` in {run.path}")
        except LoopError as err:
            raise LoopError(f"{err} Delete `{final}` to train stage {stage!r} again.") from err
    extra: list[Any] = list(callbacks)
    resume = None
    if run is not None:
        last = run.file(f"checkpoints/{stage}-last.ckpt")
        extra.append(AtomicLastCheckpoint(last))
        resume = _resume_point(last, stage)
    trainer = _trainer(epochs, run, stage, extra, seed, progress)
    model.train()  # a loaded or diagnosed model is in eval mode; BatchNorm must train
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    except SystemExit:
        # Lightning turns Ctrl-C into a graceful shutdown and sys.exit(1); say it was an interruption instead.
        if not getattr(trainer, "interrupted", False):
            raise
        signal.signal(signal.SIGINT, signal.default_int_handler)
        raise KeyboardInterrupt from None
    model.eval()
    if run is not None:
        save_model(model, run.file(final), stage=stage, epochs=epochs)
        run.mark_done(stage, checkpoint=final, epochs=epochs)
    return model


# -- diagnosis -----------------------------------------------------------------------------------------------


@dataclass
class Diagnosis:
    """What :func:`diagnose` found: the concept report, the annotated ranking and the test metrics."""

    report: ConceptReport
    annotated: dict[str, Any] | None
    metrics: dict[str, Any]
    concept_names: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)


def probe_loader(dataset: Any, size: int, seed: int, batch_size: int = 64) -> DataLoader:
    """A fixed, seeded subset of ``dataset`` (``size`` samples) as a DataLoader, in index order."""
    from debugger.probes import select_probe_indices

    indices = select_probe_indices(len(dataset), size, seed)
    return DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False)


@torch.no_grad()
def _predict_probe(model: nn.Module, loader: Iterable[Any]) -> dict[str, Tensor]:
    was = model.training
    model.eval()
    preds, probs, targets, concepts, masks = [], [], [], [], []
    try:
        for batch in loader:
            b = unpack_batch(batch)
            logits = model(b.images)
            preds.append(logits.argmax(1))
            probs.append(logits.float().softmax(1))
            targets.append(b.targets)
            if b.concepts is not None:
                concepts.append(b.concepts)
            if b.concept_masks is not None:
                masks.append(b.concept_masks)
    finally:
        model.train(was)
    out = {"pred": torch.cat(preds), "prob": torch.cat(probs), "target": torch.cat(targets)}
    if concepts:
        out["concepts"] = torch.cat(concepts)
    if masks:
        out["concept_masks"] = torch.cat(masks)
    return out


def annotated_ranking(model: nn.Module, loader: Iterable[Any], concept_names: Sequence[str], num_classes: int,
                      min_support: int = 5, seed: int = 0) -> dict[str, Any] | None:
    """Failure ranking and confusion counts of the annotated concepts (and ``clean``) on the probe batches.

    Returns:
        ``{"names", "counts" (S, K, K), "overall" (K, K), "ranking" [row dicts]}``, or None without annotations.
    """
    from debugger.confusion import concept_confusion
    from debugger.failures import annotated_membership
    from debugger.ranking import rank_failures

    p = _predict_probe(model, loader)
    seg = p["target"].dim() == 3
    membership = annotated_membership(p.get("concepts"), p.get("concept_masks"), seg)
    if membership is None or not concept_names:
        return None
    names = [*concept_names, "clean"]
    counts = concept_confusion(p["pred"], p["target"], membership, num_classes)
    overall = concept_confusion(p["pred"], p["target"], torch.ones(1, len(p["target"]), dtype=torch.bool),
                                num_classes)[0]
    ranking = rank_failures(p["pred"] != p["target"], membership, names=names, min_support=min_support,
                            generator=torch.Generator().manual_seed(seed))
    return {"names": names, "counts": counts, "overall": overall, "ranking": [r.to_dict() for r in ranking]}


def annotated_darkening(loader: Iterable[Any], concept_names: Sequence[str], min_images: int = 5
                        ) -> dict[str, dict[str, Any]]:
    """How much brightness each annotated concept removes under its mask, over the probe images that carry it.

    Per image :func:`~callbacks.failure_driven_augmentation.concept_darkening` (over the object's pixels when
    the batches carry an ``object_mask``, else the whole image), summarised as a
    :class:`~callbacks.failure_driven_augmentation.Darkening` dict. Concepts without masks, or measured on fewer
    than ``min_images`` images, are left out; so is everything for data without concept masks.

    Returns:
        concept name → ``{"median", "low", "high", "n"}`` (fractions of brightness removed; low/high are the
        10th/90th percentiles).
    """
    from debugger.failures import Darkening, concept_darkening

    values: dict[str, list[Tensor]] = {name: [] for name in concept_names}
    for batch in loader:
        b = unpack_batch(batch)
        if b.concept_masks is None or b.concepts is None or b.images.dim() != 4:
            return {}
        obj = batch.get("object_mask") if isinstance(batch, Mapping) else None
        for k, name in enumerate(concept_names[: b.concepts.shape[1]]):
            sel = b.concepts[:, k] > 0
            if not bool(sel.any()):
                continue
            values[name].append(concept_darkening(b.images[sel], b.concept_masks[sel, k],
                                                  obj[sel] if isinstance(obj, Tensor) else None))
    out: dict[str, dict[str, Any]] = {}
    for name, parts in values.items():
        d = Darkening.from_values(torch.cat(parts), min_images) if parts else None
        if d is not None:
            out[name] = d.to_dict()
    return out


def diagnose(
    model: nn.Module,
    datamodule: ContractDataModule,
    layer: str | None = None,
    run: RunDirectory | None = None,
    name: str = "report",
    probe_size: int = 128,
    n_concepts: int | None = 8,
    top_k: int = 30,
    seed: int = 0,
    split: str = "val",
    metrics_split: str | None = "test",
    analysis_kwargs: Mapping[str, Any] | None = None,
) -> Diagnosis:
    """Concept analysis of ``model`` on a probe set of ``split``, the annotated failure ranking, and metrics.

    Writes ``<name>.json`` (the :class:`~debugger.report.ConceptReport`; schema in ``docs/report-schema.md``),
    ``<name>.md`` and TensorBoard text/scalars under ``tb/<name>`` into ``run``.

    Raises:
        LoopError: for an unknown layer or data that does not fit the model.
    """
    from debugger.pipeline import ConceptAnalysis

    layer = layer or default_layer(model)
    check_layer(model, layer)
    check_data(model, datamodule, split)
    dataset = datamodule.dataset(split)
    loader = probe_loader(dataset, probe_size, seed)
    concept_names = tuple(getattr(datamodule, "concept_names", ()) or ())
    class_names = [str(c) for c in getattr(dataset, "classes", ())] or None
    kwargs: dict[str, Any] = {"n_concepts": n_concepts, "top_k": top_k, "min_support": 5, "seed": seed}
    kwargs.update(analysis_kwargs or {})
    try:
        report = ConceptAnalysis(model, layer, **kwargs).run(
            loader, class_names=class_names, concept_names=concept_names or None,
            meta={"split": split, "probe_size": len(loader.dataset),  # type: ignore[arg-type]
                  "probe_size_requested": probe_size},
        )
    except ValueError as err:
        if "distinct embeddings" not in str(err):
            raise
        probe_count = len(loader.dataset)  # type: ignore[arg-type]
        raise LoopError(
            f"Expected the {probe_count} probe images of split {split!r} to give enough distinct "
            f"patches for {n_concepts} concepts, but: {err} Use more probe images (`probe_size`, a larger "
            "split) or fewer concepts (`n_concepts`)."
        ) from err
    num_classes = report.num_classes
    annotated = annotated_ranking(model, loader, concept_names, num_classes, seed=seed)
    if annotated is not None:
        annotated["darkening"] = annotated_darkening(loader, concept_names)
        report.meta["annotated"] = {"names": annotated["names"], "ranking": annotated["ranking"],
                                    "darkening": annotated["darkening"]}
    metrics = slice_metrics(model, datamodule.dataset(metrics_split)) if metrics_split else {}
    diagnosis = Diagnosis(report, annotated, metrics, concept_names)
    if run is not None:
        report.save(run.file(f"{name}.json"))
        run.write_text(f"{name}.md", diagnosis_markdown(diagnosis))
        _log_diagnosis(run, name, diagnosis)
    return diagnosis


def model_fingerprint(model: nn.Module) -> str:
    """A digest of every parameter and buffer: which weights a stored result was computed from."""
    import hashlib

    h = hashlib.sha256()
    for key, value in model.state_dict().items():
        h.update(key.encode())
        h.update(str(value.dtype).encode())
        h.update(value.detach().cpu().reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:24]


def diagnose_once(
    model: nn.Module,
    datamodule: ContractDataModule,
    layer: str | None,
    run: RunDirectory | None,
    name: str = "report",
    probe_size: int = 128,
    n_concepts: int | None = 8,
    seed: int = 0,
) -> tuple[Diagnosis, bool]:
    """:func:`diagnose`, or the diagnosis ``run`` already holds for the same weights and settings.

    A finished diagnosis is stored as ``<name>.json`` (the report) and ``<name>.diagnosis.json`` (annotated
    ranking, test metrics), both written atomically, and recorded in ``state.json`` under ``diagnose:<name>`` with
    a fingerprint of the model's weights, the layer and the analysis settings; a resumed run reuses it only when
    all of these match (new weights — e.g. a retrained stage — are diagnosed again).

    Returns:
        the diagnosis and whether it was reused.
    """
    layer = layer or default_layer(model)
    key = {"fingerprint": model_fingerprint(model), "layer": layer, "probe_size": probe_size,
           "n_concepts": n_concepts, "seed": seed}
    stage = f"diagnose:{name}"
    stored = run.done(stage) if run is not None else None
    if run is not None and stored is not None and all(stored.get(k) == v for k, v in key.items()):
        try:
            saved = run.read_json(stored["file"])
            report = ConceptReport.load(run.file(stored["report"]))
        except (OSError, ValueError, KeyError):
            saved = None
        if saved is not None:
            annotated = saved["annotated"]
            if annotated is not None:
                annotated = {**annotated, "counts": torch.tensor(annotated["counts"], dtype=torch.long),
                             "overall": torch.tensor(annotated["overall"], dtype=torch.long)}
            return Diagnosis(report, annotated, saved["metrics"], tuple(saved["concept_names"])), True
    d = diagnose(model, datamodule, layer, run, name, probe_size, n_concepts, seed=seed)
    if run is not None:
        run.write_json(f"{name}.diagnosis.json", {"annotated": d.annotated, "metrics": d.metrics,
                                                   "concept_names": list(d.concept_names)})
        run.mark_done(stage, report=f"{name}.json", file=f"{name}.diagnosis.json", **key)
    return d, False


def diagnosis_markdown(d: Diagnosis, title: str | None = None) -> str:
    """The report's markdown, the annotated failure ranking and the per-concept metrics."""
    parts = [f"# {title}\n" if title else "", d.report.to_markdown()]
    if d.annotated is not None:
        parts += ["\n## Annotated concepts (ground truth of the data)\n",
                  "| rank | concept | failure | support | error in | error out | lift | p (adj.) |",
                  "|---:|---|:---:|---:|---:|---:|---:|---:|"]
        for r in d.annotated["ranking"]:
            parts.append(f"| {r['rank']} | {r['name']} | {'yes' if r['is_failure'] else ''} | {r['support']} "
                         f"| {_pct(r['error_in'])} | {_pct(r['error_out'])} | {_num(r['lift'])} "
                         f"| {_num(r['p_adjusted'])} |")
    if d.metrics:
        parts += ["\n## Test metrics per concept\n", "```", format_metrics(d.metrics, d.concept_names), "```"]
    return "\n".join(parts) + "\n"


def _log_diagnosis(run: RunDirectory, name: str, d: Diagnosis) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(run.tensorboard / name))
    try:
        writer.add_text("report", diagnosis_markdown(d))
        for key, value in _flat_metrics(d.metrics, d.concept_names).items():
            writer.add_scalar(f"metrics/{key}", value)
        writer.add_scalar("concepts/failures", len(d.report.failures))
    finally:
        writer.close()


def _pct(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * float(x):.1f}%"


def _num(x: Any) -> str:
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.3g}"


# -- metrics tables ------------------------------------------------------------------------------------------


def headline(m: Any) -> float:
    """One number for a slice: accuracy (classification) or mean IoU over classes present (segmentation)."""
    if isinstance(m, dict):
        ious = [v for v in m.get("iou", []) if not math.isnan(v)]
        return sum(ious) / len(ious) if ious else float("nan")
    return float(m)


def _flat_metrics(metrics: Mapping[str, Any], names: Sequence[str]) -> dict[str, float]:
    if not metrics:
        return {}
    out = {"all": headline(metrics["all"])}
    if "clean" in metrics:
        out["clean"] = headline(metrics["clean"])
    for n in names:
        if n in metrics:
            out[f"{n}/with"] = headline(metrics[n]["with"])
            out[f"{n}/without"] = headline(metrics[n]["without"])
    return out


def format_metrics(metrics: Mapping[str, Any], names: Sequence[str]) -> str:
    """Accuracy (or mean IoU) with and without each concept, as a plain-text table."""
    seg = isinstance(metrics.get("all"), dict)
    unit = "mIoU" if seg else "acc"
    rows = [f"{'slice (' + unit + ')':<16}{'with':>8}{'without':>9}{'gap':>8}{'n_with':>8}"]
    for n in names:
        if n not in metrics:
            continue
        w, wo = headline(metrics[n]["with"]), headline(metrics[n]["without"])
        rows.append(f"{n:<16}{_pct(w):>8}{_pct(wo):>9}{100 * (w - wo):>+8.1f}{metrics[n]['n_with']:>8d}")
    if "clean" in metrics:
        rows.append(f"{'clean':<16}{_pct(headline(metrics['clean'])):>8}")
    rows.append(f"{'all':<16}{_pct(headline(metrics['all'])):>8}   (n={metrics.get('n', '?')})")
    return "\n".join(rows)


def format_before_after(before: Mapping[str, Any], after: Mapping[str, Any], names: Sequence[str]) -> str:
    """Before/after table: every concept slice (with it) and the clean and overall numbers."""
    seg = isinstance(before.get("all"), dict)
    unit = "mIoU" if seg else "accuracy"
    rows = [f"{unit + ' on':<22}{'before':>9}{'after':>9}{'change':>9}"]

    def row(label: str, b: float, a: float) -> None:
        rows.append(f"{label:<22}{_pct(b):>9}{_pct(a):>9}{100 * (a - b):>+8.1f}p")

    for n in names:
        if n in before and n in after:
            row(f"{n} (with)", headline(before[n]["with"]), headline(after[n]["with"]))
    if "clean" in before and "clean" in after:
        row("clean (no concept)", headline(before["clean"]), headline(after["clean"]))
    row("all test images", headline(before["all"]), headline(after["all"]))
    if seg:
        classes = len(before["all"]["iou"])
        for c in range(classes):
            row(f"IoU class {c}", before["all"]["iou"][c], after["all"]["iou"][c])
    return "\n".join(rows)


# -- policy --------------------------------------------------------------------------------------------------

DEFAULT_AUGMENTATIONS: dict[str, str] = {"shadow": "SyntheticShadow", "occluder": "Cutout"}


def loop_policies(
    diagnosis: Diagnosis,
    augmentations: Mapping[str, str] | None = None,
    fallback: str | None = None,
    max_p: float = 0.9,
    base: float = 0.3,
    min_precision: float = 0.5,
    min_class_support: int = 3,
    report_path: str | os.PathLike[str] | None = None,
    calibrate: bool = True,
) -> tuple[dict[str, AugmentationPolicy], list[str]]:
    """The augmentation policies the failure concepts imply, and the evidence used (one line per concept).

    Evidence is every failure among the annotated concepts (by name) and every discovered failure concept whose
    top patches show a ground-truth concept (``min_precision``), read through
    :class:`~callbacks.FailureDrivenAugmentation` from the saved report (``report_path``).

    With ``calibrate``, a failure concept whose darkening the diagnosis measured (:func:`annotated_darkening`:
    annotated concepts with masks; a discovered concept uses the ground-truth concept it shows) sets the
    strength of its transform: ``SyntheticShadow``'s ``intensity`` becomes the measured 10th–90th percentile
    range of brightness removed, carried in the policy's ``params`` (applied by :func:`configure_transforms`)
    and stated in the evidence. Without masks, or with ``calibrate=False``, the transforms keep their settings.
    """
    from dataclasses import replace

    from augment.policy import derive_policies, why_no_rule
    from callbacks import FailureDrivenAugmentation
    from debugger.failures import Darkening, FailureEvidence

    augmentations = dict(DEFAULT_AUGMENTATIONS if augmentations is None else augmentations)
    evidence: list[FailureEvidence] = []
    class_names: list[str] | None = list(diagnosis.report.class_names) or None
    if report_path is not None:
        fda = FailureDrivenAugmentation(report_path=str(report_path), min_precision=min_precision)
        found = fda.evidence(None)
        if found is not None:
            evidence += found[0]
    a = diagnosis.annotated
    if a is not None:
        for row in a["ranking"]:
            if row["is_failure"] and row["name"] != "clean":
                i = a["names"].index(row["name"])
                evidence.append(FailureEvidence(row["name"], row["name"], float(row["lift"]), a["counts"][i],
                                                a["overall"]))
    measured = ((a or {}).get("darkening") or {}) if calibrate else {}
    evidence = [replace(e, darkening=Darkening.from_dict(measured[e.matches or e.name]))
                if (e.matches or e.name) in measured else e for e in evidence]
    policies = derive_policies(evidence, augmentations, fallback, base, max_p, min_class_support, class_names)
    lines = []
    for e in evidence:
        transform = augmentations.get(e.matches or e.name, fallback)
        line = (f"{e.name}" + (f" (shows {e.matches})" if e.matches and e.matches != e.name else "")
                + f": lift {e.lift:.2f} → {transform or 'no transform'}")
        params = policies[transform].params if transform in policies else {}
        if e.darkening is not None and params:
            shown = ", ".join(f"{k} {v[0]:.2f}–{v[1]:.2f}" if isinstance(v, tuple) else f"{k} {v}"
                              for k, v in params.items())
            line += f"; {e.darkening.describe(e.matches or e.name)} → {shown}"
        why = why_no_rule(e, min_class_support) if transform is not None else None
        if why is not None:
            # say why, or the line reads as if the transform had been chosen
            line += f" — {'no class rule from this concept' if transform in policies else 'no policy'}: {why}"
        lines.append(line)
    return policies, lines


def uniform_policies(transforms: Iterable[str], p: float) -> dict[str, AugmentationPolicy]:
    """The untargeted control: every transform on every sample with the same probability ``p``."""
    return {t: AugmentationPolicy(base=p, augmentation=t) for t in transforms}


def mean_probability(policies: Mapping[str, AugmentationPolicy], dataset: Any, limit: int = 2048) -> float:
    """Expected fraction of samples that get at least one transform under ``policies`` (on ``dataset``)."""
    if not policies:
        return 0.0
    loader = DataLoader(Subset(dataset, range(min(limit, len(dataset)))), batch_size=256)
    total, n = 0.0, 0
    for batch in loader:
        b = unpack_batch(batch)
        keep = torch.ones(len(b.targets))
        for policy in policies.values():
            keep = keep * (1 - policy.probabilities(b.targets, b.concepts).cpu())
        total += float((1 - keep).sum())
        n += len(b.targets)
    return total / max(n, 1)


# -- fine-tuning ---------------------------------------------------------------------------------------------


def default_transforms(image_size: int, seed: int = 0) -> dict[str, nn.Module]:
    """The transforms a policy can name: shadows, cutout and Hide-and-Seek sized for ``image_size``."""
    return {
        "SyntheticShadow": SyntheticShadow(p=1.0, kind="line", intensity=(0.4, 0.75), seed=seed),
        "Cutout": Cutout(p=1.0, size=max(2, image_size // 3), seed=seed + 1),
        "HideAndSeek": HideAndSeek(p=1.0, grid=4, p_keep_patch=0.6, seed=seed + 2),
    }


def with_params(module: nn.Module, params: Mapping[str, Any]) -> nn.Module:
    """A new ``module`` of the same class with ``params`` replacing its constructor arguments (the rest kept).

    Raises:
        LoopError: if a key is not an argument of the module's constructor, or the value is not accepted.

    Example:
        >>> shadow = with_params(SyntheticShadow(p=1.0, intensity=(0.4, 0.75), seed=0), {"intensity": (0.8, 0.9)})
        >>> shadow.intensity, shadow.p
        ((0.8, 0.9), 1.0)
    """
    import inspect

    cls = type(module)
    accepted = [n for n, prm in inspect.signature(cls.__init__).parameters.items()
                if n != "self" and prm.kind in (prm.POSITIONAL_OR_KEYWORD, prm.KEYWORD_ONLY)]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise LoopError(f"Expected the policy's settings for {cls.__name__} to be among its arguments {accepted}, "
                        f"but got {unknown!r}.")
    kwargs = {n: getattr(module, n) for n in accepted if hasattr(module, n)}
    kwargs.update(params)
    try:
        return cls(**kwargs)  # type: ignore[no-any-return]
    except (TypeError, ValueError) as err:
        raise LoopError(f"Expected settings {dict(params)!r} that {cls.__name__} accepts, but: {err}") from err


def configure_transforms(transforms: Mapping[str, nn.Module], policies: Mapping[str, AugmentationPolicy]
                         ) -> dict[str, nn.Module]:
    """``transforms`` with each policy's ``params`` applied to the transform it drives (see :func:`with_params`).

    This is how a failure-calibrated strength (e.g. ``SyntheticShadow(intensity=...)`` measured by
    :func:`loop_policies`) reaches fine-tuning; transforms whose policy carries no ``params`` are unchanged.
    """
    out = dict(transforms)
    for name, policy in policies.items():
        if policy.params and name in out:
            out[name] = with_params(out[name], policy.params)
    return out


def apply_policies(
    batch: Any,
    transforms: Mapping[str, nn.Module],
    policies: Mapping[str, AugmentationPolicy],
    joint: bool = True,
) -> Any:
    """Augment a batch with each policy's transform on the samples it picks; joint: ``(X, augment(X))``.

    The transforms run in ``policies`` order on the same copy, each with its own per-sample probabilities. A dict
    batch's ``object_mask`` reaches every transform that takes ``object_masks`` (shadows are placed on the object;
    :class:`~augment.OneOfUniform` passes it on to its shadow). Other per-sample tensors are duplicated with the rows.

    Shape:
        - batch images: ``(B, C, H, W)``; output ``(2B, C, H, W)`` when ``joint``, else ``(B, C, H, W)``

    Raises:
        LoopError: if a policy names a transform that is not in ``transforms``.
    """
    b = unpack_batch(batch)
    images = b.images
    object_mask = batch.get("object_mask") if isinstance(batch, Mapping) else None
    out = images
    for name, policy in policies.items():
        if name not in transforms:
            raise LoopError(f"Expected the policy's transform to be one of {sorted(transforms)}, but got {name!r}.")
        p = policy.probabilities(b.targets, b.concepts).to(images.device)
        if not bool((p > 0).any()):
            continue
        t = transforms[name]
        kwargs: dict[str, Any] = {"probabilities": p}
        if isinstance(object_mask, Tensor) and sample_accepts(t, "object_masks"):
            kwargs["object_masks"] = object_mask
        out = t(out, **kwargs)  # type: ignore[assignment]
    if not joint:
        return _with_images(batch, out)
    n = images.shape[0]
    if isinstance(batch, Mapping):
        grown = {}
        for k, v in batch.items():
            if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n:
                grown[k] = torch.cat([v, v])
            else:
                grown[k] = v
        grown[IMAGE] = torch.cat([images, out])
        return grown
    items = [torch.cat([images, out]), torch.cat([b.targets, b.targets]),
             *(torch.cat([v, v]) if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == n else v
               for v in batch[2:])]
    return tuple(items) if isinstance(batch, tuple) else items


def _with_images(batch: Any, images: Tensor) -> Any:
    if isinstance(batch, Mapping):
        return {**batch, IMAGE: images}
    items = [images, *batch[1:]]
    return tuple(items) if isinstance(batch, tuple) else items


class PolicyAugmentedData(pl.LightningDataModule):
    """Wraps a DataModule so that training batches go through :func:`apply_policies` (validation is untouched).

    Args:
        datamodule: the data to fine-tune on.
        transforms: transform name → module.
        policies: transform name → policy (what the loop derived, or a control's).
        joint: train on ``(X, augment(X))`` (True) or on ``augment(X)`` alone.
    """

    def __init__(self, datamodule: pl.LightningDataModule, transforms: Mapping[str, nn.Module],
                 policies: Mapping[str, AugmentationPolicy], joint: bool = True) -> None:
        super().__init__()
        for name in policies:
            if name not in transforms:
                raise LoopError(f"Expected every policy's transform to be one of {sorted(transforms)}, "
                                f"but got {name!r}.")
        self.datamodule = datamodule
        self.transforms = dict(transforms)
        self.policies = dict(policies)
        self.joint = joint

    def setup(self, stage: str) -> None:
        self.datamodule.setup(stage)

    def train_dataloader(self) -> Any:
        return self.datamodule.train_dataloader()

    def val_dataloader(self) -> Any:
        return self.datamodule.val_dataloader()

    def test_dataloader(self) -> Any:
        return self.datamodule.test_dataloader()

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        trainer = self.trainer
        if trainer is None or not trainer.training or not self.policies:
            return batch
        return apply_policies(batch, self.transforms, self.policies, self.joint)


def finetune(
    model: pl.LightningModule,
    datamodule: ContractDataModule,
    policies: Mapping[str, AugmentationPolicy],
    epochs: int = 2,
    lr: float | None = 3e-3,
    transforms: Mapping[str, nn.Module] | None = None,
    run: RunDirectory | None = None,
    stage: str = "finetune",
    callbacks: Sequence[Any] = (),
    seed: int = 0,
    progress: bool = False,
    joint: bool = True,
) -> pl.LightningModule:
    """Fine-tune ``model`` on ``datamodule`` with joint batches augmented by ``policies`` (see :func:`train`).

    ``lr`` replaces the model's learning rate (``hparams.lr``) for the fine-tuning; None keeps it.
    An empty ``policies`` is the no-augmentation control with the same budget (plain batches).
    A policy's ``params`` (a strength measured from the failure) override its transform's settings
    (:func:`configure_transforms`).
    """
    if transforms is None:
        check_contract_data(datamodule)
        sample = datamodule.dataset("train")[0]
        image = sample[IMAGE] if isinstance(sample, Mapping) else sample[0]
        transforms = default_transforms(int(min(image.shape[-2:])), seed)
    transforms = configure_transforms(transforms, policies)
    if lr is not None:
        if not lr > 0:
            raise LoopError(f"Expected the fine-tuning `lr` to be positive, but got {lr!r}.")
        if "lr" in model.hparams:
            model.hparams["lr"] = lr
    data = PolicyAugmentedData(datamodule, transforms, policies, joint=joint)
    return train(model, data, epochs, run, stage, callbacks, seed, progress)


# -- comparison ----------------------------------------------------------------------------------------------


def compare_models(
    model_a: nn.Module,
    model_b: nn.Module,
    datamodule: ContractDataModule,
    layer: str | None = None,
    run: RunDirectory | None = None,
    probe_size: int = 128,
    n_concepts: int | None = 8,
    top_k: int = 30,
    seed: int = 0,
    split: str = "val",
) -> dict[str, Any]:
    """Concept-conditioned confusion differences between two models and the ensemble check (seed 000 §7.1).

    Concepts are found once, on model A; both models are evaluated on the same slices (discovered and annotated).

    Returns:
        ``{"report": ConceptReport with diffs["b"] and ensembles["b"], "annotated": {...} or None}``.
    """
    from debugger.confusion import concept_confusion, confusion_difference, ensemble_check

    d = diagnose(model_a, datamodule, layer, None, probe_size=probe_size, n_concepts=n_concepts, top_k=top_k,
                 seed=seed, split=split, metrics_split=None)
    check_data(model_b, datamodule, split)
    from debugger.pipeline import ConceptAnalysis

    loader = probe_loader(datamodule.dataset(split), probe_size, seed)
    analysis = ConceptAnalysis(model_a, d.report.layer, n_concepts=n_concepts, top_k=top_k, seed=seed)
    try:
        report = analysis.compare(d.report, model_b, loader, name="b")
    except ValueError as err:
        raise LoopError(f"Expected model B to be comparable with model A on the same data, but: {err}") from err
    annotated = None
    if d.annotated is not None:
        from debugger.failures import annotated_membership

        pa, pb = _predict_probe(model_a, loader), _predict_probe(model_b, loader)
        seg = pa["target"].dim() == 3
        membership = annotated_membership(pa.get("concepts"), pa.get("concept_masks"), seg)
        k = report.num_classes
        cm_a = concept_confusion(pa["pred"], pa["target"], membership, k)  # type: ignore[arg-type]
        cm_b = concept_confusion(pb["pred"], pb["target"], membership, k)  # type: ignore[arg-type]
        check = ensemble_check(pa["prob"], pb["prob"], pa["target"], membership, k)  # type: ignore[arg-type]
        annotated = {
            "names": d.annotated["names"],
            "diff": confusion_difference(cm_a, cm_b),
            "accuracy_a": check.accuracy_a.tolist(),
            "accuracy_b": check.accuracy_b.tolist(),
            "accuracy_ensemble": check.accuracy_ensemble.tolist(),
            "fixed_a": check.fixed_a.tolist(),
            "fixed_b": check.fixed_b.tolist(),
            "support": check.support.tolist(),
        }
        report.meta["annotated_comparison"] = {k2: v for k2, v in annotated.items() if k2 != "diff"}
    result = {"report": report, "annotated": annotated}
    if run is not None:
        report.save(run.file("report.json"))
        run.write_text("report.md", compare_markdown(result))
    return result


def compare_markdown(result: Mapping[str, Any]) -> str:
    report: ConceptReport = result["report"]
    lines = ["# conceptfix compare: model A vs model B\n", report.to_markdown()]
    a = result.get("annotated")
    if a is not None:
        lines += ["\n## Annotated concepts: accuracy of A, B and their ensemble (averaged softmax)\n",
                  "| slice | n | acc A | acc B | acc ensemble | A's errors fixed | B's errors fixed "
                  "| diag. change B−A |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        diag = torch.diagonal(a["diff"], dim1=-2, dim2=-1).nanmean(-1)
        for i, name in enumerate(a["names"]):
            lines.append(f"| {name} | {a['support'][i]} | {_pct(a['accuracy_a'][i])} | {_pct(a['accuracy_b'][i])} "
                         f"| {_pct(a['accuracy_ensemble'][i])} | {a['fixed_a'][i]} | {a['fixed_b'][i]} "
                         f"| {float(diag[i]):+.3f} |")
    return "\n".join(lines) + "\n"


# -- the whole loop ------------------------------------------------------------------------------------------


@dataclass
class LoopResult:
    """Before/after metrics, the policy and where everything was written."""

    before: dict[str, Any]
    after: dict[str, Any]
    policies: dict[str, AugmentationPolicy]
    evidence: list[str]
    concept_names: tuple[str, ...]
    run: RunDirectory | None
    model: pl.LightningModule

    def table(self) -> str:
        return format_before_after(self.before, self.after, self.concept_names)


def run_loop(
    datamodule: ContractDataModule,
    model: pl.LightningModule,
    run: RunDirectory | None,
    epochs: int = 3,
    finetune_epochs: int = 2,
    layer: str | None = None,
    callbacks: Sequence[Any] | None = None,
    finetune_lr: float | None = 3e-3,
    augmentations: Mapping[str, str] | None = None,
    transforms: Mapping[str, nn.Module] | None = None,
    fallback: str | None = None,
    max_p: float = 0.9,
    base_p: float = 0.3,
    probe_size: int = 128,
    n_concepts: int | None = 8,
    seed: int = 0,
    progress: bool = False,
    log: Callable[[str], None] = print,
    pretrained: bool = False,
    calibrate: bool = True,
) -> LoopResult:
    """Train (unless ``pretrained``) → diagnose → derive the policy → fine-tune → diagnose again.

    ``callbacks`` are used while training; None means :func:`monitors` at ``layer``. ``calibrate``: set the
    shadow transform's strength from the darkening measured in the failing slice (see :func:`loop_policies`).
    """
    layer = layer or default_layer(model)
    check_layer(model, layer)
    check_data(model, datamodule)
    if not pretrained:
        cbs = monitors(layer, seed=seed) if callbacks is None else list(callbacks)
        log(f"[1/4] training for {epochs} epochs with {len(cbs)} callbacks "
            f"({', '.join(type(c).__name__ for c in cbs) or 'none'})")
        clock = time.time()
        reused = run is not None and run.done("train") is not None
        model = train(model, datamodule, epochs, run, "train", cbs, seed, progress)
        log("      reused checkpoints/train.ckpt from the run directory" if reused
            else f"      done in {time.time() - clock:.0f} s")
    n_probe = min(probe_size, len(datamodule.dataset("val")))  # type: ignore[arg-type]
    log(f"[2/4] diagnosing at layer {layer!r} on {n_probe} validation images"
        + (f" (all of the split; {probe_size} requested)" if n_probe < probe_size else ""))
    clock = time.time()
    before, reused = diagnose_once(model, datamodule, layer, run, "report", probe_size, n_concepts, seed=seed)
    log(f"      {len(before.report.failures)} discovered failure concepts; "
        + ("reused from the run directory" if reused else f"done in {time.time() - clock:.0f} s"))
    # The stored policy belongs to the stored diagnosis; a diagnosis made afresh derives it again.
    stored = run.done("policy") if run is not None and reused else None
    if stored is not None and run is not None:
        saved = run.read_json("policy.json")
        policies = {k: AugmentationPolicy.from_dict(v) for k, v in saved["policies"].items()}
        evidence = list(saved["evidence"])
    else:
        policies, evidence = loop_policies(before, augmentations, fallback, max_p=max_p, base=base_p,
                                           report_path=run.file("report.json") if run is not None else None,
                                           calibrate=calibrate)
        if run is not None:
            run.write_json("policy.json", {"evidence": evidence,
                                           "policies": {k: v.to_dict() for k, v in policies.items()},
                                           "explained": {k: v.explain() for k, v in policies.items()}})
            run.mark_done("policy", file="policy.json")
    log("[3/4] failure concepts → policy:")
    for line in evidence or ["(no failure concept found: fine-tuning without augmentation)"]:
        log(f"      {line}")
    for policy in policies.values():
        log(f"      {policy.explain()[:300]}")
    clock = time.time()
    log(f"      fine-tuning for {finetune_epochs} epochs on "
        + ("joint batches (X, augment(X))" if policies else "plain batches (no augmentation implied)"))
    reused = run is not None and run.done("finetune") is not None
    model = finetune(model, datamodule, policies, finetune_epochs, finetune_lr, transforms, run, "finetune",
                     seed=seed, progress=progress)
    log("      reused checkpoints/finetune.ckpt from the run directory" if reused
        else f"      done in {time.time() - clock:.0f} s")
    log("[4/4] diagnosing the fine-tuned model")
    after, _ = diagnose_once(model, datamodule, layer, run, "report_after", probe_size, n_concepts, seed=seed)
    result = LoopResult(before.metrics, after.metrics, policies, evidence, before.concept_names, run, model)
    if run is not None:
        run.write_json("metrics.json", {"before": before.metrics, "after": after.metrics})
        md = [diagnosis_markdown(before, "Before fine-tuning"), "\n# Policy\n",
              *[f"- {line}" for line in evidence], "", *[f"- `{p.explain()}`" for p in policies.values()],
              "\n# Before / after (test split)\n", "```", result.table(), "```\n",
              diagnosis_markdown(after, "After fine-tuning")]
        run.write_text("report.md", "\n".join(md))
        run.mark_done("loop", metrics="metrics.json")
    return result
