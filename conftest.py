"""Settings for the whole run, test modules and the packages' docstring examples alike.

- No network checks on import; generated data cached in a per-session temporary folder.
- ``torch``, ``nn``, ``F`` and ``np`` in every docstring example's namespace, as a reader of the docs assumes.
- ``--torch-threads N`` sets torch's intra-op threads for the session, to check that no test depends on them
  (results may differ in the last bits between thread counts; tests compare with tolerances).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from typing import Any

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ["CONCEPTFIX_CACHE"] = _CACHE = tempfile.mkdtemp(prefix="conceptfix-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)  # a session's cache goes with it


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--torch-threads", type=int, default=None, metavar="N",
        help="set torch's intra-op threads for the whole session (default: leave torch's own choice)",
    )


def pytest_configure(config: pytest.Config) -> None:
    threads = config.getoption("--torch-threads")
    if threads is not None:
        if threads < 1:
            raise pytest.UsageError(f"Expected `--torch-threads` to be a positive integer, but got {threads!r}.")
        import torch

        torch.set_num_threads(threads)


@pytest.fixture(scope="session", autouse=True)
def _doctest_names(doctest_namespace: dict[str, Any]) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import nn

    doctest_namespace.update(torch=torch, nn=nn, F=F, np=np)
