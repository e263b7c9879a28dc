"""The operator through Kopf against the emulator, with fake runtimes: placement, restores, idempotence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kube.emulator import KubeEmulator
from tests.operator.fake_runtime import FakeRuntime
from tests.operator.harness import Cluster, lorajob, operator, runtime_pod, wait_for


@pytest.fixture
def cluster(kube_emulator: KubeEmulator) -> Iterator[Cluster]:
    c = Cluster(kube_emulator)
    yield c
    c.close()


@pytest.fixture
def runtimes() -> Iterator[list[FakeRuntime]]:
    started: list[FakeRuntime] = []
    yield started
    for rt in started:
        rt.stop()


def test_interactive_job_waits_for_a_runtime_then_runs_with_its_adapter_created(
    cluster: Cluster, kubeconfig_path: Path, runtimes: list[FakeRuntime], tmp_path: Path
) -> None:
    rt = FakeRuntime("tiny").start()
    runtimes.append(rt)
    with operator(kubeconfig_path, f"file://{tmp_path}"):
        cluster.emulator.create(lorajob("chat"))
        pending = cluster.wait_phase("chat", "Pending")
        scheduled = {c["type"]: c for c in pending["conditions"]}["Scheduled"]
        assert (scheduled["status"], scheduled["reason"]) == ("False", "NoRuntime")
        assert "'tiny'" in scheduled["message"]

        cluster.add_pod(runtime_pod("rt-0", rt.url))
        status = cluster.wait_phase("chat", "Running")
        assert status["runtime"] == {"pod": "rt-0", "address": rt.url}
        assert rt.adapters["default.chat"]["rank"] == 4
        assert rt.calls["POST /v1/adapters"] == 1
        reasons = [e["reason"] for e in cluster.events("chat")]
        assert "Scheduled" in reasons and "Running" in reasons
