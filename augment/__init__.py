"""conceptfix augmentations: turn a failure concept into training data.

Three layers, as in kornia + albumentations: batched torch kernels (:mod:`augment.functional`), samplers that
return frozen, replayable parameter records (:mod:`augment.params`), and two front ends — ``nn.Module`` s for
batches on any device (this namespace) and albumentations transforms for per-sample pipelines
(:mod:`augment.albu`). Batch-level training schemes (:class:`JointBatch`, :class:`BatchAugment`) and the
concept-targeted :class:`AugmentationPolicy` sit on top. Nothing here imports ``debugger`` or Lightning.
"""

from augment.batch import AugmentedBatch, BatchAugment, CropFlipParams, JointBatch, RandomCropFlip
from augment.catalog import CatalogEntry, PerSampleAlbumentations, PerSampleParams
from augment.corruptions import (
    SyntheticBrightness,
    SyntheticCompression,
    SyntheticContrast,
    SyntheticDefocus,
    SyntheticGamma,
    SyntheticHaze,
    SyntheticMotionBlur,
    SyntheticNoise,
    SyntheticTexture,
    SyntheticTint,
)
from augment.modules import Cutout, HideAndSeek, OneOfParams, OneOfUniform, SaliencyOcclusion, SyntheticShadow
from augment.params import CorruptionParams, OcclusionParams, ShadowParams
from augment.policy import (
    DEFAULT_AUGMENTATIONS,
    STRENGTH_PARAMS,
    AugmentationPolicy,
    Failure,
    PolicyRule,
    class_error_rates,
    derive_policies,
    policy_changes,
    why_no_rule,
)

__all__ = [
    "DEFAULT_AUGMENTATIONS",
    "STRENGTH_PARAMS",
    "AugmentationPolicy",
    "AugmentedBatch",
    "BatchAugment",
    "CatalogEntry",
    "CorruptionParams",
    "CropFlipParams",
    "Cutout",
    "Failure",
    "HideAndSeek",
    "JointBatch",
    "OcclusionParams",
    "OneOfParams",
    "OneOfUniform",
    "PerSampleAlbumentations",
    "PerSampleParams",
    "PolicyRule",
    "RandomCropFlip",
    "SaliencyOcclusion",
    "ShadowParams",
    "SyntheticBrightness",
    "SyntheticCompression",
    "SyntheticContrast",
    "SyntheticDefocus",
    "SyntheticGamma",
    "SyntheticHaze",
    "SyntheticMotionBlur",
    "SyntheticNoise",
    "SyntheticShadow",
    "SyntheticTexture",
    "SyntheticTint",
    "class_error_rates",
    "derive_policies",
    "policy_changes",
    "why_no_rule",
]
