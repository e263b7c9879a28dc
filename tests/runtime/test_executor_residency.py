"""The eviction policy of `loraplane.runtime.residency`, as a table."""

from __future__ import annotations

import pytest

from loraplane.runtime import residency


@pytest.mark.parametrize(
    ("resident", "needed", "busy", "budget", "expected"),
    [
        pytest.param({"a": 1, "b": 2}, {"a"}, set(), 2, [], id="within-budget"),
        pytest.param({"a": 1, "b": 2}, {"c"}, set(), 2, ["a"], id="lru-idle-goes-first"),
        pytest.param({"a": 3, "b": 2, "c": 1}, {"d"}, set(), 2, ["c", "b"], id="two-over-budget"),
        pytest.param({"a": 1, "b": 2}, {"c"}, {"a"}, 2, ["b"], id="busy-spared-when-idle-exists"),
        pytest.param({"a": 1, "b": 2}, {"c"}, {"a", "b"}, 2, ["a"], id="busy-evicted-when-all-busy"),
        pytest.param({"a": 1, "b": 2}, {"a", "b", "c"}, set(), 2, [], id="needed-never-evicted"),
        pytest.param({"a": 5, "b": 5}, {"c"}, set(), 2, ["a"], id="tie-breaks-on-id"),
        pytest.param({}, {"a"}, set(), 1, [], id="empty"),
        pytest.param({"a": 1}, {"a"}, set(), 1, [], id="needed-already-resident"),
    ],
)
def test_choose_evictions_offloads_lru_idle_adapters_beyond_budget(resident, needed, busy, budget, expected):
    assert residency.choose_evictions(resident, needed, busy, budget) == expected


def test_choose_evictions_rejects_a_zero_budget():
    with pytest.raises(ValueError, match="budget"):
        residency.choose_evictions({"a": 1}, set(), set(), 0)


@pytest.mark.parametrize(("total", "maximum", "free"), [(0, 4, 4), (3, 4, 1), (4, 4, 0), (6, 4, 0)])
def test_free_slots_never_goes_negative(total, maximum, free):
    assert residency.free_slots(total, maximum) == free
