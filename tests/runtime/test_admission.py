"""Back-pressure on queued forward/backward work (`runtime.admission`), as tables."""

from __future__ import annotations

import pytest

from loraplane.core import errors
from loraplane.runtime import admission


def test_queued_tokens_add_up_per_tenant() -> None:
    assert admission.queued_tokens([("a", 10), ("b", 5), ("a", 7)]) == {"a": 17, "b": 5}


@pytest.mark.parametrize(("queued", "tenant", "tokens", "refused"), [
    ({}, "a", 50, None),                          # nothing queued: admitted
    ({"a": 50}, "a", 50, None),                   # exactly at the tenant's limit
    ({"a": 60}, "a", 50, "tokens of work queued"),  # past the tenant's limit
    ({"a": 0}, "a", 500, None),                   # alone, one request over the limit still runs
    ({"a": 150, "b": 40}, "b", 20, "this runtime has"),  # past the total
    ({"a": 190}, "b", 20, None),                  # a flood of a never refuses another tenant's first work
])
def test_room_for_queued_work(queued: dict[str, int], tenant: str, tokens: int, refused: str | None) -> None:
    check = lambda: admission.check_room(queued, tenant, tokens, per_tenant=100, total=200)  # noqa: E731
    if refused is None:
        check()
        return
    with pytest.raises(errors.TooManyRequests, match=refused) as err:
        check()
    assert err.value.status_code == 429 and err.value.retry_after_s > 0


@pytest.mark.parametrize(("waiting", "tenant", "refused"), [
    ({}, "bob", False), ({"bob": 2}, "bob", False), ({"bob": 3}, "bob", True), ({"bob": 3}, "alice", False),
    ({"alice": 2, "bob": 9}, "alice", False),
])
def test_a_tenant_with_its_limit_of_samples_waiting_is_told_to_retry_others_are_not(
        waiting: dict[str, int], tenant: str, refused: bool) -> None:
    if not refused:
        admission.check_sample_room(waiting, tenant, per_tenant=3)
        return
    with pytest.raises(errors.TooManyRequests, match="has 3 sample requests waiting") as err:
        admission.check_sample_room(waiting, tenant, per_tenant=3)
    assert err.value.field == "max_queued_samples_per_tenant"
