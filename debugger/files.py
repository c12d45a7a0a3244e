"""Writing files so that a reader never sees half of one: the one write-then-rename used across conceptfix.

Reports, the callbacks' artifacts (concept store, rankings, policies, PNGs) and the recipes' run directory all
write through :func:`atomic_write`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

__all__ = ["atomic_write"]


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
