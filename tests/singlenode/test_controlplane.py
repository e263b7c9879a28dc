"""EmbeddedControlPlane: the shared reconcile loop over an SQLite job store, against a fake runtime.

The runtime is `tests/operator/fake_runtime.py` (the runtime API answered at once, on 127.0.0.1).
The life-cycle scenarios that Kubernetes runs too are in tests/k8s/test_lifecycle_both_modes.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from loraplane.api import jobs
from loraplane.core import errors
from loraplane.core.models.v1alpha1 import Phase, ResumeFrom
from loraplane.core.params import LoraConfig
from loraplane.core.settings import OperatorSettings
from loraplane.singlenode.controlplane import EmbeddedControlPlane, ServedRuntime
from loraplane.singlenode.jobstore import SqliteJobStore
from tests.operator.fake_runtime import FakeRuntime

pytestmark = pytest.mark.anyio
MODEL = "tiny/base"
FAST = OperatorSettings(progress_interval_s=0.05, health_interval_s=0.1)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def runtime() -> Iterator[FakeRuntime]:
    rt = FakeRuntime(MODEL).start()
    yield rt
    rt.stop()


def _plane(tmp_path: Path, rt: FakeRuntime) -> EmbeddedControlPlane:
    return EmbeddedControlPlane(SqliteJobStore(tmp_path / "jobs.sqlite"), [ServedRuntime("runtime-0", rt.url, MODEL)],
                                store_url=f"file://{tmp_path}/store", settings=FAST)


@pytest.fixture
async def cp(tmp_path: Path, runtime: FakeRuntime) -> AsyncIterator[EmbeddedControlPlane]:
    plane = _plane(tmp_path, runtime)
    await plane.start()
    yield plane
    await plane.close()


def _job(seq: int = 0, *, base_model: str = MODEL, resume: ResumeFrom | None = None):  # type: ignore[no-untyped-def]
    return jobs.build_job(tenant="alice", session_id="s-0123456789ab", model_seq_id=seq, base_model=base_model,
                          lora=LoraConfig(rank=8, seed=3), resume_from=resume)


async def test_a_created_job_runs_on_its_runtime_with_a_fresh_adapter(cp: EmbeddedControlPlane,
                                                                       runtime: FakeRuntime) -> None:
    job = await cp.create_job(_job())
    name = job.metadata.name
    running = await cp.wait_running(name, timeout=5)
    assert running.status.phase == Phase.RUNNING and running.metadata.namespace == "default"
    assert cp.runtime_for(name).address == runtime.url
    assert runtime.adapters[f"default.{name}"]["rank"] == 8 and cp.adapter_id(name) == f"default.{name}"
    again = await cp.create_job(_job())
    assert again.status.phase == Phase.RUNNING and runtime.calls["POST /v1/adapters"] == 1
    assert [j.metadata.name for j in await cp.list_jobs(tenant="alice")] == [name]
    assert await cp.list_jobs(tenant="bob") == []
    reasons = [e["reason"] for e in await cp.job_events(name)]
    assert "Scheduled" in reasons and "Running" in reasons
    await cp.delete_job(name)
    assert runtime.adapters == {} and cp.runtime_for(name) is None and await cp.get_job(name) is None


async def test_a_job_resumed_from_a_checkpoint_is_loaded(cp: EmbeddedControlPlane, runtime: FakeRuntime,
                                                         tmp_path: Path) -> None:
    job = await cp.create_job(_job(1, resume=ResumeFrom(path="tinker://s-0123456789ab:train:0/weights/a")))
    await cp.wait_running(job.metadata.name, timeout=5)
    assert runtime.loads == [{"adapter_id": f"default.{job.metadata.name}", "optimizer": True, "expect_seq": 1,
                              "source": f"file://{tmp_path}/store/runs/s-0123456789ab:train:0/weights/a"}]


async def test_a_refused_dispatch_fails_the_waiting_client_with_the_runtimes_reason(
    cp: EmbeddedControlPlane, runtime: FakeRuntime
) -> None:
    runtime.reject_creates = True
    job = await cp.create_job(_job())
    with pytest.raises(errors.UserError, match="rank too large"):
        await cp.wait_running(job.metadata.name, timeout=5)
    with pytest.raises(errors.NotFound):
        await cp.wait_running("nope", timeout=1)


async def test_conflicting_spec_for_a_live_job_is_refused(cp: EmbeddedControlPlane) -> None:
    await cp.create_job(_job())
    changed = _job()
    changed.spec.lora.rank = 16
    with pytest.raises(errors.Conflict):
        await cp.create_job(changed)


async def test_after_a_restart_a_running_job_is_restored_and_runs_again(tmp_path: Path, runtime: FakeRuntime) -> None:
    first = _plane(tmp_path, runtime)
    await first.start()
    job = await first.create_job(_job())
    name = job.metadata.name
    await first.wait_running(name, timeout=5)
    await first.close()
    runtime.adapters.clear()  # the runtime restarted with the process: its adapters are gone

    second = _plane(tmp_path, runtime)
    await second.start()
    try:
        for _ in range(200):
            current = await second.get_job(name)
            if current.status.attempts == 1 and current.status.phase == Phase.RUNNING:
                break
            await asyncio.sleep(0.05)
        assert current.status.phase == Phase.RUNNING and current.status.attempts == 1
        assert f"default.{name}" in runtime.adapters
        assert "RuntimeLost" in [e["reason"] for e in await second.job_events(name)]
        assert second.runtime_for(name) is not None
    finally:
        await second.close()


async def test_apply_creates_then_updates_only_mutable_fields_of_the_callers_own_jobs(
    cp: EmbeddedControlPlane,
) -> None:
    manifest = {"apiVersion": "loraplane.dev/v1alpha1", "kind": "LoRAJob", "metadata": {"name": "chat"},
                "spec": {"baseModel": MODEL, "tenant": "alice", "lora": {"rank": 4}}}
    job, created = await cp.apply_job(manifest, tenant="alice")
    assert created and job.metadata.generation == 1 and job.metadata.uid
    _, created = await cp.apply_job({**manifest, "spec": {**manifest["spec"], "suspend": True}}, tenant="alice")
    assert not created and (await cp.get_job("chat")).metadata.generation == 2
    with pytest.raises(errors.InvalidInput, match="spec.lora is immutable"):
        await cp.apply_job({**manifest, "spec": {**manifest["spec"], "lora": {"rank": 8}}}, tenant="alice")
    with pytest.raises(errors.Forbidden, match="spec.tenant"):
        await cp.apply_job(manifest, tenant="bob")
    with pytest.raises(errors.Conflict, match="another tenant"):
        await cp.apply_job({**manifest, "spec": {**manifest["spec"], "tenant": "bob"}}, tenant="bob")
