"""`retrieve_future`: find the future a request id names, long-poll it, and translate its result.

Callers: `routes.futures`. The request id (`ids.FutureRef`) names the owner (a training run or a
sampler, hence the session and the tenant), the runtime pod that holds the future, and the op.

Design notes
============
* Ownership is checked before anything else: another tenant's future is a 404, like a missing one.
* The runtime holds the request for up to the long-poll budget; the gateway answers `try_again`
  after it, which the SDK re-polls at once (tinker-protocol 4.2).
* Control-plane futures (create_model, create-from-state, unload) wait on the job instead.
* Saves write their checkpoint.json here, when the runtime reports the files are complete; the
  write is idempotent, so a retried retrieve (or another replica) writes the same record.
"""

from __future__ import annotations

from typing import Any

from fastapi import Response

from loraplane.api import codecs, ids, sessions_expiry
from loraplane.api.dataplane import PROTOBUF, Result
from loraplane.api.gateway import CONTROL_PLANE_POD, Gateway
from loraplane.core import artifacts, errors, phases
from loraplane.core.models.v1alpha1 import RuntimeRef
from loraplane.core.runtime_ops import FORWARD_KINDS, OpKind

#: Ops whose result is protobuf, passed on to the SDK unchanged.
_PROTOBUF_OPS = FORWARD_KINDS | {OpKind.SAMPLE}
#: Save ops and the Tinker `type` of their answer.
_SAVE_TYPES = {OpKind.SAVE_STATE: "save_weights", OpKind.SAVE_SAMPLER: "save_weights_for_sampler",
               OpKind.SAVE_EXTERNAL: "save_weights_external"}


async def retrieve(gw: Gateway, tenant: str, request_id: str) -> dict[str, Any] | Response:
    ref = ids.parse_request_id(request_id)
    expired = sessions_expiry.future_answer(gw.records.session(tenant, ref.session_id))
    if expired is not None:
        return expired
    if ref.pod == CONTROL_PLANE_POD:
        return await _control_plane_future(gw, tenant, ref)
    runtime = await _runtime_of(gw, tenant, ref)
    if runtime is None:
        return codecs.failed(f"the runtime that held {request_id!r} is gone; submit the call again", "server")
    # The runtime checks the owner too: the request id's last part is the runtime's id, which a
    # caller could copy from someone else's request id into one of its own.
    owner = gw.adapter(ref.tinker_id) if ref.kind == "train" else ref.owner
    result = await gw.runtimes.result(runtime.address, ref.runtime_request_id, wait_s=gw.long_poll_s, owner=owner)
    return translate(gw, ref, result)


async def _runtime_of(gw: Gateway, tenant: str, ref: ids.FutureRef) -> RuntimeRef | None:
    if ref.kind == "train":
        runtime = gw.cp.runtime_for(ids.job_name(ref.tinker_id))
        if runtime is None:
            raise errors.NotFound(f"unknown request_id (model {ref.tinker_id!r} is not running)", field="request_id")
    else:
        record = gw.records.sampler(tenant, ref.tinker_id)
        runtime = next((r for r in await gw.cp.runtimes_for_model(record.base_model) if r.pod == ref.pod), None)
        if runtime is None and record.kind == "snapshot" and record.job:
            runtime = gw.cp.runtime_for(record.job)
    return runtime if runtime is not None and runtime.pod == ref.pod else None


async def _control_plane_future(gw: Gateway, tenant: str, ref: ids.FutureRef) -> dict[str, Any]:
    model_id = ref.tinker_id
    if ref.op == OpKind.UNLOAD_MODEL:
        return {"model_id": model_id, "type": "unload_model"}
    name = ids.job_name(model_id)
    job = await gw.cp.get_job(name)
    if job is None or job.spec.tenant != tenant:
        raise errors.NotFound(f"unknown request_id {ref.encode()!r}", field="request_id")
    try:
        await gw.cp.wait_running(name, timeout=gw.long_poll_s)
    except errors.CapacityError:
        if not start_overdue(job.metadata.creationTimestamp, gw.clock(), gw.job_start_timeout_s):
            return codecs.try_again(ref.encode())
        latest = await gw.cp.get_job(name) or job
        await gw.cp.delete_job(name)
        why = latest.status.message or f"phase {latest.status.phase.value}"
        return codecs.failed(
            f"training run {model_id!r} did not start within {gw.job_start_timeout_s:g} s ({why}), so it "
            f"was deleted; retry when a runtime of {latest.spec.base_model!r} has room "
            "(LORAPLANE_GATEWAY__JOB_START_TIMEOUT_S sets the wait)", "server")
    except errors.UserError as exc:
        return codecs.failed(exc.message, "user")
    if ref.op == OpKind.CREATE_MODEL:
        return {"model_id": model_id, "type": "create_model"}
    path = job.spec.resume_from.path if job.spec.resume_from else None
    return {"model_id": model_id, "path": path, "type": "load_weights"}


def start_overdue(created: str | None, now: str, timeout_s: float) -> bool:
    """Whether a job created at `created` (ISO 8601) that is not running at `now` has waited past
    `timeout_s`. Pure; called by retrieve_future for create_model and create-from-state. A job
    without a creation time is never overdue."""
    started, current = phases.parse_time(created), phases.parse_time(now)
    return started is not None and current is not None and (current - started).total_seconds() > timeout_s


def translate(gw: Gateway, ref: ids.FutureRef, result: Result) -> dict[str, Any] | Response:
    """Runtime result -> the Tinker future answer for `ref.op`."""
    if result.state == "pending":
        return codecs.try_again(ref.encode())
    if result.state == "failed":
        return codecs.failed(result.error, result.category)
    if result.state == "proto":
        if ref.op not in _PROTOBUF_OPS:
            return codecs.failed(f"runtime returned protobuf for a {ref.op} op", "server")
        return Response(content=result.payload, media_type=PROTOBUF)
    body = result.result or {}
    if ref.op in _PROTOBUF_OPS:
        return codecs.failed(f"runtime returned JSON for a {ref.op} op", "server")
    if ref.op == OpKind.OPTIM_STEP:
        # The runtime answers the optimizer's metrics, bare or under "metrics".
        metrics = body["metrics"] if isinstance(body.get("metrics"), dict) else body
        return {"metrics": {str(k): float(v) for k, v in metrics.items() if isinstance(v, int | float)}}
    if ref.op in _SAVE_TYPES:
        path = artifacts.tinker_path_for_url(gw.store.url, str(body.get("dest", "")))
        if path is None:
            return codecs.failed(f"runtime saved to an unexpected place: {body.get('dest')!r}", "server")
        size = body.get("size_bytes")
        gw.records.finish_save(path, now=gw.clock(), step=body.get("step"),
                               size_bytes=int(size) if isinstance(size, int) else None)
        return {"path": str(path), "type": _SAVE_TYPES[ref.op]}
    if ref.op == OpKind.SNAPSHOT:
        _, _, sampler = ids.id_for_owner(str(body.get("sampler_id", "")))
        return {"sampling_session_id": sampler, "type": "save_weights_for_sampler"}
    if ref.op == OpKind.LOAD_STATE:
        source = artifacts.tinker_path_for_url(gw.store.url, str(body.get("source", "")))
        return {"path": str(source) if source else None, "model_id": ref.tinker_id, "type": "load_weights"}
    return codecs.failed(f"unknown op {ref.op!r}", "server")
