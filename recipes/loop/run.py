"""The run directory: every file a run writes, through write-then-rename, and the finished stages in ``state.json``."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping
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

    def claim(self, command: str, options: Mapping[str, Any], overwrite: bool = False) -> None:
        """Make this directory the run of ``command`` with ``options``, recorded in ``state.json``, or refuse.

        A new or empty directory is claimed. A directory that ``command`` made with the same ``options`` is resumed.
        Anything else is refused before any work, so that no command writes over another command's outputs or
        resumes checkpoints trained with other settings: a run of another command, a run with other options (only
        options that both runs recorded are compared, so a run written before an option existed still resumes), a
        conceptfix run without a record, and a directory holding other files. With ``overwrite`` a conceptfix run
        directory is emptied and claimed afresh; a directory of other files is never deleted.

        Args:
            command: the command writing the run (``"demo"``, ``"fit"``, …).
            options: the options that decide the run's results, by their command-line names (JSON values).
            overwrite: empty a conceptfix run directory instead of refusing it.

        Raises:
            LoopError: naming the command that made the directory or the options that differ.

        Example:
            >>> import tempfile
            >>> run = RunDirectory(tempfile.mkdtemp())
            >>> run.claim("demo", {"epochs": 3, "finetune_epochs": 5})
            >>> run.claim("demo", {"epochs": 3, "finetune_epochs": 5})  # the same run: resumed
            >>> run.claim("demo", {"epochs": 3, "finetune_epochs": 1})  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            recipes.loop.run.LoopError: Expected --run_dir ... to be resumed with its own configuration, but \
--finetune_epochs is 1 here and 5 there; use another --run_dir or --overwrite.
            >>> run.claim("diagnose", {})  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            recipes.loop.run.LoopError: Expected --run_dir ... to be a new directory or a run of `conceptfix \
diagnose`, but `conceptfix demo` made it (its outputs would be overwritten); use another --run_dir or --overwrite.
            >>> run.claim("demo", {"epochs": 3, "finetune_epochs": 1}, overwrite=True)
            >>> run.state()["options"]["finetune_epochs"]
            1
        """
        options = json.loads(json.dumps(dict(options), default=json_default))
        state = self.state()
        ours = self.file(STATE_FILE).exists() or self.file("config.yaml").exists()
        where = f"--run_dir {str(self.path)}"
        if overwrite and ours:
            shutil.rmtree(self.path)
            self.path.mkdir(parents=True)
            state = {"stages": {}}
        elif self.path.is_dir() and any(self.path.iterdir()):
            recorded, before = state.get("command"), state.get("options")
            if not ours:
                raise LoopError(
                    f"Expected {where} to be a new or empty directory or a conceptfix run, but it holds other files; "
                    "use another --run_dir (--overwrite only empties conceptfix run directories)."
                )
            if recorded is None or not isinstance(before, Mapping):
                raise LoopError(
                    f"Expected {where} to be a new directory or a run that recorded its command and configuration, "
                    f"but it has no record of them (an older conceptfix wrote it); use another --run_dir or "
                    f"--overwrite."
                )
            if recorded != command:
                raise LoopError(
                    f"Expected {where} to be a new directory or a run of `conceptfix {command}`, but `conceptfix "
                    f"{recorded}` made it (its outputs would be overwritten); use another --run_dir or --overwrite."
                )
            differ = [f"--{k} is {_shown(options[k])} here and {_shown(before[k])} there"
                      for k in sorted(set(options) & set(before)) if options[k] != before[k]]
            if differ:
                more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
                raise LoopError(
                    f"Expected {where} to be resumed with its own configuration, but {', '.join(differ[:4])}{more}; "
                    "use another --run_dir or --overwrite."
                )
            options = {**before, **options}
        state["command"], state["options"] = command, options
        self.write_json(STATE_FILE, state)

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


def _shown(value: Any) -> str:
    """An option's value as the command line spells it (``null``, ``true``, ``'a.ckpt'``, ``5``)."""
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    return repr(value) if isinstance(value, str) else json.dumps(value)


def default_run_dir(command: str, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/<command>-<UTC time>`` (a fresh directory per invocation)."""
    return Path(root) / f"{command}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"

