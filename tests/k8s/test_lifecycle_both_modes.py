"""The job life cycle's scenarios, each run against both control planes with fake runtimes.

"kubernetes": the operator (through Kopf) against the real API server; "single-node": the
embedded control plane of `loraplane serve` over its SQLite job store. Both run the same reconcile
loop (`loraplane.control.loop`) and decisions (`loraplane.core.phases`), so each scenario must
end the same way in both: placement, restores from the last checkpoint, suspend and resume,
deletion, TTL, backoff, idle offload.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.operator.fake_runtime import FakeRuntime
from tests.operator.harness import lorajob, operator, runtime_pod, training, wait_event, wait_for
from tests.singlenode.embedded import EmbeddedCluster


class World(Protocol):
    """What a scenario does to a control plane, whichever it is."""

    def running(self, store_url: str, **options: Any) -> AbstractContextManager[None]: ...
    def create(self, manifest: dict[str, Any]) -> dict[str, Any]: ...
    def add_pod(self, manifest: dict[str, Any]) -> None: ...
    def delete_pod(self, name: str) -> None: ...
    def job(self, name: str) -> dict[str, Any] | None: ...
    def status(self, name: str) -> dict[str, Any]: ...
    def wait_phase(self, name: str, phase: str, timeout: float = 15.0) -> dict[str, Any]: ...
    def patch_spec(self, name: str, spec: dict[str, Any]) -> None: ...
    def delete_job(self, name: str) -> None: ...
    def events(self, name: str) -> list[dict[str, Any]]: ...


class KubernetesWorld:
    """The real API server (`tests/k8s/cluster.Cluster`) and the operator in a thread."""

    def __init__(self, cluster: Any, kubeconfig: Path) -> None:
        self.cluster, self.kubeconfig = cluster, kubeconfig

    def running(self, store_url: str, **options: Any) -> AbstractContextManager[None]:
        return operator(self.kubeconfig, store_url, **options)

    def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return self.cluster.api.create(manifest)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cluster, name)


@pytest.fixture(params=["kubernetes", "single-node"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> World:
    if request.param == "kubernetes":
        return KubernetesWorld(request.getfixturevalue("cluster"), request.getfixturevalue("kubeconfig_path"))
    return EmbeddedCluster(tmp_path / "data")


@pytest.fixture
def rt0(world: World, runtimes: list[FakeRuntime]) -> FakeRuntime:
    """One fake runtime of base model "tiny" behind a Ready pod rt-0."""
    rt = FakeRuntime("tiny").start()
    runtimes.append(rt)
    world.add_pod(runtime_pod("rt-0", rt.url))
    return rt


def test_interactive_job_waits_for_a_runtime_then_runs_with_its_adapter_created(
    world: World, runtimes: list[FakeRuntime], tmp_path: Path
) -> None:
    rt = FakeRuntime("tiny").start()
    runtimes.append(rt)
    with world.running(f"file://{tmp_path}"):
        world.create(lorajob("chat"))
        pending = world.wait_phase("chat", "Pending")
        scheduled = {c["type"]: c for c in pending["conditions"]}["Scheduled"]
        assert (scheduled["status"], scheduled["reason"]) == ("False", "NoRuntime")
        assert "'tiny'" in scheduled["message"]

        world.add_pod(runtime_pod("rt-0", rt.url))
        status = world.wait_phase("chat", "Running")
        assert status["runtime"] == {"pod": "rt-0", "address": rt.url}
        assert rt.adapters["default.chat"]["rank"] == 4
        assert rt.calls["POST /v1/adapters"] == 1
        wait_for(lambda: {"Scheduled", "Running"} <= {e["reason"] for e in world.events("chat")},
                 what="the Scheduled and Running Events")


def test_runtime_lost_mid_training_restores_on_another_runtime_from_the_last_checkpoint(
    world: World, runtimes: list[FakeRuntime], tmp_path: Path
) -> None:
    a, b = FakeRuntime("tiny", hold_at=3).start(), FakeRuntime("tiny", max_adapters=4).start()
    runtimes += [a, b]
    world.add_pod(runtime_pod("rt-a", a.url))
    store = f"file://{tmp_path}"
    with world.running(store):
        world.create(lorajob("sft", mode="training", training=training()))
        wait_for(lambda: world.status("sft").get("progress", {}).get("step") == 3, what="step 3 on rt-a")
        assert world.status("sft")["latestCheckpoint"]["path"] == "tinker://default.sft/weights/step-2"
        world.add_pod(runtime_pod("rt-b", b.url))
        a.stop()

        done = world.wait_phase("sft", "Succeeded")
        assert done["attempts"] == 1
        assert done["latestCheckpoint"] == {**done["latestCheckpoint"], "path": "tinker://default.sft/weights/final", "step": 6}
        assert b.loads == [{"adapter_id": "default.sft", "source": f"{store}/runs/default.sft/weights/step-2",
                            "optimizer": True, "expect_seq": None}]
        assert b.adapters == {}  # the finished adapter freed its slot
        conditions = {c["type"]: c for c in done["conditions"]}
        assert conditions["Restored"]["status"] == "True"
        lost = wait_event(world.events, "sft", "RuntimeLost")
        assert "restoring from tinker://default.sft/weights/step-2 (step 2); 1 step(s) lost" in lost["message"]
        assert lost["type"] == "Warning"


def test_suspend_saves_and_frees_the_slot_and_resume_restores(
    world: World, rt0: FakeRuntime, tmp_path: Path
) -> None:
    with world.running(f"file://{tmp_path}"):
        world.create(lorajob("chat"))
        world.wait_phase("chat", "Running")
        world.patch_spec("chat", {"suspend": True})
        status = world.wait_phase("chat", "Suspended")
        assert "runtime" not in status and rt0.adapters == {}
        assert status["latestCheckpoint"]["path"].startswith("tinker://default.chat/weights/suspend-")

        world.patch_spec("chat", {"suspend": False})
        status = world.wait_phase("chat", "Running")
        saved = status["latestCheckpoint"]["path"].removeprefix("tinker://")
        assert rt0.loads[-1]["source"] == f"file://{tmp_path}/runs/{saved}"
        assert rt0.loads[-1]["expect_seq"] is None
        assert "default.chat" in rt0.adapters


def test_deleting_a_job_unloads_its_adapter(
    world: World, rt0: FakeRuntime, tmp_path: Path
) -> None:
    with world.running(f"file://{tmp_path}"):
        world.create(lorajob("chat"))
        world.wait_phase("chat", "Running")
        assert "default.chat" in rt0.adapters
        world.delete_job("chat")
        wait_for(lambda: world.job("chat") is None, what="job gone")
        assert rt0.adapters == {}


def test_finished_job_is_deleted_after_its_ttl(
    world: World, rt0: FakeRuntime, tmp_path: Path
) -> None:
    with world.running(f"file://{tmp_path}"):
        world.create(lorajob("sft", mode="training", training=training(steps=2), ttlSecondsAfterFinished=1))
        wait_for(lambda: world.job("sft") is None, timeout=20, what="job deleted by TTL")


def test_refused_dispatches_back_off_then_fail_the_job_with_a_reason(
    world: World, rt0: FakeRuntime, tmp_path: Path
) -> None:
    rt0.reject_creates = True
    with world.running(f"file://{tmp_path}", backoff_base_s=0.05):
        world.create(lorajob("bad", backoffLimit=2))
        status = world.wait_phase("bad", "Failed")
        # Events are posted after the status write; the operator must still run to post them.
        wait_for(lambda: {"DispatchFailed", "BackoffLimitExceeded"} <= {e["reason"] for e in world.events("bad")},
                 what="the DispatchFailed and BackoffLimitExceeded Events")
    assert status["attempts"] == 3 and rt0.calls["POST /v1/adapters"] == 3
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["reason"] == "BackoffLimitExceeded" and "backoffLimit 2" in ready["message"]
    assert "completionTime" in status and "runtime" not in status


def test_a_resume_path_the_schema_cannot_judge_fails_the_job_naming_the_field(
    world: World, rt0: FakeRuntime, tmp_path: Path
) -> None:
    with world.running(f"file://{tmp_path}"):
        world.create(lorajob("bad", resumeFrom={"path": "tinker://run/nonsense/x"}))
        status = world.wait_phase("bad", "Failed")
    assert "resumeFrom.path" in status["message"] and "unknown segment 'nonsense'" in status["message"]
    assert rt0.loads == [] and rt0.adapters == {}


def test_an_idle_interactive_job_is_offloaded_and_says_so(
    world: World, rt0: FakeRuntime, tmp_path: Path
) -> None:
    with world.running(f"file://{tmp_path}"):
        world.create(lorajob("chat", idleTimeoutSeconds=60))
        world.wait_phase("chat", "Running")
        assert rt0.calls["POST /v1/adapters/{id}/offload"] == 0
        rt0.adapters["default.chat"]["last_used"] -= 61  # a minute without a request
        wait_for(lambda: rt0.calls["POST /v1/adapters/{id}/offload"] == 1, what="offload")
        idle = wait_for(lambda: {c["type"]: c for c in world.status("chat").get("conditions", [])}.get("Idle"))
        assert idle["status"] == "True" and idle["reason"] == "IdleTimeout"
        assert world.status("chat")["phase"] == "Running"  # it comes back on the next request

        rt0.adapters["default.chat"].update(resident=True, last_used=time.time())  # used again
        wait_for(lambda: {c["type"]: c["status"] for c in world.status("chat")["conditions"]}["Idle"] == "False",
                 what="Idle cleared")
    assert rt0.calls["POST /v1/adapters/{id}/offload"] == 1  # once, however many polls saw it idle


def test_a_deleted_runtime_pod_moves_its_jobs_to_another_runtime(
    world: World, runtimes: list[FakeRuntime], tmp_path: Path
) -> None:
    a, b = FakeRuntime("tiny").start(), FakeRuntime("tiny").start()
    runtimes += [a, b]
    world.add_pod(runtime_pod("rt-a", a.url))
    with world.running(f"file://{tmp_path}"):
        world.create(lorajob("chat"))
        assert world.wait_phase("chat", "Running")["runtime"]["pod"] == "rt-a"
        world.add_pod(runtime_pod("rt-b", b.url))
        world.delete_pod("rt-a")
        status = wait_for(
            lambda: (s := world.status("chat")).get("phase") == "Running" and s["runtime"]["pod"] == "rt-b" and s,
            what="job Running on rt-b",
        )
        lost = wait_event(world.events, "chat", "RuntimeLost")
    assert status["attempts"] == 1
    assert "default.chat" in b.adapters
    assert "runtime rt-a lost at step 0: no checkpoint, restarting from a fresh adapter" in lost["message"]


def test_a_suspended_training_job_saves_its_state_first_and_resumes_from_it_on_the_same_runtime(
    world: World, runtimes: list[FakeRuntime], tmp_path: Path
) -> None:
    rt = FakeRuntime("tiny", hold_at=5).start()
    runtimes.append(rt)
    world.add_pod(runtime_pod("rt-0", rt.url))
    with world.running(f"file://{tmp_path}"):
        world.create(lorajob("sft", mode="training", training=training(steps=8, every=2)))
        wait_for(lambda: world.status("sft").get("progress", {}).get("step") == 5, what="step 5")
        world.patch_spec("sft", {"suspend": True})
        suspended = world.wait_phase("sft", "Suspended")
        assert suspended["latestCheckpoint"] == {
            "path": "tinker://default.sft/weights/suspend-step-5", "step": 5, "time": suspended["latestCheckpoint"]["time"],
        }
        assert suspended["progress"]["step"] == 5 and rt.adapters == {}
        assert suspended["message"] == "suspended at step 5; state saved at tinker://default.sft/weights/suspend-step-5"
        rt.hold_at = None
        world.patch_spec("sft", {"suspend": False})
        done = world.wait_phase("sft", "Succeeded")
    assert done["progress"]["step"] == 8 and done["attempts"] == 0
    save = rt.ops[-1]
    assert (save["op"], save["optimizer"]) == ("save_state", True)
    assert save["dest"].endswith("/runs/default.sft/weights/suspend-step-5")
    assert rt.loads[-1]["source"] == save["dest"] and rt.loads[-1]["expect_seq"] is None
    assert rt.trains["default.sft"]["request"]["start_step"] == 5


def test_a_job_recreated_under_the_same_name_trains_anew_rather_than_taking_the_old_run(
    world: World, rt0: FakeRuntime, tmp_path: Path
) -> None:
    with world.running(f"file://{tmp_path}"):
        world.create(lorajob("sft", mode="training", training=training(steps=2, every=0)))
        assert world.wait_phase("sft", "Succeeded")["progress"]["step"] == 2
        world.delete_job("sft")
        wait_for(lambda: world.job("sft") is None, what="job deleted")
        world.create(lorajob("sft", mode="training", training=training(steps=4, every=0)))
        done = world.wait_phase("sft", "Succeeded")
    assert done["progress"]["step"] == 4
    assert rt0.calls["POST /v1/adapters/{id}/train"] == 2
    assert rt0.trains["default.sft"]["request"]["steps"] == 4
