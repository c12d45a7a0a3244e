"""CAV training: a linear classifier separates concept from random activations; its unit normal is the CAV.

The classifier is scikit-learn's (``"sgd"`` as captum's default, ``"logistic"``, or any unfitted linear
estimator, cloned before fitting).

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> cav = CAV().fit(torch.randn(20, 3, generator=g) + 6.0, torch.randn(20, 3, generator=g))
    >>> cav.accuracy_
    1.0
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

ClassifierName = Literal["sgd", "logistic"]
_CLASSIFIERS = ("sgd", "logistic")

__all__ = ["CAV", "ClassifierName", "LayerCAVs", "layer_cavs"]


def _make_classifier(classifier: ClassifierName | Any, regularization: float, random_state: int) -> Any:
    if isinstance(classifier, str):
        if classifier == "sgd":
            from sklearn.linear_model import SGDClassifier

            return SGDClassifier(alpha=regularization, max_iter=1000, tol=1e-3, random_state=random_state)
        if classifier == "logistic":
            from sklearn.linear_model import LogisticRegression

            return LogisticRegression(C=1.0 / regularization, max_iter=1000)
        raise ValueError(
            f"Expected `classifier` to be one of {_CLASSIFIERS!r} or a scikit-learn linear classifier, "
            f"but got {classifier!r}."
        )
    if not hasattr(classifier, "fit"):
        raise ValueError(
            f"Expected `classifier` to be one of {_CLASSIFIERS!r} or a scikit-learn linear classifier, "
            f"but got {type(classifier).__name__}."
        )
    from sklearn.base import clone

    return clone(classifier)


class CAV:
    """A concept activation vector: the unit normal of a linear boundary between concept and random activations.

    Nothing happens in ``__init__``; :meth:`fit` trains the classifier (concept = label 1, random = label 0) on
    a stratified split and keeps the held-out accuracy. ``direction_`` points towards the concept.

    Args:
        classifier: ``"sgd"`` (:class:`sklearn.linear_model.SGDClassifier`, hinge loss, as captum's default),
            ``"logistic"`` (:class:`~sklearn.linear_model.LogisticRegression` with ``C = 1 / regularization``), or an
            unfitted scikit-learn linear classifier with ``coef_`` (cloned before fitting).
        regularization: the classifier's regularisation strength (SGD's ``alpha``).
        test_fraction: share of the examples held out for ``accuracy_``; 0 scores on the training examples.
        random_state: seeds the split and the SGD shuffling.

    Attributes:
        direction_: ``(F,)`` float32 unit vector.
        intercept_: the boundary's offset in units of ``direction_`` (``w·x + b = 0`` with ``|w| = 1``).
        accuracy_: held-out accuracy of the classifier.
        classifier_: the fitted scikit-learn estimator.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> concept = torch.randn(20, 3, generator=g) + torch.tensor([6.0, 0, 0])
        >>> cav = CAV().fit(concept, torch.randn(20, 3, generator=g))
        >>> bool(cav.direction_[0] > 0.9), cav.accuracy_
        (True, 1.0)
    """

    def __init__(
        self,
        classifier: ClassifierName | Any = "sgd",
        regularization: float = 0.01,
        test_fraction: float = 0.33,
        random_state: int = 0,
    ) -> None:
        self.classifier = classifier
        self.regularization = regularization
        self.test_fraction = test_fraction
        self.random_state = random_state

    def fit(self, concept: Tensor, random: Tensor) -> CAV:
        """Train on ``concept`` vs ``random`` activations; returns ``self``.

        Shape:
            - concept: ``(n_c, F)``; random: ``(n_r, F)``

        Raises:
            ValueError: if either set has fewer than 2 examples, they differ in feature size or are not 2-D,
                ``regularization`` is not positive, ``test_fraction`` is outside ``[0, 0.9]``, or ``classifier`` is not
                a valid option.
        """
        if not self.regularization > 0:
            raise ValueError(f"Expected `regularization` to be positive, but got {self.regularization!r}.")
        if not 0.0 <= self.test_fraction <= 0.9:
            raise ValueError(f"Expected `test_fraction` to be in [0, 0.9], but got {self.test_fraction!r}.")
        for name, t in (("concept", concept), ("random", random)):
            if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[0] < 2:
                shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"Expected `{name}` activations of shape (n >= 2, F), but got {shape!r}.")
        if concept.shape[1] != random.shape[1]:
            raise ValueError(
                f"Expected concept and random activations of one feature size, but got {concept.shape[1]} "
                f"and {random.shape[1]}."
            )
        from sklearn.model_selection import train_test_split

        x = torch.cat([concept, random]).detach().double().cpu().numpy()
        y = np.concatenate([np.ones(concept.shape[0], dtype=np.int64), np.zeros(random.shape[0], dtype=np.int64)])
        n_test = math.ceil(self.test_fraction * len(y)) if self.test_fraction > 0 else 0
        if n_test >= 2 and len(y) - n_test >= 2:
            x_tr, x_te, y_tr, y_te = train_test_split(
                x, y, test_size=n_test, stratify=y, random_state=self.random_state
            )
        else:
            x_tr, x_te, y_tr, y_te = x, x, y, y
        clf = _make_classifier(self.classifier, self.regularization, self.random_state)
        clf.fit(x_tr, y_tr)
        coef = np.asarray(getattr(clf, "coef_", None), dtype=np.float64).reshape(-1)
        if coef.shape[0] != x.shape[1]:
            raise ValueError(
                f"Expected a binary linear classifier with coef_ of {x.shape[1]} weights, but got {coef.shape[0]}."
            )
        if list(clf.classes_) != [0, 1]:  # pragma: no cover - sklearn sorts the labels
            raise RuntimeError(f"Unexpected class order {clf.classes_!r}.")
        norm = float(np.linalg.norm(coef))
        self.classifier_ = clf
        self.direction_ = torch.from_numpy(coef / norm if norm > 0 else coef).float()
        self.intercept_ = float(np.asarray(clf.intercept_).reshape(-1)[0]) / norm if norm > 0 else 0.0
        self.accuracy_ = float((clf.predict(x_te) == y_te).mean())
        return self


@dataclass(frozen=True)
class LayerCAVs:
    """The CAVs of one layer: each concept's against ``R`` random sets, random-vs-random, and null concepts'.

    Shape:
        - concept_directions: ``(K, R, F)``, concept ``k`` vs random set ``r``
        - concept_accuracy: ``(K, R)``
        - random_directions: ``(R, F)``, a further random set vs random set ``r``
        - random_accuracy: ``(R,)``
        - null_directions: ``(K, M, R, F)``, ``M`` random "concepts" of concept ``k``'s size vs random set ``r``
          (``M = 0`` unless the experiment tests against null concepts)
    """

    concept_directions: Tensor
    concept_accuracy: Tensor
    random_directions: Tensor
    random_accuracy: Tensor
    null_directions: Tensor


def layer_cavs(
    concepts: Mapping[str, Tensor],
    random: Tensor,
    *,
    runs: int = 10,
    classifier: ClassifierName | Any = "sgd",
    regularization: float = 0.01,
    max_examples: int = 200,
    null_concepts: int = 0,
    test_fraction: float = 0.33,
    random_state: int = 0,
) -> LayerCAVs:
    """Every CAV of one layer, from activations: each concept vs random sets, random vs random, null concepts.

    A concept set larger than ``max_examples`` is subsampled. ``runs + 1`` random subsets are drawn from
    ``random``, each the size of the largest concept set (at most ``max_examples``): concept vs subset ``r + 1``
    gives the concept's CAV of run ``r``, subset 0 vs subset ``r + 1`` the random one. With ``null_concepts = M``
    above 0, ``M`` random example sets of each concept's size stand in for the concept against the same subsets.
    The subsets, the concept subsamples and the null sets come from three generators (seeded ``random_state``,
    ``+ 1`` and ``+ 2``), so the random sets do not depend on which concepts are tested alongside; run ``r``'s
    classifier is seeded with ``random_state + r``.

    Shape:
        - concepts: name → ``(n_k, F)``; random: ``(n, F)``
        - output: see :class:`LayerCAVs`

    Raises:
        ValueError: if ``runs`` is not a positive integer or ``null_concepts`` a non-negative one, a concept has
            fewer than 2 examples, ``random`` fewer than 4, or as :meth:`CAV.fit`.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> cavs = layer_cavs({"c": torch.randn(8, 3, generator=g) + 4}, torch.randn(30, 3, generator=g), runs=2)
        >>> tuple(cavs.concept_directions.shape), tuple(cavs.null_directions.shape)
        ((1, 2, 3), (1, 0, 2, 3))
    """
    if not isinstance(runs, int) or isinstance(runs, bool) or runs < 1:
        raise ValueError(f"Expected `runs` to be a positive integer, but got {runs!r}.")
    if not isinstance(null_concepts, int) or isinstance(null_concepts, bool) or null_concepts < 0:
        raise ValueError(f"Expected `null_concepts` to be a non-negative integer, but got {null_concepts!r}.")
    g = torch.Generator().manual_seed(random_state)
    g_concepts = torch.Generator().manual_seed(random_state + 1)
    concept_acts = {}
    for name, a in concepts.items():
        if a.shape[0] > max_examples:
            a = a[torch.randperm(a.shape[0], generator=g_concepts)[:max_examples]]
        if a.shape[0] < 2:
            raise ValueError(f"Expected at least 2 examples of concept {name!r}, but got {a.shape[0]}.")
        concept_acts[name] = a
    sizes = [a.shape[0] for a in concept_acts.values()]
    m = min(max(sizes, default=2), max_examples, random.shape[0])
    if random.shape[0] < 4 or m < 2:
        raise ValueError(f"Expected at least 4 random examples, but got {random.shape[0]}.")
    subsets = [random[torch.randperm(random.shape[0], generator=g)[:m]] for _ in range(runs + 1)]

    def fit(pos: Tensor, r: int) -> CAV:
        return CAV(classifier=classifier, regularization=regularization, test_fraction=test_fraction,
                   random_state=random_state + r).fit(pos, subsets[r + 1])

    dirs, accs = [], []
    for a in concept_acts.values():
        fitted = [fit(a, r) for r in range(runs)]
        dirs.append(torch.stack([cav.direction_ for cav in fitted]))
        accs.append(torch.tensor([cav.accuracy_ for cav in fitted]))
    rand = [fit(subsets[0], r) for r in range(runs)]
    f = random.shape[1]
    null = torch.zeros(len(concept_acts), 0, runs, f)
    if null_concepts > 0:
        g_null = torch.Generator().manual_seed(random_state + 2)
        by_size: dict[int, Tensor] = {}
        for size in sorted(set(sizes)):
            sets = [random[torch.randperm(random.shape[0], generator=g_null)[:size]] for _ in range(null_concepts)]
            by_size[size] = torch.stack([torch.stack([fit(fake, r).direction_ for r in range(runs)]) for fake in sets])
        null = torch.stack([by_size[size] for size in sizes])
    return LayerCAVs(
        concept_directions=torch.stack(dirs) if dirs else torch.zeros(0, runs, f),
        concept_accuracy=torch.stack(accs) if accs else torch.zeros(0, runs),
        random_directions=torch.stack([cav.direction_ for cav in rand]),
        random_accuracy=torch.tensor([cav.accuracy_ for cav in rand]),
        null_directions=null,
    )
