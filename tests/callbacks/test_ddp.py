"""A 2-process CPU DDP run (gloo) completes, and its synced confusion counts equal a single process's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).with_name("ddp_confusion_run.py")


def _run(out: Path, devices: int) -> dict[str, Any]:
    if devices == 1:  # in this process: the same seeded weights, no second interpreter start-up
        from ddp_confusion_run import run

        run(out, 1)
    else:  # Lightning's DDP launcher re-runs the script for rank 1
        env = dict(os.environ, OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1")
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), str(out), str(devices)], capture_output=True, text=True, timeout=120,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
    meta = json.loads((out / "probe.json").read_text())
    ranking = json.loads((out / "run" / "version_0" / "conceptfix" / "confusion" / "ranking.json").read_text())
    policies = [json.loads(p.read_text()) for p in sorted(out.glob("policy_rank*.json"))]
    return {"meta": meta, "ranking": ranking, "policies": policies}


@pytest.mark.slow
def test_two_process_ddp_confusion_counts_equal_single_process(tmp_path: Path) -> None:
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    single = _run(tmp_path / "single", 1)
    ddp = _run(tmp_path / "ddp", 2)
    assert ddp["meta"]["world"] == 2 and single["meta"]["world"] == 1
    assert ddp["meta"]["indices"] == single["meta"]["indices"]
    assert [h["epoch"] for h in ddp["ranking"]] == [0, 1]
    for a, b in zip(single["ranking"], ddp["ranking"], strict=True):
        assert a["names"] == b["names"] == ["bright", "stripe", "clean"]
        assert a["counts"] == b["counts"]
        assert sum(map(sum, a["counts"][0])) + sum(map(sum, a["counts"][1])) > 0
    # rank zero decided the policy from its confusion finding; rank one trained with the very same one
    assert len(ddp["policies"]) == 2 and ddp["policies"][0] == ddp["policies"][1]
    assert ddp["policies"][1]["evidence"] == "ConfusionMonitor of step 4"  # 2 steps an epoch on each of 2 ranks
    assert ddp["policies"][0]["active"] == single["policies"][0]["active"]
    saliency = tmp_path / "ddp" / "run" / "version_0"
    assert any(p.name.startswith("events.out.tfevents") for p in saliency.iterdir())
