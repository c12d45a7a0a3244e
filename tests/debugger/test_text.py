"""The one number formatter: missing values as a dash, infinities and tiny p-values spelled out."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest

from debugger.text import MISSING, number, p_value, percent


@pytest.mark.parametrize("fmt", [percent, number, p_value])
def test_none_and_nan_are_a_dash(fmt: Callable[[float | None], str]) -> None:
    assert fmt(None) == MISSING and fmt(math.nan) == MISSING


def test_values_are_rounded_as_documented() -> None:
    assert [percent(0.0), percent(1.0), percent(0.12345), percent(0.12345, digits=0)] == ["0.0%", "100.0%",
                                                                                        "12.3%", "12%"]
    assert [number(2.0), number(-0.005, digits=1), number(math.inf), number(-math.inf)] == ["2.00", "-0.0", "∞",
                                                                                            "-∞"]
    assert [p_value(0.05), p_value(0.001), p_value(0.000999), p_value(0.0)] == ["0.050", "0.001", "<0.001",
                                                                               "<0.001"]
