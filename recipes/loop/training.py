"""Training a stage: a seeded CPU Trainer with TensorBoard logs, a resume point after every epoch, and the finished
model saved as the stage's checkpoint."""

from __future__ import annotations

import signal
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl

from recipes.baseline import quiet_lightning
from recipes.loop.checkpoints import AtomicLastCheckpoint, load_model, resume_point, save_model
from recipes.loop.run import LoopError, RunDirectory


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


def monitors(layer: str, every_n_epochs: int = 1, probe_size: int = 128, seed: int = 0,
             n_concepts: int | None = 32) -> list[pl.Callback]:
    """The monitors the loop trains with: concepts (``n_concepts`` of them, as the diagnosis), confusion,
    saliency, and the policy they imply.

    The policy is only logged while training (``FailureDrivenAugmentation(log_only=True)``): the loop derives
    the fine-tuning policy from its own diagnosis afterwards (:func:`~recipes.loop.policy.matched_policies`).

    Example:
        >>> [type(m).__name__ for m in monitors("layer1", n_concepts=16)][:2], monitors("layer1")[0].n_concepts
        (['ConceptMonitor', 'ConfusionMonitor'], 32)
    """
    from callbacks import ConceptMonitor, FailureDrivenAugmentation, default_monitors

    common: dict[str, Any] = {"every_n_epochs": every_n_epochs, "probe_size": probe_size, "seed": seed}
    found: list[pl.Callback] = [ConceptMonitor(layer, n_concepts=n_concepts, **common)]
    found += [m for m in default_monitors(layer, None, **common) if not isinstance(m, ConceptMonitor)]
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
        resume = resume_point(last, stage)
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

