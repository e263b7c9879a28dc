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
