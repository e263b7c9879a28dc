"""EmbeddedControlPlane: jobs placed, dispatched onto a runtime's API, persisted, and failed honestly.

The runtime here is a recording double of the runtime's adapter routes (docs/runtime-api.md),
mounted in process through the same transport that `loraplane serve` uses.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI, Request, Response

from loraplane.api import jobs
from loraplane.core import artifacts, errors
from loraplane.core.models.v1alpha1 import Phase, ResumeFrom
from loraplane.core.params import LoraConfig
from loraplane.singlenode.controlplane import EmbeddedControlPlane, ServedRuntime, resume_source, with_phase
from loraplane.singlenode.server import RuntimeTransport

pytestmark = pytest.mark.anyio
MODEL = "tiny/base"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def recording_runtime(calls: list[tuple[str, str, dict]], *, refuse: bool = False) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/adapters")
    async def create(request: Request) -> Response:
        body = await request.json()
        calls.append(("create", body["adapter_id"], body))
        if refuse:
            return Response('{"detail": "rank too large"}', status_code=400, media_type="application/json")
        return Response('{"adapter_id": "x"}', status_code=201, media_type="application/json")

    @app.post("/v1/adapters/{adapter_id}/load")
    async def load(adapter_id: str, request: Request) -> dict:
        calls.append(("load", adapter_id, await request.json()))
        return {"adapter_id": adapter_id}

    @app.delete("/v1/adapters/{adapter_id}")
    async def delete(adapter_id: str) -> Response:
        calls.append(("delete", adapter_id, {}))
        return Response(status_code=204)

    return app


def _plane(tmp_path: Path, calls: list, *, refuse: bool = False) -> EmbeddedControlPlane:
    store = artifacts.ArtifactStore(f"file://{tmp_path}/store")
    transport = RuntimeTransport({"runtime-0": recording_runtime(calls, refuse=refuse)})
    return EmbeddedControlPlane(store, [ServedRuntime("runtime-0", "http://runtime-0", MODEL)], transport=transport,
                                clock=lambda: "2026-01-01T00:00:00Z")


def _job(seq: int = 0, *, base_model: str = MODEL, resume: ResumeFrom | None = None):  # type: ignore[no-untyped-def]
    return jobs.build_job(tenant="alice", session_id="s-0123456789ab", model_seq_id=seq, base_model=base_model,
                          lora=LoraConfig(rank=8, seed=3), resume_from=resume)


async def test_a_created_job_runs_on_its_runtime_with_a_fresh_adapter(tmp_path: Path) -> None:
    calls: list = []
    cp = _plane(tmp_path, calls)
    job = await cp.create_job(_job())
    assert job.metadata.name == "s-0123456789ab-train-0"
    running = await cp.wait_running(job.metadata.name, timeout=5)
    assert running.status.phase == Phase.RUNNING
    assert cp.runtime_for(job.metadata.name).address == "http://runtime-0"
    assert calls == [("create", job.metadata.name, {"adapter_id": job.metadata.name, "rank": 8, "seed": 3,
                                                    "alpha": 32.0, "train_attn": True, "train_mlp": True,
                                                    "train_unembed": True, "expect_seq": 1})]
    again = await cp.create_job(_job())
    assert again.status.phase == Phase.RUNNING and len(calls) == 1
    assert [j.metadata.name for j in await cp.list_jobs(tenant="alice")] == [job.metadata.name]
    assert await cp.list_jobs(tenant="bob") == []
    await cp.delete_job(job.metadata.name)
    assert calls[-1] == ("delete", job.metadata.name, {})
    assert cp.runtime_for(job.metadata.name) is None
    await cp.close()


async def test_a_job_resumed_from_a_checkpoint_is_loaded(tmp_path: Path) -> None:
    calls: list = []
    cp = _plane(tmp_path, calls)
    job = await cp.create_job(_job(1, resume=ResumeFrom(path="tinker://s-0123456789ab:train:0/weights/a")))
    await cp.wait_running(job.metadata.name, timeout=5)
    kind, adapter, body = calls[0]
    assert (kind, adapter) == ("load", job.metadata.name)
    assert body == {"source": f"file://{tmp_path}/store/runs/s-0123456789ab:train:0/weights/a", "optimizer": True,
                    "expect_seq": 1}
    await cp.close()


async def test_refused_or_unplaceable_jobs_fail_with_the_reason(tmp_path: Path) -> None:
    cp = _plane(tmp_path, [], refuse=True)
    job = await cp.create_job(_job())
    with pytest.raises(errors.UserError, match="rank too large"):
        await cp.wait_running(job.metadata.name, timeout=5)
    other = await cp.create_job(_job(2, base_model="other/model"))
    with pytest.raises(errors.UserError):
        await cp.wait_running(other.metadata.name, timeout=5)
    assert (await cp.get_job(other.metadata.name)).status.phase == Phase.FAILED
    with pytest.raises(errors.NotFound):
        await cp.wait_running("nope", timeout=1)
    await cp.close()


async def test_conflicting_spec_for_a_live_job_is_refused(tmp_path: Path) -> None:
    cp = _plane(tmp_path, [])
    await cp.create_job(_job())
    changed = _job()
    changed.spec.lora.rank = 16
    with pytest.raises(errors.Conflict):
        await cp.create_job(changed)
    await cp.close()


async def test_after_a_restart_live_jobs_are_marked_failed_not_silently_fresh(tmp_path: Path) -> None:
    cp = _plane(tmp_path, [])
    job = await cp.create_job(_job())
    await cp.wait_running(job.metadata.name, timeout=5)
    await cp.close()
    restarted = _plane(tmp_path, [])
    restarted.load()
    loaded = await restarted.get_job(job.metadata.name)
    assert loaded.status.phase == Phase.FAILED and "restarted" in loaded.status.message
    assert restarted.runtime_for(job.metadata.name) is None
    await restarted.close()


@pytest.mark.parametrize(
    ("path", "url"),
    [("tinker://r/weights/a", "file:///s/runs/r/weights/a"), ("s3://b/x", "s3://b/x")],
)
def test_resume_sources_map_tinker_paths_onto_the_store(path: str, url: str) -> None:
    assert resume_source("file:///s", path) == url


def test_phase_changes_keep_one_condition_per_type() -> None:
    job = _job()
    a = with_phase(job, Phase.FAILED, reason="X", message="m1", now="t1")
    b = with_phase(a, Phase.FAILED, reason="Y", message="m2", now="t2")
    assert [(c.type, c.reason) for c in b.status.conditions] == [("Failed", "Y")]
    assert b.status.completion_time == "t2" and job.status.phase == Phase.PENDING
