"""The operator through Kopf against the real API server, with fake runtimes: placement, restores, idempotence."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.k8s.cluster import Cluster
from tests.operator.fake_runtime import FakeRuntime
from tests.operator.harness import lorajob, operator, runtime_pod, wait_for


@pytest.fixture
def runtimes() -> Iterator[list[FakeRuntime]]:
    started: list[FakeRuntime] = []
    yield started
    for rt in started:
        rt.stop()


@pytest.fixture
def rt0(cluster: Cluster, runtimes: list[FakeRuntime]) -> FakeRuntime:
    """One fake runtime of base model "tiny" behind a Ready pod rt-0."""
    rt = FakeRuntime("tiny").start()
    runtimes.append(rt)
    cluster.add_pod(runtime_pod("rt-0", rt.url))
    return rt


def test_interactive_job_waits_for_a_runtime_then_runs_with_its_adapter_created(
    cluster: Cluster, kubeconfig_path: Path, runtimes: list[FakeRuntime], tmp_path: Path
) -> None:
    rt = FakeRuntime("tiny").start()
    runtimes.append(rt)
    with operator(kubeconfig_path, f"file://{tmp_path}"):
        cluster.api.create(lorajob("chat"))
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


def _training(steps: int = 6, every: int = 2) -> dict:
    return {"dataset": "file:///data/train.jsonl", "steps": steps, "batchSize": 2, "checkpointEvery": every}


def test_runtime_lost_mid_training_restores_on_another_runtime_from_the_last_checkpoint(
    cluster: Cluster, kubeconfig_path: Path, runtimes: list[FakeRuntime], tmp_path: Path
) -> None:
    a, b = FakeRuntime("tiny", hold_at=3).start(), FakeRuntime("tiny", max_adapters=4).start()
    runtimes += [a, b]
    cluster.add_pod(runtime_pod("rt-a", a.url))
    store = f"file://{tmp_path}"
    with operator(kubeconfig_path, store):
        cluster.api.create(lorajob("sft", mode="training", training=_training()))
        wait_for(lambda: cluster.status("sft").get("progress", {}).get("step") == 3, what="step 3 on rt-a")
        assert cluster.status("sft")["latestCheckpoint"]["path"] == "tinker://default.sft/weights/step-2"
        cluster.add_pod(runtime_pod("rt-b", b.url))
        a.stop()

        done = cluster.wait_phase("sft", "Succeeded")
        assert done["attempts"] == 1
        assert done["latestCheckpoint"] == {**done["latestCheckpoint"], "path": "tinker://default.sft/weights/final", "step": 6}
        assert b.loads == [{"adapter_id": "default.sft", "source": f"{store}/runs/default.sft/weights/step-2",
                            "optimizer": True, "expect_seq": None}]
        assert b.adapters == {}  # the finished adapter freed its slot
        conditions = {c["type"]: c for c in done["conditions"]}
        assert conditions["Restored"]["status"] == "True"
        lost = [e for e in cluster.events("sft") if e["reason"] == "RuntimeLost"]
        assert lost and "restoring from tinker://default.sft/weights/step-2 (step 2); 1 step(s) lost" in lost[0]["message"]
        assert lost[0]["type"] == "Warning"


def test_restarted_operator_dispatches_nothing_twice(
    cluster: Cluster, kubeconfig_path: Path, runtimes: list[FakeRuntime], tmp_path: Path
) -> None:
    rt = FakeRuntime("tiny", hold_at=2).start()
    runtimes.append(rt)
    cluster.add_pod(runtime_pod("rt-0", rt.url))
    store = f"file://{tmp_path}"
    with operator(kubeconfig_path, store):
        cluster.api.create(lorajob("chat"))
        cluster.api.create(lorajob("sft", mode="training", training=_training(steps=4)))
        cluster.wait_phase("chat", "Running")
        wait_for(lambda: cluster.status("sft").get("progress", {}).get("step") == 2, what="step 2")
    with operator(kubeconfig_path, store):
        rt.hold_at = None
        cluster.wait_phase("sft", "Succeeded")
        assert cluster.status("chat")["phase"] == "Running"
    assert rt.calls["POST /v1/adapters"] == 2  # one per job, none again after the restart
    assert rt.calls["POST /v1/adapters/{id}/train"] == 1
    assert rt.calls["POST /v1/adapters/{id}/load"] == 0


def test_suspend_saves_and_frees_the_slot_and_resume_restores(
    cluster: Cluster, kubeconfig_path: Path, rt0: FakeRuntime, tmp_path: Path
) -> None:
    with operator(kubeconfig_path, f"file://{tmp_path}"):
        cluster.api.create(lorajob("chat"))
        cluster.wait_phase("chat", "Running")
        cluster.patch_spec("chat", {"suspend": True})
        status = cluster.wait_phase("chat", "Suspended")
        assert "runtime" not in status and rt0.adapters == {}
        assert status["latestCheckpoint"]["path"].startswith("tinker://default.chat/weights/suspend-")

        cluster.patch_spec("chat", {"suspend": False})
        status = cluster.wait_phase("chat", "Running")
        saved = status["latestCheckpoint"]["path"].removeprefix("tinker://")
        assert rt0.loads[-1]["source"] == f"file://{tmp_path}/runs/{saved}"
        assert rt0.loads[-1]["expect_seq"] is None
        assert "default.chat" in rt0.adapters


def test_deleting_a_job_unloads_its_adapter(
    cluster: Cluster, kubeconfig_path: Path, rt0: FakeRuntime, tmp_path: Path
) -> None:
    with operator(kubeconfig_path, f"file://{tmp_path}"):
        cluster.api.create(lorajob("chat"))
        cluster.wait_phase("chat", "Running")
        assert "default.chat" in rt0.adapters
        cluster.delete_job("chat")
        wait_for(lambda: cluster.job("chat") is None, what="job gone")
        assert rt0.adapters == {}


def test_finished_job_is_deleted_after_its_ttl(
    cluster: Cluster, kubeconfig_path: Path, rt0: FakeRuntime, tmp_path: Path
) -> None:
    with operator(kubeconfig_path, f"file://{tmp_path}"):
        cluster.api.create(lorajob("sft", mode="training", training=_training(steps=2), ttlSecondsAfterFinished=1))
        wait_for(lambda: cluster.job("sft") is None, timeout=20, what="job deleted by TTL")


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


def test_refused_dispatches_back_off_then_fail_the_job_with_a_reason(
    cluster: Cluster, kubeconfig_path: Path, rt0: FakeRuntime, tmp_path: Path
) -> None:
    rt0.reject_creates = True
    with operator(kubeconfig_path, f"file://{tmp_path}", backoff_base_s=0.05):
        cluster.api.create(lorajob("bad", backoffLimit=2))
        status = cluster.wait_phase("bad", "Failed")
    assert status["attempts"] == 3 and rt0.calls["POST /v1/adapters"] == 3
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["reason"] == "BackoffLimitExceeded" and "backoffLimit 2" in ready["message"]
    assert "completionTime" in status and "runtime" not in status
    reasons = [e["reason"] for e in cluster.events("bad")]
    assert "DispatchFailed" in reasons and "BackoffLimitExceeded" in reasons


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


def test_a_resume_path_the_schema_cannot_judge_fails_the_job_naming_the_field(
    cluster: Cluster, kubeconfig_path: Path, rt0: FakeRuntime, tmp_path: Path
) -> None:
    with operator(kubeconfig_path, f"file://{tmp_path}"):
        cluster.api.create(lorajob("bad", resumeFrom={"path": "tinker://run/nonsense/x"}))
        status = cluster.wait_phase("bad", "Failed")
    assert "resumeFrom.path" in status["message"] and "unknown segment 'nonsense'" in status["message"]
    assert rt0.loads == [] and rt0.adapters == {}


def test_an_idle_interactive_job_is_offloaded_and_says_so(
    cluster: Cluster, kubeconfig_path: Path, rt0: FakeRuntime, tmp_path: Path
) -> None:
    with operator(kubeconfig_path, f"file://{tmp_path}"):
        cluster.api.create(lorajob("chat", idleTimeoutSeconds=60))
        cluster.wait_phase("chat", "Running")
        assert rt0.calls["POST /v1/adapters/{id}/offload"] == 0
        rt0.adapters["default.chat"]["last_used"] -= 61  # a minute without a request
        wait_for(lambda: rt0.calls["POST /v1/adapters/{id}/offload"] == 1, what="offload")
        idle = wait_for(lambda: {c["type"]: c for c in cluster.status("chat").get("conditions", [])}.get("Idle"))
        assert idle["status"] == "True" and idle["reason"] == "IdleTimeout"
        assert cluster.status("chat")["phase"] == "Running"  # it comes back on the next request

        rt0.adapters["default.chat"].update(resident=True, last_used=time.time())  # used again
        wait_for(lambda: {c["type"]: c["status"] for c in cluster.status("chat")["conditions"]}["Idle"] == "False",
                 what="Idle cleared")
    assert rt0.calls["POST /v1/adapters/{id}/offload"] == 1  # once, however many polls saw it idle


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


def test_a_deleted_runtime_pod_moves_its_jobs_to_another_runtime(
    cluster: Cluster, kubeconfig_path: Path, runtimes: list[FakeRuntime], tmp_path: Path
) -> None:
    a, b = FakeRuntime("tiny").start(), FakeRuntime("tiny").start()
    runtimes += [a, b]
    cluster.add_pod(runtime_pod("rt-a", a.url))
    with operator(kubeconfig_path, f"file://{tmp_path}"):
        cluster.api.create(lorajob("chat"))
        assert cluster.wait_phase("chat", "Running")["runtime"]["pod"] == "rt-a"
        cluster.add_pod(runtime_pod("rt-b", b.url))
        cluster.delete_pod("rt-a")
        status = wait_for(
            lambda: (s := cluster.status("chat")).get("phase") == "Running" and s["runtime"]["pod"] == "rt-b" and s,
            what="job Running on rt-b",
        )
    assert status["attempts"] == 1
    assert "default.chat" in b.adapters
    lost = next(e for e in cluster.events("chat") if e["reason"] == "RuntimeLost")
    assert "runtime rt-a lost at step 0: no checkpoint, restarting from a fresh adapter" in lost["message"]


def test_a_suspended_training_job_saves_its_state_first_and_resumes_from_it_on_the_same_runtime(
    cluster: Cluster, kubeconfig_path: Path, runtimes: list[FakeRuntime], tmp_path: Path
) -> None:
    rt = FakeRuntime("tiny", hold_at=5).start()
    runtimes.append(rt)
    cluster.add_pod(runtime_pod("rt-0", rt.url))
    with operator(kubeconfig_path, f"file://{tmp_path}"):
        cluster.api.create(lorajob("sft", mode="training", training=_training(steps=8, every=2)))
        wait_for(lambda: cluster.status("sft").get("progress", {}).get("step") == 5, what="step 5")
        cluster.patch_spec("sft", {"suspend": True})
        suspended = cluster.wait_phase("sft", "Suspended")
        assert suspended["latestCheckpoint"] == {
            "path": "tinker://default.sft/weights/suspend-step-5", "step": 5, "time": suspended["latestCheckpoint"]["time"],
        }
        assert suspended["progress"]["step"] == 5 and rt.adapters == {}
        assert suspended["message"] == "suspended at step 5; state saved at tinker://default.sft/weights/suspend-step-5"
        rt.hold_at = None
        cluster.patch_spec("sft", {"suspend": False})
        done = cluster.wait_phase("sft", "Succeeded")
    assert done["progress"]["step"] == 8 and done["attempts"] == 0
    save = rt.ops[-1]
    assert (save["op"], save["optimizer"]) == ("save_state", True)
    assert save["dest"].endswith("/runs/default.sft/weights/suspend-step-5")
    assert rt.loads[-1]["source"] == save["dest"] and rt.loads[-1]["expect_seq"] is None
    assert rt.trains["default.sft"]["request"]["start_step"] == 5


def test_a_job_recreated_under_the_same_name_trains_anew_rather_than_taking_the_old_run(
    cluster: Cluster, kubeconfig_path: Path, rt0: FakeRuntime, tmp_path: Path
) -> None:
    with operator(kubeconfig_path, f"file://{tmp_path}"):
        cluster.api.create(lorajob("sft", mode="training", training=_training(steps=2, every=0)))
        assert cluster.wait_phase("sft", "Succeeded")["progress"]["step"] == 2
        cluster.delete_job("sft")
        wait_for(lambda: cluster.job("sft") is None, what="job deleted")
        cluster.api.create(lorajob("sft", mode="training", training=_training(steps=4, every=0)))
        done = cluster.wait_phase("sft", "Succeeded")
    assert done["progress"]["step"] == 4
    assert rt0.calls["POST /v1/adapters/{id}/train"] == 2
    assert rt0.trains["default.sft"]["request"]["steps"] == 4
