"""FastAPI dependencies: the gateway object, the caller's tenant, and tenant-checked lookups.

Callers: the route modules, as `Annotated[...]` parameters. Ownership is checked here once, so no
route repeats it: a resource of another tenant is a 404, exactly like a missing one. They are
`async def` although they never await: FastAPI runs plain `def` dependencies in a worker thread,
and that hop cost more than the whole dependency on the per-step path.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Header, Request

from loraplane.api import ids
from loraplane.api.auth import KeyTable
from loraplane.api.gateway import Gateway


async def get_gateway(request: Request) -> Gateway:
    return request.app.state.gateway


async def get_tenant(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> str:
    """The tenant of the X-API-Key header; 401 with a JSON body when missing or unknown."""
    keys: KeyTable = request.app.state.keys
    return keys.tenant_for(x_api_key)


GatewayDep = Annotated[Gateway, Depends(get_gateway)]
TenantDep = Annotated[str, Depends(get_tenant)]


async def owned_session(session_id: str, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    """The session record named in the path, if it is the caller's."""
    return gw.records.session(tenant, ids.check_session_id(session_id))


async def owned_run(run_id: str, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    """The training run (run.json) named in the path, if it is the caller's."""
    return gw.records.run(tenant, run_id)


SessionDep = Annotated[dict[str, Any], Depends(owned_session)]
RunDep = Annotated[dict[str, Any], Depends(owned_run)]
