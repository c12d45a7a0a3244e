"""bench_loop's optional one-of control: its transforms, its augmented share and its summary rows."""

import pytest
import torch

from augment import AugmentationPolicy, Cutout, HideAndSeek, OneOfUniform, SyntheticShadow
from benchmarks import bench_loop
from recipes.loop import mean_probability


def test_the_one_of_arm_chooses_among_the_default_transforms():
    transforms = bench_loop.oneof_transforms(32, seed=4)
    pick = transforms[bench_loop.ONE_OF]
    assert isinstance(pick, OneOfUniform) and pick.seed == 7
    assert [type(t) for t in pick.transforms] == [SyntheticShadow, Cutout, HideAndSeek]
    assert list(transforms)[:3] == list(bench_loop.default_transforms(32, seed=4))
    assert "untargeted_oneof" not in bench_loop.ARMS and "untargeted_oneof" in bench_loop.ALL_ARMS


def test_the_one_of_policy_augments_the_loops_share():
    ds = [{"image": torch.zeros(1, 4, 4), "target": torch.tensor(i % 2)} for i in range(10)]
    share = mean_probability({"SyntheticShadow": AugmentationPolicy().with_class(0, 0.8)}, ds)
    one_of = {bench_loop.ONE_OF: AugmentationPolicy(base=share, augmentation=bench_loop.ONE_OF)}
    assert mean_probability(one_of, ds) == pytest.approx(share, abs=1e-6)


def test_summary_compares_the_loop_with_both_untargeted_controls():
    def seed(loop, independent, one_of):
        return {"baseline": {"shadow": 0.3}, "loop": {"shadow": loop}, "untargeted": {"shadow": independent},
                "untargeted_oneof": {"shadow": one_of}}

    summary = bench_loop.summarise([seed(0.5, 0.45, 0.40), seed(0.6, 0.5, 0.4)])
    assert summary["loop_minus_untargeted"]["shadow"]["mean"] == pytest.approx(0.075)
    assert summary["loop_minus_untargeted_oneof"]["shadow"]["mean"] == pytest.approx(0.15)
    assert "loop_minus_no_aug" not in summary
