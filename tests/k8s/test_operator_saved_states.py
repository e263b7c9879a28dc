"""Restores and suspends that keep a job's steps, through Kopf against the real API server with real
runtimes (tiny model) on loopback.

An interactive job's user saves a state through the gateway; its runtime dies; the job comes back
on another runtime from that save, at its step, and takes the client's next seq_id. A training
job suspended mid-run saves its state first and resumes from it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from loraplane.api.gateway import utcnow
from loraplane.api.records import Records
from loraplane.clients import artifact_store
from loraplane.core import artifacts
from tests.k8s.cluster import Cluster
from tests.operator.harness import lorajob, operator, runtime_pod, wait_event, wait_for
from tests.operator.real_runtime import RealRuntime

ADAPTER = "default.chat"
ADAM = {"learning_rate": 1e-3, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.0, "grad_clip_norm": 0.0}



def op(rt: RealRuntime, body: dict[str, Any]) -> dict[str, Any]:
    """Submit a JSON op to the adapter and wait for its result, as the gateway does."""
    submitted = httpx.post(f"{rt.url}/v1/adapters/{ADAPTER}/ops", json=body, timeout=10.0)
    assert submitted.status_code == 202, submitted.text
    result = httpx.get(f"{rt.url}/v1/results/{submitted.json()['request_id']}", params={"wait": 20}, timeout=30.0)
    assert result.json().get("status") == "done", result.text
    return dict(result.json()["result"])


def step_of(rt: RealRuntime) -> int:
    return int(rt.get(f"/v1/adapters/{ADAPTER}").json()["step"])


def test_a_users_save_restores_an_interactive_job_on_another_runtime_at_its_step(
    cluster: Cluster, kubeconfig_path: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    a = RealRuntime(tiny_model_dir).start()
    b: RealRuntime | None = None
    store_url = f"file://{tmp_path / 'store'}"
    store = artifact_store.ArtifactStore(store_url)
    try:
        cluster.add_pod(runtime_pod("rt-a", a.url))
        with operator(kubeconfig_path, store_url):
            cluster.api.create(lorajob("chat"))
            cluster.wait_phase("chat", "Running")
            for seq in (1, 2, 3):
                op(a, {"seq_id": seq, "op": "optim_step", "adam_params": ADAM})
            # Tinker save_state through the gateway: the runtime saves, then the gateway records it
            mine = artifacts.TinkerPath(ADAPTER, "weights", "mine")
            saved = op(a, {"seq_id": 4, "op": "save_state", "dest": artifacts.checkpoint_url(store_url, mine),
                           "optimizer": True})
            Records(store, utcnow).finish_save(mine, now=utcnow(), step=saved["step"], size_bytes=saved["size_bytes"])
            for seq in (5, 6):
                op(a, {"seq_id": seq, "op": "optim_step", "adam_params": ADAM})
            wait_for(lambda: cluster.status("chat").get("progress", {}).get("step") == 5, what="step 5 recorded")
            a.stop()
            b = RealRuntime(tiny_model_dir).start()
            cluster.add_pod(runtime_pod("rt-b", b.url))
            status = wait_for(
                lambda: (s := cluster.status("chat")).get("phase") == "Running" and s["runtime"]["pod"] == "rt-b" and s,
                timeout=30, what="job Running on rt-b",
            )
            lost = wait_event(cluster.events, "chat", "RuntimeLost")
            info = b.get(f"/v1/adapters/{ADAPTER}").json()
            # the client goes on with its next seq_id, which the restored executor takes
            after = op(b, {"seq_id": 7, "op": "optim_step", "adam_params": ADAM})
        assert saved["step"] == 3 and (info["step"], info["next_seq"]) == (3, None)
        assert step_of(b) == 4 and isinstance(after, dict)
        assert status["latestCheckpoint"]["path"] == "tinker://default.chat/weights/mine"
        assert status["progress"]["step"] == 3 and status["attempts"] == 1
        assert lost["message"] == (
            "runtime rt-a lost at step 5: restoring from tinker://default.chat/weights/mine (step 3); 2 step(s) lost"
        )
        restored = {c["type"]: c for c in status["conditions"]}["Restored"]
        assert restored["status"] == "True"
        assert restored["message"] == "restored on rt-b from tinker://default.chat/weights/mine (step 3)"
    finally:
        a.stop()
        if b is not None:
            b.stop()



def test_a_training_job_suspended_mid_run_saves_its_step_and_resumes_from_it(
    cluster: Cluster, kubeconfig_path: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    rows = [{"prompt": f"Q{i}: 2+{i}?", "completion": f" {2 + i}"} for i in range(8)]
    dataset = tmp_path / "train.jsonl"
    dataset.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rt = RealRuntime(tiny_model_dir).start()
    store = tmp_path / "store"
    training = {"dataset": f"file://{dataset}", "steps": 400, "batchSize": 2, "maxSeqLen": 32}
    try:
        cluster.add_pod(runtime_pod("rt-0", rt.url))
        with operator(kubeconfig_path, f"file://{store}"):
            cluster.api.create(lorajob("sft", mode="training", training=training))
            wait_for(lambda: cluster.status("sft").get("progress", {}).get("step", 0) >= 3, 60, "step 3")
            cluster.patch_spec("sft", {"suspend": True})
            suspended = cluster.wait_phase("sft", "Suspended", timeout=30)
            adapters_while_suspended = rt.get("/v1/adapters").json()["adapters"]
            cluster.patch_spec("sft", {"suspend": False})
            done = cluster.wait_phase("sft", "Succeeded", timeout=120)
        saved = suspended["latestCheckpoint"]
        n, name = saved["step"], saved["path"].rsplit("/", 1)[-1]
        # named for the step seen at the suspend; the step an optimizer step in flight adds is recorded
        assert n >= 3 and saved["path"].startswith("tinker://default.sft/weights/suspend-step-")
        assert int(name.removeprefix("suspend-step-")) in (n, n - 1)
        assert suspended["progress"]["step"] == n and adapters_while_suspended == []
        state = store / "runs" / "default.sft" / "weights" / name
        assert json.loads((state / "trainer_state.json").read_text())["step"] == n
        assert (state / "optimizer.pt").exists()
        assert done["progress"]["step"] == 400 and done["attempts"] == 0
        assert done["latestCheckpoint"]["path"] == "tinker://default.sft/weights/final"
    finally:
        rt.stop()
