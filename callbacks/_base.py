"""What every conceptfix callback shares: scheduling, the probe set, the time budget and logger plumbing.

Each monitor's own file holds only its analysis and what it logs; :class:`Monitor` holds the rest:

- **Schedule**: ``every_n_epochs`` (at the end of the training epoch, after validation) and/or
  ``every_n_train_steps`` (after the optimizer step), Lightning's own names; never during sanity checking or
  ``fast_dev_run``.
- **Probe set**: a fixed, seeded choice of validation samples made in ``setup()`` and kept in the callback's
  ``state_dict`` so a resumed run analyses the same images (drawn afresh, with a warning, when the restored one no
  longer fits a smaller validation set or another ``probe_size``); ``state_key`` includes ``name`` so two instances
  coexist in one checkpoint.
- **Time budget**: ``max_seconds`` per run; monitors stop between chunks at the deadline, and the next run
  analyses a subsample sized to fit, with a warning. Training never waits on an analysis that overran.
- **Never disturb training**: the analysis runs under :func:`debugger.capture.preserve_training_mode` — grad
  enabled outside inference mode, every module in eval mode (restored after), ``param.grad`` put back, and the
  torch / numpy / python RNG states forked — so a seeded run's loss trajectory is the same with and without
  monitors.
- **DDP**: monitors either work on rank zero only (no collective inside) or shard the probe set over ranks and
  sync a torchmetrics ``Metric``; the subsample size is broadcast first so every rank takes part in the same
  collectives.
- **Failures**: an analysis that raises is skipped, never ending ``trainer.fit``: a warning (rank zero) and the
  text tag ``<tag_prefix>/error`` say what failed and why, and training goes on as without the monitor
  (``strict=True`` raises instead). Under DDP a sharded monitor's error must happen on every rank alike (same
  model, same code), or the other ranks wait in its collective.
- **Degrading**: what a monitor can still analyse, it analyses, and says what it left out: probe images with NaN or
  infinite values are dropped from the probe set (named by dataset index); a model whose parameters or outputs are
  not finite (training diverged) is not analysed. Both are said in a warning and the text tag
  ``<tag_prefix>/warning`` (degradations) or ``<tag_prefix>/error`` (skips), in the user's terms.
- **Logging**: TensorBoard through the trainer's ``TensorBoardLogger`` (scalars go to every logger). Files (reports,
  histories, images without TensorBoard) go to ``<logger's log_dir>/conceptfix/<tag_prefix>/``; with
  ``logger=False`` to ``<default_root_dir>/conceptfix/<tag_prefix>/`` when the trainer was given a
  ``default_root_dir`` other than the working directory, and nowhere otherwise (findings still flow between
  callbacks in memory). One info line says which.
- **Both Lightning flavours**: :class:`Monitor` subclasses the ``Callback`` of ``pytorch_lightning`` and, when
  installed, of ``lightning.pytorch``, so the same object passes either Trainer's type check.
"""

from __future__ import annotations

import io
import json
import logging
import math
import time
import traceback
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as _pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger as _PLTensorBoardLogger
from torch import Tensor

from callbacks._probe import (
    AnalysisSkipped,
    ProbeSet,
    RunContext,
    _empty_probe,
    _first_loader,
    describe_rows,
    materialise_probe,
    non_finite_images,
)
from callbacks.findings import F, Finding, Need, Publisher, find_producers
from debugger.capture import first_tensor, model_input, preserve_training_mode
from debugger.files import atomic_write, json_default
from debugger.probes import select_probe_indices

log = logging.getLogger("conceptfix.callbacks")

try:  # the unified `lightning` package is optional; when present its Trainer must accept our callbacks too
    import lightning.pytorch as _L
    from lightning.pytorch.loggers import TensorBoardLogger as _LTensorBoardLogger

    _CALLBACK_BASES: tuple[type, ...] = (_pl.Callback, _L.Callback)
    _TB_LOGGERS: tuple[type, ...] = (_PLTensorBoardLogger, _LTensorBoardLogger)
except ImportError:  # pragma: no cover - depends on the environment
    _CALLBACK_BASES = (_pl.Callback,)
    _TB_LOGGERS = (_PLTensorBoardLogger,)

# Deliberately typed as a plain base tuple: `class Monitor(*_CALLBACK_BASES)` keeps one implementation for both.
_CallbackBase: Any = type("_CallbackBase", _CALLBACK_BASES, {"__doc__": "Callback of every installed flavour."})


# --------------------------------------------------------------------------------------------------------------
# Pure pieces
# --------------------------------------------------------------------------------------------------------------


def is_due(
    *,
    epoch: int | None = None,
    step: int | None = None,
    every_n_epochs: int | None = None,
    every_n_train_steps: int | None = None,
) -> bool:
    """Whether a run is due at the end of (0-based) ``epoch`` or after (1-based) global ``step``.

    Pass ``epoch`` at an epoch end and ``step`` after a training step; the other cadence is ignored.

    Example:
        >>> [e for e in range(6) if is_due(epoch=e, every_n_epochs=2)]
        [1, 3, 5]
        >>> is_due(step=10, every_n_train_steps=5), is_due(step=10, every_n_epochs=1)
        (True, False)
    """
    if epoch is not None:
        return every_n_epochs is not None and every_n_epochs > 0 and (epoch + 1) % every_n_epochs == 0
    if step is not None:
        return every_n_train_steps is not None and every_n_train_steps > 0 and step > 0 \
            and step % every_n_train_steps == 0
    return False


def shrink_fraction(fraction: float, seconds: float, max_seconds: float, floor: float = 0.05) -> float:
    """The probe fraction for the next run after one that took ``seconds`` against a budget of ``max_seconds``.

    Scales the fraction by the overrun with a 20% margin; never grows it and never goes below ``floor``.

    Example:
        >>> shrink_fraction(1.0, seconds=20.0, max_seconds=10.0)
        0.4
        >>> shrink_fraction(0.5, seconds=1.0, max_seconds=10.0)
        0.5
    """
    if seconds <= max_seconds:
        return fraction
    return max(floor, round(fraction * 0.8 * max_seconds / seconds, 4))


def image_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile images into one image (what TensorBoard shows as a single entry of a tag).

    Shape:
        - images: ``(N, C, H, W)`` with ``C`` in {1, 3}
        - output: ``(C, rows * (H + padding) + padding, cols * (W + padding) + padding)``

    Example:
        >>> image_grid(torch.zeros(5, 3, 4, 4), nrow=4, padding=1).shape
        torch.Size([3, 11, 21])
    """
    if images.dim() != 4 or images.shape[0] == 0:
        raise ValueError(f"Expected `images` of shape (N, C, H, W) with N > 0, but got {tuple(images.shape)!r}.")
    n, c, h, w = images.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    out = images.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for i in range(n):
        r, q = divmod(i, cols)
        y, x = padding + r * (h + padding), padding + q * (w + padding)
        out[:, y : y + h, x : x + w] = images[i]
    return out


def to_display(images: Tensor) -> Tensor:
    """Rescale each image to [0, 1] for display (datasets here are normalised and may be any range).

    Shape:
        - images: ``(N, C, H, W)``; output: same.
    """
    flat = images.detach().float().flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1)
    hi = flat.max(dim=1).values.view(-1, 1, 1, 1)
    return ((images.detach().float() - lo) / (hi - lo).clamp_min(1e-8)).clamp(0, 1)


# --------------------------------------------------------------------------------------------------------------
# The base callback
# --------------------------------------------------------------------------------------------------------------


class Monitor(Publisher, _CallbackBase):
    """Shared mechanics of the conceptfix callbacks; subclasses implement :meth:`analyse`.

    Args:
        every_n_epochs: run at the end of every n-th training epoch (after its validation); ``None`` or 0 = never.
        every_n_train_steps: run after every n-th optimizer step; ``None`` or 0 = never.
        probe_size: how many validation samples make the fixed probe set.
        seed: seed of the probe choice (and of any randomness in the analysis).
        max_seconds: time budget of one run; ``None`` = unlimited. Overruns subsample the next run and warn.
        name: distinguishes two instances of one monitor (part of ``state_key`` and of tags and paths).
        probe_dataset: map-style dataset to draw the probe from instead of the trainer's validation data.
        chunk_size: samples per forward pass in the analysis.
        strict: raise when an analysis fails (ending ``trainer.fit``) instead of skipping it with a warning.

    Subclasses set ``sharded = True`` to run on every rank over a shard of the probe set (and sync a metric), or
    ``all_ranks = True`` to have :meth:`analyse` called on every rank with the whole (unsharded) probe set, e.g. to
    broadcast what rank zero decided; otherwise the analysis runs on global rank zero only.

    Monitors talk through :mod:`callbacks.findings`: a monitor publishes the finding types in ``publishes``
    (:meth:`publish`) and reads those its :meth:`needs` lists (:meth:`read`), from producers found by type in
    ``setup()``.
    """

    sharded: ClassVar[bool] = False
    all_ranks: ClassVar[bool] = False
    needs_probe: ClassVar[bool] = True
    probe_extras: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        *,
        every_n_epochs: int | None = 1,
        every_n_train_steps: int | None = None,
        probe_size: int = 64,
        seed: int = 0,
        max_seconds: float | None = 60.0,
        name: str | None = None,
        probe_dataset: Any | None = None,
        chunk_size: int = 32,
        strict: bool = False,
    ) -> None:
        super().__init__()
        for arg, value in (("every_n_epochs", every_n_epochs), ("every_n_train_steps", every_n_train_steps)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise ValueError(f"Expected `{arg}` to be a non-negative integer or None, but got {value!r}.")
        if not every_n_epochs and not every_n_train_steps:
            raise ValueError(
                "Expected `every_n_epochs` or `every_n_train_steps` to be positive, but got "
                f"every_n_epochs={every_n_epochs!r}, every_n_train_steps={every_n_train_steps!r}."
            )
        if not isinstance(probe_size, int) or probe_size < 1:
            raise ValueError(f"Expected `probe_size` to be a positive integer, but got {probe_size!r}.")
        if max_seconds is not None and not max_seconds > 0:
            raise ValueError(f"Expected `max_seconds` to be positive or None, but got {max_seconds!r}.")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"Expected `chunk_size` to be a positive integer, but got {chunk_size!r}.")
        if not isinstance(strict, bool):
            raise ValueError(f"Expected `strict` to be True or False, but got {strict!r}.")
        map_style = hasattr(probe_dataset, "__getitem__") and hasattr(probe_dataset, "__len__")
        if probe_dataset is not None and not map_style:
            raise ValueError(
                f"Expected `probe_dataset` to be a map-style dataset, but got {type(probe_dataset).__name__}."
            )
        self.every_n_epochs = every_n_epochs
        self.every_n_train_steps = every_n_train_steps
        self.probe_size = probe_size
        self.seed = seed
        self.max_seconds = max_seconds
        self.name = name
        self.probe_dataset = probe_dataset
        self.chunk_size = chunk_size
        self.strict = strict
        # progress state (checkpointed)
        self.probe_indices: list[int] | None = None
        self.probe_fraction = 1.0
        self.runs: list[dict[str, Any]] = []
        # trainer-bound state (rebuilt in setup)
        self._dataset: Any | None = None
        self._probe: ProbeSet | None = None
        self._run_dir: Path | None = None
        self._warned_no_tb = False
        self._dropped: list[tuple[int, str]] = []  # probe images left out as not finite, not yet announced
        self._last_run_at: tuple[int, int] | None = None
        self._producers: dict[type[Finding], Any] = {}

    # -- identity --------------------------------------------------------------------------------------------

    @property
    def state_key(self) -> str:
        return self._generate_state_key(
            name=self.name, every_n_epochs=self.every_n_epochs, every_n_train_steps=self.every_n_train_steps
        )

    @property
    def tag_prefix(self) -> str:
        """Root of this instance's TensorBoard tags (and artifact folder): ``saliency`` or ``saliency-<name>``."""
        base = self.tag_root
        return f"{base}-{self.name}" if self.name else base

    tag_root: ClassVar[str] = "monitor"

    # -- checkpointing ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "probe_indices": None if self.probe_indices is None else list(self.probe_indices),
            "probe_fraction": self.probe_fraction,
            "runs": [dict(r) for r in self.runs],
            "extra": self.extra_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        indices = state_dict.get("probe_indices")
        self.probe_indices = None if indices is None else [int(i) for i in indices]
        self.probe_fraction = float(state_dict.get("probe_fraction", 1.0))
        self.runs = [dict(r) for r in state_dict.get("runs", [])]
        self._probe = None  # re-read lazily from the restored indices
        if self.runs:
            self._last_run_at = (int(self.runs[-1]["epoch"]), int(self.runs[-1]["step"]))
        self.load_extra_state(state_dict.get("extra", {}))

    def extra_state(self) -> dict[str, Any]:
        """Subclass progress to checkpoint (e.g. the previous epoch's confusion for epoch-vs-epoch diffs)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`extra_state` returned."""

    # -- findings --------------------------------------------------------------------------------------------

    def needs(self) -> tuple[Need, ...]:
        """The finding types this monitor reads (none by default); resolved to producers in ``setup()``."""
        return ()

    def read(self, kind: type[F]) -> F | None:
        """The latest finding of type ``kind`` from its producer on the trainer, or None (none yet, or no producer
        of an optional need)."""
        producer = self._producers.get(kind)
        return None if producer is None else producer.finding(kind)

    # -- setup -----------------------------------------------------------------------------------------------

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        for other in getattr(trainer, "callbacks", []):
            # Distinct state keys (e.g. another cadence) are not enough: tags and run-directory files follow the prefix.
            if other is not self and isinstance(other, Monitor) and other.tag_prefix == self.tag_prefix:
                raise ValueError(
                    f"Expected monitors on one trainer to have distinct tag prefixes (their TensorBoard tags and "
                    f"run-directory folder), but got two {type(self).__name__}s with {self.tag_prefix!r}; give each "
                    "its own `name=`."
                )
        self._producers = find_producers(getattr(trainer, "callbacks", []), self, self.needs())
        self._run_dir = run_directory(trainer, self.tag_prefix)
        if stage != "fit" or not self.needs_probe:
            return
        self._dataset = self.probe_dataset if self.probe_dataset is not None else self._validation_dataset(trainer)
        if self._dataset is None:
            warnings.warn(
                f"{type(self).__name__} found no map-style validation dataset and no `probe_dataset`; it will not run.",
                stacklevel=2,
            )
            return
        if self.probe_indices is None:
            self.probe_indices = select_probe_indices(len(self._dataset), self.probe_size, self.seed)
        self._probe = None

    @staticmethod
    def _validation_dataset(trainer: Any) -> Any | None:
        loader = None
        try:  # one place that knows all three sources (module hook, datamodule hook, loaders passed to fit)
            source = trainer.fit_loop.epoch_loop.val_loop._data_source
            if source.is_defined():
                loader = _first_loader(source.dataloader())
        except Exception as err:  # noqa: BLE001 - Lightning internals moved; fall back to the public datamodule
            log.debug("validation data source not readable: %s", err)
            dm = getattr(trainer, "datamodule", None)
            if dm is not None and hasattr(dm, "val_dataloader"):
                loader = _first_loader(dm.val_dataloader())
        ds = getattr(loader, "dataset", None)
        if ds is None or not hasattr(ds, "__getitem__") or not hasattr(ds, "__len__"):
            return None
        return ds

    def probe(self, device: torch.device | str = "cpu") -> ProbeSet | None:
        """The probe set on ``device`` (read from the dataset on first use), or None when there is none."""
        if self._dataset is None or self.probe_indices is None:
            return None
        if self._probe is None:
            self._check_restored_probe()
            probe = materialise_probe(self._dataset, self.probe_indices, self.probe_extras)
            bad = non_finite_images(probe.batch.images)
            if bad:  # the rest of the probe set is still worth analysing; the dropped images are named once
                rows = {row for row, _ in bad}
                probe = probe._select([i for i in range(len(probe)) if i not in rows])
                self._dropped = [(self.probe_indices[row], what) for row, what in bad]
            self._probe = probe
        return self._probe.to(device)

    def _check_restored_probe(self) -> None:
        """Draw a fresh probe set, with a warning, when the one restored from a checkpoint no longer fits the data
        (a smaller validation set) or the settings (another ``probe_size``)."""
        if self._dataset is None or self.probe_indices is None:
            return
        n, indices = len(self._dataset), self.probe_indices
        wanted = min(self.probe_size, n)
        if any(not 0 <= i < n for i in indices):
            why = f"indices up to {max(indices)}, but the validation set has {n} samples now"
        elif len(indices) != wanted:
            why = f"{len(indices)} images, but `probe_size={self.probe_size}` asks for {wanted}"
        else:
            return
        self.probe_indices = select_probe_indices(n, self.probe_size, self.seed)
        warnings.warn(
            f"{type(self).__name__}: the probe set restored from the checkpoint has {why}; a fresh probe set of "
            f"{len(self.probe_indices)} images is drawn (seed {self.seed}), so runs before and after the resume "
            "analyse different images.",
            stacklevel=3,
        )

    # -- scheduling ------------------------------------------------------------------------------------------

    @staticmethod
    def _skipping(trainer: Any) -> bool:
        return bool(getattr(trainer, "sanity_checking", False) or getattr(trainer, "fast_dev_run", False))

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._skipping(trainer) or not self.every_n_train_steps:
            return
        if is_due(step=trainer.global_step, every_n_train_steps=self.every_n_train_steps):
            self._maybe_run(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # The epoch-end validation runs before ModelCheckpoint saves and before `on_train_epoch_end`: running
        # here puts this epoch's run into the checkpoint. Mid-epoch validations (val_check_interval) wait.
        if self._skipping(trainer) or not self.every_n_epochs or getattr(trainer.state, "fn", None) != "fit":
            return
        try:
            last = bool(trainer.fit_loop.epoch_loop.batch_progress.is_last_batch)
        except AttributeError:
            last = False
        if last and is_due(epoch=trainer.current_epoch, every_n_epochs=self.every_n_epochs):
            self._maybe_run(trainer, pl_module)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        # Epochs without validation end here; `_maybe_run` drops the repeat when validation already ran it.
        if self._skipping(trainer) or not self.every_n_epochs:
            return
        if is_due(epoch=trainer.current_epoch, every_n_epochs=self.every_n_epochs):
            self._maybe_run(trainer, pl_module)

    def _maybe_run(self, trainer: Any, pl_module: Any) -> None:
        where = (int(trainer.current_epoch), int(trainer.global_step))
        if self._last_run_at == where:  # both cadences fired at the same point, or a resume replayed it
            return
        self._last_run_at = where
        self.run(trainer, pl_module)

    # -- one run ---------------------------------------------------------------------------------------------

    def run(self, trainer: Any, pl_module: Any) -> None:
        """Run the analysis now (the scheduled hooks call this; it can be called by hand too).

        An analysis that raises is skipped, not fatal (unless ``strict``): training goes on exactly as without
        the monitor, a warning says what failed, and so does the text tag ``<tag_prefix>/error``.
        """
        try:
            self._run(trainer, pl_module)
        except Exception as err:
            if self.strict:
                raise
            self._skip(trainer, err)

    def _skip(self, trainer: Any, err: Exception) -> None:
        epoch, step = int(trainer.current_epoch), int(trainer.global_step)
        what = str(err) if isinstance(err, AnalysisSkipped) else f"{type(err).__name__}: {err}"
        self.runs.append({"epoch": epoch, "step": step, "error": what})
        if not bool(getattr(trainer, "is_global_zero", True)):
            return
        warnings.warn(
            f"{type(self).__name__} skipped its analysis at epoch {epoch}, step {step}: {what}. Training goes on "
            "unchanged; pass `strict=True` to raise instead.",
            stacklevel=3,
        )
        log.debug("%s failed", type(self).__name__, exc_info=err)
        writer = self._tensorboard(trainer)
        if writer is not None:
            text = f"Analysis skipped at epoch {epoch}, step {step}: `{what}`"
            if not isinstance(err, AnalysisSkipped):
                where = "".join(traceback.format_exception(type(err), err, err.__traceback__)[-3:])
                text += f"\n\n```\n{where}```"
            writer.add_text(f"{self.tag_prefix}/error", text, global_step=step)

    def notice(self, trainer: Any, what: str) -> None:
        """Say that this run analyses less than asked, and why (a warning and the text tag
        ``<tag_prefix>/warning``, on rank zero); the analysis goes on. ``strict`` monitors raise instead."""
        epoch, step = int(trainer.current_epoch), int(trainer.global_step)
        if self.strict:
            raise AnalysisSkipped(what)
        if not bool(getattr(trainer, "is_global_zero", True)):
            return
        warnings.warn(f"{type(self).__name__} at epoch {epoch}, step {step}: {what}.", stacklevel=3)
        writer = self._tensorboard(trainer)
        if writer is not None:
            writer.add_text(f"{self.tag_prefix}/warning", f"Epoch {epoch}, step {step}: {what}.", global_step=step)

    def _check_finite(self, trainer: Any, pl_module: Any, probe: ProbeSet) -> None:
        """Skip a diverged model; announce probe images dropped as not finite (once per probe set)."""
        if self._dropped:
            dropped, self._dropped = self._dropped, []
            total = len(dropped) + (len(self._probe) if self._probe is not None else 0)
            self.notice(trainer, f"{describe_rows(dropped)}: left out of the probe set ({len(dropped)} of {total} "
                                 "images)")
        if not self.needs_probe:
            return
        if len(probe) == 0:
            raise AnalysisSkipped("no probe image is finite (every one holds NaN or infinite values)")
        if not all(bool(torch.isfinite(p).all()) for p in pl_module.parameters() if p.is_floating_point()):
            raise AnalysisSkipped("the model's parameters are not finite (NaN or infinite): training has diverged")
        with torch.no_grad():  # a few images show whether the outputs are usable at all
            out = first_tensor(pl_module(model_input(pl_module, probe.take(4).batch.images)), "the model's output")
        if not bool(torch.isfinite(out).all()):
            raise AnalysisSkipped("the model's outputs are not finite (NaN or infinite) on the probe images: "
                                  "training has diverged or overflows")

    def _run(self, trainer: Any, pl_module: Any) -> None:
        probe = self.probe(pl_module.device) if self.needs_probe else _empty_probe(pl_module.device)
        if probe is None:
            return
        rank = int(getattr(trainer, "global_rank", 0))
        world = int(getattr(trainer, "world_size", 1))
        zero = bool(getattr(trainer, "is_global_zero", True))
        n = max(1, math.ceil(self.probe_fraction * len(probe))) if len(probe) else 0
        if self.sharded and world > 1:
            n = int(trainer.strategy.broadcast(n, src=0))  # every rank joins the same collectives
        elif not zero and not self.all_ranks:
            return
        probe = whole = probe.take(n)
        if self.sharded and world > 1:
            probe = probe.shard(rank, world)
        start = time.perf_counter()
        ctx = RunContext(
            trainer=trainer,
            pl_module=pl_module,
            probe=probe,
            epoch=int(trainer.current_epoch),
            global_step=int(trainer.global_step),
            run_index=len(self.runs),
            deadline=start + (self.max_seconds if self.max_seconds is not None else math.inf),
            run_dir=self._run_dir,
            writer=self._tensorboard(trainer) if zero else None,
            is_global_zero=zero,
            rank=rank,
            world_size=world,
            full_size=n,
        )
        with preserve_training_mode(pl_module, enable_grad=True, fork_rng=True):
            self._check_finite(trainer, pl_module, whole)  # the whole probe: every rank decides alike
            summary = self.analyse(ctx) or {}
        seconds = time.perf_counter() - start
        record = {"epoch": ctx.epoch, "step": ctx.global_step, "seconds": round(seconds, 4), "probe": n, **summary}
        self.runs.append(record)
        if self.max_seconds is not None and seconds > self.max_seconds:
            new = shrink_fraction(self.probe_fraction, seconds, self.max_seconds)
            if zero:
                warnings.warn(
                    f"{type(self).__name__} took {seconds:.1f}s, over its budget of max_seconds={self.max_seconds}; "
                    f"the next run analyses {new:.0%} of the probe set.",
                    stacklevel=2,
                )
            self.probe_fraction = new

    def analyse(self, ctx: RunContext) -> dict[str, Any] | None:
        """The monitor's analysis and logging for one run; returns a small JSON-able summary (kept in state)."""
        raise NotImplementedError

    # -- logging ---------------------------------------------------------------------------------------------

    def _tensorboard(self, trainer: Any) -> Any | None:
        for logger in getattr(trainer, "loggers", []):
            if isinstance(logger, _TB_LOGGERS):
                return getattr(logger, "experiment", None)
        if not self._warned_no_tb:
            self._warned_no_tb = True
            if self._run_dir is None:
                where = ("nothing is written (the trainer has no logger and no `default_root_dir` of its own); "
                         "pass a TensorBoardLogger or `default_root_dir` to keep them")
            else:
                where = f"they are written to {self._run_dir}"
            _rank_zero_info(f"{type(self).__name__}: no TensorBoardLogger on the trainer, so images, reports and "
                            f"histories are not in TensorBoard; {where}.")
        return None

    def log_scalars(self, ctx: RunContext, scalars: Mapping[str, float]) -> None:
        """Scalars to every logger of the trainer (rank zero), tags under :attr:`tag_prefix`."""
        if not ctx.is_global_zero or not scalars:
            return
        metrics = {f"{self.tag_prefix}/{k}": float(v) for k, v in scalars.items()}
        for logger in getattr(ctx.trainer, "loggers", []):
            logger.log_metrics(metrics, step=ctx.global_step)

    def log_image(self, ctx: RunContext, tag: str, image: Tensor) -> None:
        """One ``(C, H, W)`` image in [0, 1] under ``<tag_prefix>/<tag>``; a PNG in the run dir without TensorBoard.

        TensorBoard keeps 10 entries per image tag by default (reservoir-sampled over steps), so monitors put
        one tiled image per tag per run and keep the number of tags small and stable.
        """
        if not ctx.is_global_zero:
            return
        image = image.detach().float().clamp(0, 1).cpu()
        full = f"{self.tag_prefix}/{tag}"
        if ctx.writer is not None:
            ctx.writer.add_image(full, image, global_step=ctx.global_step)
            return
        self.write_artifact(ctx, f"images/{tag.replace('/', '__')}_step{ctx.global_step:07d}.png", png_bytes(image))

    def write_artifact(self, ctx: RunContext, relpath: str, content: Any) -> Path | None:
        """Write JSON (dict/list), text or bytes under the run directory (rank zero); returns the path.

        Every file a monitor leaves in the run directory goes through here, and here through
        :func:`debugger.files.atomic_write`: a reader sees the previous version or the new one, never half a file,
        and a write that fails leaves the previous version and no temporary file behind.

        Raises:
            TypeError: if ``content`` is not bytes, text or JSON-serialisable.
        """
        if not ctx.is_global_zero or ctx.run_dir is None:
            return None
        if isinstance(content, bytes | str):
            data: str | bytes = content
        else:  # serialise first: a value that cannot be written never touches the disk
            data = json.dumps(content, indent=1, default=json_default)
        return atomic_write(ctx.run_dir / relpath, data)


def run_directory(trainer: Any, tag_prefix: str) -> Path | None:
    """Where a monitor's files go: ``<log_dir>/conceptfix/<tag_prefix>`` with a logger; with ``logger=False``,
    under ``default_root_dir`` when the trainer was given one other than the working directory (Lightning's own
    default), else None (nothing written: no surprise folder in the working directory)."""
    # trainer.log_dir broadcasts, so every rank must ask for it here, never inside a rank-zero-only branch.
    log_dir = trainer.log_dir
    if getattr(trainer, "loggers", None):
        return Path(log_dir or trainer.default_root_dir) / "conceptfix" / tag_prefix
    root = Path(trainer.default_root_dir)
    if root.resolve() == Path.cwd().resolve():
        return None
    return root / "conceptfix" / tag_prefix


def _rank_zero_info(message: str) -> None:
    """An info line Lightning shows by default (its rank-zero logger), not only to those who configured ours."""
    from pytorch_lightning.utilities import rank_zero_info

    rank_zero_info(message)
    log.debug(message)


def png_bytes(image: Tensor) -> bytes:
    """A ``(C, H, W)`` float image in [0, 1] encoded as PNG."""
    from PIL import Image

    arr = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()
    arr = arr[0] if arr.shape[0] == 1 else arr.permute(1, 2, 0)
    buf = io.BytesIO()
    Image.fromarray(arr.numpy()).save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: Tensor, path: Path) -> None:
    """Save a ``(C, H, W)`` float image in [0, 1] as PNG, atomically (monitors use :meth:`Monitor.write_artifact`)."""
    atomic_write(path, png_bytes(image))
