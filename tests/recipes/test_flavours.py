"""The built-in models and data modules under both Lightning flavours' Trainers."""

import importlib

import pytest
import torch

from recipes.data import PlantedConceptsDataModule, RoadScenesDataModule
from recipes.models import ResNetClassifier, SegmentationNet

FLAVOURS = [
    "pytorch_lightning",
    pytest.param(
        "lightning.pytorch",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("lightning") is None,
            reason="the unified `lightning` package is not installed, so its Trainer cannot be tried",
        ),
    ),
]


def _trainer(flavour: str, tmp_path, **kwargs):
    lightning = importlib.import_module(flavour)
    return lightning.Trainer(
        accelerator="cpu", default_root_dir=tmp_path, logger=False, enable_progress_bar=False,
        enable_model_summary=False, **kwargs,
    )


def _overridden(flavour: str, name: str, obj) -> bool:
    return importlib.import_module(f"{flavour}.utilities.model_helpers").is_overridden(name, obj)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_classifier_and_planted_data_fit_test_and_resume_under_either_trainer(flavour, tmp_path):
    dm = PlantedConceptsDataModule(image_size=16, train_size=16, val_size=8, test_size=8, batch_size=8, cache_dir=None)
    torch.manual_seed(0)
    model = ResNetClassifier(width=4, blocks=(1,))
    before = [p.detach().clone() for p in model.parameters()]
    trainer = _trainer(flavour, tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=dm)
    assert trainer.global_step == 2  # 16 samples in batches of 8
    assert set(trainer.callback_metrics) == {"train/loss", "train/acc", "val/loss", "val/acc"}
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    (result,) = trainer.test(model, datamodule=dm, verbose=False)
    assert set(result) == {"test/loss", "test/acc"}
    # The accuracy over 8 test images is a multiple of 1/8 and agrees with the model's own predictions.
    batch = dm.dataset("test").materialize()
    acc = (model.eval()(batch["image"]).argmax(1) == batch["target"]).float().mean().item()
    assert result["test/acc"] == pytest.approx(acc, abs=1e-6)
    ckpt = trainer.checkpoint_callback.best_model_path
    resumed = _trainer(flavour, tmp_path, max_epochs=2)
    resumed.fit(ResNetClassifier(width=4, blocks=(1,)), datamodule=dm, ckpt_path=ckpt)
    assert resumed.global_step == 4


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_segmentation_net_and_road_data_fit_under_either_trainer(flavour, tmp_path):
    dm = RoadScenesDataModule(train_size=4, val_size=2, test_size=2, batch_size=2, cache_dir=None)
    trainer = _trainer(flavour, tmp_path, max_epochs=1, enable_checkpointing=False)
    trainer.fit(SegmentationNet(width=4), datamodule=dm)
    assert trainer.global_step == 2
    assert {"val/miou", "val/iou_0", "val/iou_2"} <= set(trainer.callback_metrics)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_only_the_hooks_a_builtin_defines_look_overridden_to_the_attached_trainer(flavour, tmp_path):
    dm = PlantedConceptsDataModule(image_size=16, train_size=8, val_size=8, test_size=8, batch_size=8, cache_dir=None)
    model = ResNetClassifier(width=4, blocks=(1,))
    trainer = _trainer(flavour, tmp_path, max_steps=1, limit_val_batches=0, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    for hook in ("training_step", "configure_optimizers", "predict_step"):
        assert _overridden(flavour, hook, model)
    for hook in ("configure_model", "configure_sharded_model", "on_validation_model_train", "optimizer_step",
                 "lr_scheduler_step", "train_dataloader"):
        assert not _overridden(flavour, hook, model), hook
    assert _overridden(flavour, "train_dataloader", dm)
    assert not _overridden(flavour, "prepare_data", dm)
    assert not _overridden(flavour, "transfer_batch_to_device", dm)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_fit_baseline_trains_a_users_own_module_of_either_flavour(flavour):
    from recipes.baseline import fit_baseline

    lightning = importlib.import_module(flavour)

    class Tiny(lightning.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))

        def forward(self, x):
            return self.net(x)

        def training_step(self, batch, batch_idx):
            return torch.nn.functional.cross_entropy(self(batch["image"]), batch["target"])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = PlantedConceptsDataModule(train_size=32, val_size=16, test_size=16, batch_size=16, cache_dir=None)
    model = Tiny()
    before = model.net[1].weight.detach().clone()
    assert fit_baseline(dm, model, max_epochs=1) is model
    assert not torch.equal(model.net[1].weight, before)  # it trained
