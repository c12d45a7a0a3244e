"""The run directory: every file a run writes, through write-then-rename, and the finished stages in ``state.json``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from debugger.files import atomic_write, json_default

STATE_FILE = "state.json"


class LoopError(ValueError):
    """Bad input to the loop (missing checkpoint, wrong architecture, unknown layer, data of the wrong shape)."""


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
        """The path of ``relpath`` inside the run directory."""
        return self.path / relpath

    @property
    def tensorboard(self) -> Path:
        """Where the TensorBoard logs go (``tb/``)."""
        return self.path / "tb"

    def write_text(self, relpath: str, text: str) -> Path:
        """Write ``text`` to ``relpath`` through write-then-rename."""
        return atomic_write(self.file(relpath), text)

    def write_json(self, relpath: str, obj: Any) -> Path:
        """Write ``obj`` as JSON (tensors as lists, paths as strings) through write-then-rename."""
        return atomic_write(self.file(relpath), json.dumps(obj, indent=1, default=json_default) + "\n")

    def read_json(self, relpath: str) -> Any:
        """The JSON value stored at ``relpath``."""
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
        """Record ``stage`` as finished in ``state.json``, with ``info`` (files it wrote, settings) and the time."""
        state = self.state()
        state.setdefault("stages", {})[stage] = dict(info, finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.write_json(STATE_FILE, state)


def default_run_dir(command: str, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/<command>-<UTC time>`` (a fresh directory per invocation)."""
    return Path(root) / f"{command}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"

