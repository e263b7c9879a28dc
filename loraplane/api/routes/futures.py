"""retrieve_future (long-polled; protobuf for forward/backward and sampling results)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from loraplane.api import futures, protocol
from loraplane.api.deps import GatewayDep, TenantDep

router = APIRouter(tags=["futures"])


@router.post("/retrieve_future", response_model=None)
async def retrieve_future(body: protocol.RetrieveFuture, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any] | Response:
    return await futures.retrieve(gw, tenant, body.request_id)
