"""JointBatchTraining: joint batches in real Trainer runs (both flavours), saliency-guided steps, errors."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from augment import (
    AugmentationPolicy,
    BatchAugment,
    Cutout,
    HideAndSeek,
    JointBatch,
    RandomCropFlip,
    SaliencyOcclusion,
    SyntheticShadow,
)
from callbacks.joint_batch import JointBatchTraining, augment_batch
from debugger.contract import as_sample, unpack_batch
from debugger.saliency import normgrad_from

FLAVOURS = ["pytorch_lightning", "lightning.pytorch"]


class _Dicts(Dataset):
    def __init__(self, n: int = 12) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, 8, 8, generator=g) + 0.5
        self.y = torch.arange(n) % 3
        self.c = (torch.arange(n) % 2).float()[:, None]
        self.m = torch.zeros(n, 1, 8, 8, dtype=torch.bool)
        self.m[:, 0, :3, :3] = True

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> Any:
        s: dict[str, Any] = dict(as_sample(self.x[i], self.y[i], self.c[i], self.m[i]))
        s["object_mask"] = self.m[i, 0]
        return s


def _module(flavour: str, dict_batches: bool = True, batch_size: int = 4) -> Any:
    L = pytest.importorskip(flavour)

    class Net(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
            self.layer1 = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(4, 3)
            self.seen: list[Any] = []

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.layer1(self.stem(x)).mean((2, 3)))

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            b = unpack_batch(batch)
            self.seen.append(batch)
            loss = nn.functional.cross_entropy(self(b.images), b.targets)
            self.log("loss", loss, batch_size=len(b.targets))
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            self.seen.append(("val", batch))

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=0.01)

        def train_dataloader(self) -> DataLoader:
            if dict_batches:
                return DataLoader(_Dicts(), batch_size=batch_size)
            ds = _Dicts()
            return DataLoader(TensorDataset(ds.x, ds.y), batch_size=batch_size)

        def val_dataloader(self) -> DataLoader:
            return DataLoader(_Dicts(4), batch_size=batch_size)

    return Net()


def _fit(flavour: str, module: Any, callback: Any, tmp_path: Any, datamodule: Any = None) -> Any:
    L = pytest.importorskip(flavour)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=str(tmp_path), callbacks=[callback])
    trainer.fit(module, datamodule=datamodule)
    return trainer


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_joint_cutout_doubles_training_batches_only(flavour, tmp_path):
    module = _module(flavour)
    _fit(flavour, module, JointBatchTraining(JointBatch(Cutout(size=3, seed=0))), tmp_path)
    train = [b for b in module.seen if not isinstance(b, tuple)]
    val = [b for b in module.seen if isinstance(b, tuple)]
    assert len(train) == 3 and all(b["image"].shape[0] == 8 for b in train)
    assert all(v[1]["image"].shape[0] == 4 for v in val)
    b = train[0]
    assert torch.equal(b["target"][:4], b["target"][4:]) and torch.equal(b["concepts"][:4], b["concepts"][4:])
    assert torch.equal(b["object_mask"][:4], b["object_mask"][4:]) and b["concept_masks"].shape[0] == 8
    diff = (b["image"][:4] != b["image"][4:]).flatten(1)
    assert diff.any(1).all() and (diff.sum(1) <= 3 * 9).all()  # one 3x3 square per occluded copy (x3 channels)
    assert "on_after_batch_transfer" not in module.__dict__  # removed at teardown


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_tuple_batches_and_batch_augment(flavour, tmp_path):
    module = _module(flavour, dict_batches=False)
    joint = BatchAugment(RandomCropFlip(padding=1, seed=0), copies=3)
    _fit(flavour, module, JointBatchTraining(joint), tmp_path)
    train = [b for b in module.seen if isinstance(b, list)]  # the default collate of TensorDataset: [x, y]
    assert train and all(b[0].shape[0] == 12 and b[1].shape[0] == 12 for b in train)
    assert torch.equal(train[0][1][:4], train[0][1][4:8])


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_datamodule_hook_is_wrapped_when_it_overrides(flavour, tmp_path):
    L = pytest.importorskip(flavour)

    class DM(L.LightningDataModule):
        def train_dataloader(self) -> DataLoader:
            return DataLoader(_Dicts(), batch_size=4)

        def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
            batch["image"] = batch["image"] * 2
            return batch

    module = _module(flavour)
    module.val_dataloader = None
    dm = DM()
    _fit(flavour, module, JointBatchTraining(JointBatch(HideAndSeek(p_keep_patch=0.0, grid=2, seed=0))), tmp_path,
         datamodule=dm)
    b = module.seen[0]
    assert b["image"].shape[0] == 8 and float(b["image"][:4].min()) >= 1.0  # doubled by the datamodule first
    assert float(b["image"][4:].abs().max()) == 0.0  # then every cell hidden
    assert "on_after_batch_transfer" not in dm.__dict__


def test_policy_targets_the_occlusion():
    batch = next(iter(DataLoader(_Dicts(), batch_size=6)))
    policy = AugmentationPolicy().with_class(1, 1.0, reason="class 1 fails")
    out = augment_batch(batch, JointBatch(Cutout(size=4, seed=0)), policy)
    changed = (out["image"][6:] != out["image"][:6]).flatten(1).any(1)
    assert changed.tolist() == (batch["target"] == 1).tolist()


def test_shadow_uses_the_object_mask_of_dict_batches():
    batch = next(iter(DataLoader(_Dicts(), batch_size=6)))
    joint = JointBatch(SyntheticShadow(p=1.0, softness=(0.0, 0.0), seed=0))
    out = augment_batch(batch, joint)
    darker = out["image"][6:] < out["image"][:6]
    # The shadow line goes through the object's box (top-left 3x3) in every sample.
    assert darker.flatten(1).any(1).all()
    augment_batch(batch, joint)
    params = joint.occluder.sample(batch["image"], object_masks=batch["object_mask"])
    assert (params.geometry[:, :2] <= 3).all()


def _tiny_classifier():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


class _Host(nn.Module):
    """A module with a Lightning-like training_step, enough to test the wrapper without a Trainer."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _tiny_classifier()
        self.batches: list[Any] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        return batch

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        self.batches.append(batch)
        b = unpack_batch(batch)
        return {"loss": nn.functional.cross_entropy(self(b.images), b.targets), "extra": 1}


def test_saliency_step_gradient_is_the_joint_mean_and_leaves_param_grads_alone():
    host = _Host()
    x = torch.rand(4, 3, 12, 12, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 1])
    cb = JointBatchTraining(JointBatch(SaliencyOcclusion(size=4, jitter=0, seed=0)), layer="net.2")
    cb.install(host)
    out = host.training_step((x, y), 0)
    assert all(p.grad is None for p in host.parameters())  # the saliency pass took activation gradients only
    assert out["extra"] == 1
    out["loss"].backward()
    got = [p.grad.clone() for p in host.parameters()]
    occluded = host.batches[1][0]

    # Reference: NormGrad at net.2 from an independent forward, the same box search, the joint mean loss.
    ref = _tiny_classifier()
    ref.load_state_dict(host.net.state_dict())
    acts: list[torch.Tensor] = []
    h = ref[2].register_forward_hook(lambda m, i, o: acts.append(o))
    loss_c = nn.functional.cross_entropy(ref(x), y)
    h.remove()
    (g,) = torch.autograd.grad(loss_c, acts[0], retain_graph=True)
    sal = normgrad_from(acts[0].detach(), g)[:, 0]
    expected = SaliencyOcclusion(size=4, jitter=0)(x, saliency=sal)
    assert torch.equal(occluded, expected)
    ref.zero_grad()
    (0.5 * (nn.functional.cross_entropy(ref(x), y) + nn.functional.cross_entropy(ref(expected), y))).backward()
    for a, p in zip(got, ref.parameters(), strict=True):
        assert torch.allclose(a, p.grad, atol=1e-6)
    cb.remove(host)
    assert "training_step" not in host.__dict__


def test_saliency_step_clean_gradients_follow_loss_scaling():
    host = _Host()
    x, y = torch.rand(4, 3, 12, 12), torch.tensor([0, 1, 2, 1])
    cb = JointBatchTraining(JointBatch(SaliencyOcclusion(size=4, jitter=0, seed=0)), layer="net.2")
    cb.install(host)
    host.training_step((x, y), 0)["loss"].backward()
    full = [p.grad.clone() for p in host.parameters()]
    host.zero_grad()
    (0.25 * host.training_step((x, y), 0)["loss"]).backward()  # like accumulate_grad_batches=4
    for a, p in zip(full, host.parameters(), strict=True):
        assert torch.allclose(0.25 * a, p.grad, atol=1e-7)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_saliency_joint_batches_in_a_trainer(flavour, tmp_path):
    module = _module(flavour)
    before = [p.detach().clone() for p in module.parameters()]
    cb = JointBatchTraining(JointBatch(SaliencyOcclusion(size=3, jitter=1, seed=0)), layer="layer1")
    _fit(flavour, module, cb, tmp_path)
    train = [b for b in module.seen if not isinstance(b, tuple)]
    assert len(train) == 6  # clean + occluded pass per step, 3 steps
    assert all(b["image"].shape[0] == 4 for b in train)
    assert not torch.equal(train[0]["image"], train[1]["image"])
    assert any(not torch.equal(a, p) for a, p in zip(before, module.parameters(), strict=True))
    assert "training_step" not in module.__dict__


def test_state_dict_round_trip_continues_the_occlusion_stream():
    cb = JointBatchTraining(JointBatch(Cutout(size=3, seed=0)))
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    augment_batch((x, y), cb.joint)
    state = cb.state_dict()
    a = augment_batch((x, y), cb.joint)[0]
    cb2 = JointBatchTraining(JointBatch(Cutout(size=3, seed=99)))
    cb2.load_state_dict(state)
    b = augment_batch((x, y), cb2.joint)[0]
    assert torch.equal(a, b)


def test_errors():
    with pytest.raises(ValueError, match="Expected `joint` to be a JointBatch or a BatchAugment"):
        JointBatchTraining(Cutout())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Expected `layer` to name the saliency layer"):
        JointBatchTraining(JointBatch(SaliencyOcclusion()))
    with pytest.raises(ValueError, match="Expected `layer` to be None for an occluder without saliency"):
        JointBatchTraining(JointBatch(Cutout()), layer="net.0")
    with pytest.raises(ValueError, match="Expected a JointBatch for saliency occlusion"):
        JointBatchTraining(BatchAugment(RandomCropFlip(), occluder=SaliencyOcclusion()), layer="x")
    with pytest.raises(ValueError, match="Expected `policy` to be an AugmentationPolicy"):
        JointBatchTraining(JointBatch(Cutout()), policy={"base": 1.0})  # type: ignore[arg-type]
    host = _Host()
    with pytest.raises(ValueError, match="Nearest valid names"):
        JointBatchTraining(JointBatch(SaliencyOcclusion()), layer="net.9").install(host)
    JointBatchTraining(JointBatch(Cutout())).install(host)
    with pytest.raises(ValueError, match="Expected one JointBatchTraining per module"):
        JointBatchTraining(JointBatch(Cutout())).install(host)

    class NoLoss(_Host):
        def training_step(self, batch: Any, batch_idx: int) -> Any:
            self(batch[0])
            return None

    with pytest.raises(ValueError, match="Expected `training_step` to return a loss tensor"):
        nl = NoLoss()
        JointBatchTraining(JointBatch(SaliencyOcclusion(size=2)), layer="net.2").install(nl)
        nl.training_step((torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)), 0)

    manual = _Host()
    manual.automatic_optimization = False
    with pytest.raises(ValueError, match="Expected a module with automatic optimisation"):
        JointBatchTraining(JointBatch(SaliencyOcclusion()), layer="net.2").install(manual)

    frozen = _Host()
    frozen.requires_grad_(False)
    cb = JointBatchTraining(JointBatch(SaliencyOcclusion(size=2)), layer="net.2")
    cb.install(frozen)
    with pytest.raises(ValueError, match="to produce a tensor that requires grad"):
        frozen.training_step((torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)), 0)
    with pytest.raises(ValueError, match="Expected a batch"):
        augment_batch(torch.zeros(2), JointBatch(Cutout()))


def test_callback_pickles_for_spawned_processes():
    import pickle

    cb = JointBatchTraining(JointBatch(SaliencyOcclusion(size=2, seed=0)), layer="net.2",
                            policy=AugmentationPolicy().with_class(1, 1.0))
    clone = pickle.loads(pickle.dumps(cb))
    assert clone.layer == "net.2" and clone.policy == cb.policy and clone.state_key == cb.state_key


@pytest.mark.slow
def test_saliency_joint_batches_under_two_process_ddp_keep_ranks_in_sync(tmp_path):
    """Each rank's clean-half gradients reach DDP's all-reduce: were they added outside it, the ranks (which
    see different samples) would step differently and their weights would drift apart."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    script = Path(__file__).with_name("ddp_joint_batch_run.py")
    env = dict(os.environ, OMP_NUM_THREADS="1", NO_ALBUMENTATIONS_UPDATE="1")
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), "2"], capture_output=True, text=True,
                          timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0, rank1 = torch.load(tmp_path / "weights.pt"), torch.load(tmp_path / "weights_rank1.pt")
    start = _fresh_ddp_weights(script)
    assert any(not torch.allclose(v, start[k]) for k, v in rank0.items())
    for k, v in rank0.items():
        assert torch.equal(v, rank1[k]), k


def _fresh_ddp_weights(script):
    import importlib.util

    spec = importlib.util.spec_from_file_location("ddp_joint_batch_run", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    import pytorch_lightning as pl

    pl.seed_everything(0, verbose=False)
    return {k: v.detach().clone() for k, v in mod.Net(4).state_dict().items()}


def test_state_key_is_unique_per_configuration_and_ignores_seeds():
    def key(joint: Any, layer: str | None = None) -> str:
        return JointBatchTraining(joint, layer=layer).state_key

    keys = {
        key(JointBatch(Cutout(size=2))),
        key(JointBatch(Cutout(size=3))),
        key(JointBatch(Cutout(size=2, p=0.5))),
        key(JointBatch(HideAndSeek(grid=2))),
        key(JointBatch(SyntheticShadow())),
        key(JointBatch(Cutout(size=2), augment=RandomCropFlip(padding=1))),
        key(BatchAugment(RandomCropFlip(padding=1), copies=2)),
        key(BatchAugment(RandomCropFlip(padding=1), copies=3)),
        key(JointBatch(SaliencyOcclusion(size=3)), layer="layer1"),
        key(JointBatch(SaliencyOcclusion(size=3)), layer="stem"),
    }
    assert len(keys) == 10 and all(k.startswith("JointBatchTraining") for k in keys)
    # the seed is not configuration: a resumed run with another seed still finds (and restores) its state
    assert key(JointBatch(Cutout(size=2, seed=0))) == key(JointBatch(Cutout(size=2, seed=7)))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_two_instances_on_one_trainer_keep_their_own_state_through_a_checkpoint(flavour, tmp_path):
    L = pytest.importorskip(flavour)
    cutout = JointBatchTraining(JointBatch(Cutout(size=2, seed=1)))
    guided = JointBatchTraining(JointBatch(SaliencyOcclusion(size=3, jitter=1, seed=2)), layer="layer1")
    assert cutout.state_key != guided.state_key
    ckpt = L.callbacks.ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path),
                        callbacks=[cutout, guided, ckpt])
    module = _module(flavour)
    trainer.fit(module)
    assert all(b["image"].shape[0] == 8 for b in module.seen if not isinstance(b, tuple))  # 2B rows, both passes
    saved = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["callbacks"]
    states = {cb.state_key: cb.state_dict()["generators"] for cb in (cutout, guided)}
    for key, generators in states.items():
        assert len(generators) == 1 and torch.equal(saved[key]["generators"][0], generators[0])
    assert not torch.equal(*(g[0] for g in states.values()))  # two different streams, each kept under its own key

    fresh = [JointBatchTraining(JointBatch(Cutout(size=2, seed=50))),
             JointBatchTraining(JointBatch(SaliencyOcclusion(size=3, jitter=1, seed=60)), layer="layer1")]
    resumed = L.Trainer(max_epochs=1, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path),
                        enable_checkpointing=False, callbacks=fresh)
    resumed.fit(_module(flavour), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    for cb in fresh:
        assert torch.equal(cb.state_dict()["generators"][0], states[cb.state_key][0])
