"""Training runs and checkpoints (the RestClient's calls), weights_info, server capabilities.

Listings are plain `def` routes: FastAPI runs them in its thread pool, so reading many records
from the store never holds the event loop that every tenant's calls share.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Response

from loraplane.api import protocol, records
from loraplane.api.deps import GatewayDep, RunDep, TenantDep
from loraplane.core import artifacts

router = APIRouter(tags=["checkpoints"])


def _page(items: list[Any], offset: int, limit: int) -> tuple[list[Any], dict[str, int]]:
    return items[offset : offset + limit], {"offset": offset, "limit": limit, "total_count": len(items)}


def _run_view(gw: Any, tenant: str, run: dict[str, Any]) -> dict[str, Any]:
    cps = gw.records.checkpoints(tenant, run["training_run_id"])
    last = next((c for c in reversed(cps) if c["checkpoint_type"] == "training"), None)
    last_sampler = next((c for c in reversed(cps) if c["checkpoint_type"] == "sampler"), None)
    return records.training_run_view(run, last_checkpoint=last, last_sampler=last_sampler)


@router.get("/training_runs")
def list_training_runs(
    gw: GatewayDep, tenant: TenantDep,
    limit: int = Query(20, ge=0, le=10000), offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    page, cursor = _page(gw.records.runs(tenant), offset, limit)
    return {"training_runs": [_run_view(gw, tenant, r) for r in page], "cursor": cursor}


@router.get("/training_runs/{run_id}")
def get_training_run(run: RunDep, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    return _run_view(gw, tenant, run)


@router.get("/training_runs/{run_id}/checkpoints")
def list_checkpoints(run: RunDep, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    cps = gw.records.checkpoints(tenant, run["training_run_id"])
    return {"checkpoints": cps, "cursor": {"offset": 0, "limit": len(cps), "total_count": len(cps)}}


@router.delete("/training_runs/{run_id}/checkpoints/{segment}/{name}", status_code=204)
async def delete_checkpoint(run_id: str, segment: str, name: str, gw: GatewayDep, tenant: TenantDep) -> Response:
    path = artifacts.parse_tinker_path(f"{artifacts.TINKER_SCHEME}{run_id}/{segment}/{name}", field="checkpoint_id")
    gw.records.delete_checkpoint(tenant, path)
    return Response(status_code=204)


@router.put("/training_runs/{run_id}/checkpoints/{segment}/{name}/ttl", status_code=204)
async def set_checkpoint_ttl(
    run_id: str, segment: str, name: str, body: protocol.CheckpointTtl, gw: GatewayDep, tenant: TenantDep
) -> Response:
    path = artifacts.parse_tinker_path(f"{artifacts.TINKER_SCHEME}{run_id}/{segment}/{name}", field="checkpoint_id")
    gw.records.set_ttl(tenant, path, body.ttl_seconds)
    return Response(status_code=204)


@router.get("/checkpoints")
def list_user_checkpoints(
    gw: GatewayDep, tenant: TenantDep,
    limit: int = Query(100, ge=0, le=10000), offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    every = [cp for run in gw.records.runs(tenant) for cp in gw.records.checkpoints(tenant, run["training_run_id"])]
    every.sort(key=lambda c: c.get("time") or "", reverse=True)
    page, cursor = _page(every, offset, limit)
    return {"checkpoints": page, "cursor": cursor}


@router.post("/weights_info")
async def weights_info(body: protocol.WeightsInfo, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    path = artifacts.parse_tinker_path(body.tinker_path, field="tinker_path")
    gw.records.checkpoint(tenant, path, field="tinker_path")
    run = gw.records.run(tenant, path.run_id, field="tinker_path")
    lora = run.get("lora") or {}
    return {
        "base_model": run["base_model"], "is_lora": True, "lora_rank": lora.get("rank"),
        "train_unembed": lora.get("train_unembed", True), "train_mlp": lora.get("train_mlp", True),
        "train_attn": lora.get("train_attn", True), "optimizer_config": {"type": "adamw"},
    }


@router.get("/get_server_capabilities")
async def get_server_capabilities(gw: GatewayDep, _: TenantDep) -> dict[str, Any]:
    return {"supported_models": [{"model_name": m, "trainable": True, "sampleable": True} for m in gw.models]}
