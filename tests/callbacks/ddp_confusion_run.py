"""Run a ConfusionMonitor on 1 or 2 CPU processes; used by test_ddp.py (a script, not a test module).

Usage: python ddp_confusion_run.py OUT_DIR DEVICES
The model trains with lr=0 and no BatchNorm, so both runs analyse identical weights; rank zero writes the
confusion counts to OUT_DIR/.../ranking.json and the probe indices to OUT_DIR/probe.json. A
FailureDrivenAugmentation turns the confusion finding into the policy a JointBatchTraining trains with; every
rank writes the policy it trained with to OUT_DIR/policy_rank<r>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402
from _cbtiny import make_module, make_trainer  # noqa: E402

from augment import Cutout, JointBatch  # noqa: E402
from callbacks.confusion_monitor import ConfusionMonitor  # noqa: E402
from callbacks.failure_driven_augmentation import FailureDrivenAugmentation  # noqa: E402
from callbacks.findings import PolicyFinding  # noqa: E402
from callbacks.joint_batch import JointBatchTraining  # noqa: E402
from callbacks.saliency_monitor import SaliencyMonitor  # noqa: E402


def run(out: Path, devices: int) -> None:
    torch.set_num_threads(1)
    import pytorch_lightning as pl

    pl.seed_everything(0, workers=True, verbose=False)
    module = make_module("pytorch_lightning", lr=0.0, batchnorm=False, n_val=16)
    conf = ConfusionMonitor(source="annotated", probe_size=15, min_support=2)  # odd: uneven shards
    sal = SaliencyMonitor("layer1", probe_size=4)  # rank-zero-only work beside the collectives
    joint = JointBatchTraining(JointBatch(Cutout(size=2, seed=0)))
    fda = FailureDrivenAugmentation(fallback="Cutout", min_class_support=1)  # decided on rank zero, then broadcast
    kw = {"strategy": "ddp"} if devices > 1 else {}
    trainer = make_trainer("pytorch_lightning", out, [conf, sal, joint, fda], max_epochs=2, devices=devices, **kw)
    trainer.fit(module)
    found = fda.finding(PolicyFinding)
    policy = joint.active_policy
    (out / f"policy_rank{trainer.global_rank}.json").write_text(json.dumps({
        "evidence": None if found is None else found.evidence,
        "active": None if policy is None else policy.to_dict(),
    }))
    if trainer.is_global_zero:
        (out / "probe.json").write_text(json.dumps({"indices": conf.probe_indices, "world": trainer.world_size,
                                                      "pid": os.getpid()}))


def main() -> None:
    run(Path(sys.argv[1]), int(sys.argv[2]))


if __name__ == "__main__":
    main()
