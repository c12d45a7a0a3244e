"""Failure ranking: which concepts' slices does the model get wrong more often than the rest of the data?

For every concept, the error rate inside its slice (the images, or pixels, its top patches come from) is set
against the error rate outside it. The **lift** is their ratio. Each rate gets a 95% Wilson interval; the lift
gets an interval and a one-sided p-value for "error inside > error outside", either

- ``"ztest"``: the pooled two-proportion z-test and the Katz log interval of the risk ratio — right when the
  counted units are independent samples (classification), or
- ``"bootstrap"``: a cluster bootstrap that resamples whole probe images (pixels of one image are not
  independent, so this is the default for segmentation), percentile interval of the lift.

p-values are adjusted for testing many concepts at once (Holm by default). A concept is a **failure concept**
only when its adjusted p-value is below ``alpha``, its lift is at least ``min_lift`` and its slice holds at
least ``min_support`` probe images.

**Class mix.** A slice can be wrong more often only because it holds the hard classes (a cluster of one hard
class's texture). Given every unit's class (``strata``), the slice is also compared with the rest *within each
class*: the Mantel–Haenszel risk ratio pools the per-class lifts (``class_lift``, with the Greenland–Robins
interval), ``error_in_expected`` is the error the slice would have at the outside's per-class error rates, and
the one-sided Cochran–Mantel–Haenszel test (or the cluster bootstrap of the Mantel–Haenszel ratio) gives
``class_p_value``. With strata, a failure concept must pass both tests; one that passes only the crude test is
``class_confounded``: hard because of which classes it holds, not because of what it shows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import Tensor

Test = Literal["auto", "ztest", "bootstrap"]
Correction = Literal["holm", "bonferroni", "none"]
_TESTS = ("auto", "ztest", "bootstrap")
_CORRECTIONS = ("holm", "bonferroni", "none")


def wilson_interval(successes: Tensor, trials: Tensor, confidence: float = 0.95) -> tuple[Tensor, Tensor]:
    """Wilson score interval of a binomial proportion; NaN where there are no trials.

    Shape:
        - successes, trials: any, same shape
        - output: two tensors of that shape (low, high), float64

    Raises:
        ValueError: if ``confidence`` is not in (0, 1).

    Example:
        >>> low, high = wilson_interval(torch.tensor(5), torch.tensor(10))
        >>> round(low.item(), 4), round(high.item(), 4)
        (0.2366, 0.7634)
    """
    z = _z(confidence)
    k, n = successes.double(), trials.double()
    safe = n.clamp_min(1)
    p = k / safe
    denom = 1 + z * z / safe
    centre = (p + z * z / (2 * safe)) / denom
    half = z / denom * torch.sqrt(p * (1 - p) / safe + z * z / (4 * safe * safe))
    nan = torch.full_like(p, float("nan"))
    return torch.where(n > 0, centre - half, nan), torch.where(n > 0, centre + half, nan)


def slice_counts(
    errors: Tensor,
    membership: Tensor,
    valid: Tensor | None = None,
    strata: Tensor | None = None,
    num_strata: int | None = None,
) -> dict[str, Tensor]:
    """Per concept and probe image: errors and counted units inside the slice, and the image's totals.

    Args:
        errors: True where the model is wrong (per sample, or per pixel for segmentation).
        membership: concept slices, ``(C, N)`` (whole images) or ``(C, N, H, W)`` (pixel regions).
        valid: units to count (e.g. ``target != ignore_index``); all when None.
        strata: every unit's stratum (its class), in ``[0, num_strata)`` wherever ``valid``; counts are then
            also split by stratum.
        num_strata: number of strata; ``strata.max() + 1`` of the valid units when None.

    Returns:
        ``in_errors``, ``in_count`` of shape ``(C, N)``; ``errors``, ``count`` of shape ``(N,)``; with
        ``strata`` also ``in_errors_by``, ``in_count_by`` ``(C, N, S)`` and ``errors_by``, ``count_by`` ``(N, S)``.

    Shape:
        - errors: ``(N,)`` or ``(N, H, W)`` bool
        - membership: ``(C, N)`` or ``(C, N, H, W)`` bool
        - valid, strata: like ``errors``

    Raises:
        ValueError: if the shapes disagree or a valid unit's stratum is negative or not below ``num_strata``.

    Example:
        >>> counts = slice_counts(torch.tensor([True, False, True]), torch.tensor([[True, True, False]]),
        ...                       strata=torch.tensor([0, 1, 1]))
        >>> counts["in_errors_by"].tolist(), counts["count_by"].tolist()
        ([[[1, 0], [0, 0], [0, 0]]], [[1, 0], [0, 1], [0, 1]])
    """
    if errors.dim() not in (1, 3):
        raise ValueError(f"Expected `errors` to have shape (N,) or (N, H, W), but got {tuple(errors.shape)!r}.")
    n = errors.shape[0]
    pixel_level = membership.dim() == errors.dim() + 1 and membership.shape[1:] == errors.shape
    if not (pixel_level or (membership.dim() == 2 and membership.shape[1] == n)):
        raise ValueError(
            f"Expected `membership` to have shape (C, {n}) or (C, {', '.join(map(str, errors.shape))}), "
            f"but got {tuple(membership.shape)!r}."
        )
    if valid is None:
        valid = torch.ones_like(errors, dtype=torch.bool)
    elif valid.shape != errors.shape:
        raise ValueError(
            f"Expected `valid` to have the shape of `errors` {tuple(errors.shape)!r}, but got {tuple(valid.shape)!r}."
        )
    err = (errors.bool() & valid.bool()).long()
    cnt = valid.bool().long()
    by = None if strata is None else _stratum_counts(err, cnt, membership.bool(), valid.bool(), strata, num_strata,
                                                     pixel_level)
    if errors.dim() == 3:
        err, cnt = err.flatten(1), cnt.flatten(1)
        per_err, per_cnt = err.sum(1), cnt.sum(1)
        if pixel_level:
            m = membership.bool().flatten(2).long()  # (C, N, HW)
            in_err = (m * err.unsqueeze(0)).sum(2)
            in_cnt = (m * cnt.unsqueeze(0)).sum(2)
        else:
            m = membership.bool().long()
            in_err, in_cnt = m * per_err, m * per_cnt
    else:
        per_err, per_cnt = err, cnt
        m = membership.bool().long()
        in_err, in_cnt = m * err, m * cnt
    out = {"in_errors": in_err, "in_count": in_cnt, "errors": per_err, "count": per_cnt}
    return out if by is None else dict(out, **by)


def _stratum_counts(err: Tensor, cnt: Tensor, membership: Tensor, valid: Tensor, strata: Tensor,
                    num_strata: int | None, pixel_level: bool) -> dict[str, Tensor]:
    """The counts of :func:`slice_counts` split by every unit's stratum (one-hot over strata, then sums)."""
    if strata.shape != err.shape:
        raise ValueError(
            f"Expected `strata` to have the shape of `errors` {tuple(err.shape)!r}, but got {tuple(strata.shape)!r}."
        )
    s = strata.long().where(valid, torch.zeros_like(strata, dtype=torch.long))
    top = int(s.max()) + 1 if s.numel() else 1
    num = top if num_strata is None else int(num_strata)
    if bool((s < 0).any()) or top > num:
        raise ValueError(
            f"Expected every counted unit's stratum to lie in [0, {num}), but got values in "
            f"[{int(s.min())}, {top - 1}]."
        )
    n = err.shape[0]
    onehot = torch.nn.functional.one_hot(s.reshape(n, -1), num).long() * valid.reshape(n, -1, 1).long()  # (N, U, S)
    e = err.reshape(n, -1, 1) * onehot
    c = onehot
    errors_by, count_by = e.sum(1), c.sum(1)  # (N, S)
    if pixel_level:
        # One image at a time: (C, U) @ (U, S) keeps memory at one image's pixels (exact in float32 below 2^24).
        m = membership.reshape(membership.shape[0], n, -1)
        in_err = torch.stack([(m[:, i].float() @ e[i].float()).round().long() for i in range(n)], 1)
        in_cnt = torch.stack([(m[:, i].float() @ c[i].float()).round().long() for i in range(n)], 1)
    else:
        m = membership.long().unsqueeze(2)  # (C, N, 1)
        in_err, in_cnt = m * errors_by.unsqueeze(0), m * count_by.unsqueeze(0)
    return {"in_errors_by": in_err, "in_count_by": in_cnt, "errors_by": errors_by, "count_by": count_by}


def failure_statistics(
    errors: Tensor,
    membership: Tensor,
    valid: Tensor | None = None,
    test: Test = "auto",
    confidence: float = 0.95,
    correction: Correction = "holm",
    n_bootstrap: int = 1000,
    generator: torch.Generator | None = None,
    strata: Tensor | None = None,
    num_strata: int | None = None,
) -> dict[str, Tensor]:
    """Error rate inside vs outside every concept's slice, lift, intervals and p-values, all concepts at once.

    Args:
        errors: True where the model is wrong, per sample or per pixel.
        membership: concept slices (see :func:`slice_counts`).
        valid: units to count; all when None.
        test: ``"ztest"``, ``"bootstrap"`` (over probe images) or ``"auto"`` (z-test for per-sample errors,
            bootstrap for per-pixel errors).
        confidence: level of every interval.
        correction: multiple-testing adjustment of the p-values across concepts.
        n_bootstrap: bootstrap resamples.
        generator: randomness of the bootstrap; a fixed seed 0 when None, so results are reproducible.
        strata: every unit's class (or other stratum), like ``errors``; adds the within-class comparison.
        num_strata: number of strata (see :func:`slice_counts`).

    Returns:
        A dict of ``(C,)`` tensors: ``support`` / ``support_out`` (probe images with units inside / outside the
        slice), ``count_in``, ``errors_in``, ``count_out``, ``errors_out``, ``error_in`` (+ ``_low``/``_high``),
        ``error_out`` (+ ``_low``/``_high``), ``lift`` (+ ``_low``/``_high``), ``p_value``, ``p_adjusted``; with
        ``strata`` also ``error_in_expected`` (the slice's error at the outside's per-class rates), ``class_lift``
        (+ ``_low``/``_high``: Mantel–Haenszel risk ratio), ``class_p_value`` and ``class_p_adjusted``.

    Shape:
        - errors: ``(N,)`` or ``(N, H, W)`` bool
        - membership: ``(C, N)`` or ``(C, N, H, W)`` bool

    Raises:
        ValueError: if the shapes disagree, there are no probe images, or an option is not valid.

    Example:
        >>> errors = torch.tensor([True] * 8 + [False] * 2 + [True] * 2 + [False] * 28)
        >>> membership = torch.zeros(1, 40, dtype=torch.bool)
        >>> membership[0, :10] = True
        >>> stats = failure_statistics(errors, membership)
        >>> round(stats["lift"].item(), 2), bool(stats["p_value"].item() < 0.001)
        (12.0, True)
    """
    if test not in _TESTS:
        raise ValueError(f"Expected `test` to be one of {_TESTS!r}, but got {test!r}.")
    if correction not in _CORRECTIONS:
        raise ValueError(f"Expected `correction` to be one of {_CORRECTIONS!r}, but got {correction!r}.")
    if not isinstance(n_bootstrap, int) or n_bootstrap < 1:
        raise ValueError(f"Expected `n_bootstrap` to be a positive integer, but got {n_bootstrap!r}.")
    if errors.numel() == 0 or errors.shape[0] == 0:
        raise ValueError(f"Expected `errors` to cover at least one probe image, but got shape {tuple(errors.shape)!r}.")
    counts = slice_counts(errors, membership, valid, strata, num_strata)
    if test == "auto":
        test = "bootstrap" if errors.dim() == 3 else "ztest"
    in_err, in_cnt = counts["in_errors"].double(), counts["in_count"].double()
    out_err = counts["errors"].double().unsqueeze(0) - in_err
    out_cnt = counts["count"].double().unsqueeze(0) - in_cnt
    k_in, n_in, k_out, n_out = in_err.sum(1), in_cnt.sum(1), out_err.sum(1), out_cnt.sum(1)
    r_in, r_out = _rate(k_in, n_in), _rate(k_out, n_out)
    in_low, in_high = wilson_interval(k_in, n_in, confidence)
    out_low, out_high = wilson_interval(k_out, n_out, confidence)
    lift = _ratio(r_in, r_out)
    if test == "ztest":
        p_value = _ztest_greater(k_in, n_in, k_out, n_out)
        lift_low, lift_high = _katz_interval(k_in, n_in, k_out, n_out, confidence)
    else:
        p_value, lift_low, lift_high = _bootstrap(in_err, in_cnt, out_err, out_cnt, confidence, n_bootstrap, generator)
    empty = (n_in == 0) | (n_out == 0)
    p_value = torch.where(empty, torch.full_like(p_value, float("nan")), p_value)
    by_class: dict[str, Tensor] = {}
    if strata is not None:
        by_class = _within_strata(counts, test, confidence, correction, n_bootstrap, generator)
    return by_class | {
        "support": (counts["in_count"] > 0).sum(1),
        "support_out": (out_cnt > 0).sum(1),
        "count_in": n_in.long(),
        "errors_in": k_in.long(),
        "count_out": n_out.long(),
        "errors_out": k_out.long(),
        "error_in": r_in,
        "error_in_low": in_low,
        "error_in_high": in_high,
        "error_out": r_out,
        "error_out_low": out_low,
        "error_out_high": out_high,
        "lift": lift,
        "lift_low": lift_low,
        "lift_high": lift_high,
        "p_value": p_value,
        "p_adjusted": adjust_p_values(p_value, correction),
    }


def _within_strata(counts: dict[str, Tensor], test: str, confidence: float, correction: Correction,
                   n_bootstrap: int, generator: torch.Generator | None) -> dict[str, Tensor]:
    """Mantel–Haenszel comparison of inside vs outside within strata (see the module docstring)."""
    a_n = counts["in_errors_by"].double()  # (C, N, S)
    n1_n = counts["in_count_by"].double()
    b_n = counts["errors_by"].double().unsqueeze(0) - a_n
    n0_n = counts["count_by"].double().unsqueeze(0) - n1_n
    a, n1, b, n0 = a_n.sum(1), n1_n.sum(1), b_n.sum(1), n0_n.sum(1)  # (C, S)
    observed = n0 > 0
    expected = torch.where(observed, n1 * b / n0.clamp_min(1), torch.zeros_like(a)).sum(1)
    error_in_expected = _rate(expected, torch.where(observed, n1, torch.zeros_like(n1)).sum(1))
    r, q, var_log = _mantel_haenszel(a, n1, b, n0)
    lift = _ratio(r, q)
    z = _z(confidence)
    if test == "ztest":
        total = n1 + n0
        m1 = a + b
        informative = total > 1
        e = torch.where(informative, n1 * m1 / total.clamp_min(1), torch.zeros_like(a))
        v = torch.where(informative, n1 * n0 * m1 * (total - m1) / (total.square() * (total - 1)).clamp_min(1),
                        torch.zeros_like(a))
        v_sum = v.sum(1)
        stat = (a.sum(1) - e.sum(1)) / v_sum.clamp_min(1e-300).sqrt()
        p_value = torch.where(v_sum > 0, 0.5 * torch.erfc(stat / math.sqrt(2.0)), torch.full_like(v_sum, float("nan")))
        finite = (r > 0) & (q > 0)
        se = var_log.clamp_min(0).sqrt()
        nan = torch.full_like(lift, float("nan"))
        low = torch.where(finite, torch.exp(torch.log(lift) - z * se), nan)
        high = torch.where(finite, torch.exp(torch.log(lift) + z * se), nan)
    else:
        p_value, low, high = _bootstrap_strata(a_n, n1_n, b_n, n0_n, confidence, n_bootstrap, generator)
        p_value = torch.where((n1.sum(1) > 0) & (n0.sum(1) > 0), p_value, torch.full_like(p_value, float("nan")))
    return {
        "error_in_expected": error_in_expected,
        "class_lift": lift,
        "class_lift_low": low,
        "class_lift_high": high,
        "class_p_value": p_value,
        "class_p_adjusted": adjust_p_values(p_value, correction),
    }


def _mantel_haenszel(a: Tensor, n1: Tensor, b: Tensor, n0: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Numerator and denominator of the Mantel–Haenszel risk ratio over the last dim (strata), and the
    Greenland–Robins variance of its log."""
    total = (n1 + n0).clamp_min(1)
    r = (a * n0 / total).sum(-1)
    q = (b * n1 / total).sum(-1)
    p = (((a + b) * n1 * n0 - a * b * total) / total.square()).sum(-1)
    return r, q, p / (r * q).clamp_min(1e-300)


def _bootstrap_strata(a: Tensor, n1: Tensor, b: Tensor, n0: Tensor, confidence: float, n_bootstrap: int,
                      generator: torch.Generator | None) -> tuple[Tensor, Tensor, Tensor]:
    """Cluster bootstrap over probe images of the Mantel–Haenszel ratio: p = share of resamples with ratio <= 1."""
    tail = (1 - confidence) / 2
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    c, n, s = a.shape
    draws = torch.randint(0, n, (n_bootstrap, n), generator=generator)
    weights = torch.zeros(n_bootstrap, n, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(n_bootstrap, n, dtype=torch.float64)
    )

    def resampled(t: Tensor) -> Tensor:
        return (weights @ t.permute(1, 0, 2).reshape(n, c * s)).reshape(n_bootstrap, c, s)

    r, q, _ = _mantel_haenszel(resampled(a), resampled(n1), resampled(b), resampled(n0))  # (B, C)
    defined = (r > 0) | (q > 0)
    not_greater = ((r <= q) & defined).sum(0).double()
    p_value = (1 + not_greater) / (1 + defined.sum(0).double())
    lift = torch.where(defined, _ratio(r, q), torch.full_like(r, float("nan")))
    return p_value, _nan_percentile(lift, tail), _nan_percentile(lift, 1 - tail)


def adjust_p_values(p_values: Tensor, correction: Correction = "holm") -> Tensor:
    """Family-wise adjustment of p-values (Holm step-down or Bonferroni); NaN entries stay NaN and are not counted.

    Shape:
        - p_values: ``(C,)``
        - output: ``(C,)``

    Raises:
        ValueError: if ``correction`` is not a valid option.

    Example:
        >>> adjust_p_values(torch.tensor([0.01, 0.04, 0.03]))
        tensor([0.0300, 0.0600, 0.0600], dtype=torch.float64)
    """
    if correction not in _CORRECTIONS:
        raise ValueError(f"Expected `correction` to be one of {_CORRECTIONS!r}, but got {correction!r}.")
    p = p_values.double()
    if correction == "none":
        return p.clone()
    ok = ~torch.isnan(p)
    m = int(ok.sum())
    out = p.clone()
    if m == 0:
        return out
    q = p[ok]
    if correction == "bonferroni":
        out[ok] = (q * m).clamp(max=1.0)
        return out
    order = torch.argsort(q)
    scaled = q[order] * torch.arange(m, 0, -1, dtype=torch.float64)
    scaled = torch.cummax(scaled, dim=0).values.clamp(max=1.0)
    adjusted = torch.empty_like(q)
    adjusted[order] = scaled
    out[ok] = adjusted
    return out


@dataclass(frozen=True)
class ConceptFailure:
    """One concept's row of the failure ranking (``rank`` 1 = worst).

    The within-class fields (``error_in_expected``, ``class_*``) are None when the ranking had no strata.
    """

    rank: int
    concept: int
    name: str
    is_failure: bool
    support: int
    support_out: int
    count_in: int
    errors_in: int
    count_out: int
    errors_out: int
    error_in: float
    error_in_low: float
    error_in_high: float
    error_out: float
    error_out_low: float
    error_out_high: float
    lift: float
    lift_low: float
    lift_high: float
    p_value: float
    p_adjusted: float
    test: str
    error_in_expected: float | None = None
    class_lift: float | None = None
    class_lift_low: float | None = None
    class_lift_high: float | None = None
    class_p_value: float | None = None
    class_p_adjusted: float | None = None
    class_confounded: bool = False
    merged_from: tuple[int, ...] = ()
    merged_into: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["merged_from"] = list(self.merged_from)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConceptFailure:
        """Read :meth:`to_dict` output; fields added after a report was written take their defaults."""
        values = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        if "merged_from" in values:
            values["merged_from"] = tuple(int(i) for i in values["merged_from"])
        return cls(**values)

    @property
    def reported(self) -> bool:
        """A failure concept in its own right: a failure not merged into another concept."""
        return self.is_failure and self.merged_into is None


def rank_failures(
    errors: Tensor,
    membership: Tensor,
    names: Sequence[str] | None = None,
    ids: Sequence[int] | None = None,
    valid: Tensor | None = None,
    min_support: int = 10,
    min_lift: float = 1.0,
    alpha: float = 0.05,
    test: Test = "auto",
    correction: Correction = "holm",
    n_bootstrap: int = 1000,
    generator: torch.Generator | None = None,
    strata: Tensor | None = None,
    num_strata: int | None = None,
) -> list[ConceptFailure]:
    """Rank concepts by how much more often the model fails inside their slices, with a failure verdict.

    Order: failure concepts first, then by the lower end of the lift's interval (a large, well-supported lift
    beats a larger lift measured on three images), then by the lift itself; concepts whose lift is undefined
    (an empty inside or outside) come last.

    With ``strata`` (every unit's class) a failure must also be one within classes: its adjusted
    ``class_p_value`` below ``alpha`` and its ``class_lift`` at least ``min_lift``. A concept that passes the
    crude test only is marked ``class_confounded``.

    Args:
        errors: True where the model is wrong, per sample or per pixel.
        membership: concept slices (``(C, N)`` or ``(C, N, H, W)``).
        names: concept names (default ``concept-<i>``).
        ids: concept ids (default ``0..C-1``).
        valid: units to count; all when None.
        min_support: probe images a slice must hold for a failure verdict.
        min_lift: lift a failure must reach.
        alpha: significance level of the adjusted one-sided p-value.
        test: see :func:`failure_statistics`.
        correction: see :func:`adjust_p_values`.
        n_bootstrap: bootstrap resamples.
        generator: randomness of the bootstrap.
        strata: every unit's class, like ``errors`` (see :func:`failure_statistics`).
        num_strata: number of classes.

    Returns:
        One :class:`ConceptFailure` per concept, worst first.

    Shape:
        - errors: ``(N,)`` or ``(N, H, W)`` bool
        - membership: ``(C, N)`` or ``(C, N, H, W)`` bool

    Raises:
        ValueError: if ``names``/``ids`` do not have one entry per concept, ``alpha`` is not in (0, 1),
            ``min_support`` is negative, or as :func:`failure_statistics`.

    Example:
        >>> errors = torch.tensor([True] * 8 + [False] * 2 + [True] * 2 + [False] * 28)
        >>> membership = torch.zeros(2, 40, dtype=torch.bool)
        >>> membership[0, :10] = True
        >>> membership[1, 20:30] = True
        >>> [(f.name, f.is_failure) for f in rank_failures(errors, membership, names=["shadow", "grass"])]
        [('shadow', True), ('grass', False)]
    """
    num_concepts = membership.shape[0] if membership.dim() > 0 else 0
    names = [f"concept-{i}" for i in range(num_concepts)] if names is None else list(names)
    ids = list(range(num_concepts)) if ids is None else [int(i) for i in ids]
    if len(names) != num_concepts:
        raise ValueError(f"Expected `names` to hold {num_concepts} names, one per concept, but got {len(names)}.")
    if len(ids) != num_concepts:
        raise ValueError(f"Expected `ids` to hold {num_concepts} ids, one per concept, but got {len(ids)}.")
    if not 0 < alpha < 1:
        raise ValueError(f"Expected `alpha` to be in (0, 1), but got {alpha!r}.")
    if min_support < 0:
        raise ValueError(f"Expected `min_support` to be a non-negative integer, but got {min_support!r}.")
    chosen = ("bootstrap" if errors.dim() == 3 else "ztest") if test == "auto" else test
    stats = failure_statistics(errors, membership, valid, test, 0.95, correction, n_bootstrap, generator,
                               strata, num_strata)
    crude = (stats["p_adjusted"] < alpha) & (stats["lift"] >= min_lift) & (stats["support"] >= min_support)
    verdict = crude
    if strata is not None:
        verdict = crude & (stats["class_p_adjusted"] < alpha) & (stats["class_lift"] >= min_lift)
    rows = []
    for c in range(num_concepts):
        values = {key: _scalar(t[c]) for key, t in stats.items()}
        rows.append(dict(values, concept=ids[c], name=names[c], is_failure=bool(verdict[c]), test=chosen,
                         class_confounded=bool(crude[c] and not verdict[c])))

    def key(row: dict[str, Any]) -> tuple[float, ...]:
        undefined = math.isnan(row["lift"])
        low = row["lift_low"] if not math.isnan(row["lift_low"]) else -math.inf
        lift = row["lift"] if not undefined else -math.inf
        return (not row["is_failure"], undefined, -low, -lift)

    rows.sort(key=key)
    return [ConceptFailure(rank=i + 1, **row) for i, row in enumerate(rows)]


def _scalar(t: Tensor) -> Any:
    return int(t) if not t.is_floating_point() else float(t)


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"Expected `confidence` to be in (0, 1), but got {confidence!r}.")
    return math.sqrt(2.0) * float(torch.erfinv(torch.tensor(confidence, dtype=torch.float64)))


def _rate(k: Tensor, n: Tensor) -> Tensor:
    return torch.where(n > 0, k / n.clamp_min(1), torch.full_like(k, float("nan")))


def _ratio(a: Tensor, b: Tensor) -> Tensor:
    # 0/0 is undefined; x/0 with x > 0 is an infinite lift (every error is inside the slice).
    out = a / b
    return torch.where((a == 0) & (b == 0), torch.full_like(a, float("nan")), out)


def _ztest_greater(k1: Tensor, n1: Tensor, k2: Tensor, n2: Tensor) -> Tensor:
    """One-sided pooled two-proportion z-test, H1: rate 1 > rate 2."""
    pooled = (k1 + k2) / (n1 + n2).clamp_min(1)
    se = torch.sqrt(pooled * (1 - pooled) * (1 / n1.clamp_min(1) + 1 / n2.clamp_min(1)))
    diff = _rate(k1, n1) - _rate(k2, n2)
    z = diff / se
    # No variance at all (every unit wrong or every unit right): no evidence either way.
    z = torch.where(se > 0, z, torch.zeros_like(z))
    return 0.5 * torch.erfc(z / math.sqrt(2.0))


def _katz_interval(k1: Tensor, n1: Tensor, k2: Tensor, n2: Tensor, confidence: float) -> tuple[Tensor, Tensor]:
    """Katz log interval of the risk ratio, with a 0.5 continuity correction when a cell is empty."""
    z = _z(confidence)
    zero = (k1 == 0) | (k2 == 0) | (k1 == n1) | (k2 == n2)
    c = torch.where(zero, torch.full_like(k1, 0.5), torch.zeros_like(k1))
    a, m, b, n = k1 + c, n1 + 2 * c, k2 + c, n2 + 2 * c
    log_rr = torch.log(a / m) - torch.log(b / n)
    se = torch.sqrt((1 / a - 1 / m + 1 / b - 1 / n).clamp_min(0))
    nan = torch.full_like(k1, float("nan"))
    ok = (n1 > 0) & (n2 > 0)
    return torch.where(ok, torch.exp(log_rr - z * se), nan), torch.where(ok, torch.exp(log_rr + z * se), nan)


def _bootstrap(
    in_err: Tensor,
    in_cnt: Tensor,
    out_err: Tensor,
    out_cnt: Tensor,
    confidence: float,
    n_bootstrap: int,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Cluster bootstrap over probe images: resample images with replacement, recount every concept at once."""
    z_alpha = (1 - confidence) / 2
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    n = in_err.shape[1]
    draws = torch.randint(0, n, (n_bootstrap, n), generator=generator)
    weights = torch.zeros(n_bootstrap, n, dtype=torch.float64).scatter_add_(
        1, draws, torch.ones(n_bootstrap, n, dtype=torch.float64)
    )
    r_in = _rate(weights @ in_err.T, weights @ in_cnt.T)  # (B, C)
    r_out = _rate(weights @ out_err.T, weights @ out_cnt.T)
    diff = r_in - r_out
    defined = ~torch.isnan(diff)
    not_greater = ((diff <= 0) & defined).sum(0).double()
    p_value = (1 + not_greater) / (1 + defined.sum(0).double())
    lift = _ratio(r_in, r_out)
    # Undefined resamples (an empty side) are dropped; infinite lifts sort last, so nearest-rank percentiles work.
    low = _nan_percentile(lift, z_alpha)
    high = _nan_percentile(lift, 1 - z_alpha)
    return p_value, low, high


def _nan_percentile(values: Tensor, q: float) -> Tensor:
    """Nearest-rank percentile per column ignoring NaN (``torch.nanquantile`` interpolates ``inf - inf`` to NaN)."""
    ordered = torch.sort(torch.nan_to_num(values, nan=math.inf), dim=0).values
    finite = (~torch.isnan(values)).sum(0)
    idx = (q * (finite - 1).clamp_min(0).double()).round().long()
    out = ordered.gather(0, idx.unsqueeze(0)).squeeze(0)
    return torch.where(finite > 0, out, torch.full_like(out, float("nan")))
