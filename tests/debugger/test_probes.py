"""Probe selection: seeded, distinct, bounded, in a random order whose prefixes are random subsets."""

from __future__ import annotations

import pytest

from debugger.probes import select_probe_indices


def test_select_probe_indices_is_seeded_distinct_and_bounded() -> None:
    a = select_probe_indices(100, 10, seed=3)
    assert a == select_probe_indices(100, 10, seed=3)
    assert a != select_probe_indices(100, 10, seed=4)
    assert len(set(a)) == 10 and all(0 <= i < 100 for i in a)
    assert sorted(select_probe_indices(5, 10, seed=0)) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="Expected `size` to be a positive integer"):
        select_probe_indices(5, 0, seed=0)
    with pytest.raises(ValueError, match="Expected `num_samples` to be non-negative"):
        select_probe_indices(-1, 3, seed=0)
