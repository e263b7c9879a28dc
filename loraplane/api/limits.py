"""Per-request caps and per-tenant rates: the decisions behind the gateway's 413 and 429 answers.

Callers: `guards.RateLimit` (request rates) and `Gateway` (the size of a sample request). Plain
functions and plain data with time passed in, so table tests pin them without a server.

Design notes
============
* A token bucket per tenant: `burst` requests at once, refilled at `rate_per_s`. A tenant that
  floods gets 429s with the wait until its next token, and no other tenant notices.
* The bucket table is bounded: tenants come from the key table, so it holds one entry per tenant
  that has called, never one per request or per client.
* A sample request's cost is what it asks the model thread to produce: `num_samples` sequences of
  up to `max_tokens` new tokens each, after a prompt that is prefilled once. Both are capped so that
  no legal request can hold a runtime for an unbounded time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from loraplane.core import errors
from loraplane.core.settings import GatewaySettings


@dataclass
class TokenBucket:
    """`tokens` left (fractional) as of `updated` (monotonic seconds)."""

    tokens: float
    updated: float


@dataclass
class TenantBuckets:
    """One `TokenBucket` per tenant; `take` decides whether a request may pass now."""

    rate_per_s: float
    burst: int
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def take(self, tenant: str, now: float) -> float:
        """Spend one token of `tenant` at time `now`: 0.0 when the request may pass, else the
        seconds until a token is available (nothing is spent). Mutates only this tenant's bucket."""
        bucket = self.buckets.get(tenant)
        if bucket is None:
            bucket = self.buckets[tenant] = TokenBucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.updated) * self.rate_per_s)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate_per_s if self.rate_per_s > 0 else float("inf")


@dataclass(frozen=True)
class SampleCaps:
    """The largest sample request a runtime accepts."""

    #: tokens of one prompt
    max_prompt_tokens: int = 32768
    #: num_samples x max_tokens of one request
    max_sample_tokens: int = 65536


def caps_from(settings: GatewaySettings) -> SampleCaps:
    return SampleCaps(max_prompt_tokens=settings.max_prompt_tokens, max_sample_tokens=settings.max_sample_tokens)


def check_sample_size(caps: SampleCaps, *, prompt_tokens: int, num_samples: int, max_tokens: int) -> None:
    """Raise PayloadTooLarge (413) naming the field and the cap when a sample request is over one.

    Pure; called by `Gateway.asample` before anything is sent to a runtime.
    """
    if prompt_tokens > caps.max_prompt_tokens:
        raise errors.PayloadTooLarge(
            f"the prompt has {prompt_tokens} tokens, over this server's limit of {caps.max_prompt_tokens}",
            field="prompt")
    total = num_samples * max_tokens
    if total > caps.max_sample_tokens:
        raise errors.PayloadTooLarge(
            f"num_samples x max_tokens = {num_samples} x {max_tokens} = {total} new tokens, over this server's "
            f"limit of {caps.max_sample_tokens} per request; split it into several requests",
            field="sampling_params.max_tokens")
