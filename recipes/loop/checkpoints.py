"""Checkpoint I/O: save and load models safely (weights-only unless the caller trusts the file), and the resume
points of interrupted training stages."""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from debugger.files import atomic_write
from recipes.loop.run import LoopError

CHECKPOINT_FORMAT = 1
KNOWN_MODELS = ("recipes.models.ResNetClassifier", "recipes.models.SegmentationNet")


def save_model(model: pl.LightningModule, path: str | os.PathLike[str], **extra: Any) -> Path:
    """Save a Lightning-compatible checkpoint (``state_dict``, ``hyper_parameters``) plus the model's class path,
    atomically. ``Model.load_from_checkpoint`` reads it as well as :func:`load_model`."""
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


ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
PICKLE_MAGIC = b"\x80"  # pickle protocol 2+: torch.save's legacy format


def unreadable_reason(path: str | os.PathLike[str], err: BaseException) -> str:
    """Why ``torch.load`` could not read ``path`` (it raised ``err``), in plain words: empty, not a PyTorch file at
    all, or a damaged one. Never torch's own advice to load with ``weights_only=False``: that unpickles arbitrary
    objects, which only a trusted file may do (``allow_pickle``).

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> f = Path(tempfile.mkdtemp()) / "notes.ckpt"
        >>> _ = f.write_text("hello world")
        >>> unreadable_reason(f, RuntimeError("invalid load key, 'h'."))
        "it is not a PyTorch checkpoint (neither a zip archive nor a pickle: it starts with b'hello wo')"
        >>> _ = f.write_bytes(b"")
        >>> unreadable_reason(f, EOFError())
        'it is empty'
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError as os_err:
        return f"it cannot be read ({os_err.strerror or os_err})"
    if not head:
        return "it is empty"
    cause = _first_sentence(err)
    if head.startswith(ZIP_MAGIC):
        return f"it is a damaged PyTorch checkpoint, cut short or changed after saving ({cause})"
    if not head.startswith(PICKLE_MAGIC):
        return f"it is not a PyTorch checkpoint (neither a zip archive nor a pickle: it starts with {head!r})"
    return f"it is not a PyTorch checkpoint ({cause})"


def _first_sentence(err: BaseException) -> str:
    """The informative part of a ``torch.load`` error: the unpickler's own complaint when there is one, else the
    first sentence; torch's advice about ``weights_only`` left out."""
    import re

    text = str(err)
    found = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", text)
    if found:
        return f"unpickling stopped: {found.group(1).strip()}"
    text = re.sub(r"^PytorchStreamReader failed reading zip archive: ", "", text.strip())
    sentence = re.split(r"(?<=\.)\s|\n", text, maxsplit=1)[0].rstrip(".") if text else ""
    if not sentence or "weights_only" in sentence:
        return type(err).__name__
    return sentence


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
        named = f"{what} {path}" if what.startswith("`--") else what  # an option, or a file it names itself
        raise LoopError(
            f"Expected {named} to be a checkpoint written by conceptfix or Lightning, but "
            f"{unreadable_reason(path, err)}."
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


def resume_point(last: Path, stage: str) -> str | None:
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
        problem = unreadable_reason(last, err)
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

