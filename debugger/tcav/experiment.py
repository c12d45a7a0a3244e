"""The TCAV experiment: CAVs per layer against random sets, scores per class, significance, the result.

Example:
    >>> from debugger.tcav.examples import ExampleSet
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(3, 2, 1), torch.nn.Flatten(), torch.nn.Linear(2 * 16, 2))
    >>> g = torch.Generator().manual_seed(0)
    >>> res = TCAV(net, "0", runs=2).interpret(torch.rand(4, 3, 4, 4, generator=g), torch.tensor([0, 1, 0, 1]),
    ...                                        {"c": ExampleSet(torch.rand(6, 3, 4, 4, generator=g) + 1)},
    ...                                        ExampleSet(torch.rand(20, 3, 4, 4, generator=g)))
    >>> res.layers, res.concepts, res.classes
    (['0'], ['c'], [0, 1])
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from debugger.capture import resolve_layer
from debugger.fingerprint import model_fingerprint
from debugger.ranking import Correction, adjust_p_values
from debugger.tcav.cache import CAVCache, examples_fingerprint
from debugger.tcav.cav import _CLASSIFIERS, ClassifierName, LayerCAVs, layer_cavs
from debugger.tcav.derivatives import layer_sensitivities
from debugger.tcav.examples import _SPACES, ExampleSet, Space, example_activations
from debugger.tcav.scores import tcav_concept_significance, tcav_scores, tcav_significance

Test = Literal["runs", "concepts"]

__all__ = ["TCAV", "TCAVResult", "Test", "check_tcav_options", "tcav", "train_layer_cavs"]


def check_tcav_options(
    *,
    layers: str | Sequence[str],
    runs: int,
    max_examples: int,
    correction: str,
    significance: float,
    test: str,
    null_concepts: int,
    runs_name: str = "runs",
) -> list[str]:
    """Validate the options :class:`TCAV` and the TCAV monitor share; returns the layer names as a list.

    Raises:
        ValueError: naming the option, what it got and what is accepted.
    """
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"Expected `layers` to be one or more dotted layer names, but got {layers!r}.")
    if not isinstance(runs, int) or isinstance(runs, bool) or runs < 2:
        raise ValueError(f"Expected `{runs_name}` to be an integer >= 2, but got {runs!r}.")
    if correction not in ("none", "bonferroni", "holm"):
        raise ValueError(f"Expected `correction` to be one of ('none', 'bonferroni', 'holm'), but got {correction!r}.")
    if not 0.0 < significance < 1.0:
        raise ValueError(f"Expected `significance` to be in (0, 1), but got {significance!r}.")
    if not isinstance(max_examples, int) or max_examples < 2:
        raise ValueError(f"Expected `max_examples` to be an integer >= 2, but got {max_examples!r}.")
    if test not in ("runs", "concepts"):
        raise ValueError(f"Expected `test` to be one of ('runs', 'concepts'), but got {test!r}.")
    if not isinstance(null_concepts, int) or null_concepts < 2:
        raise ValueError(f"Expected `null_concepts` to be an integer >= 2, but got {null_concepts!r}.")
    return names


@dataclass
class TCAVResult:
    """TCAV scores with their random baselines and significance, for layers × concepts × classes.

    Shape:
        - scores: ``(L, K, C, R)``, concept vs random set ``r``
        - random_scores: ``(L, C, R)``, random vs random
        - p_values, p_adjusted: ``(L, K, C)`` float64 (NaN when undefined), of the chosen ``test``
        - p_runs: ``(L, K, C)`` the test over runs (:func:`tcav_significance`), whatever ``test`` was chosen
        - null_scores: ``(L, K, C, M)`` mean scores of the random null concepts (``test="concepts"``), or None
        - cav_accuracy: ``(L, K, R)``; random_cav_accuracy: ``(L, R)``
        - counts: ``(C,)`` samples (images or pixels) per class

    ``correction`` and ``significance`` (the level below which an adjusted p-value is :attr:`significant`) and
    ``test`` are the settings the p-values were computed with.
    """

    layers: list[str]
    concepts: list[str]
    classes: list[int]
    scores: Tensor
    random_scores: Tensor
    p_values: Tensor
    p_adjusted: Tensor
    cav_accuracy: Tensor
    random_cav_accuracy: Tensor
    counts: Tensor
    correction: str = "none"
    significance: float = 0.05
    test: str = "runs"
    p_runs: Tensor | None = None
    null_scores: Tensor | None = None

    @property
    def mean(self) -> Tensor:
        """``(L, K, C)`` mean TCAV score over the runs."""
        return self.scores.mean(-1)

    @property
    def significant(self) -> Tensor:
        """``(L, K, C)`` bool: adjusted p-value below ``significance``."""
        return self.p_adjusted < self.significance

    def rows(self) -> list[dict[str, Any]]:
        """One flat record per (layer, concept, class)."""
        out = []
        for li, layer in enumerate(self.layers):
            for ki, concept in enumerate(self.concepts):
                for ci, cls in enumerate(self.classes):
                    s, r = self.scores[li, ki, ci], self.random_scores[li, ci]
                    out.append({
                        "layer": layer, "concept": concept, "class": int(cls),
                        "score": _f(s.mean()), "score_std": _f(s.std()) if s.numel() > 1 else 0.0,
                        "random_score": _f(r.mean()), "p_value": _f(self.p_values[li, ki, ci]),
                        "p_runs": _f(self.p_runs[li, ki, ci]) if self.p_runs is not None else None,
                        "null_score": _f(self.null_scores[li, ki, ci].mean()) if self.null_scores is not None
                        else None,
                        "p_adjusted": _f(self.p_adjusted[li, ki, ci]),
                        "significant": bool(self.significant[li, ki, ci]),
                        "cav_accuracy": _f(self.cav_accuracy[li, ki].mean()), "samples": int(self.counts[ci]),
                    })
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: settings, per-run scores and the flat rows (NaN as ``None``)."""
        return {
            "layers": self.layers, "concepts": self.concepts, "classes": self.classes,
            "correction": self.correction, "significance": self.significance, "test": self.test,
            "null_scores": None if self.null_scores is None else _nan_none(self.null_scores),
            "scores": _nan_none(self.scores), "random_scores": _nan_none(self.random_scores),
            "cav_accuracy": _nan_none(self.cav_accuracy), "random_cav_accuracy": _nan_none(self.random_cav_accuracy),
            "counts": self.counts.tolist(), "rows": self.rows(),
        }


def _f(x: Tensor | float) -> float | None:
    v = float(x)
    return None if math.isnan(v) else v


def _nan_none(t: Tensor) -> Any:
    return [_nan_none(x) for x in t] if t.dim() else _f(t)


def _check_cav_options(space: str, classifier: ClassifierName | Any, regularization: float) -> None:
    if space not in _SPACES:
        raise ValueError(f"Expected `space` to be one of {_SPACES!r}, but got {space!r}.")
    if isinstance(classifier, str) and classifier not in _CLASSIFIERS:
        raise ValueError(f"Expected `classifier` to be one of {_CLASSIFIERS!r}, but got {classifier!r}.")
    if not regularization > 0:
        raise ValueError(f"Expected `regularization` to be positive, but got {regularization!r}.")


def train_layer_cavs(
    model: nn.Module,
    layer: str,
    concepts: Mapping[str, ExampleSet],
    random: ExampleSet,
    *,
    space: Space = "pooled",
    embed_mode: Literal["roi", "resample"] = "roi",
    batch_size: int = 32,
    runs: int = 10,
    classifier: ClassifierName | Any = "sgd",
    regularization: float = 0.01,
    max_examples: int = 200,
    null_concepts: int = 0,
    test_fraction: float = 0.33,
    random_state: int = 0,
    cache: CAVCache | None = None,
) -> LayerCAVs:
    """The CAVs of one layer: the example sets' activations (:func:`example_activations`), then :func:`layer_cavs`.

    Example sets that share ``images`` and ``patches`` are embedded once. With a ``cache``, the CAVs are
    fetched when the weights (:func:`debugger.fingerprint.model_fingerprint`), the layer, the examples and every
    setting match, and stored otherwise. The settings are :class:`TCAV`'s; ``null_concepts`` is 0 unless the
    experiment tests against null concepts.

    Raises:
        ValueError: for an unknown layer (with the nearest names), or as :func:`layer_cavs`.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU())
        >>> g = torch.Generator().manual_seed(0)
        >>> cavs = train_layer_cavs(net, "1", {"c": ExampleSet(torch.rand(6, 3, 4, 4, generator=g) + 1)},
        ...                         ExampleSet(torch.rand(20, 3, 4, 4, generator=g)), runs=3)
        >>> tuple(cavs.concept_directions.shape), tuple(cavs.random_accuracy.shape)
        ((1, 3, 4), (3,))
    """
    resolve_layer(model, layer)
    key = None
    if cache is not None:
        key = (
            model_fingerprint(model), layer, space, embed_mode, runs, repr(classifier), regularization, max_examples,
            test_fraction, random_state, null_concepts, examples_fingerprint(random),
            tuple((name, examples_fingerprint(ex)) for name, ex in concepts.items()),
        )
        hit = cache.get(key)
        if hit is not None:
            return hit
    memo: dict[tuple[int, int], Tensor] = {}

    def acts(ex: ExampleSet) -> Tensor:
        k = (id(ex.images), id(ex.patches))
        if k not in memo:
            memo[k] = example_activations(model, layer, ex.images, ex.patches, space=space, mode=embed_mode,
                                          batch_size=batch_size)
        a = memo[k]
        return a[ex.index] if ex.index is not None else a

    pool = acts(random)
    result = layer_cavs(
        {name: acts(ex) for name, ex in concepts.items()}, pool, runs=runs, classifier=classifier,
        regularization=regularization, max_examples=max_examples, null_concepts=null_concepts,
        test_fraction=test_fraction, random_state=random_state,
    )
    if cache is not None and key is not None:
        cache.put(key, result)
    return result


def tcav(
    model: nn.Module,
    layers: str | Sequence[str],
    inputs: Tensor,
    targets: Tensor,
    concepts: Mapping[str, ExampleSet],
    random: ExampleSet,
    *,
    pixels: Tensor | None = None,
    classes: Sequence[int] | None = None,
    deadline: float | None = None,
    runs: int = 10,
    classifier: ClassifierName | Any = "sgd",
    regularization: float = 0.01,
    space: Space = "pooled",
    max_examples: int = 200,
    correction: Correction = "none",
    significance: float = 0.05,
    test: Test = "runs",
    null_concepts: int = 10,
    embed_mode: Literal["roi", "resample"] = "roi",
    batch_size: int = 32,
    test_fraction: float = 0.33,
    random_state: int = 0,
    cache: CAVCache | None = None,
) -> TCAVResult:
    """TCAV scores of every concept for every class and layer, with p-values against random concepts.

    Per layer: :func:`train_layer_cavs`, then one gradient pass (:func:`layer_sensitivities`) for all its CAVs,
    :func:`tcav_scores` per class; then :func:`tcav_significance` (``test="runs"``) or
    :func:`tcav_concept_significance` (``test="concepts"``) and ``correction`` over every p-value of the call.
    The settings after ``deadline`` (``runs`` … ``cache``) are documented at :class:`TCAV`, which holds them.

    Args:
        model: the network (left as it was: eval flags restored, no ``param.grad``, no hooks).
        layers: one dotted layer name or several.
        inputs: the images whose predictions are explained.
        targets: each image's class ``(N,)``, or each pixel slot's class ``(N, P)`` with ``pixels``
            (``-1`` = unused; see :func:`sample_pixels`).
        concepts: concept name → examples.
        random: the random pool the random sets are drawn from.
        pixels: ``(N, P, 2)`` pixel samples for segmentation.
        classes: classes to report (default: every class present in ``targets``).
        deadline: a :func:`time.perf_counter` time after which no further layer is started (the result then
            covers the layers done, at least the first); for time budgets during training.

    Raises:
        ValueError: for invalid settings, if ``concepts`` is empty, or as :func:`train_layer_cavs` and
            :func:`layer_sensitivities`.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.Flatten(), nn.Linear(2 * 16, 2))
        >>> g = torch.Generator().manual_seed(0)
        >>> res = tcav(net, "0", torch.rand(4, 3, 4, 4, generator=g), torch.tensor([0, 1, 0, 1]),
        ...            {"c": ExampleSet(torch.rand(6, 3, 4, 4, generator=g) + 1)},
        ...            ExampleSet(torch.rand(20, 3, 4, 4, generator=g)), runs=3)
        >>> tuple(res.scores.shape)  # (layers, concepts, classes, runs)
        (1, 1, 2, 3)
    """
    names_of_layers = check_tcav_options(layers=layers, runs=runs, max_examples=max_examples, correction=correction,
                                         significance=significance, test=test, null_concepts=null_concepts)
    _check_cav_options(space, classifier, regularization)
    if not concepts:
        raise ValueError("Expected at least one concept in `concepts`, but got none.")
    if not isinstance(targets, Tensor):
        raise ValueError(f"Expected `targets` to be an integer tensor, but got {type(targets).__name__}.")
    cls = sorted({int(c) for c in targets.unique().tolist() if c >= 0}) if classes is None else list(classes)
    if not cls:
        raise ValueError("Expected at least one class to score, but `targets` holds none.")
    names = list(concepts)
    k, r = len(names), runs
    scores, rscores, nscores, caccs, raccs = [], [], [], [], []
    counts = torch.zeros(len(cls), dtype=torch.long)
    done: list[str] = []
    for layer in names_of_layers:
        if done and deadline is not None and time.perf_counter() > deadline:
            break
        done.append(layer)
        cavs = train_layer_cavs(
            model, layer, concepts, random, space=space, embed_mode=embed_mode, batch_size=batch_size, runs=runs,
            classifier=classifier, regularization=regularization, max_examples=max_examples,
            null_concepts=null_concepts if test == "concepts" else 0, test_fraction=test_fraction,
            random_state=random_state, cache=cache,
        )
        m = cavs.null_directions.shape[1]
        f = cavs.random_directions.shape[1]
        all_dirs = torch.cat([cavs.concept_directions.reshape(k * r, f), cavs.random_directions,
                              cavs.null_directions.reshape(k * m * r, f)])
        d = layer_sensitivities(model, layer, inputs, all_dirs, targets, pixels, batch_size)
        s, counts = tcav_scores(d.cpu(), targets.cpu(), cls)  # (C, K*R + R + K*M*R)
        scores.append(s[:, : k * r].reshape(len(cls), k, r).permute(1, 0, 2))
        rscores.append(s[:, k * r : k * r + r])
        nscores.append(s[:, k * r + r :].reshape(len(cls), k, m, r).permute(1, 0, 2, 3))
        caccs.append(cavs.concept_accuracy)
        raccs.append(cavs.random_accuracy)
    sc = torch.stack(scores)  # (L, K, C, R)
    rs = torch.stack(rscores)  # (L, C, R)
    ns = torch.stack(nscores)  # (L, K, C, M, R)
    p_runs = tcav_significance(sc, rs[:, None])
    p = tcav_concept_significance(sc, ns) if test == "concepts" else p_runs
    adjusted = adjust_p_values(p.flatten(), correction).reshape(p.shape)
    return TCAVResult(
        layers=done, concepts=names, classes=cls, scores=sc, random_scores=rs, p_values=p,
        p_adjusted=adjusted, cav_accuracy=torch.stack(caccs), random_cav_accuracy=torch.stack(raccs),
        counts=counts, correction=correction, significance=significance, test=test, p_runs=p_runs,
        null_scores=ns.mean(-1) if test == "concepts" else None,
    )


class TCAV:
    """TCAV with significance testing: ``TCAV(model, layers).interpret(inputs, targets, concepts, random)``.

    For each layer, each concept is set against ``runs`` random subsets of the random pool (each the size of
    the concept set, at most ``max_examples``), and a further random subset against the same ``runs`` subsets
    gives the chance-level scores. The two-sided t-test between the concept's and the random runs' scores per
    class gives the p-value; ``correction`` adjusts the p-values of one call for the number of tests
    (layers × concepts × classes). All CAVs of a layer share one gradient pass over the inputs.

    Args:
        model: the network (left as it was: eval flags restored, no ``param.grad``, no hooks).
        layers: one dotted layer name or several.
        runs: CAVs per concept and random-vs-random CAVs (≥ 2; the paper's significance uses ≥ 10).
        classifier: see :class:`CAV`.
        regularization: the CAV classifier's regularisation strength (see :class:`CAV`).
        space: ``"pooled"`` (channel CAVs from pooled activations) or ``"flat"`` (flattened maps; images only).
        max_examples: cap on the examples per concept set (a seeded subsample beyond it).
        correction: ``"none"``, ``"bonferroni"`` or ``"holm"`` (see :func:`debugger.ranking.adjust_p_values`).
        significance: level below which an adjusted p-value is significant.
        test: ``"runs"`` (Kim et al. and captum: t-test between the concept's runs and the random-vs-random runs;
            anti-conservative, as its runs share one concept set) or ``"concepts"`` (the concept's mean score
            against ``null_concepts`` random example sets of its size, :func:`tcav_concept_significance`).
        null_concepts: random "concepts" for ``test="concepts"`` (each costs ``runs`` more CAVs).
        embed_mode: patch embedding mode (see :func:`debugger.embed.embed_patches`).
        batch_size: images per forward.
        test_fraction: held-out share for CAV accuracy.
        random_state: seeds random subsets and classifiers.
        cache: a :class:`CAVCache` shared across calls (CAVs are re-trained whenever the weights change).

    Raises:
        ValueError: for invalid options (at construction), unknown layers, empty or too-small example sets.
    """

    def __init__(
        self,
        model: nn.Module,
        layers: str | Sequence[str],
        runs: int = 10,
        classifier: ClassifierName | Any = "sgd",
        regularization: float = 0.01,
        space: Space = "pooled",
        max_examples: int = 200,
        correction: Correction = "none",
        significance: float = 0.05,
        test: Test = "runs",
        null_concepts: int = 10,
        embed_mode: Literal["roi", "resample"] = "roi",
        batch_size: int = 32,
        test_fraction: float = 0.33,
        random_state: int = 0,
        cache: CAVCache | None = None,
    ) -> None:
        names = check_tcav_options(layers=layers, runs=runs, max_examples=max_examples, correction=correction,
                                   significance=significance, test=test, null_concepts=null_concepts)
        _check_cav_options(space, classifier, regularization)
        self.model = model
        self.layers = names
        self.runs = runs
        self.classifier = classifier
        self.regularization = regularization
        self.space: Space = space
        self.max_examples = max_examples
        self.correction: Correction = correction
        self.significance = significance
        self.test: Test = test
        self.null_concepts = null_concepts
        self.embed_mode: Literal["roi", "resample"] = embed_mode
        self.batch_size = batch_size
        self.test_fraction = test_fraction
        self.random_state = random_state
        self.cache = cache

    def cavs(self, layer: str, concepts: Mapping[str, ExampleSet], random: ExampleSet) -> LayerCAVs:
        """Train (or fetch from the cache) one layer's CAVs as :meth:`interpret` does (:func:`train_layer_cavs`)."""
        return train_layer_cavs(
            self.model, layer, concepts, random, space=self.space, embed_mode=self.embed_mode,
            batch_size=self.batch_size, runs=self.runs, classifier=self.classifier, regularization=self.regularization,
            max_examples=self.max_examples, null_concepts=self.null_concepts if self.test == "concepts" else 0,
            test_fraction=self.test_fraction, random_state=self.random_state, cache=self.cache,
        )

    def interpret(
        self,
        inputs: Tensor,
        targets: Tensor,
        concepts: Mapping[str, ExampleSet],
        random: ExampleSet,
        pixels: Tensor | None = None,
        classes: Sequence[int] | None = None,
        deadline: float | None = None,
    ) -> TCAVResult:
        """TCAV scores of every concept for every class and layer, with p-values against random concepts.

        The arguments are :func:`tcav`'s, the settings this object's.

        Raises:
            ValueError: if ``concepts`` is empty, or as :meth:`cavs` and :func:`layer_sensitivities`.
        """
        return tcav(
            self.model, self.layers, inputs, targets, concepts, random, pixels=pixels, classes=classes,
            deadline=deadline, runs=self.runs, classifier=self.classifier, regularization=self.regularization,
            space=self.space, max_examples=self.max_examples, correction=self.correction,
            significance=self.significance, test=self.test, null_concepts=self.null_concepts,
            embed_mode=self.embed_mode, batch_size=self.batch_size, test_fraction=self.test_fraction,
            random_state=self.random_state, cache=self.cache,
        )
