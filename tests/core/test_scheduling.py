"""Placement decisions: sticky, least loaded, wrong base model, full, not ready."""

from __future__ import annotations

import pytest

from loraplane.core import scheduling
from loraplane.core.scheduling import PlacementReason, RuntimeCandidate


def rt(pod: str, *, model: str = "m", ready: bool = True, adapters: int = 0, free: int = 4) -> RuntimeCandidate:
    return RuntimeCandidate(pod, f"http://{pod}:8001", model, ready, adapters, free)


@pytest.mark.parametrize(
    ("candidates", "current", "pod", "reason"),
    [
        # sticky: the current runtime wins even when another is emptier, or itself full
        ([rt("a", adapters=5), rt("b")], "a", "a", PlacementReason.STICKY),
        ([rt("a", adapters=4, free=0), rt("b")], "a", "a", PlacementReason.STICKY),
        # current runtime not ready or gone: a new placement
        ([rt("a", ready=False), rt("b", adapters=2)], "a", "b", PlacementReason.LEAST_LOADED),
        ([rt("b")], "gone", "b", PlacementReason.LEAST_LOADED),
        # current runtime serves another model (pod replaced): not sticky
        ([rt("a", model="other"), rt("b")], "a", "b", PlacementReason.LEAST_LOADED),
        # least loaded, then most free slots, then name
        ([rt("a", adapters=3), rt("b", adapters=1), rt("c", adapters=2)], None, "b", PlacementReason.LEAST_LOADED),
        ([rt("a", adapters=1, free=1), rt("b", adapters=1, free=7)], None, "b", PlacementReason.LEAST_LOADED),
        ([rt("b"), rt("a")], None, "a", PlacementReason.LEAST_LOADED),
        # full runtimes are skipped
        ([rt("a", free=0), rt("b", adapters=9, free=1)], None, "b", PlacementReason.LEAST_LOADED),
        # wrong base model, not ready, full, none at all
        ([rt("a", model="other")], None, None, PlacementReason.NO_RUNTIME),
        ([rt("a", ready=False)], None, None, PlacementReason.NO_RUNTIME),
        ([], None, None, PlacementReason.NO_RUNTIME),
        ([rt("a", free=0), rt("b", free=0)], None, None, PlacementReason.NO_CAPACITY),
        ([rt("a", free=0), rt("b", model="other")], "b", None, PlacementReason.NO_CAPACITY),
    ],
)
def test_place(candidates: list[RuntimeCandidate], current: str | None, pod: str | None, reason: PlacementReason) -> None:
    placement = scheduling.place("m", candidates, current=current)
    assert placement.reason == reason
    assert (placement.runtime.pod if placement.runtime else None) == pod
    assert placement.placed == (pod is not None)


@pytest.mark.parametrize(
    ("candidates", "words"),
    [
        ([rt("a", model="other")], ["'m'", "['other']"]),
        ([rt("a", ready=False), rt("b", ready=False)], ["'m'", "2 runtime pod(s) seen, none ready"]),
        ([rt("a", free=0)], ["all 1 ready runtime(s)", "full"]),
    ],
)
def test_unplaced_message_says_why(candidates: list[RuntimeCandidate], words: list[str]) -> None:
    message = scheduling.place("m", candidates).message
    for word in words:
        assert word in message


@pytest.mark.parametrize(
    ("candidates", "tenant_jobs", "current", "pod"),
    [
        # the tenant's jobs fill rt-a: a new one goes to rt-b although rt-a holds fewer adapters
        ([rt("rt-a", adapters=3), rt("rt-b", adapters=5)], {"rt-a": 3}, None, "rt-b"),
        # equal for the tenant: least loaded wins, as without tenants
        ([rt("rt-a", adapters=3), rt("rt-b", adapters=5)], {"rt-a": 1, "rt-b": 1}, None, "rt-a"),
        # the only runtime with room takes it, however many of the tenant's jobs it holds
        ([rt("rt-a", adapters=3), rt("rt-b", adapters=8, free=0)], {"rt-a": 3}, None, "rt-a"),
        # sticky beats spreading: a running job does not move
        ([rt("rt-a", adapters=3), rt("rt-b")], {"rt-a": 3}, "rt-a", "rt-a"),
        # another tenant's jobs do not count (the caller passes only this tenant's)
        ([rt("rt-a", adapters=1), rt("rt-b", adapters=2)], {}, None, "rt-a"),
    ],
)
def test_placement_spreads_one_tenants_jobs_over_the_runtimes(
        candidates: list[RuntimeCandidate], tenant_jobs: dict[str, int], current: str | None, pod: str) -> None:
    placement = scheduling.place("m", candidates, current=current, tenant_jobs=tenant_jobs)
    assert placement.runtime is not None and placement.runtime.pod == pod
