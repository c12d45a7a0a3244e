"""Plain-text tables of the test metrics: per concept slice, and before/after fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from debugger.text import percent


def headline(m: Any) -> float:
    """One number for a slice: accuracy (classification) or mean IoU over classes present (segmentation)."""
    if isinstance(m, dict):
        ious = [v for v in m.get("iou", []) if not math.isnan(v)]
        return sum(ious) / len(ious) if ious else float("nan")
    return float(m)


def flat_metrics(metrics: Mapping[str, Any], names: Sequence[str]) -> dict[str, float]:
    """The headline numbers by slice, flat (``all``, ``clean``, ``<concept>/with``, ``<concept>/without``)."""
    if not metrics:
        return {}
    out = {"all": headline(metrics["all"])}
    if "clean" in metrics:
        out["clean"] = headline(metrics["clean"])
    for n in names:
        if n in metrics:
            out[f"{n}/with"] = headline(metrics[n]["with"])
            out[f"{n}/without"] = headline(metrics[n]["without"])
    return out


def format_metrics(metrics: Mapping[str, Any], names: Sequence[str]) -> str:
    """Accuracy (or mean IoU) with and without each concept, as a plain-text table."""
    seg = isinstance(metrics.get("all"), dict)
    unit = "mIoU" if seg else "acc"
    rows = [f"{'slice (' + unit + ')':<16}{'with':>8}{'without':>9}{'gap':>8}{'n_with':>8}"]
    for n in names:
        if n not in metrics:
            continue
        w, wo = headline(metrics[n]["with"]), headline(metrics[n]["without"])
        rows.append(f"{n:<16}{percent(w):>8}{percent(wo):>9}{100 * (w - wo):>+8.1f}{metrics[n]['n_with']:>8d}")
    if "clean" in metrics:
        rows.append(f"{'clean':<16}{percent(headline(metrics['clean'])):>8}")
    rows.append(f"{'all':<16}{percent(headline(metrics['all'])):>8}   (n={metrics.get('n', '?')})")
    return "\n".join(rows)


def format_before_after(before: Mapping[str, Any], after: Mapping[str, Any] | None, names: Sequence[str],
                        control: Mapping[str, Any] | None = None) -> str:
    """Before/after table: every concept slice (with it) and the clean and overall numbers.

    ``after``: the metrics after fine-tuning with the policy; None when there was no policy (the table then says
    so and has no such column). ``control``: after fine-tuning without augmentation on the same budget; with it,
    the change column is the policy's own effect (policy − no augmentation).

    Example:
        >>> m = lambda acc: {"all": acc, "n": 10}
        >>> print(format_before_after(m(0.5), m(0.8), [], control=m(0.6)))
        accuracy on              before  no aug.   policy  policy − no aug.
        all test images           50.0%    60.0%    80.0%            +20.0p
        >>> print(format_before_after(m(0.5), None, [], control=m(0.6)))
        accuracy on              before  no aug.
        all test images           50.0%    60.0%
        (no policy: no failure concept led to a transform, so there is no "after with the policy")
    """
    seg = isinstance(before.get("all"), dict)
    unit = "mIoU" if seg else "accuracy"
    cols: list[tuple[str, Mapping[str, Any]]] = [("before", before)]
    if control is not None:
        cols.append(("no aug.", control))
    if after is not None:
        cols.append(("policy" if control is not None else "after", after))
    ref = control if control is not None else before
    change = "policy − no aug." if control is not None else "change"
    header = f"{unit + ' on':<22}" + "".join(f"{name:>9}" for name, _ in cols)
    if after is not None:
        header += f"{change:>18}" if control is not None else f"{change:>9}"
    rows = [header]

    def row(label: str, get: Callable[[Mapping[str, Any]], float]) -> None:
        line = f"{label:<22}" + "".join(f"{percent(get(m)):>9}" for _, m in cols)
        if after is not None:
            diff = f"{100 * (get(after) - get(ref)):+.1f}p"
            line += f"{diff:>18}" if control is not None else f"{diff:>9}"
        rows.append(line)

    def present(key: str) -> bool:
        return all(key in m for _, m in cols)

    for n in names:
        if present(n):
            row(f"{n} (with)", lambda m, n=n: headline(m[n]["with"]))  # type: ignore[misc]
    if present("clean"):
        row("clean (no concept)", lambda m: headline(m["clean"]))
    row("all test images", lambda m: headline(m["all"]))
    if seg:
        for c in range(len(before["all"]["iou"])):
            row(f"IoU class {c}", lambda m, c=c: m["all"]["iou"][c])  # type: ignore[misc]
    if after is None:
        rows.append('(no policy: no failure concept led to a transform, so there is no "after with the policy")')
    return "\n".join(rows)
