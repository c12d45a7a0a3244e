"""Joint batches, batch augmentation, the batched crop/flip, and the augmentation policy."""

from __future__ import annotations

import json

import pytest
import torch

import augment
from augment import AugmentationPolicy, BatchAugment, JointBatch, RandomCropFlip


def _x(b=4, c=2, h=8, w=8, seed=0):
    return torch.rand(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_joint_batch_pairs_clean_and_occluded_copies():
    x, y = _x(), torch.tensor([3, 1, 4, 1])
    masks = torch.rand(4, 2, 8, 8) > 0.5
    out = JointBatch(augment.Cutout(size=3, seed=0))(x, y, {"concept_masks": masks})
    assert torch.equal(out.images[:4], x)
    assert torch.equal(out.targets, y.repeat(2)) and torch.equal(out.index, torch.arange(4).repeat(2))
    assert torch.equal(out.extras["concept_masks"], masks.repeat(2, 1, 1, 1))
    region = augment.Cutout().region(out.params[0], 8, 8)
    # The copies differ only inside the occluded region.
    assert torch.equal(out.images[4:] * (1 - region), x * (1 - region))
    assert (out.images[4:] * region == 0).all()


def test_joint_batch_augments_before_duplication_and_masks_follow():
    x = torch.arange(64.0).view(1, 1, 8, 8).repeat(3, 1, 1, 1)
    seg = (x[:, 0] > 30).long()
    cm = (x > 40)
    joint = JointBatch(augment.HideAndSeek(p=0.0), augment=RandomCropFlip(padding=2, seed=1))
    out = joint(x, seg, {"concept_masks": cm})
    assert torch.equal(out.images[:3], out.images[3:])  # p=0 occluder: both copies identical after augmentation
    assert not torch.equal(out.images[:3], x)
    # Masks moved exactly like the pixels they describe (padding is 0 in both).
    assert torch.equal(out.targets, (out.images[:, 0] > 30).long())
    assert torch.equal(out.extras["concept_masks"], out.images > 40)


def test_joint_batch_moves_full_resolution_occluder_inputs_with_the_augmentation():
    obj = torch.zeros(64, 16, 16, dtype=torch.bool)
    obj[:, 1:4, 1:4] = True
    joint = JointBatch(augment.SyntheticShadow(p=1.0, seed=0), augment=RandomCropFlip(padding=4, seed=0))
    out = joint(torch.ones(64, 1, 16, 16), torch.zeros(64), object_masks=obj)
    px, py = out.params[0].geometry[:, 0], out.params[0].geometry[:, 1]
    # The same crop (same seed, first draw) applied to the mask gives the box the shadows must cross.
    crop = RandomCropFlip(padding=4, seed=0)
    _, moved_obj = crop(torch.ones(64, 1, 16, 16), obj)
    box = augment.functional.mask_bounding_boxes(moved_obj)
    inside = (px >= box[:, 0]) & (px <= box[:, 2]) & (py >= box[:, 1]) & (py <= box[:, 3])
    assert inside.all()
    assert not torch.equal(box, augment.functional.mask_bounding_boxes(obj))


def test_joint_batch_per_sample_probabilities():
    out = JointBatch(augment.Cutout(size=3, seed=0))(_x(), torch.zeros(4, dtype=torch.long),
                                                     probabilities=torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert out.occluded.tolist() == [False] * 4 + [False, True, False, True]
    assert torch.equal(out.images[4], out.images[0]) and not torch.equal(out.images[5], out.images[1])


def test_joint_batch_passes_saliency_and_object_masks_to_the_occluder():
    sal = torch.zeros(2, 4, 4)
    sal[:, 0, 0] = 1
    out = JointBatch(augment.SaliencyOcclusion(size=4, jitter=0, seed=0))(torch.ones(2, 1, 8, 8),
                                                                         torch.zeros(2, dtype=torch.long), saliency=sal)
    assert out.images[2:, 0, :4, :4].sum() == 0 and out.images[2:, 0, 4:, 4:].sum() == 32
    obj = torch.zeros(2, 8, 8, dtype=torch.bool)
    obj[:, 2:4, 2:4] = True
    out = JointBatch(augment.SyntheticShadow(p=1.0, seed=0))(torch.ones(2, 1, 8, 8), torch.zeros(2),
                                                             object_masks=obj)
    px, py = out.params[0].geometry[:, 0], out.params[0].geometry[:, 1]
    assert ((px >= 2) & (px <= 4) & (py >= 2) & (py <= 4)).all()


def test_batch_augment_makes_independent_copies():
    x = _x(b=3)
    out = BatchAugment(RandomCropFlip(padding=2, seed=0), copies=3)(x, torch.arange(3))
    assert out.images.shape == (9, 2, 8, 8) and out.targets.tolist() == [0, 1, 2] * 3
    assert not torch.equal(out.images[:3], out.images[3:6])
    assert not out.occluded.any()


def test_batch_augment_occludes_with_p_keep_image():
    x = torch.ones(200, 1, 8, 8)
    out = BatchAugment(RandomCropFlip(padding=0, flip=False), copies=2, occluder=augment.Cutout(size=2, seed=0),
                       p_keep_image=0.5)(x, torch.zeros(200))
    frac = out.occluded.float().mean().item()
    assert 0.4 < frac < 0.6
    changed = (out.images != 1).flatten(1).any(1)
    assert torch.equal(changed, out.occluded)
    none = BatchAugment(RandomCropFlip(padding=0, flip=False), occluder=augment.Cutout(size=2, seed=0),
                        p_keep_image=0.0)(x[:4], torch.zeros(4), probabilities=torch.tensor([1.0, 0.0, 1.0, 0.0]))
    assert none.occluded.tolist() == [True, False, True, False] * 2


def test_random_crop_flip_moves_masks_and_keeps_per_sample_vectors():
    x = torch.arange(32.0).view(2, 1, 4, 4)
    labels = torch.tensor([5, 6])
    flip = RandomCropFlip(padding=0, flip=True)
    params = flip.sample(2, torch.Generator().manual_seed(0))
    y = flip.apply_params(x, params)
    for i in range(2):
        assert torch.equal(y[i], x[i].flip(-1) if params.flips[i] else x[i])
    out = flip(x, labels, x[:, 0] > 20, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out[1], labels) and torch.equal(out[2], out[0][:, 0] > 20)


def test_batch_errors():
    with pytest.raises(ValueError, match="Expected `targets` to be a tensor with batch size 4"):
        JointBatch(augment.Cutout())(_x(), torch.zeros(3))
    with pytest.raises(ValueError, match="Expected extra `m` to be a tensor with batch size 4"):
        JointBatch(augment.Cutout())(_x(), torch.zeros(4), {"m": torch.zeros(2, 8, 8)})
    with pytest.raises(ValueError, match="Expected `images` to be a floating-point tensor"):
        JointBatch(augment.Cutout())(torch.zeros(4, 8, 8), torch.zeros(4))
    with pytest.raises(ValueError, match="Expected `copies` to be an integer >= 1"):
        BatchAugment(RandomCropFlip(), copies=0)
    with pytest.raises(ValueError, match="Expected `p_keep_image` to be a probability"):
        BatchAugment(RandomCropFlip(), p_keep_image=1.5)
    with pytest.raises(ValueError, match="Expected `padding` to be an integer >= 0"):
        RandomCropFlip(padding=-1)
    with pytest.raises(ValueError, match="Expected `targets` to be a tensor with batch size 4"):
        BatchAugment(RandomCropFlip())(_x(), torch.zeros(2))


# ---- policy ------------------------------------------------------------------------------------------------


def test_policy_probabilities_from_classes_and_concepts():
    policy = (AugmentationPolicy(base=0.1, augmentation="SyntheticShadow")
              .with_class(2, 0.6, reason="class 2: 40% errors in the shadow slice vs 8% outside")
              .with_concept(0, 0.9, name="shadow", reason="failure concept #1"))
    targets = torch.tensor([0, 2, 1, 2])
    concepts = torch.tensor([[0.0, 1.0], [0.0, 0.0], [1.0, 0.0], [0.5, 0.0]])
    p = policy.probabilities(targets, concepts)
    assert torch.allclose(p, torch.tensor([0.1, 0.6, 0.9, 0.6]))
    assert torch.allclose(policy.probabilities(targets), torch.tensor([0.1, 0.6, 0.1, 0.6]))
    text = policy.explain()
    assert "SyntheticShadow" in text and "class 2: p=0.60 (class 2: 40% errors" in text
    assert "concept 'shadow': p=0.90 (failure concept #1)" in text


def test_policy_on_segmentation_maps_and_round_trip():
    policy = AugmentationPolicy().with_class(3, 0.7)
    maps = torch.zeros(2, 4, 4, dtype=torch.long)
    maps[1, 0, 0] = 3
    assert policy.probabilities(maps).tolist() == [0.0, pytest.approx(0.7)]
    restored = AugmentationPolicy.from_json(policy.to_json())
    assert restored == policy and json.loads(policy.to_json())["rules"][0]["index"] == 3
    import pickle

    assert pickle.loads(pickle.dumps(policy)) == policy


def test_policy_params_round_trip_through_json_and_are_explained():
    policy = AugmentationPolicy(base=0.2, augmentation="SyntheticShadow", params={"intensity": (0.8, 0.9)},
                                params_reason="shadows remove 85% here").with_class(1, 0.9)
    restored = AugmentationPolicy.from_json(policy.to_json())
    assert restored == policy and restored.params["intensity"] == (0.8, 0.9)  # a tuple again, not a list
    assert restored.rules[0].p == 0.9  # with_class keeps the params
    assert "with intensity=(0.80, 0.90) (shadows remove 85% here)" in policy.explain()
    assert AugmentationPolicy.from_dict({"base": 0.1}).params == {}  # files written before params existed
    with pytest.raises(ValueError, match="Expected `params` to be a mapping"):
        AugmentationPolicy(params=[("intensity", (0.1, 0.2))])  # type: ignore[arg-type]


def test_policy_drives_a_transform():
    policy = AugmentationPolicy().with_class(1, 1.0)
    targets = torch.tensor([0, 1, 0, 1])
    x = torch.ones(4, 1, 8, 8)
    y = augment.Cutout(size=4, seed=0)(x, probabilities=policy.probabilities(targets))
    assert (y != x).flatten(1).any(1).tolist() == [False, True, False, True]


def test_policy_errors():
    with pytest.raises(ValueError, match="Expected `base` to be a probability"):
        AugmentationPolicy(base=2.0)
    with pytest.raises(ValueError, match="Expected `p` to be a probability"):
        AugmentationPolicy().with_class(0, 1.5)
    with pytest.raises(ValueError, match="Expected a rule index to be a non-negative integer"):
        AugmentationPolicy().with_concept(-1, 0.5)
    with pytest.raises(ValueError, match="Expected a rule kind in"):
        AugmentationPolicy(rules=(augment.PolicyRule("slice", 0, 0.5),))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"Expected `targets` to have shape \(B,\) or \(B, H, W\)"):
        AugmentationPolicy().probabilities(torch.zeros(2, 3))
    with pytest.raises(ValueError, match=r"Expected `concepts` to have shape \(2, K\)"):
        AugmentationPolicy().probabilities(torch.zeros(2), torch.zeros(3, 1))
