"""Saliency called from a real Lightning validation step (inference mode, grad off) while the model trains."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from debugger.saliency import GradCAM, IntegratedGradients, NormGrad, Occlusion, extremal_perturbation

pl = pytest.importorskip("pytorch_lightning")


class Module(pl.LightningModule):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net
        self.seen: list[dict] = []

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        row = {"inference_mode": torch.is_inference_mode_enabled(), "grad": torch.is_grad_enabled()}
        row["gradcam"] = GradCAM(self, "net.act").attribute(x, y)
        row["normgrad"] = NormGrad(self, "net.relu").attribute(x, "predicted")
        row["ig"] = IntegratedGradients(self, steps=3).attribute(x, y)
        row["occlusion"] = Occlusion(self, window=4, stride=4).attribute(x, y)
        row["extremal"] = extremal_perturbation(self, x, y, areas=[0.2], iterations=2).masks
        row["training_after"] = self.training
        self.seen.append(row)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_methods_work_inside_a_lightning_validation_step(net):
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 5, (8,), generator=g))
    module = Module(net)
    trainer = pl.Trainer(
        max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=1,
    )
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    trainer.validate(module, DataLoader(data, batch_size=4), verbose=False)  # runs under inference_mode
    assert len(module.seen) == 3  # one validation batch per epoch, then validate()
    assert module.seen[-1]["inference_mode"]
    for row in module.seen:
        assert not row["grad"]  # Lightning's validation context: grad off
        assert not row["training_after"]  # Lightning's eval mode for validation is kept
        for key in ("gradcam", "normgrad", "ig", "occlusion", "extremal"):
            assert torch.isfinite(row[key]).all() and row[key].abs().sum() > 0, key
    assert trainer.state.finished
