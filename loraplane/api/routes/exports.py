"""Weights export calls: save_weights_external, its download URLs, and the signed file route."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse

from loraplane.api import exports
from loraplane.api.deps import GatewayDep, TenantDep
from loraplane.core import artifacts

router = APIRouter(tags=["exports"])


def _key(request: Request) -> bytes:
    """The URL signing key, read once per app (see `exports.signing_key`)."""
    key = getattr(request.app.state, "url_signing_key", None)
    if key is None:
        gw = request.app.state.gateway
        key = exports.signing_key(gw.store, getattr(request.app.state, "url_signing_secret", None))
        request.app.state.url_signing_key = key
    return key


@router.post("/save_weights_external")
async def save_weights_external(
    body: exports.SaveWeightsExternal, gw: GatewayDep, tenant: TenantDep
) -> dict[str, Any]:
    return await exports.save_weights_external(gw, tenant, body)


@router.get("/training_runs/{run_id}/checkpoints/{segment}/{name}/external_weights_urls")
async def external_weights_urls(
    run_id: str, segment: str, name: str, request: Request, gw: GatewayDep, tenant: TenantDep
) -> dict[str, Any]:
    path = artifacts.parse_tinker_path(f"{artifacts.TINKER_SCHEME}{run_id}/{segment}/{name}", field="checkpoint_id")
    return exports.external_urls(gw, tenant, path, str(request.base_url), _key(request))


@router.get("/external_weights_files/{run_id}/{name}/{file}")
async def external_weights_file(
    run_id: str, name: str, file: str, request: Request, gw: GatewayDep,
    tenant: str = "", expires: str | None = None, sig: str | None = None,
) -> FileResponse:
    """No API key: the signature in the query is the credential (see `exports`)."""
    path = artifacts.TinkerPath(run_id, "external_weights", artifacts.check_name(name, field="name"))
    local = exports.file_for_grant(gw, path, file, tenant, expires, sig, _key(request))
    return FileResponse(local, media_type="application/octet-stream", filename=file)
