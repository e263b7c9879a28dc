"""The operator through Kopf against the real API server, with fake runtimes: placement, restores, idempotence."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.k8s.cluster import Cluster
from tests.operator.fake_runtime import FakeRuntime
from tests.operator.harness import lorajob, operator, runtime_pod, training, wait_for


@pytest.fixture
def rt0(cluster: Cluster, runtimes: list[FakeRuntime]) -> FakeRuntime:
    """One fake runtime of base model "tiny" behind a Ready pod rt-0."""
    rt = FakeRuntime("tiny").start()
    runtimes.append(rt)
    cluster.add_pod(runtime_pod("rt-0", rt.url))
    return rt


def test_restarted_operator_dispatches_nothing_twice(
    cluster: Cluster, kubeconfig_path: Path, runtimes: list[FakeRuntime], tmp_path: Path
) -> None:
    rt = FakeRuntime("tiny", hold_at=2).start()
    runtimes.append(rt)
    cluster.add_pod(runtime_pod("rt-0", rt.url))
    store = f"file://{tmp_path}"
    with operator(kubeconfig_path, store):
        cluster.api.create(lorajob("chat"))
        cluster.api.create(lorajob("sft", mode="training", training=training(steps=4)))
        cluster.wait_phase("chat", "Running")
        wait_for(lambda: cluster.status("sft").get("progress", {}).get("step") == 2, what="step 2")
    with operator(kubeconfig_path, store):
        rt.hold_at = None
        cluster.wait_phase("sft", "Succeeded")
        assert cluster.status("chat")["phase"] == "Running"
    assert rt.calls["POST /v1/adapters"] == 2  # one per job, none again after the restart
    assert rt.calls["POST /v1/adapters/{id}/train"] == 1
    assert rt.calls["POST /v1/adapters/{id}/load"] == 0


def test_converges_through_watch_drops_and_410_gone(
    cluster: Cluster, kubeconfig_path: Path, runtimes: list[FakeRuntime], tmp_path: Path
) -> None:
    rt = FakeRuntime("tiny").start()
    runtimes.append(rt)
    with operator(kubeconfig_path, f"file://{tmp_path}"):
        cluster.api.fail_next_watches(3)
        cluster.api.drop_watches()
        cluster.api.create(lorajob("chat"))
        cluster.add_pod(runtime_pod("rt-0", rt.url))
        cluster.api.fail_next_watches(1)  # the resumed watch finds its version compacted
        cluster.api.drop_watches()
        cluster.api.conflict_next_writes(2, plural="lorajobs")
        cluster.wait_phase("chat", "Running", timeout=30)
    assert rt.calls["POST /v1/adapters"] == 1


def test_a_burst_of_jobs_spreads_over_runtimes_without_duplicate_adapters(
    cluster: Cluster, kubeconfig_path: Path, runtimes: list[FakeRuntime], tmp_path: Path
) -> None:
    runtimes += [FakeRuntime("tiny", max_adapters=20).start() for _ in range(2)]
    for i, rt in enumerate(runtimes):
        cluster.add_pod(runtime_pod(f"rt-{i}", rt.url))
    with operator(kubeconfig_path, f"file://{tmp_path}"):
        wait_for(lambda: all(rt.calls["GET /readyz"] for rt in runtimes), what="first health poll")
        for i in range(24):
            cluster.api.create(lorajob(f"j{i}"))
        for i in range(24):
            cluster.wait_phase(f"j{i}", "Running", timeout=30)
    held = [set(rt.adapters) for rt in runtimes]
    assert len(held[0] | held[1]) == 24 and not held[0] & held[1]
    assert all(len(h) >= 6 for h in held)  # least loaded spreads them


def test_liveness_and_metrics_endpoints(
    cluster: Cluster, kubeconfig_path: Path, rt0: FakeRuntime, tmp_path: Path
) -> None:
    import socket

    import httpx

    ports = []
    for _ in range(2):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            ports.append(s.getsockname()[1])
    liveness = f"http://127.0.0.1:{ports[0]}/healthz"
    with operator(kubeconfig_path, f"file://{tmp_path}", liveness_endpoint=liveness, metrics_port=ports[1]):
        cluster.api.create(lorajob("chat"))
        cluster.wait_phase("chat", "Running")
        assert wait_for(lambda: httpx.get(liveness).status_code == 200, what="liveness 200")
        text = httpx.get(f"http://127.0.0.1:{ports[1]}/metrics").text
    assert 'loraplane_operator_jobs{phase="Running"}' in text
    assert 'loraplane_operator_dispatches_total{origin="fresh"}' in text
    assert "loraplane_operator_scheduling_latency_seconds_count" in text


def test_loraplane_operator_command_serves_its_liveness_probe(
    cluster: Cluster, kubeconfig_path: Path, tmp_path: Path
) -> None:
    import os
    import socket
    import subprocess
    import sys

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    liveness = f"http://127.0.0.1:{port}/healthz"
    command = [sys.executable, "-m", "loraplane", "operator", "--kubeconfig", str(kubeconfig_path),
               "--namespace", "default", "--store", f"file://{tmp_path}", "--metrics-port", "0",
               "--liveness", liveness]
    proc = subprocess.Popen(command, env={**os.environ, "LORAPLANE_LOG_LEVEL": "warning"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def alive() -> bool:
            assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
            try:
                return httpx.get(liveness, timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(alive, timeout=30, what="liveness probe")
        cluster.api.create(lorajob("chat"))
        status = cluster.wait_phase("chat", "Pending")
        assert {c["type"]: c["reason"] for c in status["conditions"]}["Scheduled"] == "NoRuntime"
    finally:
        proc.terminate()
        proc.wait(20)
