"""recipes.loop on tiny data: run directory, checkpoints, input checks, policies, joint batches, resume."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from augment import AugmentationPolicy, Cutout, OneOfUniform, SyntheticShadow
from debugger.failures import Darkening
from debugger.files import atomic_write
from debugger.fingerprint import model_fingerprint
from debugger.ranking import rank_failures
from recipes.data import PlantedConceptsDataModule
from recipes.data.base import ContractDataModule
from recipes.loop import (
    AnnotatedRanking,
    Diagnosis,
    LoopConfig,
    LoopError,
    PolicyJointBatch,
    RunDirectory,
    annotated_darkening,
    check_data,
    check_layer,
    configure_transforms,
    default_layer,
    default_transforms,
    diagnose_once,
    format_before_after,
    load_model,
    loop_policies,
    mean_probability,
    probe_loader,
    save_model,
    train,
    uniform_policies,
    with_params,
)
from recipes.models import ResNetClassifier, SegmentationNet


def tiny_planted(**kw):
    return PlantedConceptsDataModule(train_size=32, val_size=16, test_size=16, batch_size=16, **kw)


class ArrayData(ContractDataModule):
    """A DataModule over random tensors of a chosen shape (for wrong-shape errors)."""

    def __init__(self, shape=(1, 32, 32), seg=False, num_classes=10):
        super().__init__(batch_size=8)
        self.shape, self.seg, self.num_classes = shape, seg, num_classes

    def make_dataset(self, split):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(8, *self.shape, generator=g)
        y = torch.randint(self.num_classes, (8, *self.shape[1:]) if self.seg else (8,), generator=g)
        return [{"image": x[i], "target": y[i]} for i in range(8)]


# -- run directory -------------------------------------------------------------------------------------------


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "report.json"
    atomic_write(path, "old")

    def boom(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old"


def test_atomic_write_leaves_no_temporary_files(tmp_path):
    atomic_write(tmp_path / "a" / "x.txt", "hello")
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.txt"]


def test_a_stage_whose_file_is_gone_is_not_done(tmp_path):
    run = RunDirectory(tmp_path)
    run.write_json("policy.json", {})
    run.mark_done("policy", file="policy.json")
    assert run.done("policy")["file"] == "policy.json"
    (tmp_path / "policy.json").unlink()
    assert run.done("policy") is None
    assert run.done("never") is None


# -- checkpoints ---------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_infers_the_class(tmp_path):
    model = ResNetClassifier(width=8).eval()
    path = save_model(model, tmp_path / "m.ckpt")
    loaded = load_model(path)
    x = torch.rand(2, 3, 32, 32)
    assert type(loaded) is ResNetClassifier and loaded.hparams.width == 8
    torch.testing.assert_close(loaded(x), model(x))
    # Lightning reads it too.
    torch.testing.assert_close(ResNetClassifier.load_from_checkpoint(path).eval()(x), model(x))


def test_missing_checkpoint_says_so(tmp_path):
    with pytest.raises(LoopError, match="Expected `--ckpt` .* does not exist"):
        load_model(tmp_path / "nope.ckpt")
    with pytest.raises(LoopError, match="Expected `--ckpt-b` to be an existing checkpoint .* which is a directory"):
        load_model(tmp_path, what="`--ckpt-b`")
    (tmp_path / "bad.ckpt").write_bytes(b"garbage")
    expected = "Expected `--ckpt-a` .*bad.ckpt to be a checkpoint written by conceptfix or Lightning, but it is not a"
    with pytest.raises(LoopError, match=expected):
        load_model(tmp_path / "bad.ckpt", what="`--ckpt-a`")


def test_a_corrupt_checkpoint_of_a_finished_stage_is_named_as_the_run_directorys(tmp_path):
    run = RunDirectory(tmp_path)
    run.write_text("checkpoints/train.ckpt", "truncated")
    run.mark_done("train", checkpoint="checkpoints/train.ckpt", epochs=1)
    with pytest.raises(LoopError) as info:
        train(ResNetClassifier(width=4), tiny_planted(), 1, run, "train")
    message = str(info.value)
    assert "`--ckpt`" not in message
    assert "finished stage's checkpoint `checkpoints/train.ckpt`" in message
    assert "is not a PyTorch checkpoint" in message
    assert "Delete `checkpoints/train.ckpt` to train stage 'train' again." in message


def test_a_file_that_is_not_a_checkpoint_is_rejected(tmp_path):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(LoopError, match="is not a PyTorch checkpoint"):
        load_model(bad)
    torch.save({"weights": 1}, tmp_path / "dict.ckpt")
    with pytest.raises(LoopError, match="'state_dict'"):
        load_model(tmp_path / "dict.ckpt")


def test_an_unreadable_checkpoint_is_one_plain_line_without_torchs_advice(tmp_path):
    import io

    cases = {
        "empty.ckpt": (b"", "but it is empty."),
        # starts like a pickle: torch's weights-only unpickler stops on it (and advises weights_only=False)
        "noise.ckpt": (b"\x80\x02" + bytes(range(233, 256)) * 40, "but it is not a PyTorch checkpoint (unpickling "
                                                                    "stopped: "),
        "text.ckpt": (b"hello world", "(neither a zip archive nor a pickle: it starts with b'hello wo')"),
    }
    buf = io.BytesIO()
    torch.save({"state_dict": {}}, buf)
    cases["cut.ckpt"] = (buf.getvalue()[:200], "but it is a damaged PyTorch checkpoint, cut short or changed after "
                                               "saving (")
    for name, (content, expected) in cases.items():
        (tmp_path / name).write_bytes(content)
        for allow_pickle in (False, True):
            with pytest.raises(LoopError) as info:
                load_model(tmp_path / name, allow_pickle=allow_pickle)
            message = str(info.value)
            assert message.startswith(f"Expected `--ckpt` {tmp_path / name} to be a checkpoint written by conceptfix "
                                      "or Lightning, but it"), message
            assert expected in message, message
            assert "weights_only" not in message and "\n" not in message, message


def test_checkpoint_of_another_architecture_is_rejected_with_what_was_expected(tmp_path):
    path = save_model(SegmentationNet(width=4), tmp_path / "seg.ckpt")
    with pytest.raises(LoopError, match=r"Expected a checkpoint of ResNetClassifier\(.*another architecture.*missing"):
        load_model(path, ResNetClassifier(width=8))
    path = save_model(ResNetClassifier(width=4), tmp_path / "narrow.ckpt")
    with pytest.raises(LoopError, match="shape mismatch"):
        load_model(path, ResNetClassifier(width=8))


class _RunsCodeWhenUnpickled:
    """What a malicious checkpoint holds: unpickling it creates a directory (instead of something worse)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_unless_pickle_is_allowed(tmp_path):
    model = ResNetClassifier(width=4)
    marker = tmp_path / "code-ran"
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "extra": _RunsCodeWhenUnpickled(marker)}, tmp_path / "evil.ckpt")
    with pytest.raises(LoopError, match=r"holds the Python object posix\.mkdir.*allow_pickle=True"):
        load_model(tmp_path / "evil.ckpt")
    assert not marker.exists()
    loaded = load_model(tmp_path / "evil.ckpt", allow_pickle=True)  # the user trusts it: it loads (and runs)
    assert marker.exists() and type(loaded) is ResNetClassifier
    # a corrupt file is still "not a PyTorch checkpoint", also with unpickling allowed
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(LoopError, match="is not a PyTorch checkpoint"):
        load_model(tmp_path / "bad.ckpt", allow_pickle=True)


def test_a_lightning_trainers_checkpoint_loads_without_unpickling(tmp_path, monkeypatch):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    model = ResNetClassifier(width=4)
    trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)])
    trainer.fit(model, datamodule=tiny_planted())
    real_load = torch.load
    seen = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: seen.append(k.get("weights_only")) or real_load(*a, **k))
    loaded = load_model(tmp_path / "last.ckpt")
    torch.testing.assert_close(loaded.fc.weight, model.fc.weight)
    assert seen == [True]


# -- input checks --------------------------------------------------------------------------------------------


def test_unknown_layer_lists_the_nearest_names():
    with pytest.raises(LoopError, match=r"Expected `--layer`.*'layer9'.*layer"):
        check_layer(ResNetClassifier(width=4), "layer9")
    assert default_layer(ResNetClassifier(width=4)) == "layer1"
    assert default_layer(SegmentationNet(width=4)) == "enc2"


def test_data_of_the_wrong_shape_says_what_is_accepted():
    model = ResNetClassifier(width=4)
    with pytest.raises(LoopError, match=r"Expected images with 3 channels.*\(1, 32, 32\).*accepts 3-channel"):
        check_data(model, ArrayData((1, 32, 32)))
    with pytest.raises(LoopError, match="Expected data for a classification model.*class maps"):
        check_data(model, ArrayData((3, 32, 32), seg=True, num_classes=3))
    with pytest.raises(LoopError, match="Expected data with 10 classes, but the data has 4"):
        check_data(model, ArrayData((3, 32, 32), num_classes=4))
    with pytest.raises(LoopError, match="divisible by 4"):
        check_data(SegmentationNet(width=4), ArrayData((3, 30, 30), seg=True, num_classes=3))
    check_data(model, ArrayData((3, 32, 32)))  # fits: no error


def test_a_plain_lightning_datamodule_is_rejected_with_how_to_wrap_it(tmp_path):
    import pytorch_lightning as pl

    from recipes.loop import finetune, run_loop

    class Plain(pl.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader([(torch.rand(3, 32, 32), 0)] * 4, batch_size=2)

    match = r"Expected a `recipes.data.ContractDataModule`.*got Plain.*subclass ContractDataModule.*make_dataset"
    with pytest.raises(LoopError, match=match):
        check_data(ResNetClassifier(width=4), Plain())
    with pytest.raises(LoopError, match=match):
        run_loop(Plain(), ResNetClassifier(width=4), RunDirectory(tmp_path), log=lambda _: None)
    with pytest.raises(LoopError, match="Expected `finetune_epochs` to be a positive integer, but got 0."):
        LoopConfig(finetune_epochs=0)
    with pytest.raises(LoopError, match=match):
        finetune(ResNetClassifier(width=4), Plain(), {})


# -- policies and joint batches ------------------------------------------------------------------------------


def _diagnosis_with_shadow_failure():
    counts = torch.zeros(2, 3, 3, dtype=torch.long)
    counts[0] = torch.tensor([[1, 4, 0], [0, 5, 0], [0, 0, 5]])  # class 0 mostly wrong inside the shadow slice
    counts[1] = torch.tensor([[9, 1, 0], [0, 9, 0], [0, 0, 9]])
    errors = torch.tensor([True] * 8 + [False] * 2 + [True] * 2 + [False] * 8)  # lift 0.8 / 0.2 = 4
    in_shadow = torch.tensor([True] * 10 + [False] * 10)
    ranking = rank_failures(errors, torch.stack([in_shadow, ~in_shadow]), names=["shadow", "clean"], min_support=2)
    assert [r.name for r in ranking if r.is_failure] == ["shadow"]
    annotated = AnnotatedRanking(["shadow", "clean"], counts, counts.sum(0), ranking)
    report = SimpleNamespace(class_names=("a", "b", "c"), overall_confusion=None)  # no discovered concepts
    return Diagnosis(report, annotated, {}, ("shadow",))


def test_a_shadow_failure_becomes_a_synthetic_shadow_policy_on_the_failing_class():
    policies, evidence = loop_policies(_diagnosis_with_shadow_failure(), base=0.1, max_p=0.9)
    assert list(policies) == ["SyntheticShadow"]
    p = policies["SyntheticShadow"].probabilities(torch.tensor([0, 1, 2]))
    assert p[0] > 0.5 and p[1].item() == pytest.approx(0.1) and p[2].item() == pytest.approx(0.1)
    assert evidence and evidence[0].startswith("shadow") and "SyntheticShadow" in evidence[0]
    # A concept mapped to nothing yields no policy.
    policies, _ = loop_policies(_diagnosis_with_shadow_failure(), augmentations={})
    assert policies == {}


def test_a_failure_that_yields_no_policy_says_why_in_its_evidence_line():
    d = _diagnosis_with_shadow_failure()
    d.annotated.counts[0] = torch.tensor([[1, 1, 0], [0, 2, 0], [0, 0, 1]])  # at most 2 images per class
    d.annotated.overall = d.annotated.counts.sum(0)
    policies, evidence = loop_policies(d)
    assert policies == {}
    assert evidence[0].startswith("shadow: lift 4.00 → SyntheticShadow — no policy: no class has 3 or more "
                                  "images in the slice (at most 2)")
    # enough images, but no class fails more inside the slice than outside it
    d.annotated.counts[0] = torch.tensor([[5, 0, 0], [0, 5, 0], [0, 0, 5]])
    d.annotated.overall = d.annotated.counts.sum(0)
    policies, evidence = loop_policies(d)
    assert policies == {} and "no policy: none of the 3 classes with 3 or more images" in evidence[0]
    # a concept that does yield the policy has no such remark
    assert "no policy" not in loop_policies(_diagnosis_with_shadow_failure())[1][0]


def test_a_measured_shadow_depth_sets_the_policys_shadow_intensity_and_is_stated():
    d = _diagnosis_with_shadow_failure()
    d.annotated.darkening = {"shadow": Darkening(median=0.9, low=0.86, high=0.94, n=30)}
    policies, evidence = loop_policies(d, base=0.1, max_p=0.9)
    assert policies["SyntheticShadow"].params == {"intensity": (0.86, 0.94)}
    assert "removes 90% of the brightness" in evidence[0] and "intensity 0.86–0.94" in evidence[0]
    assert "intensity=(0.86, 0.94)" in policies["SyntheticShadow"].explain()
    # switched off, or no masks measured (no "darkening"): the default transform settings stay
    off, evidence = loop_policies(d, base=0.1, max_p=0.9, calibrate=False)
    assert off["SyntheticShadow"].params == {} and "removes" not in evidence[0]
    assert loop_policies(_diagnosis_with_shadow_failure())[0]["SyntheticShadow"].params == {}


def test_annotated_darkening_measures_the_planted_shadows_depth():
    dm = PlantedConceptsDataModule(train_size=16, val_size=64, test_size=16, batch_size=16, cache_dir=None,
                                   prevalence={"val": {"shadow": 1.0, "occluder": 0.0}})
    # (no occluders: their bright speckle under part of a shadow widens the measured range, to ~45-73%)
    measured = annotated_darkening(probe_loader(dm.dataset("val"), 64, 0), dm.concept_names)
    shadow = measured["shadow"]
    # the planted shadows remove 55-75% of the brightness where they fully cover
    assert shadow.n >= 50 and 0.5 <= shadow.low <= shadow.median <= shadow.high <= 0.8
    # data without concept masks: nothing measured
    plain = [{"image": torch.rand(3, 8, 8), "target": torch.tensor(0), "concepts": torch.ones(1)}] * 4
    assert annotated_darkening(torch.utils.data.DataLoader(plain, batch_size=2), ("shadow",)) == {}


def test_policy_params_reach_the_transform_that_fine_tuning_uses():
    transforms = default_transforms(32, seed=0)
    policy = AugmentationPolicy(augmentation="SyntheticShadow", params={"intensity": (0.85, 0.95)})
    configured = configure_transforms(transforms, {"SyntheticShadow": policy, "Cutout": AugmentationPolicy()})
    shadow = configured["SyntheticShadow"]
    assert isinstance(shadow, SyntheticShadow) and shadow.intensity == (0.85, 0.95)
    assert (shadow.kind, shadow.p, shadow.seed) == ("line", 1.0, 0)  # the other settings are kept
    assert configured["Cutout"] is transforms["Cutout"]
    assert transforms["SyntheticShadow"].intensity == (0.4, 0.75)  # the caller's transforms are not changed
    x = torch.ones(64, 1, 8, 8)
    y = shadow(x)
    # every darkened pixel lost between 85% and 95% of its brightness (soft edges lose less, never more)
    assert float(y.min()) >= 0.05 - 1e-6 and float(y.min()) <= 0.15
    with pytest.raises(LoopError, match="Expected the policy's settings for SyntheticShadow to be among"):
        with_params(shadow, {"strength": 0.5})
    with pytest.raises(LoopError, match="Expected settings .* that SyntheticShadow accepts"):
        with_params(shadow, {"intensity": (0.9, 0.2)})


def test_joint_batches_grow_the_batch_and_augment_only_what_the_policy_picks():
    from callbacks.joint_batch import augment_batch

    x = torch.rand(4, 3, 16, 16)
    batch = {"image": x, "target": torch.tensor([0, 1, 0, 1]), "concepts": torch.zeros(4, 2),
             "object_mask": torch.ones(4, 16, 16, dtype=torch.bool)}
    policy = AugmentationPolicy().with_class(0, 1.0)
    joint = PolicyJointBatch({"SyntheticShadow": SyntheticShadow(p=1.0, intensity=(0.5, 0.6), seed=0)},
                             {"SyntheticShadow": policy})
    out = augment_batch(batch, joint)
    assert out["image"].shape == (8, 3, 16, 16)
    assert out["target"].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]
    assert out["concepts"].shape == (8, 2) and out["object_mask"].shape == (8, 16, 16)
    torch.testing.assert_close(out["image"][:4], x)  # clean copies first
    second = out["image"][4:]
    assert not torch.equal(second[0], x[0]) and not torch.equal(second[2], x[2])  # class 0: shadowed
    torch.testing.assert_close(second[1], x[1])  # class 1: p = 0, left alone
    torch.testing.assert_close(second[3], x[3])
    seq = augment_batch((x, torch.tensor([0, 1, 0, 1])), PolicyJointBatch({"SyntheticShadow": SyntheticShadow(seed=0)},
                                                                          {"SyntheticShadow": policy}))
    assert isinstance(seq, tuple) and seq[0].shape == (8, 3, 16, 16) and seq[1].tolist() == [0, 1, 0, 1] * 2
    with pytest.raises(LoopError, match="Expected every policy's transform to be one of"):
        PolicyJointBatch({}, {"Cutout": policy})


def test_every_transform_augments_the_samples_of_its_own_policy_in_turn():
    x = torch.ones(6, 3, 16, 16)
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    joint = PolicyJointBatch({"Cutout": Cutout(size=4, seed=0),
                              "SyntheticShadow": SyntheticShadow(intensity=(0.5, 0.6), seed=1)},
                             {"Cutout": AugmentationPolicy().with_class(0, 1.0),
                              "SyntheticShadow": AugmentationPolicy().with_class(1, 1.0)})
    out = joint(x, targets)
    second = out.images[6:]
    assert out.occluded.tolist() == [False] * 6 + [True] * 4 + [False] * 2
    assert second[:2].flatten(1).amin(1).tolist() == [0.0, 0.0]  # cut out (filled with 0, the normalised mean)
    darkest = second[2:4].flatten(1).amin(1)
    assert bool((darkest >= 0.4 - 1e-6).all() & (darkest <= 0.5 + 1e-6).all())  # shadowed, 50-60% removed
    torch.testing.assert_close(second[4:], x[4:])  # class 2: neither policy picks it
    with pytest.raises(ValueError, match="Expected no `probabilities`"):
        joint(x, targets, probabilities=0.5)


def test_fine_tuning_trains_on_joint_batches_and_resumes_the_transforms_random_stream(tmp_path):
    import pytorch_lightning as pl

    from recipes.loop import finetune

    seen = []

    class BatchSizes(pl.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(len(batch["target"]))

    policy = {"SyntheticShadow": AugmentationPolicy(base=0.5)}
    run = RunDirectory(tmp_path)
    finetune(ResNetClassifier(width=4), tiny_planted(), policy, epochs=1, run=run, callbacks=[BatchSizes()])
    assert seen == [32, 32]  # 2 batches of 16, each joint
    states = torch.load(tmp_path / "checkpoints" / "finetune-last.ckpt", weights_only=True)["callbacks"]
    (joint_state,) = [v for k, v in states.items() if k.startswith("JointBatchTraining")]
    assert len(joint_state["generators"]) == 1  # the shadow's generator, restored on resume
    seen.clear()
    finetune(ResNetClassifier(width=4), tiny_planted(), {}, epochs=1, callbacks=[BatchSizes()])
    assert seen == [16, 16]  # no policy: plain batches


class _SeesObjectMasks(SyntheticShadow):
    def sample(self, images, *, object_masks=None, **kwargs):  # type: ignore[override]
        self.seen = object_masks
        return super().sample(images, object_masks=object_masks, **kwargs)


def test_object_masks_reach_a_shadow_inside_a_one_of_wrapper_and_no_other_transform():
    x = torch.rand(64, 3, 16, 16)
    mask = torch.zeros(64, 16, 16, dtype=torch.bool)
    mask[:, 4:8, 4:8] = True
    targets, extras = torch.zeros(64, dtype=torch.long), {"concepts": torch.zeros(64, 2), "object_mask": mask}
    shadow = _SeesObjectMasks(seed=0)
    pick = OneOfUniform([shadow, Cutout(size=4, seed=1)], seed=2)  # Cutout would raise on `object_masks`
    out = PolicyJointBatch({"OneOfUniform": pick}, {"OneOfUniform": AugmentationPolicy(base=0.8)})(x, targets, extras)
    assert shadow.seen is mask
    changed = (out.images[64:] != x).flatten(1).any(1)
    assert 0.6 < float(changed.float().mean()) <= 0.95
    direct = _SeesObjectMasks(seed=0)
    PolicyJointBatch({"SyntheticShadow": direct}, {"SyntheticShadow": AugmentationPolicy(base=1.0)})(x, targets, extras)
    assert direct.seen is mask


def test_uniform_control_matches_the_loops_augmented_share():
    ds = [{"image": torch.zeros(1, 4, 4), "target": torch.tensor(i % 2)} for i in range(10)]
    targeted = {"SyntheticShadow": AugmentationPolicy().with_class(0, 0.8)}
    share = mean_probability(targeted, ds)
    assert share == pytest.approx(0.4)
    names = ["SyntheticShadow", "Cutout", "HideAndSeek"]
    p_each = 1 - (1 - share) ** (1 / 3)
    assert mean_probability(uniform_policies(names, p_each), ds) == pytest.approx(share, abs=1e-6)


def test_before_after_table_lists_each_concept_and_the_change():
    before = {"all": 0.5, "clean": 0.9, "n": 10, "shadow": {"with": 0.2, "without": 0.8, "n_with": 5}}
    after = {"all": 0.6, "clean": 0.9, "n": 10, "shadow": {"with": 0.45, "without": 0.8, "n_with": 5}}
    table = format_before_after(before, after, ["shadow"])
    line = next(r for r in table.splitlines() if r.startswith("shadow"))
    assert "20.0%" in line and "45.0%" in line and "+25.0p" in line
    assert "clean" in table and "all test images" in table


# -- training and resume -------------------------------------------------------------------------------------


def test_training_writes_a_checkpoint_and_a_finished_stage_is_not_trained_again(tmp_path, monkeypatch):
    import pytorch_lightning as pl

    run = RunDirectory(tmp_path)
    dm = tiny_planted()
    model = train(ResNetClassifier(width=4), dm, 1, run, "train")
    assert (tmp_path / "checkpoints" / "train.ckpt").is_file()
    assert (tmp_path / "checkpoints" / "train-last.ckpt").is_file()
    assert run.done("train")["epochs"] == 1
    calls = []
    original = pl.Trainer.fit
    monkeypatch.setattr(pl.Trainer, "fit", lambda self, *a, **k: calls.append(k) or original(self, *a, **k))
    again = train(ResNetClassifier(width=4), dm, 1, run, "train")
    assert calls == []  # loaded, not trained
    torch.testing.assert_close(again.fc.weight, model.fc.weight)
    # An unfinished stage (state lost, last epoch's checkpoint present) resumes from that checkpoint.
    (tmp_path / "state.json").unlink()
    train(ResNetClassifier(width=4), dm, 1, run, "train")
    assert calls and str(calls[0]["ckpt_path"]).endswith("train-last.ckpt")


def test_training_with_the_loops_monitors_does_not_warn_that_the_policy_drives_nothing(tmp_path):
    import warnings

    from recipes.loop import monitors

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(ResNetClassifier(width=4), tiny_planted(), 1, None, "train", monitors("layer1", probe_size=8))
    assert not [w for w in caught if "nothing to drive" in str(w.message)]


def test_a_truncated_resume_point_is_moved_aside_and_the_stage_trains_again(tmp_path):
    run = RunDirectory(tmp_path)
    last = tmp_path / "checkpoints" / "train-last.ckpt"
    last.parent.mkdir()
    torch.save({"state_dict": ResNetClassifier(width=4).state_dict(), "epoch": 0}, last)
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.warns(UserWarning, match=r"resume point of stage 'train' could not be read.*moved it to .*"
                                         r"train-last\.ckpt\.corrupt.*again from epoch 0"):
        train(ResNetClassifier(width=4), tiny_planted(), 1, run, "train")
    assert run.done("train") is not None
    assert (tmp_path / "checkpoints" / "train-last.ckpt.corrupt").is_file()
    assert torch.load(last, weights_only=True)["epoch"] == 0  # a new, complete resume point


def test_a_plain_lightning_checkpoint_loads_with_its_architecture_guessed(tmp_path):
    seg = SegmentationNet(width=4).eval()
    torch.save({"state_dict": seg.state_dict(), "hyper_parameters": dict(seg.hparams), "epoch": 3},
               tmp_path / "lightning.ckpt")
    loaded = load_model(tmp_path / "lightning.ckpt")
    x = torch.rand(1, 3, 16, 32)
    assert type(loaded) is SegmentationNet
    torch.testing.assert_close(loaded(x), seg(x))


def test_ctrl_c_during_training_leaves_a_resume_point(tmp_path):
    import pytorch_lightning as pl

    class CtrlC(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 1:
                raise KeyboardInterrupt

    run = RunDirectory(tmp_path)
    dm = tiny_planted()
    with pytest.raises(KeyboardInterrupt):
        train(ResNetClassifier(width=4), dm, 2, run, "train", callbacks=[CtrlC()])
    assert run.done("train") is None
    last = torch.load(tmp_path / "checkpoints" / "train-last.ckpt", weights_only=False)
    assert last["epoch"] == 0  # the first epoch's full training state
    train(ResNetClassifier(width=4), dm, 2, run, "train")
    assert run.done("train") is not None
    assert torch.load(tmp_path / "checkpoints" / "train-last.ckpt", weights_only=False)["epoch"] == 1


class _StopAt(Exception):
    pass


def _loop_log_until(prefix, **kwargs):
    """run_loop's console lines up to (and including) the first that starts with ``prefix``; the rest is not run."""
    from recipes.loop import run_loop

    lines = []

    def log(line):
        lines.append(line)
        if line.startswith(prefix):
            raise _StopAt

    data, model, run = kwargs.pop("datamodule"), kwargs.pop("model"), kwargs.pop("run")
    with pytest.raises(_StopAt):
        run_loop(data, model, run, LoopConfig(**kwargs), log=log)
    return lines


def test_the_probe_count_is_the_number_of_images_actually_used(tmp_path):
    dm = PlantedConceptsDataModule(train_size=16, val_size=4, test_size=4, batch_size=4)
    lines = _loop_log_until("[2/4]", datamodule=dm, model=ResNetClassifier(width=4), run=None, layer="layer1",
                            probe_size=16, pretrained=True)
    assert lines[-1].endswith("on 4 validation images (all of the split; 16 requested)")
    lines = _loop_log_until("[2/4]", datamodule=dm, model=ResNetClassifier(width=4), run=None, layer="layer1",
                            probe_size=3, pretrained=True)
    assert lines[-1].endswith("on 3 validation images")
    from recipes.loop import diagnose

    report = diagnose(ResNetClassifier(width=4), tiny_planted(), "layer1", probe_size=64, n_concepts=2,
                      metrics_split=None).report
    assert report.meta["probe_size"] == 16 and report.meta["probe_size_requested"] == 64


def test_a_resumed_loop_says_its_finished_training_stages_were_reused(tmp_path):
    run = RunDirectory(tmp_path)
    for stage in ("train", "finetune_no_aug"):
        save_model(ResNetClassifier(width=4), run.file(f"checkpoints/{stage}.ckpt"))
        run.mark_done(stage, checkpoint=f"checkpoints/{stage}.ckpt", epochs=1)
    lines = _loop_log_until("[4/4]", datamodule=tiny_planted(), model=ResNetClassifier(width=4), run=run,
                            layer="layer1", epochs=1, finetune_epochs=1, probe_size=16, n_concepts=2,
                            control="no_aug")
    assert "      reused checkpoints/train.ckpt from the run directory" in lines
    assert "      reused checkpoints/finetune_no_aug.ckpt from the run directory" in lines
    assert not [line for line in lines if line.strip().startswith("done in")]  # the stages' own "done in N s"


def test_a_resumed_run_reuses_the_stored_diagnosis_of_the_same_weights(tmp_path, monkeypatch):
    import recipes.loop.diagnosis

    run, dm = RunDirectory(tmp_path), tiny_planted()
    torch.manual_seed(0)
    model = ResNetClassifier(width=4)
    first, reused = diagnose_once(model, dm, "layer1", run, "report", probe_size=16, n_concepts=2)
    assert not reused and (tmp_path / "report.diagnosis.json").is_file()
    assert run.done("diagnose:report")["fingerprint"] == model_fingerprint(model)

    def not_again(*_a, **_k):
        raise AssertionError("diagnosed again")

    monkeypatch.setattr(recipes.loop.diagnosis, "diagnose", not_again)
    again, reused = diagnose_once(model, dm, "layer1", run, "report", probe_size=16, n_concepts=2)
    assert reused
    assert again.metrics == first.metrics and again.concept_names == first.concept_names
    torch.testing.assert_close(again.annotated.counts, first.annotated.counts)
    torch.testing.assert_close(again.annotated.overall, first.annotated.overall)
    assert again.annotated.ranking == first.annotated.ranking and again.annotated.darkening == first.annotated.darkening
    torch.testing.assert_close(again.report.confusion, first.report.confusion)
    assert loop_policies(again)[0] == loop_policies(first)[0]
    # Other settings or other weights (a retrained stage) are diagnosed afresh.
    with pytest.raises(AssertionError, match="diagnosed again"):
        diagnose_once(model, dm, "layer1", run, "report", probe_size=8, n_concepts=2)
    with torch.no_grad():
        model.fc.bias.add_(1.0)
    with pytest.raises(AssertionError, match="diagnosed again"):
        diagnose_once(model, dm, "layer1", run, "report", probe_size=16, n_concepts=2)
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name]
