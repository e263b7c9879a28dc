"""The gateway's per-tenant series: requests by tenant and operation, and refusals by limit.

Callers: `app.create_app` installs `TenantMetrics` beside the request metrics, outside the rate
limit, so that its 429s are counted too. The tenant is the one `guards.Authenticate` put in the
scope; requests without a valid key are not counted per tenant (no tenant label to give them).

A refusal is labelled with the setting that refused it, read from the error's `field`: a quota's
403 (`max_training_clients`, `max_lora_rank`, `max_sampling_clients`, `max_storage_bytes`), the
gateway's rate limit (`rate_per_s`) or a runtime's queue limit (`max_queued_tokens_per_tenant`,
`max_queued_tokens`), both 429. The runtime's own series (`loraplane_runtime_tenant_*`) say what
each tenant's work cost there.
"""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, Counter
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loraplane.api.guards import TENANT_KEY
from loraplane.asgi.request_scope import ResponseWatch
from loraplane.core.settings import TenantQuota

#: error fields of quota refusals that are not named after their setting
_QUOTA_FIELDS = {"lora_config.rank": "max_lora_rank"} | {name: name for name in TenantQuota.model_fields}
_RATE_LIMIT = "rate_per_s"


def op_of(route: str | None) -> str:
    """The operation a route template names: `/api/v1/forward_backward` -> `forward_backward`. Pure."""
    if not route:
        return "unmatched"
    return route.removeprefix("/api/v1").strip("/") or "/"


def refused_by(status: int, error_body: bytes) -> str | None:
    """The limit behind a refusal (the setting's name), None when the answer is no quota's or rate's. Pure."""
    if status not in (403, 429):
        return None
    try:
        field = json.loads(error_body).get("field")
    except (ValueError, AttributeError):
        field = None
    if status == 403:
        return _QUOTA_FIELDS.get(field) if isinstance(field, str) else None
    return field if isinstance(field, str) and field else _RATE_LIMIT


class TenantMetrics:
    """Pure ASGI middleware; see the module notes."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "loraplane_gateway_tenant_requests", "Gateway requests by tenant, operation and status class.",
            ["tenant", "op", "status"], registry=registry)
        self.rejections = Counter(
            "loraplane_gateway_tenant_rejections", "Requests refused by a tenant quota (403) or a rate or "
            "queue limit (429), by tenant and the setting that refused them.", ["tenant", "limit"], registry=registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answer = ResponseWatch(1024)
        counted = False

        async def watched(message: Message) -> None:
            nonlocal counted
            answer.observe(message)
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False) and not counted:
                # counted when the client has its answer: a refusal keeps its tenant's turn (and
                # this call) a while after that (`guards.RateLimit`), and a scrape in between
                # must already see it
                counted = True
                self._count(scope, answer)

        try:
            await self.app(scope, receive, watched)
        finally:
            if not counted:
                self._count(scope, answer)

    def _count(self, scope: Scope, answer: ResponseWatch) -> None:
        tenant = scope.get(TENANT_KEY)
        if tenant:
            route = getattr(scope.get("route"), "path", None)
            self.requests.labels(tenant, op_of(route), f"{answer.status // 100}xx").inc()
            limit = refused_by(answer.status, bytes(answer.error_body))
            if limit is not None:
                self.rejections.labels(tenant, limit).inc()
