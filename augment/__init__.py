"""conceptfix augmentations: turn a failure concept into training data.

Three layers, as in kornia + albumentations: batched torch kernels (:mod:`augment.functional`), samplers that
return frozen, replayable parameter records (:mod:`augment.params`), and two front ends — ``nn.Module`` s for
batches on any device (this namespace) and albumentations transforms for per-sample pipelines
(:mod:`augment.albu`). Batch-level training schemes (:class:`JointBatch`, :class:`BatchAugment`) and the
concept-targeted :class:`AugmentationPolicy` sit on top. Nothing here imports ``debugger`` or Lightning.
"""

from augment.batch import AugmentedBatch, BatchAugment, CropFlipParams, JointBatch, RandomCropFlip
from augment.modules import Cutout, HideAndSeek, OneOfParams, OneOfUniform, SaliencyOcclusion, SyntheticShadow
from augment.params import OcclusionParams, ShadowParams
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
    "CropFlipParams",
    "Cutout",
    "Failure",
    "HideAndSeek",
    "JointBatch",
    "OcclusionParams",
    "OneOfParams",
    "OneOfUniform",
    "PolicyRule",
    "RandomCropFlip",
    "SaliencyOcclusion",
    "ShadowParams",
    "SyntheticShadow",
    "class_error_rates",
    "derive_policies",
    "policy_changes",
    "why_no_rule",
]
