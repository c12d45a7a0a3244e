"""The ``conceptfix`` command end to end on tiny data: every subcommand, the run directory, resume, bad input."""

from __future__ import annotations

import json

import pytest

from debugger.report import ConceptReport
from recipes.cli import fit_parser, main, resolve_recipe, shipped_recipes
from recipes.parsers import demo_parser, diagnose_parser, input_hints

TINY_DATA = ["--data", "PlantedConceptsDataModule", "--data.train_size", "32", "--data.val_size", "16",
             "--data.test_size", "16", "--data.batch_size", "16"]
TINY_ANALYSIS = ["--probe_size", "16", "--n_concepts", "2"]

RECIPE = """\
data:
  class_path: recipes.data.PlantedConceptsDataModule
  init_args: {train_size: 32, val_size: 16, test_size: 16, batch_size: 16}
model:
  class_path: recipes.models.ResNetClassifier
  init_args: {width: 4}
epochs: 1
callbacks: []
probe_size: 16
n_concepts: 2
finetune:
  epochs: 1
  augmentations: {shadow: SyntheticShadow, occluder: Cutout}
  control: no_aug
"""


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One tiny `conceptfix fit` run shared by the tests that need checkpoints."""
    root = tmp_path_factory.mktemp("fit")
    recipe = root / "tiny.yaml"
    recipe.write_text(RECIPE)
    run_dir = root / "run"
    assert main(["fit", "--config", str(recipe), "--run_dir", str(run_dir)]) == 0
    return {"recipe": recipe, "run": run_dir}


def test_help_lists_every_subcommand(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for command in ("demo", "fit", "diagnose", "finetune", "compare"):
        assert command in out


def test_demo_runs_the_loop_and_prints_before_and_after(capsys, tmp_path):
    args = ["demo", "--epochs", "1", "--finetune-epochs", "1", "--train-size", "64", "--val-size", "32",
            "--test-size", "32", "--probe-size", "16", "--n_concepts", "4", "--run_dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "no aug." in out  # the same-budget control arm is on in the demo
    assert "Test accuracy per planted concept" in out
    assert "Before / after" in out
    for name in ("shadow", "occluder", "stripes", "tint", "clean"):
        assert name in out
    for step in ("[1/4]", "[2/4]", "[3/4]", "[4/4]"):
        assert step in out  # progress shown
    for f in ("config.yaml", "report.json", "report.md", "metrics.json", "policy.json",
              "checkpoints/finetune_no_aug.ckpt"):
        assert (tmp_path / f).is_file(), f
    assert list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    # The monitors ran during training and logged under the same run directory.
    assert list((tmp_path / "tb" / "train").rglob("conceptfix"))


def test_fit_writes_one_directory_with_everything(fitted):
    run = fitted["run"]
    for f in ("config.yaml", "state.json", "report.json", "report.md", "policy.json",
              "metrics.json", "checkpoints/train.ckpt", "checkpoints/finetune_no_aug.ckpt"):
        assert (run / f).is_file(), f
    assert "recipes.data.PlantedConceptsDataModule" in (run / "config.yaml").read_text()
    report = ConceptReport.load(run / "report.json")
    assert report.task == "classification" and report.layer == "layer1"
    assert report.meta["annotated"]["names"][-1] == "clean"
    # the shadow's depth is measured on the probe images (planted shadows remove 55-75% where they cover)
    darkening = report.meta["annotated"]["darkening"]["shadow"]
    assert 0.4 < darkening["median"] < 0.85 and darkening["n"] >= 5
    policies = json.loads((run / "policy.json").read_text())["policies"]
    for name, policy in policies.items():  # a matched catalogue transform carries its matched strength range
        assert set(policy["params"]) <= {"strength"}, name
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"before", "after", "no_aug"} and "shadow" in metrics["no_aug"]
    assert (metrics["after"] is None) == (not policies) == (not (run / "report_after.json").is_file())
    md = (run / "report.md").read_text()
    assert "Before / after" in md and "Annotated concepts" in md
    assert set(json.loads((run / "state.json").read_text())["stages"]) >= {"train", "policy", "finetune_no_aug",
                                                                            "loop"}
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]  # no half-written files left


def test_fit_again_on_the_same_directory_resumes_without_retraining(fitted, capsys):
    run = fitted["run"]
    before = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").glob("*.ckpt")}
    assert main(["fit", "--config", str(fitted["recipe"]), "--run_dir", str(run)]) == 0
    after = {p: p.stat().st_mtime_ns for p in (run / "checkpoints").glob("*.ckpt")}
    assert after == before


def test_diagnose_writes_a_report_tensorboard_logs_and_markdown(fitted, tmp_path, capsys):
    out_dir = tmp_path / "diag"
    args = ["diagnose", "--ckpt", str(fitted["run"] / "checkpoints/train.ckpt"), *TINY_DATA, *TINY_ANALYSIS,
            "--run_dir", str(out_dir)]
    assert main(args) == 0
    assert "annotated failure concepts" in capsys.readouterr().out
    report = ConceptReport.load(out_dir / "report.json")
    assert len(report.concepts) == 2 and report.schema_version >= 1
    assert "Concept report" in (out_dir / "report.md").read_text()
    assert list((out_dir / "tb").rglob("events.out.tfevents.*"))
    assert not (out_dir / "checkpoints").exists()  # no training


def test_finetune_from_a_checkpoint_with_a_recipe(fitted, tmp_path, capsys):
    out_dir = tmp_path / "ft"
    args = ["finetune", "--ckpt", str(fitted["run"] / "checkpoints/train.ckpt"), "--recipe", str(fitted["recipe"]),
            "--run_dir", str(out_dir)]
    assert main(args) == 0
    assert "Before / after" in capsys.readouterr().out
    assert (out_dir / "checkpoints/finetune_no_aug.ckpt").is_file()
    assert not (out_dir / "checkpoints/train.ckpt").exists()  # started from the given checkpoint
    assert json.loads((out_dir / "metrics.json").read_text())["before"]["n"] == 16


def test_compare_reports_differences_and_the_ensemble_check(fitted, tmp_path, capsys):
    out_dir = tmp_path / "cmp"
    ckpts = fitted["run"] / "checkpoints"
    args = ["compare", "--ckpt-a", str(ckpts / "train.ckpt"), "--ckpt-b", str(ckpts / "finetune_no_aug.ckpt"),
            *TINY_DATA, *TINY_ANALYSIS, "--run_dir", str(out_dir)]
    assert main(args) == 0
    assert "ensemble" in capsys.readouterr().out
    report = ConceptReport.load(out_dir / "report.json")
    assert "b" in report.diffs and "b" in report.ensembles
    assert report.diffs["b"].shape == (2, 10, 10)
    md = (out_dir / "report.md").read_text()
    assert "Ensemble check" in md and "acc ensemble" in md


# -- bad input -----------------------------------------------------------------------------------------------


class _MakesDirectoryWhenUnpickled:
    """A checkpoint entry whose unpickling runs code (creates a directory)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


def test_a_checkpoint_holding_python_objects_needs_allow_pickle(fitted, tmp_path, capsys):
    import torch

    payload = torch.load(fitted["run"] / "checkpoints" / "train.ckpt", weights_only=True)
    marker = tmp_path / "code-ran"
    payload["extra"] = _MakesDirectoryWhenUnpickled(marker)
    torch.save(payload, tmp_path / "pickled.ckpt")
    args = ["diagnose", "--ckpt", str(tmp_path / "pickled.ckpt"), *TINY_DATA, *TINY_ANALYSIS]
    assert main([*args, "--run_dir", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "`--ckpt`" in err and "--allow_pickle true" in err
    assert not marker.exists()
    assert main([*args, "--allow_pickle", "true", "--run_dir", str(tmp_path / "trusted")]) == 0
    assert marker.exists() and (tmp_path / "trusted" / "report.json").exists()


def test_compare_names_the_option_of_a_corrupt_checkpoint(fitted, tmp_path, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    good = str(fitted["run"] / "checkpoints" / "train.ckpt")
    for flag, args in (("--ckpt-b", ["--ckpt-a", good, "--ckpt-b", str(bad)]),
                       ("--ckpt-a", ["--ckpt-a", str(bad), "--ckpt-b", good])):
        assert main(["compare", *args, *TINY_DATA, *TINY_ANALYSIS, "--run_dir", str(tmp_path / flag)]) == 2
        err = capsys.readouterr().err
        assert f"`{flag}`" in err and "bad.ckpt" in err


def _fails(args, capsys, *needles):
    assert main(args) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, err
    return err


def test_missing_checkpoint(capsys, tmp_path):
    _fails(["diagnose", "--ckpt", str(tmp_path / "nope.ckpt"), *TINY_DATA, "--run_dir", str(tmp_path / "r")],
           capsys, "does not exist", "checkpoint")


def test_checkpoint_of_another_architecture(fitted, capsys, tmp_path):
    args = ["diagnose", "--ckpt", str(fitted["run"] / "checkpoints/train.ckpt"), *TINY_DATA, "--model",
            "ResNetClassifier", "--model.width", "8", "--run_dir", str(tmp_path / "r")]
    _fails(args, capsys, "another architecture", "Expected a checkpoint of ResNetClassifier")
    assert not (tmp_path / "r").exists()


def test_unknown_layer(fitted, capsys, tmp_path):
    args = ["diagnose", "--ckpt", str(fitted["run"] / "checkpoints/train.ckpt"), *TINY_DATA, "--layer", "layer9",
            "--run_dir", str(tmp_path / "r")]
    _fails(args, capsys, "'layer9'", "Nearest valid names")
    assert not (tmp_path / "r").exists()  # the run directory it made is removed again: nothing was run
    # an existing run directory (a resume) is never removed, whatever the error
    (tmp_path / "r").mkdir()
    _fails(args, capsys, "'layer9'")
    assert (tmp_path / "r" / "config.yaml").exists()


def test_data_of_the_wrong_shape(fitted, capsys, tmp_path):
    args = ["diagnose", "--ckpt", str(fitted["run"] / "checkpoints/train.ckpt"), "--data", "DigitsDataModule",
            "--run_dir", str(tmp_path / "r")]
    _fails(args, capsys, "Expected images with 3 channels", "accepts 3-channel")


def test_unknown_keys_get_the_nearest_suggested(capsys):
    _fails(["diagnose", "--ckpt", "x", "--data", "PlantedConceptsDataModule", "--data.trian_size", "4"], capsys,
           "did you mean 'train_size'")
    _fails(["diagnose", "--ckpt", "x", "--data", "PlantedConceptsDataModul"], capsys,
           "did you mean 'PlantedConceptsDataModule'")
    _fails(["diagnoze"], capsys, "Did you mean 'diagnose'")


def test_unknown_key_in_a_recipe_file_gets_a_suggestion(capsys, tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text(RECIPE.replace("  epochs: 1\n  augmentations", "  epochz: 1\n  augmentations"))
    _fails(["fit", "--config", str(recipe)], capsys, "epochz", "did you mean 'finetune.epochs'")


def test_unknown_recipe_name(capsys, tmp_path):
    _fails(["finetune", "--ckpt", "x.ckpt", "--recipe", "planted_shadow"], capsys, "Did you mean 'planted_shadows'")


def test_hints_come_from_what_was_given_not_from_the_error_message(tmp_path):
    assert input_hints(diagnose_parser(), ["--ckpt", "m.ckpt", "--data", "PlantedConceptsDataModule"]) == []
    given = ["--ckpt", "m.ckpt", "--data", "PlantedConceptsDataModule", "--data.trian_size=4", "--probe_sise", "8",
             "--model", "recipes.models.Nope"]
    hints = input_hints(diagnose_parser(), given)
    assert hints == ["PlantedConceptsDataModule has no option 'trian_size'; did you mean 'train_size'?",
                     "unknown option 'probe_sise'; did you mean 'probe_size'?",
                     "no class 'recipes.models.Nope'; built-in models: ResNetClassifier, SegmentationNet"]
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.replace("  init_args: {width: 4}", "  init_args: {widht: 4}"))
    assert input_hints(fit_parser(), ["--config", str(recipe)]) == [
        "ResNetClassifier has no option 'widht'; did you mean 'width'?"]


# -- shipped recipes -----------------------------------------------------------------------------------------


def test_shadow_calibration_is_on_by_default_and_can_be_switched_off():
    parser = fit_parser()
    assert parser.parse_args(TINY_DATA).finetune.calibrate is True
    assert parser.parse_args([*TINY_DATA, "--finetune.calibrate", "false"]).finetune.calibrate is False


def test_the_shipped_recipes_are_there_and_parse():
    names = shipped_recipes()
    for expected in ("planted_shadows", "road_shadows", "fashion_shadows_occluders", "joint_batch_occlusion",
                     "image_folder_finetune"):
        assert expected in names
    for name in names:  # a fresh parser per file, as the command line does
        cfg = fit_parser().parse_args(["--config", resolve_recipe(name)])
        assert cfg.data.class_path.startswith("recipes.data."), name
    joint = fit_parser().parse_args(["--config", resolve_recipe("joint_batch_occlusion")])
    assert joint.callbacks[0].class_path == "callbacks.JointBatchTraining"


def test_finetune_a_users_checkpoint_on_an_image_folder(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from recipes.loop import save_model
    from recipes.models import ResNetClassifier

    rng = np.random.default_rng(0)
    for c, colour in enumerate(("red", "blue")):
        folder = tmp_path / "images" / colour
        folder.mkdir(parents=True)
        for i in range(60):
            pixels = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            for _ in range(3):  # a few shapes, so superpixels differ
                y, x, s = rng.integers(0, 24), rng.integers(0, 24), rng.integers(4, 9)
                pixels[y:y + s, x:x + s] = rng.integers(0, 255, 3)
            pixels[..., 0 if c == 0 else 2] //= 2
            Image.fromarray(pixels).save(folder / f"{i}.png")
    ckpt = save_model(ResNetClassifier(num_classes=2, width=4), tmp_path / "mine.ckpt")
    data = ["--data", "ImageFolderDataModule", "--data.root", str(tmp_path / "images"), "--data.batch_size", "8"]
    args = ["finetune", "--ckpt", str(ckpt), "--recipe", "image_folder_finetune", *data, "--epochs", "1",
            "--n_concepts", "4", "--run_dir", str(tmp_path / "run")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "Before / after" in out and "no aug." in out  # the recipe runs the same-budget control arm
    assert (tmp_path / "run" / "checkpoints" / "finetune_no_aug.ckpt").is_file()
    assert "ImageFolderDataModule" in (tmp_path / "run" / "config.yaml").read_text()
    # The recipe's own placeholder folder does not exist: the message says what is expected.
    _fails(["finetune", "--ckpt", str(ckpt), "--recipe", "image_folder_finetune", "--run_dir", str(tmp_path / "r")],
           capsys, "Expected `root` to be a folder")


def test_an_interrupted_run_resumes_where_it_stopped(fitted, tmp_path, capsys, monkeypatch):
    import recipes.loop.closed_loop

    run = tmp_path / "run"

    def interrupted(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(recipes.loop.closed_loop, "finetune", interrupted)
    assert main(["fit", "--config", str(fitted["recipe"]), "--run_dir", str(run)]) == 130
    assert "resume" in capsys.readouterr().err
    stages = json.loads((run / "state.json").read_text())["stages"]
    assert "train" in stages and "finetune" not in stages and "finetune_no_aug" not in stages
    assert not [p for p in run.rglob("*") if ".tmp" in p.name]
    trained = (run / "checkpoints" / "train.ckpt").stat().st_mtime_ns
    monkeypatch.undo()
    assert main(["fit", "--config", str(fitted["recipe"]), "--run_dir", str(run)]) == 0
    assert (run / "checkpoints" / "train.ckpt").stat().st_mtime_ns == trained  # not trained again
    assert (run / "checkpoints" / "finetune_no_aug.ckpt").is_file()


def test_fit_without_finetuning_only_diagnoses_a_given_checkpoint(fitted, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["fit", "--config", str(fitted["recipe"]), "--ckpt", str(fitted["run"] / "checkpoints/train.ckpt"),
            "--finetune.enabled", "false", "--run_dir", str(run)]
    assert main(args) == 0
    assert (run / "report.json").is_file() and (run / "report.md").is_file()
    assert not (run / "checkpoints").exists()


def test_threads_follow_the_environment_and_reject_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from recipes.cli import _threads

    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("CONCEPTFIX_THREADS", "1")
        assert _threads() == 1 and torch.get_num_threads() == 1
        monkeypatch.setenv("CONCEPTFIX_THREADS", "two")
        with pytest.raises(SystemExit, match="CONCEPTFIX_THREADS must be a positive integer"):
            _threads()
    finally:
        torch.set_num_threads(before)


# -- reproducibility -----------------------------------------------------------------------------------------


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_same_seed_builds_the_same_initial_weights_whatever_ran_before():
    import torch

    from recipes.cli import build_demo, build_recipe
    from recipes.parsers import demo_parser

    demo = demo_parser().parse_args(["--train_size", "8", "--val_size", "8", "--test_size", "8"])
    first = _weights(build_demo(demo)[1])
    torch.rand(100)  # the global RNG moved on, as it does between two invocations' imports
    assert _same(first, _weights(build_demo(demo)[1]))
    demo.seed = 1
    assert not _same(first, _weights(build_demo(demo)[1]))

    parser = fit_parser()
    cfg = parser.parse_args([*TINY_DATA, "--model", "ResNetClassifier", "--model.width", "4"])
    first = _weights(build_recipe(cfg, parser)[2])
    torch.rand(100)
    assert _same(first, _weights(build_recipe(cfg, parser)[2]))


@pytest.mark.parametrize("args, needle", [
    (["demo", "--finetune_epochs", "0"], "Expected `--finetune_epochs` to be a positive integer, but got 0."),
    (["demo", "--probe_size", "0"], "Expected `--probe_size` to be a positive integer, but got 0."),
    (["demo", "--train-size", "-5"], "Expected `--train_size` to be a positive integer, but got -5."),
    (["demo", "--seed", "-1"], "Expected `--seed` to be an integer in [0, 4294967295], but got -1."),
    (["fit", "--config", "planted_shadows", "--epochs", "0"], "Expected `--epochs` to be a positive integer"),
    (["fit", "--config", "planted_shadows", "--finetune.epochs", "0"], "`--finetune.epochs`"),
    (["fit", "--config", "planted_shadows", "--finetune.base_p", "0.95"], "`--finetune.base_p` <= `--finetune.max_p`"),
    (["fit", "--config", "planted_shadows", "--n_concepts", "0"], "`--n_concepts` to be a positive integer or null"),
    (["finetune", "--ckpt", "x.ckpt", "--recipe", "planted_shadows", "--epochs", "0"], "`--finetune.epochs` to be"),
    (["diagnose", "--ckpt", "x.ckpt", *TINY_DATA, "--probe_size", "0"], "`--probe_size`"),
    (["compare", "--ckpt-a", "a.ckpt", "--ckpt-b", "b.ckpt", *TINY_DATA, "--probe_size", "-1"], "`--probe_size`"),
])
def test_bad_numbers_are_rejected_before_any_work(args, needle, capsys, tmp_path):
    run = tmp_path / "run"
    _fails([*args, "--run_dir", str(run)], capsys, needle)
    assert not run.exists()  # nothing trained, no run directory


@pytest.mark.parametrize("command", [["demo"], ["fit", "--config", "planted_shadows"],
                                     ["finetune", "--ckpt", "x.ckpt", "--recipe", "planted_shadows"],
                                     ["diagnose", "--ckpt", "x.ckpt", *TINY_DATA]])
def test_a_run_dir_that_is_a_file_is_a_clear_error(command, capsys, tmp_path):
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    _fails([*command, "--run_dir", str(existing)], capsys, "Expected `--run_dir` to be a directory", "which is a file")
    _fails([*command, "--run_dir", str(existing / "run")], capsys, "notes.txt' is a file")
    assert existing.read_text() == "mine"


def test_finetune_takes_every_fit_option_on_top_of_the_recipe(fitted, tmp_path, capsys):
    out_dir = tmp_path / "ft"
    args = ["finetune", "--ckpt", str(fitted["run"] / "checkpoints/train.ckpt"), "--data.test_size", "24",
            "--recipe", str(fitted["recipe"]), "--probe_size", "12", "--finetune.max_p", "0.8", "--epochs", "1",
            "--run_dir", str(out_dir)]
    assert main(args) == 0
    assert json.loads((out_dir / "metrics.json").read_text())["before"]["n"] == 24  # the recipe says 16
    config = fit_parser().parse_string((out_dir / "config.yaml").read_text())
    assert config.data.init_args.test_size == 24 and config.data.init_args.train_size == 32  # rest: the recipe's
    assert config.probe_size == 12 and config.finetune.max_p == 0.8 and config.finetune.epochs == 1
    assert config.ckpt == args[2]  # the given checkpoint, although the recipe (read after it) has none
    _fails(["finetune", "--ckpt", args[2], "--probe_size", "12"], capsys, "Expected `--recipe`", "planted_shadows")


def test_the_demos_config_reruns_with_fit_and_gives_the_same_model(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setenv("CONCEPTFIX_THREADS", "1")  # bit-for-bit only at the same thread count
    before = torch.get_num_threads()
    try:
        demo = tmp_path / "demo"
        assert main(["demo", "--epochs", "1", "--finetune-epochs", "1", "--train-size", "48", "--val-size", "16",
                     "--test-size", "16", "--probe-size", "16", "--n_concepts", "4", "--seed", "3",
                     "--run_dir", str(demo)]) == 0
        rerun = tmp_path / "rerun"
        assert main(["fit", "--config", str(demo / "config.yaml"), "--run_dir", str(rerun)]) == 0
    finally:
        torch.set_num_threads(before)
    assert "Before / after" in capsys.readouterr().out
    for stage in ("train", "finetune_no_aug"):
        a = torch.load(demo / "checkpoints" / f"{stage}.ckpt", weights_only=False)["state_dict"]
        b = torch.load(rerun / "checkpoints" / f"{stage}.ckpt", weights_only=False)["state_dict"]
        assert _same(a, b), stage
    assert json.loads((demo / "metrics.json").read_text()) == json.loads((rerun / "metrics.json").read_text())


def test_an_unknown_class_lists_the_valid_ones_of_its_kind(capsys):
    err = _fails(["diagnose", "--ckpt", "x", *TINY_DATA, "--model", "Foo"], capsys,
                 "no class 'Foo'; built-in models: ResNetClassifier, SegmentationNet")
    assert "PlantedConceptsDataModule" not in err.split("but ")[1]  # models only, not every class
    assert "Does not validate" not in err and len(err.strip().splitlines()) == 1  # one plain line
    _fails(["diagnose", "--ckpt", "x", *TINY_DATA, "--model", "ResNetClasifier"], capsys,
           "(did you mean 'ResNetClassifier'?); built-in models:")
    _fails(["fit", "--config", "planted_shadows", "--data", "Foo"], capsys, "built-in data modules: DigitsDataModule")


def test_a_missing_checkpoint_is_reported_before_any_work(capsys, tmp_path):
    run = tmp_path / "run"
    for args in (["diagnose", "--ckpt", "m.ckpt", *TINY_DATA],
                 ["finetune", "--ckpt", "m.ckpt", "--recipe", "planted_shadows"],
                 ["compare", "--ckpt-a", str(tmp_path), "--ckpt-b", "b.ckpt", *TINY_DATA]):
        _fails([*args, "--run_dir", str(run)], capsys, "to be an existing checkpoint file")
        assert not run.exists()


def test_the_error_messages_in_the_docs_are_the_real_ones(capsys, tmp_path, monkeypatch):
    import re
    import shlex
    from pathlib import Path

    from recipes.loop import save_model
    from recipes.models import ResNetClassifier

    doc = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    block = re.search(r"## Errors\n.*?```text\n(.*?)```", doc, re.S).group(1)
    examples = re.findall(r"^\$ conceptfix (.*)\n((?:(?!\$ ).*\n)+)", block, re.M)
    assert len(examples) >= 8
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CONCEPTFIX_THREADS", str(__import__("torch").get_num_threads()))
    save_model(ResNetClassifier(), "model.ckpt")
    Path("notes.txt").write_text("a file")
    Path("empty.ckpt").write_bytes(b"")
    from recipes.cli import recorded_options
    from recipes.loop import RunDirectory

    RunDirectory("demo-run").claim("demo", recorded_options(demo_parser().parse_args([])))  # a demo's record
    for command, expected in examples:
        assert main(shlex.split(command)) == 2, command
        err = capsys.readouterr().err
        err = "".join(line for line in err.splitlines(keepends=True) if "torch thread(s)" not in line)
        assert err.strip() == expected.strip(), command


def test_a_run_dir_is_resumed_only_with_its_own_configuration(fitted, capsys):
    run = fitted["run"]
    state = json.loads((run / "state.json").read_text())
    assert state["command"] == "fit" and state["options"]["finetune.epochs"] == 1
    assert "progress" not in state["options"] and "run_dir" not in state["options"]  # do not change results
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    err = _fails(["fit", "--config", str(fitted["recipe"]), "--run_dir", str(run), "--finetune.epochs", "2",
                  "--data.train_size", "48"], capsys,
                 f"Expected --run_dir {run} to be resumed with its own configuration, but --data.train_size is 48 "
                 "here and 32 there, --finetune.epochs is 2 here and 1 there; use another --run_dir or --overwrite.")
    assert len([line for line in err.strip().splitlines() if "torch thread(s)" not in line]) == 1
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before  # nothing written
    # progress display does not count: the same run resumes
    assert main(["fit", "--config", str(fitted["recipe"]), "--run_dir", str(run), "--progress", "false"]) == 0


def test_another_command_never_writes_over_a_run(fitted, capsys, tmp_path):
    run = fitted["run"]
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    ckpt = str(run / "checkpoints" / "train.ckpt")
    _fails(["diagnose", "--ckpt", ckpt, *TINY_DATA, *TINY_ANALYSIS, "--run_dir", str(run)], capsys,
           f"Expected --run_dir {run} to be a new directory or a run of `conceptfix diagnose`, but `conceptfix fit` "
           "made it (its outputs would be overwritten); use another --run_dir or --overwrite.")
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
    # a folder of the user's own files is never a run directory, not even with --overwrite
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for extra in ([], ["--overwrite", "true"]):
        _fails(["diagnose", "--ckpt", ckpt, *TINY_DATA, *TINY_ANALYSIS, "--run_dir", str(mine), *extra], capsys,
               "but it holds other files")
    assert (mine / "notes.txt").read_text() == "keep"


def test_overwrite_starts_a_run_afresh(fitted, capsys, tmp_path):
    ckpt = str(fitted["run"] / "checkpoints" / "train.ckpt")
    run = tmp_path / "run"
    args = ["diagnose", "--ckpt", ckpt, *TINY_DATA, *TINY_ANALYSIS, "--run_dir", str(run)]
    assert main(args) == 0
    assert main(args) == 0  # the same diagnosis again: allowed
    _fails([*args, "--seed", "1"], capsys, "but --seed is 1 here and 0 there")
    (run / "stale.txt").write_text("from the first run")
    assert main([*args, "--seed", "1", "--overwrite", "true"]) == 0
    assert not (run / "stale.txt").exists()
    assert json.loads((run / "state.json").read_text())["options"]["seed"] == 1
    assert "overwrite:" not in (run / "config.yaml").read_text()  # rerunning the recipe never empties a run


def test_demo_refuses_a_finished_run_of_other_epochs_before_any_work(capsys, tmp_path):
    from recipes.cli import recorded_options
    from recipes.loop import RunDirectory
    from recipes.parsers import demo_parser

    run = RunDirectory(tmp_path / "demo-1")
    run.claim("demo", recorded_options(demo_parser().parse_args(["--finetune_epochs", "5"])))
    run.write_text("config.yaml", "finetune:\n  epochs: 5\n")
    _fails(["demo", "--finetune_epochs", "1", "--run_dir", str(run.path)], capsys,
           f"Expected --run_dir {run.path} to be resumed with its own configuration, but --finetune_epochs is 1 here "
           "and 5 there; use another --run_dir or --overwrite.")
    assert (run.path / "config.yaml").read_text() == "finetune:\n  epochs: 5\n"  # not rewritten
    assert not (run.path / "checkpoints").exists()


@pytest.mark.parametrize(("args", "expected"), [
    (["--probe_size", "abc"], "Expected `--probe_size` to be an integer, but got 'abc'."),
    (["--data.train_size", "abc"], "Expected `--data.train_size` to be an integer, but got 'abc'."),
    (["--probe_sise", "3"], "Expected `--probe_sise` to be a known option, but unknown option 'probe_sise'; did "
                            "you mean 'probe_size'?"),
])
def test_a_rejected_command_line_is_one_plain_line(args, expected, capsys):
    assert main(["diagnose", "--ckpt", "m.ckpt", "--data", "PlantedConceptsDataModule", *args]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"conceptfix diagnose: error: {expected}"
