"""Numbers as people read them in reports and tables: one formatter for every markdown table debugger writes.

A missing value (``None`` or NaN) is an en dash, so a table's columns stay aligned and nobody reads "nan" as a
number.

Example:
    >>> percent(0.1234), number(float("inf")), p_value(0.0004), p_value(None)
    ('12.3%', '∞', '<0.001', '–')
"""

from __future__ import annotations

import math

__all__ = ["MISSING", "number", "p_value", "percent"]

MISSING = "–"


def percent(x: float | None, digits: int = 1) -> str:
    """A fraction as a percentage with ``digits`` decimals.

    Example:
        >>> percent(0.5), percent(0.98765, digits=2), percent(float("nan"))
        ('50.0%', '98.77%', '–')
    """
    return MISSING if x is None or math.isnan(x) else f"{100 * float(x):.{digits}f}%"


def number(x: float | None, digits: int = 2) -> str:
    """A number with ``digits`` decimals; infinities as ``∞`` and ``-∞``.

    Example:
        >>> number(1.234), number(-float("inf")), number(None)
        ('1.23', '-∞', '–')
    """
    if x is None or math.isnan(x):
        return MISSING
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return f"{float(x):.{digits}f}"


def p_value(x: float | None) -> str:
    """A p-value with three decimals, or ``<0.001`` below that.

    Example:
        >>> p_value(0.04321), p_value(1e-9)
        ('0.043', '<0.001')
    """
    if x is None or math.isnan(x):
        return MISSING
    return "<0.001" if x < 0.001 else f"{float(x):.3f}"
