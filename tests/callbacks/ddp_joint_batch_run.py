"""Train with saliency-guided joint batches on 1 or 2 CPU processes; used by test_joint_batch.py (a script).

Usage: python ddp_joint_batch_run.py OUT_DIR DEVICES
Every rank writes its final weights (rank zero to OUT_DIR/weights.pt, others to weights_rank{r}.pt), so the
test can check that the ranks stayed in sync.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from augment import JointBatch, SaliencyOcclusion  # noqa: E402
from callbacks.joint_batch import JointBatchTraining  # noqa: E402


class Net(pl.LightningModule):
    def __init__(self, batch_size: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.layer1(self.stem(x)).mean((2, 3)))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.5)

    def train_dataloader(self) -> DataLoader:
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(16, 3, 8, 8, generator=g), torch.arange(16) % 3
        return DataLoader(TensorDataset(x, y), batch_size=self.batch_size, shuffle=False)


def run(out: Path, devices: int) -> None:
    torch.set_num_threads(1)
    pl.seed_everything(0, verbose=False)
    module = Net(batch_size=8 // devices)
    cb = JointBatchTraining(JointBatch(SaliencyOcclusion(size=3, jitter=0, seed=0)), layer="layer1")
    kw: dict[str, Any] = {"strategy": "ddp"} if devices > 1 else {}
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", devices=devices, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(out),
                         callbacks=[cb], **kw)
    trainer.fit(module)
    out.mkdir(parents=True, exist_ok=True)
    name = "weights.pt" if trainer.is_global_zero else f"weights_rank{trainer.global_rank}.pt"
    torch.save({k: v.detach().cpu() for k, v in module.state_dict().items()}, out / name)


if __name__ == "__main__":
    run(Path(sys.argv[1]), int(sys.argv[2]))
