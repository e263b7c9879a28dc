"""retrieve_future (long-polled; protobuf for forward/backward and sampling results)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from loraplane.api import codecs, futures, protocol
from loraplane.api.deps import caller, json_body

router = APIRouter(tags=["futures"])


@router.post("/retrieve_future", response_model=None)
async def retrieve_future(request: Request) -> Response:
    """Per-step: no declared dependencies (see `deps.caller`)."""
    gw, tenant = caller(request)
    body = await json_body(request, protocol.RetrieveFuture)
    answer = await futures.retrieve(gw, tenant, body.request_id)
    return answer if isinstance(answer, Response) else codecs.FutureJSON(answer)
