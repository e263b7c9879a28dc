"""FastAPI dependencies: the gateway object, the caller's tenant, and tenant-checked lookups.

Callers: the route modules, as `Annotated[...]` parameters. Ownership is checked here once, so no
route repeats it: a resource of another tenant is a 404, exactly like a missing one. They are
`async def` although they never await: FastAPI runs plain `def` dependencies in a worker thread,
and that hop cost more than the whole dependency on the per-step path.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Request
from pydantic import BaseModel, ValidationError

from loraplane.api import ids
from loraplane.api.gateway import Gateway
from loraplane.api.guards import TENANT_KEY
from loraplane.api.records import SessionRecord
from loraplane.core import errors

M = TypeVar("M", bound=BaseModel)


async def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def get_tenant(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> str:
    """The tenant `guards.Authenticate` found for the X-API-Key header (it answered 401 already
    when the key is missing or unknown). `x_api_key` is declared so that the API's description
    names the header."""
    return tenant_of(request)


def tenant_of(request: Request) -> str:
    tenant = request.scope.get(TENANT_KEY)
    if tenant is None:
        raise errors.Unauthenticated("missing API key: send it in the X-API-Key header")
    return tenant


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
TenantDep = Annotated[str, Depends(get_tenant)]


async def owned_session(session_id: str, gw: GatewayDep, tenant: TenantDep) -> SessionRecord:
    """The session record named in the path, if it is the caller's."""
    return gw.records.session(tenant, ids.check_session_id(session_id))


async def owned_run(run_id: str, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    """The training run (run.json) named in the path, if it is the caller's."""
    return gw.records.run(tenant, run_id)


SessionDep = Annotated[SessionRecord, Depends(owned_session)]
RunDep = Annotated[dict[str, Any], Depends(owned_run)]


# ---- the per-step routes' lean path ---------------------------------------------------------
# forward_backward, optim_step and retrieve_future run once per training step each. They take
# only the `Request` and call these two instead of declaring dependencies and a body model:
# FastAPI's dependency solving and body handling cost more per call than the gateway's own work.

def caller(request: Request) -> tuple[Gateway, str]:
    """(gateway, tenant) of a per-step request; 401 like `get_tenant`. Callers: routes.training,
    routes.futures."""
    return request.app.state.gateway, tenant_of(request)


async def json_body(request: Request, model: type[M]) -> M:
    """The request's JSON body as `model`, validated straight from the bytes (one pass, no
    intermediate dict); a bad or missing field is a 400 naming it, as on every other route."""
    raw = await request.body()
    if not raw.strip():
        raise errors.InvalidInput("body: Field required", field="body")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        raise errors.invalid_input(exc.errors()) from None
