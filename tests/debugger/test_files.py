"""JSON for conceptfix's files: tensors, numpy values and paths encode; anything else is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from debugger.files import json_default


def test_json_default_encodes_tensors_arrays_and_paths() -> None:
    data = {"counts": torch.tensor([[1, 2], [3, 4]]), "lift": np.float64(2.5), "mask": np.array([True, False]),
            "dir": Path("runs") / "a", "loss": torch.tensor(0.25)}
    assert json.loads(json.dumps(data, default=json_default)) == {
        "counts": [[1, 2], [3, 4]], "lift": 2.5, "mask": [True, False], "dir": "runs/a", "loss": 0.25}


def test_json_default_refuses_other_types() -> None:
    with pytest.raises(TypeError, match="Expected a JSON-serialisable value, but got object"):
        json.dumps({"x": object()}, default=json_default)
