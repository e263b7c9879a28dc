"""LoRAJob manifests over the gateway: what `loraplane jobs` (apply, get, describe, delete) calls.

A tenant sees and changes only its own jobs: another tenant's job is a 404, like a missing one,
and a manifest must name the caller's tenant. Objects are returned as the Kubernetes API server
would return them (apiVersion, kind, metadata, spec with defaults, status), in single-node mode
from the embedded job store and on a cluster from the LoRAJob custom resources.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Response

from loraplane.api.deps import GatewayDep, TenantDep
from loraplane.core import errors, quotas
from loraplane.core.models.v1alpha1 import LoRAJob, Phase

#: The prefix of loraplane's own API (the Tinker API is under /api/v1).
PREFIX = "/loraplane/v1"

router = APIRouter(tags=["jobs"])


async def _owned(gw: GatewayDep, tenant: str, name: str) -> LoRAJob:
    job = await gw.cp.get_job(name)
    if job is None or job.spec.tenant != tenant:
        raise errors.NotFound(f"job {name!r} not found", field="name")
    return job


async def _check_quota(gw: GatewayDep, tenant: str, manifest: dict[str, Any]) -> None:
    """The tenant's rank and training-client limits, for a job that is not there yet."""
    spec = manifest.get("spec") if isinstance(manifest.get("spec"), dict) else {}
    quota = gw.quotas.for_tenant(tenant)
    rank = (spec.get("lora") or {}).get("rank") if isinstance(spec.get("lora"), dict) else None
    if isinstance(rank, int):
        quotas.check_rank(tenant, rank, quota)
    name = (manifest.get("metadata") or {}).get("name") if isinstance(manifest.get("metadata"), dict) else None
    if quota.max_training_clients is not None and await gw.cp.get_job(str(name)) is None:
        live = [j for j in await gw.cp.list_jobs(tenant=tenant)
                if j.status.phase not in (Phase.SUCCEEDED, Phase.FAILED)]
        quotas.check_count(tenant, "jobs", "max_training_clients", len(live), quota.max_training_clients)


@router.post("/jobs")
async def apply_job(response: Response, gw: GatewayDep, tenant: TenantDep,
                    manifest: dict[str, Any] = Body(...)) -> dict[str, Any]:
    """Create the manifest's job (201) or update its mutable fields (200), as `kubectl apply` does."""
    await _check_quota(gw, tenant, manifest)
    job, created = await gw.cp.apply_job(manifest, tenant=tenant)
    response.status_code = 201 if created else 200
    return job.to_body()


@router.get("/jobs")
async def list_jobs(gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    jobs = sorted(await gw.cp.list_jobs(tenant=tenant), key=lambda j: j.metadata.name)
    return {"apiVersion": "v1", "kind": "List", "items": [j.to_body() for j in jobs]}


@router.get("/jobs/{name}")
async def get_job(name: str, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    return (await _owned(gw, tenant, name)).to_body()


@router.get("/jobs/{name}/events")
async def job_events(name: str, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    await _owned(gw, tenant, name)
    return {"apiVersion": "v1", "kind": "List", "items": await gw.cp.job_events(name)}


@router.delete("/jobs/{name}")
async def delete_job(name: str, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    await _owned(gw, tenant, name)
    await gw.cp.delete_job(name)
    return {"kind": "Status", "status": "Success", "details": {"name": name, "kind": "lorajobs"}}
