"""Training calls: create_model, get_info, forward_backward, optim_step, saves, loads, unload."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request

from loraplane.api import protocol
from loraplane.api.deps import GatewayDep, TenantDep

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


@router.post("/forward_backward")
async def forward_backward(
    request: Request, gw: GatewayDep, tenant: TenantDep,
    content_encoding: Annotated[str | None, Header()] = None,
) -> dict[str, Any]:
    """Protobuf in (maybe zstd); forwarded to the runtime as bytes (see `codecs.routing_fields`)."""
    return await gw.forward_backward(tenant, await request.body(), content_encoding)


@router.post("/optim_step")
async def optim_step(body: protocol.OptimStep, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    return await gw.optim_step(tenant, body)


@router.post("/save_weights")
async def save_weights(body: protocol.SaveWeights, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    return await gw.save_weights(tenant, body)


@router.post("/save_weights_for_sampler")
async def save_weights_for_sampler(
    body: protocol.SaveWeightsForSampler, gw: GatewayDep, tenant: TenantDep
) -> dict[str, Any]:
    return await gw.save_for_sampler(tenant, body)


@router.post("/load_weights")
async def load_weights(body: protocol.LoadWeights, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    return await gw.load_weights(tenant, body)
