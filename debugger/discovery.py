"""Unsupervised concept discovery over patch embeddings: k-means (ACE) and NMF.

The steps, in order:

1. **Near-duplicates** are collapsed (ACE): embeddings that agree up to ``dedup_tol`` (relative to the
   typical embedding norm) are fitted once; every duplicate gets its representative's assignment and scores.
2. **k** is chosen, when not given, by the silhouette score of a fit on a random subsample
   (``search_sample`` rows, silhouette on ``silhouette_sample`` of them) for every k in ``k_range``.
3. The final fit on all unique rows: k-means (``MiniBatchKMeans`` above ``minibatch_above`` rows) or NMF
   (``MiniBatchNMF`` above ten times that; NMF needs non-negative embeddings, e.g. after a ReLU).
4. **Scores** for every patch and cluster: the negative Euclidean distance to the centroid (k-means) or the
   NMF coefficient times the component's norm (NMF). A patch belongs to its best-scoring cluster.
5. **Outliers** (ACE keeps only the patches nearest each centre): a member whose score falls more than
   ``outlier_mad`` scaled median absolute deviations below its cluster's median is dropped from the members
   (it keeps its scores). Clusters with fewer than ``min_size`` members or drawn from fewer than
   ``min_images`` distinct images are dropped entirely (ACE's infrequent concepts).

Concepts are numbered by size, largest first, and named ``cluster-<id>`` (rename them freely). Each one's
coherence is the mean silhouette of its members in a stratified sample: high when the cluster is tight and
apart from the others.

Example:
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.cat([torch.randn(30, 4, generator=g) + 8, torch.randn(30, 4, generator=g) - 8])
    >>> concepts = discover_concepts(x, n_concepts=2, outlier_mad=float("inf"))
    >>> sorted(len(c.members) for c in concepts), concepts[0].name
    ([30, 30], 'cluster-0')
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from debugger.structures import Concept, PatchSet

Method = Literal["kmeans", "nmf"]

__all__ = [
    "ConceptDiscovery",
    "concept_precision",
    "dedup_rows",
    "discover_concepts",
    "select_k",
]


def _as_numpy(x: Tensor | np.ndarray, name: str = "embeddings") -> np.ndarray:
    arr = x.detach().cpu().float().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise ValueError(f"Expected `{name}` to be a 2-D (P, D) array, but got shape {tuple(arr.shape)!r}.")
    if arr.shape[0] == 0:
        raise ValueError(f"Expected `{name}` to hold at least one row, but got an empty probe set (P = 0).")
    if not np.isfinite(arr).all():
        raise ValueError(f"Expected `{name}` to be finite, but got NaN or infinite values.")
    return np.ascontiguousarray(arr, dtype=np.float32)


def dedup_rows(x: np.ndarray, tol: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Collapse rows equal up to ``tol`` times the median row norm (round to that grid, then hash the rows).

    Rows that differ by much less than the grid step can still land in neighbouring cells; the result is a
    cheap approximation of near-duplicate removal, exact for exact duplicates.

    Linear-time apart from one sort of row hashes, so it scales to 10⁵–10⁶ rows. ``tol <= 0`` removes
    only exact duplicates.

    Returns:
        ``(representatives, inverse)``: indices of the kept rows, and for every row the position of its
        representative in ``representatives``.

    Example:
        >>> reps, inv = dedup_rows(np.array([[0., 1.], [0., 1.], [5., 5.]]))
        >>> reps.tolist(), inv.tolist()
        ([0, 2], [0, 0, 1])
    """
    if tol > 0:
        scale = float(np.median(np.linalg.norm(x, axis=1))) or 1.0
        q = np.rint(x / (tol * scale)).astype(np.int64)
    else:
        q = x
    rows = np.ascontiguousarray(q).view(np.dtype((np.void, q.dtype.itemsize * q.shape[1]))).ravel()
    _, first, inverse = np.unique(rows, return_index=True, return_inverse=True)
    # Keep representatives in first-seen order so results do not depend on hash order.
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse.ravel()]


def _kmeans(k: int, n: int, seed: int, minibatch_above: int) -> Any:
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if n > minibatch_above:
        return MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3, batch_size=2048, max_no_improvement=20)
    return KMeans(n_clusters=k, random_state=seed, n_init=4)


def _nmf(k: int, n: int, seed: int, minibatch_above: int) -> Any:
    from sklearn.decomposition import NMF, MiniBatchNMF

    if n > 10 * minibatch_above:  # coordinate-descent NMF stays fast (linear in n) much longer than k-means
        return MiniBatchNMF(n_components=k, random_state=seed, init="nndsvda", batch_size=2048, max_iter=200)
    return NMF(n_components=k, random_state=seed, init="nndsvda", max_iter=400)


def _fit_scores(x: np.ndarray, method: Method, k: int, seed: int, minibatch_above: int) -> tuple[Any, np.ndarray]:
    """Fit one model; return it and the ``(n, k)`` scores (higher = more of the cluster)."""
    if method == "kmeans":
        model = _kmeans(k, len(x), seed, minibatch_above).fit(x)
        return model, -_distances(x, model.cluster_centers_)
    model = _nmf(k, len(x), seed, minibatch_above)
    w = model.fit_transform(x)
    return model, w * np.linalg.norm(model.components_, axis=1)[None, :]


def _distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    d2 = (x * x).sum(1)[:, None] - 2 * x @ centers.T + (centers * centers).sum(1)[None, :]
    return np.sqrt(np.maximum(d2, 0.0))


def _model_scores(model: Any, x: np.ndarray, method: Method) -> np.ndarray:
    if method == "kmeans":
        return -_distances(x, model.cluster_centers_)
    return model.transform(x) * np.linalg.norm(model.components_, axis=1)[None, :]


def select_k(
    embeddings: Tensor | np.ndarray,
    k_range: tuple[int, int] = (2, 12),
    method: Method = "kmeans",
    search_sample: int = 5000,
    silhouette_sample: int = 2000,
    seed: int = 0,
    minibatch_above: int = 10000,
) -> tuple[int, dict[int, float]]:
    """Choose the number of clusters by silhouette score (fits on a subsample; silhouette on a smaller one).

    For NMF the clusters are the argmax coefficients. Ties go to the smaller k.

    Returns:
        The chosen k and the silhouette score of every k tried (NaN when a fit gave a single cluster).

    Raises:
        ValueError: for an invalid range or fewer rows than the smallest k + 1.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.cat([torch.randn(20, 2, generator=g) + c for c in (0, 10, 20)])
        >>> select_k(x, (2, 5))[0]
        3
    """
    from sklearn.metrics import silhouette_score

    x = _as_numpy(embeddings)
    lo, hi = k_range
    if lo < 2 or hi < lo:
        raise ValueError(f"Expected `k_range` to be (low, high) with 2 <= low <= high, but got {k_range!r}.")
    if len(x) <= lo:
        raise ValueError(f"Expected more than {lo} embeddings to choose k in {k_range!r}, but got {len(x)}.")
    rng = np.random.default_rng(seed)
    sub = x[rng.choice(len(x), search_sample, replace=False)] if len(x) > search_sample else x
    sil_idx = rng.choice(len(sub), silhouette_sample, replace=False) if len(sub) > silhouette_sample else None
    scores: dict[int, float] = {}
    for k in range(lo, min(hi, len(sub) - 1) + 1):
        _, s = _fit_scores(sub, method, k, seed, minibatch_above)
        labels = s.argmax(1)
        xs, ls = (sub, labels) if sil_idx is None else (sub[sil_idx], labels[sil_idx])
        scores[k] = float(silhouette_score(xs, ls)) if len(np.unique(ls)) > 1 else float("nan")
    valid = {k: v for k, v in scores.items() if not math.isnan(v)}
    best = max(valid, key=lambda k: (valid[k], -k)) if valid else lo
    return best, scores


def _outlier_members(scores: np.ndarray, mad_factor: float) -> np.ndarray:
    """Boolean mask of members to keep: not more than ``mad_factor`` scaled MADs below the median score."""
    if not math.isfinite(mad_factor) or len(scores) < 3:
        return np.ones(len(scores), dtype=bool)
    med = np.median(scores)
    mad = 1.4826 * np.median(np.abs(scores - med))
    if mad == 0:
        return np.ones(len(scores), dtype=bool)
    return scores >= med - mad_factor * mad


def _coherence(x: np.ndarray, labels: np.ndarray, clusters: list[int], per_cluster: int, seed: int) -> dict[int, float]:
    from sklearn.metrics import silhouette_samples

    rng = np.random.default_rng(seed)
    picks = []
    for c in clusters:
        idx = np.flatnonzero(labels == c)
        picks.append(rng.choice(idx, per_cluster, replace=False) if len(idx) > per_cluster else idx)
    idx = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
    lab = labels[idx]
    if len(np.unique(lab)) < 2 or len(idx) < 3:
        return {c: float("nan") for c in clusters}
    sil = silhouette_samples(x[idx], lab)
    return {c: float(sil[lab == c].mean()) for c in clusters}


@dataclass
class _Fit:
    method: Method
    model: Any
    k: int
    silhouette: dict[int, float]
    kept: list[int]  # original cluster indices kept, in concept-id order
    labels: np.ndarray  # (P,) concept id or -1
    scores: np.ndarray  # (P, len(kept))
    representatives: np.ndarray
    inverse: np.ndarray
    concepts: list[Concept]


def _fit(
    embeddings: Tensor | np.ndarray,
    *,
    method: Method,
    n_concepts: int | None,
    k_range: tuple[int, int],
    image_index: Tensor | np.ndarray | None,
    min_size: int,
    min_images: int,
    outlier_mad: float,
    dedup_tol: float | None,
    search_sample: int,
    silhouette_sample: int,
    minibatch_above: int,
    coherence_sample: int,
    seed: int,
) -> _Fit:
    if method not in ("kmeans", "nmf"):
        raise ValueError(f"Expected `method` to be one of 'kmeans', 'nmf', but got {method!r}.")
    x_all = _as_numpy(embeddings)
    p = len(x_all)
    if method == "nmf" and float(x_all.min()) < 0:
        raise ValueError(
            f"Expected non-negative embeddings for NMF (e.g. a layer after a ReLU), but got a minimum of "
            f"{float(x_all.min()):.4g}; use method='kmeans' or a non-negative layer."
        )
    images: np.ndarray | None = None
    if image_index is not None:
        images = (image_index.cpu().numpy() if isinstance(image_index, Tensor) else np.asarray(image_index)).ravel()
        if len(images) != p:
            raise ValueError(f"Expected `image_index` to have one entry per embedding ({p}), but got {len(images)}.")
    if n_concepts is not None and (not isinstance(n_concepts, int) or n_concepts < 1):
        raise ValueError(f"Expected `n_concepts` to be None or a positive integer, but got {n_concepts!r}.")
    if dedup_tol is None:
        reps, inverse = np.arange(p), np.arange(p)
    else:
        reps, inverse = dedup_rows(x_all, dedup_tol)
    x = x_all[reps]
    if n_concepts is None:
        k, sil = select_k(x, k_range, method, search_sample, silhouette_sample, seed, minibatch_above)
    else:
        k, sil = n_concepts, {}
    if len(x) < k:
        raise ValueError(f"Expected at least {k} distinct embeddings for {k} concepts, but got {len(x)}.")
    model, rep_scores = _fit_scores(x, method, k, seed, minibatch_above)
    scores = rep_scores[inverse]  # (P, k): duplicates share their representative's scores
    raw_labels = scores.argmax(1)
    if method == "nmf":
        raw_labels = np.where(scores.max(1) > 0, raw_labels, -1)  # all-zero coefficients: no concept

    candidates: list[tuple[int, np.ndarray]] = []
    for c in range(k):
        members = np.flatnonzero(raw_labels == c)
        if len(members) == 0:
            continue
        members = members[_outlier_members(scores[members, c], outlier_mad)]
        n_images = len(np.unique(images[members])) if images is not None else len(members)
        if len(members) >= min_size and n_images >= min_images:
            candidates.append((c, members))
    candidates.sort(key=lambda cm: (-len(cm[1]), cm[0]))
    kept = [c for c, _ in candidates]
    labels = np.full(p, -1, dtype=np.int64)
    for cid, (_, members) in enumerate(candidates):
        labels[members] = cid
    coherence = _coherence(x_all, labels, list(range(len(kept))), coherence_sample, seed)
    concepts = []
    for cid, (c, members) in enumerate(candidates):
        meta: dict[str, Any] = {
            "method": method,
            "cluster": int(c),
            "size": len(members),
            "k": int(k),
        }
        if images is not None:
            meta["n_images"] = int(len(np.unique(images[members])))
        concepts.append(
            Concept(
                id=cid,
                name=f"cluster-{cid}",
                members=torch.from_numpy(members.astype(np.int64)),
                scores=torch.from_numpy(scores[:, c].astype(np.float32)),
                coherence=coherence[cid],
                meta=meta,
            )
        )
    return _Fit(method, model, int(k), sil, kept, labels, scores[:, kept], reps, inverse, concepts)


def discover_concepts(
    embeddings: Tensor | np.ndarray,
    method: Method = "kmeans",
    n_concepts: int | None = None,
    k_range: tuple[int, int] = (2, 12),
    image_index: Tensor | np.ndarray | None = None,
    min_size: int = 5,
    min_images: int = 1,
    outlier_mad: float = 3.0,
    dedup_tol: float | None = 1e-3,
    search_sample: int = 5000,
    silhouette_sample: int = 2000,
    minibatch_above: int = 10000,
    coherence_sample: int = 200,
    seed: int = 0,
) -> list[Concept]:
    """Discover concepts in patch embeddings; see the module docstring for the algorithm.

    Args:
        embeddings: one row per patch.
        method: ``"kmeans"`` or ``"nmf"`` (non-negative embeddings only).
        n_concepts: number of clusters; None chooses it by silhouette within ``k_range``.
        k_range: inclusive range of k tried when ``n_concepts`` is None.
        image_index: source image of each patch (``PatchSet.image_index``), for ``min_images``.
        min_size: clusters with fewer members (after outlier removal) are dropped.
        min_images: clusters drawn from fewer distinct images are dropped (needs ``image_index``).
        outlier_mad: members more than this many scaled MADs below their cluster's median score are dropped;
            ``float("inf")`` keeps all.
        dedup_tol: near-duplicate tolerance relative to the median embedding norm; None disables.
        search_sample: rows used to fit each candidate k.
        silhouette_sample: rows used for each silhouette score.
        minibatch_above: use mini-batch k-means above this many (unique) rows (mini-batch NMF above 10×).
        coherence_sample: members per concept used to estimate its coherence.
        seed: seeds every random choice (subsamples, initialisation).

    Shape:
        - embeddings: ``(P, D)``
        - image_index: ``(P,)``

    Returns:
        Concepts, largest first, each with ``scores`` over all P patches.

    Raises:
        ValueError: for an empty or non-2-D input, non-finite values, negative values with NMF, an unknown
            method, a mismatched ``image_index``, or fewer distinct embeddings than concepts.
    """
    return _fit(
        embeddings, method=method, n_concepts=n_concepts, k_range=k_range, image_index=image_index,
        min_size=min_size, min_images=min_images, outlier_mad=outlier_mad, dedup_tol=dedup_tol,
        search_sample=search_sample, silhouette_sample=silhouette_sample, minibatch_above=minibatch_above,
        coherence_sample=coherence_sample, seed=seed,
    ).concepts


class ConceptDiscovery:
    """scikit-learn-style concept discovery: configure, ``fit(embeddings)``, read the ``_`` attributes.

    Arguments are those of :func:`discover_concepts`; nothing happens until :meth:`fit`.

    Attributes:
        concepts_: the discovered :class:`~debugger.structures.Concept` list, largest first.
        labels_: ``(P,)`` concept id of each patch, -1 for outliers and dropped clusters.
        scores_: ``(P, n_concepts_)`` score of every patch for every concept.
        n_concepts_: number of concepts kept.
        k_: number of clusters fitted (before dropping small or infrequent ones).
        silhouette_: silhouette score per k tried (empty when ``n_concepts`` was given).
        estimator_: the fitted scikit-learn estimator (KMeans/MiniBatchKMeans or NMF/MiniBatchNMF).
        representatives_: indices of the rows fitted after near-duplicate removal.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> x = torch.cat([torch.randn(30, 4, generator=g) + 8, torch.randn(30, 4, generator=g) - 8])
        >>> d = ConceptDiscovery(k_range=(2, 4), min_size=2).fit(x)
        >>> d.k_, d.predict(torch.full((1, 4), 8.0)).tolist()
        (2, [0])
    """

    def __init__(
        self,
        method: Method = "kmeans",
        n_concepts: int | None = None,
        k_range: tuple[int, int] = (2, 12),
        min_size: int = 5,
        min_images: int = 1,
        outlier_mad: float = 3.0,
        dedup_tol: float | None = 1e-3,
        search_sample: int = 5000,
        silhouette_sample: int = 2000,
        minibatch_above: int = 10000,
        coherence_sample: int = 200,
        seed: int = 0,
    ) -> None:
        self.method: Method = method
        self.n_concepts = n_concepts
        self.k_range = k_range
        self.min_size = min_size
        self.min_images = min_images
        self.outlier_mad = outlier_mad
        self.dedup_tol = dedup_tol
        self.search_sample = search_sample
        self.silhouette_sample = silhouette_sample
        self.minibatch_above = minibatch_above
        self.coherence_sample = coherence_sample
        self.seed = seed

    def fit(
        self, embeddings: Tensor | np.ndarray, image_index: Tensor | np.ndarray | PatchSet | None = None
    ) -> ConceptDiscovery:
        """Fit on ``(P, D)`` embeddings; ``image_index`` may be the :class:`PatchSet` itself. Returns self."""
        if isinstance(image_index, PatchSet):
            image_index = image_index.image_index
        fit = _fit(
            embeddings, method=self.method, n_concepts=self.n_concepts, k_range=self.k_range, image_index=image_index,
            min_size=self.min_size, min_images=self.min_images, outlier_mad=self.outlier_mad,
            dedup_tol=self.dedup_tol, search_sample=self.search_sample, silhouette_sample=self.silhouette_sample,
            minibatch_above=self.minibatch_above, coherence_sample=self.coherence_sample, seed=self.seed,
        )
        self.concepts_ = fit.concepts
        self.labels_ = torch.from_numpy(fit.labels)
        self.scores_ = torch.from_numpy(fit.scores.astype(np.float32))
        self.n_concepts_ = len(fit.concepts)
        self.k_ = fit.k
        self.silhouette_ = fit.silhouette
        self.estimator_ = fit.model
        self.representatives_ = torch.from_numpy(fit.representatives.astype(np.int64))
        self._kept = fit.kept
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "estimator_"):
            raise ValueError("Expected a fitted ConceptDiscovery (call `fit` first), but got an unfitted one.")

    def transform(self, embeddings: Tensor | np.ndarray) -> Tensor:
        """Scores of new embeddings for every kept concept; ``(n, n_concepts_)``.

        Raises:
            ValueError: if the discovery is not fitted, the embeddings are not ``(n, D)`` with the fitted ``D``, or
                they are negative for NMF.
        """
        self._check_fitted()
        x = _as_numpy(embeddings)
        weights = self.estimator_.cluster_centers_ if self.method == "kmeans" else self.estimator_.components_
        if x.shape[1] != weights.shape[1]:
            raise ValueError(
                f"Expected embeddings of dimension {weights.shape[1]} (what the concepts were fitted on), but got "
                f"{x.shape[1]}; use the same layer and embedding mode."
            )
        if self.method == "nmf" and float(x.min()) < 0:
            raise ValueError(f"Expected non-negative embeddings for NMF, but got a minimum of {float(x.min()):.4g}.")
        scores = _model_scores(self.estimator_, x, self.method)[:, self._kept]
        return torch.from_numpy(scores.astype(np.float32))

    def predict(self, embeddings: Tensor | np.ndarray) -> Tensor:
        """The best-scoring kept concept for each new embedding; ``(n,)`` int64."""
        scores = self.transform(embeddings)
        if scores.shape[1] == 0:
            return torch.full((scores.shape[0],), -1, dtype=torch.long)
        return scores.argmax(1)

    def to_dict(self) -> dict[str, Any]:
        """What :meth:`transform` needs, for storing beside the concepts (a :class:`~debugger.report.ConceptReport`
        keeps it under ``discovery``): the method, the fitted clusters' centres (k-means) or components (NMF, with
        the estimator's settings) as a ``(k, D)`` float32 tensor, and which clusters became concepts, in id order.

        Example:
            >>> x = torch.cat([torch.zeros(10, 2), torch.ones(10, 2)]) + 0.01 * torch.arange(20.0)[:, None]
            >>> d = ConceptDiscovery(n_concepts=2, min_size=2).fit(x)
            >>> again = ConceptDiscovery.from_dict(d.to_dict())
            >>> torch.equal(again.transform(x), d.transform(x))
            True
        """
        self._check_fitted()
        est = self.estimator_
        weights = est.cluster_centers_ if self.method == "kmeans" else est.components_
        out: dict[str, Any] = {
            "method": self.method,
            "kept": [int(c) for c in self._kept],
            "weights": torch.from_numpy(np.asarray(weights, dtype=np.float32).copy()),
        }
        if self.method == "nmf":
            out["estimator"] = type(est).__name__
            out["params"] = {k: v for k, v in est.get_params().items() if isinstance(v, bool | int | float | str)}
        return out

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ConceptDiscovery:
        """A discovery rebuilt from :meth:`to_dict` that can :meth:`transform` and :meth:`predict` again.

        Only scoring state comes back (``estimator_``, ``k_``, ``n_concepts_``); the concepts themselves live in the
        report. An NMF fitted with ``MiniBatchNMF`` scores with batch NMF's solver on the same components (same
        objective, results equal up to solver tolerance).

        Raises:
            ValueError: for an unknown method, weights that are not ``(k, D)``, or kept clusters outside ``[0, k)``.
        """
        method = state.get("method")
        if method not in ("kmeans", "nmf"):
            raise ValueError(f"Expected a stored `method` of 'kmeans' or 'nmf', but got {method!r}.")
        w = state.get("weights")
        weights = w.detach().cpu().float().numpy() if isinstance(w, Tensor) else np.asarray(w, dtype=np.float32)
        if weights.ndim != 2 or weights.shape[0] < 1:
            raise ValueError(f"Expected stored `weights` of shape (k, D), but got {tuple(weights.shape)!r}.")
        k = int(weights.shape[0])
        kept = [int(c) for c in state.get("kept", [])]
        if any(not 0 <= c < k for c in kept):
            raise ValueError(f"Expected stored `kept` clusters in [0, {k}), but got {kept!r}.")
        if method == "kmeans":
            from sklearn.cluster import KMeans

            est: Any = KMeans(n_clusters=k)
            est.cluster_centers_ = weights
        else:
            from sklearn.decomposition import NMF

            params = dict(state.get("params", {})) if state.get("estimator") == "NMF" else {}
            params.update(n_components=k)
            params.setdefault("init", "nndsvda")
            params.setdefault("max_iter", 400)
            est = NMF(**{p: v for p, v in params.items() if p in NMF().get_params()})
            est.components_ = weights
            est.n_components_ = k
            est.n_features_in_ = int(weights.shape[1])
        out = cls(method=method, n_concepts=len(kept))
        out.estimator_ = est
        out.k_ = k
        out.n_concepts_ = len(kept)
        out._kept = kept
        return out


def concept_precision(
    concepts: list[Concept], patches: PatchSet, k: int = 50, min_overlap: float = 0.0
) -> Tensor:
    """Precision@k of every discovered concept against every ground-truth concept.

    A top-k patch counts as a hit for ground-truth concept j when its overlap with j's mask is above
    ``min_overlap`` (0 means "touches it at all").

    Shape:
        - output: ``(len(concepts), K)``

    Raises:
        ValueError: if the patches have no ground-truth concept overlaps or ``k`` is not positive.

    Example:
        >>> ps = PatchSet(torch.zeros(3, dtype=torch.long), torch.zeros(3, 4, dtype=torch.long),
        ...               concept_overlap=torch.tensor([[1.0], [0.0], [0.5]]))
        >>> c = Concept(0, "cluster-0", torch.tensor([0, 2]), torch.tensor([3.0, 1.0, 2.0]))
        >>> concept_precision([c], ps, k=2).tolist()
        [[1.0]]
    """
    if patches.concept_overlap is None:
        raise ValueError("Expected patches with ground-truth `concept_overlap`, but got a PatchSet without them.")
    if k < 1:
        raise ValueError(f"Expected `k` to be a positive integer, but got {k!r}.")
    hits = patches.concept_overlap > min_overlap  # (P, K)
    out = torch.zeros(len(concepts), hits.shape[1])
    for i, c in enumerate(concepts):
        if c.scores.shape[0] != hits.shape[0]:
            raise ValueError(
                f"Expected concept {c.name!r} to score all {hits.shape[0]} patches, but got {c.scores.shape[0]}."
            )
        out[i] = hits[c.top(k)].float().mean(0)
    return out
