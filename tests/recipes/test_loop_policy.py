"""The loop's policy from matching (no labels), the bind override, the fallback, the probe folder, fine-tuning from a
diagnose report, and the before/after table with its no-augmentation arm."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from debugger.failures import FailureEvidence
from debugger.matching import ClaimTable, MatchResult, TransformMatch
from recipes.cli import main
from recipes.loop import (
    LoopConfig,
    LoopError,
    catalogue_renderers,
    clean_probe_images,
    configure_transforms,
    format_before_after,
    loop_transforms,
    policies_from_match,
    probe_folder,
)


def _failure(name="cluster-3", lift=3.0, matches=None):
    # class 0 is wrong 4 of 5 times inside the slice and 0 of 20 times outside it
    inside = torch.tensor([[1, 4], [0, 5]])
    return FailureEvidence(name, matches, lift, inside, inside + torch.tensor([[20, 0], [0, 20]]))


def _table(concepts=("cluster-3",), transforms=("shadow-line", "defocus"), strengths=(0.2, 0.6, 1.0)):
    c, t, s = len(concepts), len(transforms), len(strengths)
    return ClaimTable(tuple(concepts), tuple(transforms), tuple(strengths), torch.zeros(c, t, s), torch.zeros(c, t, s),
                      torch.full((t, s), 50))


# -- policy from the match ---------------------------------------------------------------------------------------


def test_a_matched_transform_becomes_the_policy_with_its_strength_range():
    m = TransformMatch("cluster-3", "shadow-line", (0.6, 1.0), 0.7, 0.05, "cluster-3 ↔ shadow-line strength 0.6–1")
    policies, lines = policies_from_match(MatchResult((m,), _table()), [_failure()], fallback="cutout",
                                          base=0.1, max_p=0.9)
    assert list(policies) == ["shadow-line"]  # the fallback is not used: the concept matched
    policy = policies["shadow-line"]
    assert policy.params == {"strength": (0.6, 1.0)}
    assert "shadow-line" in policy.params_reason
    probs = policy.probabilities(torch.tensor([0, 1])).tolist()
    assert probs[0] == pytest.approx(0.9, abs=1e-3) and probs[1] == pytest.approx(0.1, abs=1e-6)
    assert lines == ["cluster-3 ↔ shadow-line strength 0.6–1"]
    # ... and fine-tuning applies the transform at the matched strengths
    shadow = configure_transforms(loop_transforms(32), policies, 32)["shadow-line"]
    assert shadow.intensity == (0.6, 1.0)


def test_annotations_do_not_choose_the_transform():
    # the concept shows ground-truth "shadow" but matched defocus: defocus it is
    m = TransformMatch("cluster-3", "defocus", (0.2, 0.6), 0.5, 0.1, "cluster-3 ↔ defocus", shows="shadow")
    policies, _ = policies_from_match(MatchResult((m,), _table()), [_failure(matches="shadow")])
    assert list(policies) == ["defocus"]


def test_a_bound_transform_overrides_the_match():
    m = TransformMatch("cluster-3", "noise", None, float("nan"), float("nan"),
                       "cluster-3 ↔ noise, bound by a person (`bind`)", source="bound")
    policies, lines = policies_from_match(MatchResult((m,), _table()), [_failure()])
    assert list(policies) == ["noise"] and policies["noise"].params == {}
    assert "bound by a person" in lines[0]
    assert "noise" in configure_transforms(loop_transforms(32), policies, 32)
    # binding a concept that is no failure gives no policy, and says so
    other = TransformMatch("cluster-5", "haze", (0.2, 0.4), 0.3, 0.0, "cluster-5 ↔ haze, bound", source="bound")
    policies, lines = policies_from_match(MatchResult((m, other), _table(("cluster-3", "cluster-5"))), [_failure()])
    assert list(policies) == ["noise"] and lines[-1].endswith("cluster-5 is not a failure concept: no policy from it.")


def test_no_match_falls_back_and_says_so_in_the_evidence():
    m = TransformMatch("cluster-3", None, None, 0.08, 0.05, "cluster-3 (lift 3.00): no match — the policy's "
                       "fallback applies.", source="none")
    policies, lines = policies_from_match(MatchResult((m,), _table()), [_failure()], fallback="cutout")
    assert list(policies) == ["cutout"] and policies["cutout"].params == {}
    assert lines[0].endswith("→ fallback cutout") and "no match" in lines[0]
    policies, lines = policies_from_match(MatchResult((m,), _table()), [_failure()], fallback=None)
    assert policies == {} and lines[0].endswith("→ no fallback set: no policy")


def test_a_concept_whose_slice_has_no_failing_class_gets_no_rule_and_the_line_says_why():
    m = TransformMatch("cluster-3", "defocus", (0.2, 0.6), 0.5, 0.1, "cluster-3 ↔ defocus")
    even = torch.tensor([[5, 0], [0, 5]])
    policies, lines = policies_from_match(MatchResult((m,), _table()),
                                          [FailureEvidence("cluster-3", None, 2.0, even, even * 3)])
    assert policies == {} and "no policy" in lines[0]


def test_every_catalogue_transform_can_be_fine_tuned_with():
    transforms = loop_transforms(32)
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name in catalogue_renderers():
        assert name in transforms
        out = transforms[name](images, probabilities=torch.ones(4))
        assert out.shape == images.shape and not torch.equal(out, images), name


def test_the_matcher_renders_on_probe_images_outside_every_failure_slice():
    from types import SimpleNamespace

    report = SimpleNamespace(concepts=[SimpleNamespace(id=0), SimpleNamespace(id=1)],
                             failures=[SimpleNamespace(concept=1)],
                             membership=torch.tensor([[True] * 20 + [False] * 20, [False] * 30 + [True] * 10]))
    images = torch.arange(40.0).view(40, 1, 1, 1)
    clean, line = clean_probe_images(report, images)
    assert clean.flatten().tolist() == list(range(30))  # concept 0 is no failure: its images stay
    assert "30 of 40" in line
    report.membership[1, :] = True
    clean, line = clean_probe_images(report, images)
    assert len(clean) == 40 and "all 40" in line


# -- the before/after table ----------------------------------------------------------------------------------


def test_the_table_shows_the_no_aug_arm_and_the_policys_own_effect():
    before = {"all": 0.5, "clean": 0.9, "n": 10, "shadow": {"with": 0.2, "without": 0.8, "n_with": 5}}
    control = {"all": 0.55, "clean": 0.9, "n": 10, "shadow": {"with": 0.3, "without": 0.8, "n_with": 5}}
    after = {"all": 0.6, "clean": 0.9, "n": 10, "shadow": {"with": 0.45, "without": 0.8, "n_with": 5}}
    table = format_before_after(before, after, ["shadow"], control=control)
    assert "no aug." in table.splitlines()[0] and "policy − no aug." in table.splitlines()[0]
    line = next(r for r in table.splitlines() if r.startswith("shadow"))
    assert line.split()[2:6] == ["20.0%", "30.0%", "45.0%", "+15.0p"]


def test_without_a_policy_the_table_says_so_and_has_no_after_column():
    before = {"all": 0.5, "n": 10}
    table = format_before_after(before, None, [], control={"all": 0.52, "n": 10})
    assert "policy" not in table.splitlines()[0] and "after" not in table.splitlines()[0]
    assert "no policy" in table.splitlines()[-1]


def test_loop_config_rejects_an_unknown_control_or_policy():
    with pytest.raises(LoopError, match="`control`"):
        LoopConfig(control="untargeted")  # type: ignore[arg-type]
    with pytest.raises(LoopError, match="`policy`"):
        LoopConfig(policy="labels")  # type: ignore[arg-type]


# -- the probe folder and fine-tuning from a diagnose run ----------------------------------------------------------


def _folder(root, classes=("blue", "red"), n=12, seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(n):
            pixels = rng.integers(0, 60, (32, 32, 3), dtype=np.uint8)
            y, x = rng.integers(0, 20, 2)
            pixels[y:y + 10, x:x + 10] = rng.integers(0, 255, 3)
            pixels[..., (2 * c) % 3] //= 2
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


def test_a_probe_folder_is_read_with_the_training_classes(tmp_path):
    from recipes.data import ImageFolderDataModule

    data = ImageFolderDataModule(str(_folder(tmp_path / "train", ("blue", "green", "red"), n=10)), batch_size=8)
    probe = probe_folder(str(_folder(tmp_path / "probe", ("blue", "red"), n=3)), data)
    assert len(probe) == 6 and probe.classes == ("blue", "green", "red")
    assert sorted({int(probe[i]["target"]) for i in range(6)}) == [0, 2]  # red keeps the training index 2
    with pytest.raises(LoopError, match="`--probe_root`.*training classes"):
        probe_folder(str(_folder(tmp_path / "other", ("purple",), n=2)), data)


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    from recipes.loop import save_model
    from recipes.models import ResNetClassifier

    root = tmp_path_factory.mktemp("wire")
    _folder(root / "images", n=40)
    _folder(root / "probe", n=12, seed=1)
    ckpt = save_model(ResNetClassifier(num_classes=2, width=4), root / "mine.ckpt")
    data = ["--data", "ImageFolderDataModule", "--data.root", str(root / "images"), "--data.batch_size", "8"]
    return {"root": root, "ckpt": ckpt, "data": data}


def test_diagnose_reads_the_probe_folder(folder_run, capsys):
    from debugger.report import ConceptReport

    r = folder_run
    run = r["root"] / "diag"
    args = ["diagnose", "--ckpt", str(r["ckpt"]), *r["data"], "--probe_root", str(r["root"] / "probe"),
            "--n_concepts", "4", "--run_dir", str(run)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"--from_run {run}" in out
    report = ConceptReport.load(run / "report.json")
    assert report.meta["split"] == "probe_root" and report.meta["probe_size"] == 24
    assert report.layer == "layer1" and report.meta["probe_root"] == str(r["root"] / "probe")


def test_finetune_starts_from_a_diagnose_run(folder_run, capsys):
    r = folder_run
    diag = r["root"] / "diag2"
    assert main(["diagnose", "--ckpt", str(r["ckpt"]), *r["data"], "--probe_root", str(r["root"] / "probe"),
                 "--n_concepts", "4", "--run_dir", str(diag)]) == 0
    capsys.readouterr()
    run = r["root"] / "ft"
    args = ["finetune", "--ckpt", str(r["ckpt"]), "--recipe", "image_folder_finetune", *r["data"], "--epochs", "1",
            "--from_run", str(diag), "--finetune.control", "no_aug", "--run_dir", str(run)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"concepts of {diag / 'report.json'}" in out and "no new diagnosis" in out
    assert "diagnose:report" not in (run / "state.json").read_text()  # the stored report was used
    assert "no aug." in out and (run / "checkpoints" / "finetune_no_aug.ckpt").is_file()
    # a report of other weights is refused
    from recipes.loop import save_model
    from recipes.models import ResNetClassifier

    torch.manual_seed(1)
    other = save_model(ResNetClassifier(num_classes=2, width=4), r["root"] / "other.ckpt")
    assert main(["finetune", "--ckpt", str(other), "--recipe", "image_folder_finetune", *r["data"],
                 "--report", str(diag / "report.json"), "--run_dir", str(r["root"] / "ft2")]) == 2
    assert "made on other weights" in capsys.readouterr().err


def test_bind_reaches_the_loop_from_the_command_line():
    from recipes.cli import build_recipe, fit_parser, loop_config

    parser = fit_parser()
    cfg = parser.parse_args(["--data", "PlantedConceptsDataModule", "--data.train_size", "16", "--data.val_size",
                             "8", "--data.test_size", "8", "--finetune.bind", "{cluster-6: shadow-line}",
                             "--finetune.control", "no_aug", "--probe_root", "somewhere"])
    init, _, _ = build_recipe(cfg, parser)
    c = loop_config(cfg, init, pretrained=True)
    assert c.bind == {"cluster-6": "shadow-line"} and c.control == "no_aug" and c.probe_root == "somewhere"
    assert c.policy == "match" and c.n_concepts == 32 and c.probe_size == 256
