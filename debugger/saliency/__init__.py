"""Saliency: which pixels (or feature-map locations) drive a prediction, computed safely during training.

Pure functions on tensors hold the algorithms; captum-style objects built from ``(model, layer)`` hold the
configuration and have one verb, ``attribute(inputs, target)``. Every method runs in eval mode with grad on
(also inside ``torch.inference_mode``), takes gradients with ``torch.autograd.grad`` w.r.t. activations or
input copies, leaves ``param.grad`` and every module's ``training`` flag as they were, and removes its hooks.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
    ...                     nn.Flatten(), nn.Linear(4, 2))
    >>> GradCAM(net, "1").attribute(torch.randn(2, 3, 8, 8), "predicted").shape
    torch.Size([2, 1, 8, 8])
"""

from debugger.saliency.cam import (
    ConvNormGrad,
    GradCAM,
    LayerCombination,
    LinearApproximation,
    NormGrad,
    SelectiveNormGrad,
    combine_maps,
    conv_normgrad_from,
    feature_spread_weights,
    gradcam_from,
    gradient_from,
    layer_saliency,
    linear_approximation_from,
    min_max_normalize,
    normgrad_from,
    selective_normgrad_from,
)
from debugger.saliency.evaluation import PointingGame, center_baseline, pointing_game
from debugger.saliency.extremal import (
    ExtremalPerturbation,
    ExtremalResult,
    SmoothMaskGenerator,
    extremal_perturbation,
)
from debugger.saliency.gradient import (
    Gradient,
    GradientXInput,
    IntegratedGradients,
    SmoothGrad,
    gradient,
    gradient_x_input,
    integrated_gradients,
    integration_rule,
    reduce_channels,
    smoothgrad,
)
from debugger.saliency.meta import MetaSaliency, SteppedModel, meta_saliency, stepped_parameters
from debugger.saliency.perturbation import (
    MeaningfulPerturbation,
    Occlusion,
    blur_pyramid,
    gaussian_blur,
    meaningful_perturbation,
    occlusion,
    perturb_with_pyramid,
)
from debugger.saliency.sanity import cascading_randomization, class_sensitivity, parameter_layers, spearman
from debugger.saliency.targets import ClassTarget, PixelTarget, RegionTarget, resolve_target

__all__ = [
    "ClassTarget",
    "ConvNormGrad",
    "ExtremalPerturbation",
    "ExtremalResult",
    "GradCAM",
    "Gradient",
    "GradientXInput",
    "IntegratedGradients",
    "LayerCombination",
    "LinearApproximation",
    "MeaningfulPerturbation",
    "MetaSaliency",
    "NormGrad",
    "Occlusion",
    "PixelTarget",
    "PointingGame",
    "RegionTarget",
    "SelectiveNormGrad",
    "SmoothGrad",
    "SmoothMaskGenerator",
    "SteppedModel",
    "blur_pyramid",
    "cascading_randomization",
    "center_baseline",
    "class_sensitivity",
    "combine_maps",
    "conv_normgrad_from",
    "extremal_perturbation",
    "feature_spread_weights",
    "gaussian_blur",
    "gradcam_from",
    "gradient",
    "gradient_from",
    "gradient_x_input",
    "integrated_gradients",
    "integration_rule",
    "layer_saliency",
    "linear_approximation_from",
    "meaningful_perturbation",
    "meta_saliency",
    "min_max_normalize",
    "normgrad_from",
    "occlusion",
    "parameter_layers",
    "perturb_with_pyramid",
    "pointing_game",
    "reduce_channels",
    "resolve_target",
    "selective_normgrad_from",
    "smoothgrad",
    "spearman",
    "stepped_parameters",
]
