"""The gateway's KubeControlPlane against the real API server, with the real operator placing its jobs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from loraplane.api.kube import KubeControlPlane, job_manifest
from loraplane.core import errors
from loraplane.core.models.v1alpha1.lorajob import LoRAJob, LoRAJobSpec, ObjectMeta, SessionRef
from tests.k8s.cluster import Cluster
from tests.operator.fake_runtime import FakeRuntime
from tests.operator.harness import operator, runtime_pod, wait_for


def session_job(name: str = "s-1-train-0", *, rank: int = 4) -> LoRAJob:
    return LoRAJob(
        metadata=ObjectMeta(name=name),
        spec=LoRAJobSpec(
            base_model="tiny", tenant="alice", lora={"rank": rank},
            session=SessionRef(session_id="s-1", model_seq_id=0, model_id="s-1:train:0"),
        ),
    )


def test_job_manifest_labels_tenant_and_session_and_drops_status() -> None:
    body = job_manifest(session_job(), "team-a")
    assert body["metadata"] == {
        "name": "s-1-train-0", "namespace": "team-a",
        "labels": {"loraplane.dev/tenant": "alice", "loraplane.dev/session": "s-1"}, "annotations": {},
    }
    assert "status" not in body and body["spec"]["lora"]["rank"] == 4


def test_create_wait_route_and_delete_through_the_cluster(
    cluster: Cluster, kubeconfig_path: Path, tmp_path: Path
) -> None:
    rt = FakeRuntime("tiny").start()
    cluster.add_pod(runtime_pod("rt-0", rt.url))

    async def scenario() -> None:
        cp = KubeControlPlane("default", kubeconfig=str(kubeconfig_path))
        try:
            await cp.create_job(session_job())
            again = await cp.create_job(session_job())  # idempotent
            assert again.metadata.name == "s-1-train-0"
            with pytest.raises(errors.Conflict):
                await cp.create_job(session_job(rank=8))

            job = await cp.wait_running("s-1-train-0", timeout=15)
            assert job.status.runtime is not None and job.status.runtime.pod == "rt-0"
            gets = cluster.api.request_count("get")
            for _ in range(200):
                assert cp.runtime_for("s-1-train-0") == job.status.runtime
            assert cluster.api.request_count("get") == gets  # answered from the watch
            assert [j.metadata.name for j in await cp.list_jobs(tenant="alice")] == ["s-1-train-0"]
            assert await cp.list_jobs(tenant="bob") == []
            assert [r.pod for r in await cp.runtimes_for_model("tiny")] == ["rt-0"]
            assert await cp.runtimes_for_model("other") == []

            await cp.delete_job("s-1-train-0")
            await cp.delete_job("s-1-train-0")  # unknown names are ignored
            for _ in range(300):
                if await cp.get_job("s-1-train-0") is None:
                    break
                await asyncio.sleep(0.05)
            assert await cp.get_job("s-1-train-0") is None and cp.runtime_for("s-1-train-0") is None
        finally:
            await cp.close()

    try:
        with operator(kubeconfig_path, f"file://{tmp_path}"):
            asyncio.run(scenario())
            wait_for(lambda: rt.adapters == {}, what="adapter unloaded")
    finally:
        rt.stop()


def test_wait_running_times_out_with_a_capacity_error_naming_the_reason(
    cluster: Cluster, kubeconfig_path: Path, tmp_path: Path
) -> None:
    async def scenario() -> None:
        cp = KubeControlPlane("default", kubeconfig=str(kubeconfig_path))
        try:
            await cp.create_job(session_job())
            with pytest.raises(errors.CapacityError, match="no ready runtime serves 'tiny'"):
                await cp.wait_running("s-1-train-0", timeout=3)
        finally:
            await cp.close()

    with operator(kubeconfig_path, f"file://{tmp_path}"):
        asyncio.run(scenario())


def test_watch_survives_drops_and_410(cluster: Cluster, kubeconfig_path: Path) -> None:
    async def scenario() -> None:
        cp = KubeControlPlane("default", kubeconfig=str(kubeconfig_path))
        try:
            await cp.list_jobs()
            cluster.api.fail_next_watches(2)
            cluster.api.drop_watches()
            cluster.api.create(job_manifest(session_job("a"), "default") | {"apiVersion": "loraplane.dev/v1alpha1", "kind": "LoRAJob"})
            cluster.api.fail_next_watches(1)  # the resumed watch finds its version compacted
            cluster.api.drop_watches()
            for _ in range(200):
                if await cp.get_job("a") is not None:
                    break
                await asyncio.sleep(0.05)
            assert (await cp.get_job("a")) is not None
        finally:
            await cp.close()

    asyncio.run(scenario())
