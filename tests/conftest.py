"""Only test modules are collected under tests/: helper scripts (``_cbtiny.py``, the DDP runs) are imported by the
tests that need them, never by ``--doctest-modules``, so a script's top level never runs at collection."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# The tiny shared helpers (`_dbtiny`, `_cbtiny`) import by name from any test folder.
sys.path[:0] = [str(Path(__file__).parent / d) for d in ("debugger", "callbacks") if str(Path(__file__).parent / d)
                not in sys.path]


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    if collection_path.suffix == ".py" and collection_path.name != "conftest.py":
        patterns = config.getini("python_files")
        if not any(collection_path.match(p) for p in patterns):
            return True
    return None
