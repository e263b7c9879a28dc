"""Training calls: create_model, get_info, forward_backward, optim_step, saves, loads, unload."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from loraplane.api import protocol
from loraplane.api.deps import GatewayDep, TenantDep, caller, json_body

router = APIRouter(tags=["training"])


@router.post("/create_model")
async def create_model(body: protocol.CreateModel, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    return await gw.create_model(tenant, body)


@router.post("/get_info")
async def get_info(body: protocol.ModelRef, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    return await gw.get_info(tenant, body.model_id)


@router.post("/unload_model")
async def unload_model(body: protocol.ModelRef, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    return await gw.unload(tenant, body.model_id)


@router.post("/forward_backward", response_model=None)
async def forward_backward(request: Request) -> JSONResponse:
    """Protobuf in (maybe zstd); forwarded to the runtime as bytes (see `codecs.routing_fields`).
    Per-step: no declared dependencies (see `deps.caller`)."""
    gw, tenant = caller(request)
    body = await request.body()
    return JSONResponse(await gw.forward_backward(tenant, body, request.headers.get("content-encoding")))


@router.post("/optim_step", response_model=None)
async def optim_step(request: Request) -> JSONResponse:
    """Per-step: no declared dependencies (see `deps.caller`)."""
    gw, tenant = caller(request)
    return JSONResponse(await gw.optim_step(tenant, await json_body(request, protocol.OptimStep)))


@router.post("/save_weights")
async def save_weights(body: protocol.SaveWeights, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    return await gw.save_weights(tenant, body)


@router.post("/save_weights_for_sampler")
async def save_weights_for_sampler(
    body: protocol.SaveWeightsForSampler, gw: GatewayDep, tenant: TenantDep
) -> dict[str, Any]:
    """Weights for sampling: a sampler path (`name` given) or an unnamed snapshot the runtime keeps.

    The SDK's `save_weights_and_get_sampling_client` calls this, then `create_sampling_session`.
    """
    return await gw.save_for_sampler(tenant, body)


@router.post("/load_weights")
async def load_weights(body: protocol.LoadWeights, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    return await gw.load_weights(tenant, body)
