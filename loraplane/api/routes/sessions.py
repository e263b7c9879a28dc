"""Bootstrap and sessions: client config, create/heartbeat/finish, telemetry, session REST."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Query, Request

from loraplane.api import ids, protocol, sessions_expiry
from loraplane.api.deps import GatewayDep, SessionDep, TenantDep
from loraplane.core import errors

router = APIRouter(tags=["sessions"])


class SessionFinished(errors.UserError):
    """A heartbeat for a finished session: 410 tells the SDK to stop heartbeating."""

    status_code = 410

#: What `client/config` announces. The defaults of the SDK, spelled out: HTTP/1.1 (pyqwest), chunks
#: sent in parallel (the runtime reorders them by seq_id), uncompressed bodies.
CLIENT_CONFIG: dict[str, Any] = {
    "pjwt_auth_enabled": False,
    "parallel_fwdbwd_chunks": True,
    "proto_compress_fwdbwd": False,
    "sample_use_retrieve_futures": False,
    "custom_loss_server_side": False,
    "sample_join_sampling_session": False,
}


@router.post("/client/config")
async def client_config(_: TenantDep, body: protocol.SdkVersion | None = None) -> dict[str, Any]:
    return CLIENT_CONFIG


@router.post("/client/dynamic_config")
async def dynamic_config(_: TenantDep, body: protocol.SdkVersion | None = None) -> dict[str, Any]:
    return {"refresh_interval_sec": 300, "sample_cancel_enabled": False}


@router.post("/create_session")
async def create_session(body: protocol.CreateSession, gw: GatewayDep, tenant: TenantDep) -> dict[str, Any]:
    return gw.create_session(tenant, body)


@router.post("/session_heartbeat")
async def session_heartbeat(
    body: protocol.SessionRefBody, request: Request, gw: GatewayDep, tenant: TenantDep
) -> dict[str, Any]:
    record = gw.records.session(tenant, ids.check_session_id(body.session_id))
    if record.finished is None:
        record = sessions_expiry.touch(gw, record, float(request.app.state.session_expiry_s or 0) or 60.0)
    if record.finished is not None:
        raise SessionFinished(f"session {body.session_id!r} is finished")
    return {"type": "session_heartbeat"}


@router.post("/sessions/{session_id}/finish")
async def finish_session(
    session_id: str, session: SessionDep, gw: GatewayDep, tenant: TenantDep, body: protocol.FinishSession | None = None
) -> dict[str, Any]:
    return await gw.finish_session(tenant, session_id, body.reason if body else None)


@router.post("/telemetry")
async def telemetry(_: TenantDep, body: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"status": "accepted"}


# Listings read the store: plain `def` routes, which FastAPI runs in its thread pool, so that a
# long listing never holds the event loop (and every other tenant's calls) while it reads.

@router.get("/sessions")
def list_sessions(
    gw: GatewayDep, tenant: TenantDep, limit: int = Query(100, ge=0, le=10000), offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    return {"sessions": gw.records.session_ids(tenant)[offset : offset + limit]}


@router.get("/sessions/{session_id}")
def get_session(session_id: str, session: SessionDep, gw: GatewayDep) -> dict[str, Any]:
    prefix = f"{session_id}:train:"
    runs = sorted(r for r in gw.store.run_ids() if r.startswith(prefix))
    out: dict[str, Any] = {
        "training_run_ids": runs,
        "sampler_ids": gw.records.samplers_of_session(session_id),
        "user_metadata": session.user_metadata,
    }
    if session.display_name:
        out["display_name"] = session.display_name
    return out
