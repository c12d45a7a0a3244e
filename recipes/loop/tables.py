"""Plain-text tables of the test metrics: per concept slice, and before/after fine-tuning."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any


def percent(x: Any) -> str:
    """``x`` as a percentage with one decimal, or ``—`` for a missing value.

    Example:
        >>> percent(0.5), percent(float("nan"))
        ('50.0%', '—')
    """
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * float(x):.1f}%"


def number(x: Any) -> str:
    """``x`` with three significant digits, or ``—`` for a missing value."""
    return "—" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{float(x):.3g}"

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


def format_before_after(before: Mapping[str, Any], after: Mapping[str, Any], names: Sequence[str]) -> str:
    """Before/after table: every concept slice (with it) and the clean and overall numbers."""
    seg = isinstance(before.get("all"), dict)
    unit = "mIoU" if seg else "accuracy"
    rows = [f"{unit + ' on':<22}{'before':>9}{'after':>9}{'change':>9}"]

    def row(label: str, b: float, a: float) -> None:
        rows.append(f"{label:<22}{percent(b):>9}{percent(a):>9}{100 * (a - b):>+8.1f}p")

    for n in names:
        if n in before and n in after:
            row(f"{n} (with)", headline(before[n]["with"]), headline(after[n]["with"]))
    if "clean" in before and "clean" in after:
        row("clean (no concept)", headline(before["clean"]), headline(after["clean"]))
    row("all test images", headline(before["all"]), headline(after["all"]))
    if seg:
        classes = len(before["all"]["iou"])
        for c in range(classes):
            row(f"IoU class {c}", before["all"]["iou"][c], after["all"]["iou"][c])
    return "\n".join(rows)


