"""The findings channel: producers publish by type, consumers resolve them in setup() or fail with what to do."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from callbacks.findings import (
    Need,
    PolicyFinding,
    Publisher,
    SliceConfusion,
    TCAVFinding,
    consumers_of,
    find_producers,
)


class Confusions(Publisher):
    publishes = (SliceConfusion,)


class Policies(Publisher):
    publishes = (PolicyFinding,)


class Reader:
    def __init__(self, *needs: Need) -> None:
        self._needs = needs

    def needs(self) -> tuple[Need, ...]:
        return self._needs


def _slices(step: int) -> SliceConfusion:
    return SliceConfusion(0, step, ("a",), ("annotated",), torch.zeros(1, 2, 2), torch.zeros(2, 2), ())


def test_a_producer_keeps_the_latest_finding_of_each_type_it_publishes() -> None:
    source = Confusions()
    assert source.finding(SliceConfusion) is None
    first, second = _slices(1), _slices(2)
    source.publish(first)
    source.publish(second)
    assert source.finding(SliceConfusion) is second and source.finding(TCAVFinding) is None
    assert first != second and first == first  # findings holding tensors compare by identity
    with pytest.raises(TypeError, match=r"Expected a finding of a type Confusions publishes \(\['SliceConfusion'\]\), "
                                        "but got PolicyFinding"):
        source.publish(PolicyFinding(0, 1, {}))


def test_producers_are_found_by_type_and_the_first_one_wins() -> None:
    a, b, policies = Confusions(), Confusions(), Policies()
    reader = Reader(Need(SliceConfusion), Need(PolicyFinding, required=False))
    assert find_producers([a, b, reader], reader, reader.needs()) == {SliceConfusion: a}
    both = find_producers([policies, a, reader], reader, reader.needs())
    assert both == {SliceConfusion: a, PolicyFinding: policies}
    assert find_producers([reader], reader, [Need(SliceConfusion, required=False)]) == {}  # optional: does without
    # a consumer that reads at every batch does not care where its producer sits
    late = Reader(Need(PolicyFinding, before=False))
    assert find_producers([late, policies], late, late.needs()) == {PolicyFinding: policies}
    assert consumers_of([a, reader, late, policies], PolicyFinding) == [reader, late]


@pytest.mark.parametrize(
    ("callbacks", "need", "match"),
    [
        ([], Need(SliceConfusion), r"Expected a callback that publishes SliceConfusion on the trainer for Reader, but "
                                   r"got none; add ConfusionMonitor\(\) to the trainer's `callbacks`, before Reader"),
        (["reader", Confusions()], Need(SliceConfusion),
         "Expected Confusions .* before Reader in the trainer's `callbacks`, but it comes after it"),
        (["reader", Confusions()], Need(SliceConfusion, required=False), "move it ahead"),
    ],
)
def test_a_missing_or_late_producer_is_an_error_that_says_what_to_do(callbacks: list[Any], need: Need,
                                                                      match: str) -> None:
    reader = Reader(need)
    callbacks = [reader if c == "reader" else c for c in callbacks] or [reader]
    with pytest.raises(ValueError, match=match):
        find_producers(callbacks, reader, reader.needs())
