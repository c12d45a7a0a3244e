"""Writing files so that a reader never sees half of one: the one write-then-rename used across conceptfix.

Reports, the callbacks' artifacts (concept store, rankings, policies, PNGs) and the recipes' run directory all
write through :func:`atomic_write`; JSON they write uses :func:`json_default` for tensors, arrays and paths.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

__all__ = ["atomic_write", "json_default"]


def json_default(o: Any) -> Any:
    """The ``default=`` of ``json.dumps`` for what conceptfix writes: tensors and numpy values as (nested) lists or
    numbers, paths as strings.

    Raises:
        TypeError: for any other type (``json.dumps`` passes it on).

    Example:
        >>> import json, torch
        >>> json.dumps({"counts": torch.tensor([[1, 2]]), "lift": np.float32(1.5), "dir": Path("runs")},
        ...            default=json_default)
        '{"counts": [[1, 2]], "lift": 1.5, "dir": "runs"}'
    """
    if isinstance(o, Tensor | np.ndarray | np.generic):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"Expected a JSON-serialisable value, but got {type(o).__name__}.")


def atomic_write(path: str | os.PathLike[str], data: str | bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file in the same directory, fsync'ed, then ``os.replace``.

    Readers (TensorBoard, a resumed run, another callback) see either the previous file or the new one, never a
    partial write; when anything fails, including an interrupt, the temporary file is removed and the previous
    file is left as it was. Missing parent directories are created. Text is written as UTF-8.

    Raises:
        TypeError: if ``data`` is neither ``str`` nor ``bytes``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = atomic_write(Path(d) / "a" / "note.txt", "hello")
        ...     p.read_text(), sorted(q.name for q in p.parent.iterdir())
        ('hello', ['note.txt'])
    """
    if isinstance(data, str):
        payload = data.encode("utf-8")
    elif isinstance(data, bytes | bytearray | memoryview):
        payload = bytes(data)
    else:
        raise TypeError(f"Expected `data` to be str or bytes, but got {type(data).__name__}.")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide the file from a TensorBoard run by someone else
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
