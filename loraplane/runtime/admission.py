"""Back-pressure: how much work a runtime queues, per tenant and in all.

Callers: `Executor.submit` and `submit_sample`, under its lock, before an op is queued. Plain functions of plain data.
Past a limit the submit is refused with 429 (`errors.TooManyRequests`), which the gateway passes on
with `Retry-After` and the SDK retries: the queue, and the memory its input tensors hold, stays
bounded however fast one tenant submits, and another tenant's work is never refused for it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from loraplane.core import errors


def queued_tokens(ops: Iterable[tuple[str, int]]) -> dict[str, int]:
    """tenant -> tokens of its queued work, from (tenant, tokens) of every queued op. Pure."""
    out: dict[str, int] = {}
    for tenant, tokens in ops:
        out[tenant] = out.get(tenant, 0) + tokens
    return out


def check_room(queued: Mapping[str, int], tenant: str, tokens: int, *, per_tenant: int, total: int) -> None:
    """Raise TooManyRequests when `tokens` more of `tenant`'s work would pass a limit. Pure.

    A tenant with nothing queued is always admitted, so one request larger than a limit still runs
    (its size is capped elsewhere: `max_request_tokens`).
    """
    mine = queued.get(tenant, 0)
    if mine and mine + tokens > per_tenant:
        raise errors.TooManyRequests(
            f"tenant {tenant or '-'!r} has {mine} tokens of work queued on this runtime, its limit is "
            f"{per_tenant}; retry when some has run", retry_after_s=1.0, field="max_queued_tokens_per_tenant")
    everyone = sum(queued.values())
    if mine and everyone + tokens > total:
        raise errors.TooManyRequests(
            f"this runtime has {everyone} tokens of work queued, its limit is {total}; retry shortly",
            retry_after_s=1.0, field="max_queued_tokens")


def check_sample_room(waiting: Mapping[str, int], tenant: str, *, per_tenant: int) -> None:
    """Raise TooManyRequests when `tenant` already has `per_tenant` sample requests waiting to join
    the decode batch. Pure. The runtime's own bound (`max_queued_samples`, 503) stays behind it."""
    mine = waiting.get(tenant, 0)
    if mine >= per_tenant:
        raise errors.TooManyRequests(
            f"tenant {tenant or '-'!r} has {mine} sample requests waiting on this runtime, its limit is "
            f"{per_tenant}; retry when some have started", retry_after_s=1.0, field="max_queued_samples_per_tenant")
