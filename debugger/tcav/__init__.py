"""TCAV: does a class's prediction move when a layer's activation moves towards a concept?

Testing with Concept Activation Vectors (Kim et al. 2018; seed 000 §5.3 and §7.2) in four steps:

1. **Activations** of concept examples and of random examples at a layer: patches pooled from the layer's
   feature map (:func:`debugger.embed.embed_patches`), whole images pooled over space, or whole images
   flattened (``space="flat"``, as captum and the paper do).
2. **CAV**: a linear classifier (scikit-learn) separates concept from random activations; the CAV is the unit
   normal of its decision boundary, pointing towards the concept (:class:`CAV`).
3. **Directional derivatives**: the gradient of a class logit w.r.t. the layer activation, dotted with the CAV
   (:func:`layer_sensitivities`; :func:`directional_derivatives` is the pure part). A CAV of the channel
   space (``D``) moves every spatial position of a ``(D, h, w)`` map alike, so its derivative is the
   spatially summed gradient dotted with it; a flat CAV (``D·h·w``) is dotted with the flat gradient. For
   segmentation every chosen pixel is a sample: the gradient of that pixel's logit of its class (§7.2).
4. **Score and significance**: the TCAV score of a class is the fraction of its samples with a positive
   derivative. It is computed for ``runs`` CAVs (concept vs ``runs`` different random sets) and for ``runs``
   random-vs-random CAVs; a two-sided t-test (:func:`scipy.stats.ttest_ind`) between the two sets of scores
   says whether the concept matters more than chance (:class:`TCAV`).

That t-test treats the runs as independent, but every run shares the one concept set, so it also flags a
concept that is merely a different random set (``benchmarks/bench_tcav.py`` measures how often);
``test="concepts"`` instead sets the concept's mean score against those of random example sets of its size
(:func:`tcav_concept_significance`).

CAVs depend on the weights: :class:`CAVCache` keys them by a fingerprint of every parameter and buffer
(:func:`debugger.fingerprint.model_fingerprint`) and of the examples, so a cached CAV is never reused after a
training step.

The modules follow those steps: :mod:`~debugger.tcav.examples` (example sets and their activations, pixel
samples), :mod:`~debugger.tcav.cav` (:class:`CAV`, :func:`layer_cavs`), :mod:`~debugger.tcav.derivatives`,
:mod:`~debugger.tcav.scores` (scores and both significance tests), :mod:`~debugger.tcav.cache` and
:mod:`~debugger.tcav.experiment` (:func:`tcav`, and :class:`TCAV` holding its settings).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    ...                     nn.Linear(4, 2))
    >>> g = torch.Generator().manual_seed(0)
    >>> concept = ExampleSet(torch.rand(12, 3, 8, 8, generator=g) + 1.0)
    >>> random = ExampleSet(torch.rand(40, 3, 8, 8, generator=g))
    >>> res = TCAV(net, "1", runs=3).interpret(torch.rand(6, 3, 8, 8, generator=g), torch.tensor([0, 1] * 3),
    ...                                        {"bright": concept}, random)
    >>> tuple(res.scores.shape)  # (layers, concepts, classes, runs)
    (1, 1, 2, 3)
"""

from debugger.fingerprint import model_fingerprint
from debugger.tcav.cache import CAVCache
from debugger.tcav.cav import CAV, ClassifierName, LayerCAVs, layer_cavs
from debugger.tcav.derivatives import directional_derivatives, layer_sensitivities
from debugger.tcav.examples import ExampleSet, Space, concept_windows, example_activations, sample_pixels
from debugger.tcav.experiment import TCAV, TCAVResult, Test, check_tcav_options, tcav, train_layer_cavs
from debugger.tcav.scores import tcav_concept_significance, tcav_scores, tcav_significance

__all__ = [
    "CAV",
    "CAVCache",
    "ClassifierName",
    "ExampleSet",
    "LayerCAVs",
    "Space",
    "TCAV",
    "TCAVResult",
    "Test",
    "check_tcav_options",
    "concept_windows",
    "directional_derivatives",
    "example_activations",
    "layer_cavs",
    "layer_sensitivities",
    "model_fingerprint",
    "sample_pixels",
    "tcav",
    "tcav_concept_significance",
    "tcav_scores",
    "tcav_significance",
    "train_layer_cavs",
]
