"""Sampling calls: create_sampling_session, samplers/{id}, asample."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from loraplane.api import protocol
from loraplane.api.deps import GatewayDep, TenantDep

router = APIRouter(tags=["sampling"])


@router.post("/create_sampling_session")
async def create_sampling_session(
    body: protocol.CreateSamplingSession, gw: GatewayDep, tenant: TenantDep
) -> dict[str, Any]:
    """A sampling client: of a sampler path a training client saved, or of the base model alone."""
    return await gw.create_sampling_session(tenant, body)


@router.get("/samplers/{sampler_id}")
async def get_sampler(sampler_id: str, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    """The sampler's base model and path, for the SDK's `get_base_model` and tokenizer."""
    return gw.sampler_view(tenant, sampler_id)


@router.post("/asample")
async def asample(body: protocol.Sample, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    return await gw.asample(tenant, body)
