"""Session expiry in Kubernetes mode: the gateway saves the run's last state, deletes its LoRAJob,
and the operator's finalizer frees the adapter on the runtime pod."""

from __future__ import annotations

from pathlib import Path

import httpx

from loraplane.api import ids
from loraplane.core import artifacts
from tests.k8s.cluster import Cluster
from tests.k8s.gateway import GatewayServer, kubernetes_settings
from tests.k8s.test_gateway_kubernetes import KEYS, adapter_ids, jobs_in
from tests.operator.harness import operator, runtime_pod, wait_for
from tests.operator.real_runtime import RealRuntime


def test_a_silent_session_expires_its_state_is_saved_and_its_adapter_freed(
        cluster: Cluster, kubeconfig_path: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    store_url = f"file://{tmp_path / 'store'}"
    rt = RealRuntime(tiny_model_dir).start()
    try:
        cluster.add_pod(runtime_pod("rt-0", rt.url))
        with operator(kubeconfig_path, store_url), GatewayServer(
            kubernetes_settings(session_expiry_s=3.0), store_url, KEYS, kubeconfig=kubeconfig_path
        ) as gw:
            headers = {"X-API-Key": KEYS["alice"]}
            # A client that created a session and a model, then died: no heartbeat ever arrives.
            sid = httpx.post(f"{gw.url}/api/v1/create_session", headers=headers, json={}).json()["session_id"]
            httpx.post(f"{gw.url}/api/v1/create_model", headers=headers, json={
                "session_id": sid, "model_seq_id": 0, "base_model": "tiny", "lora_config": {"rank": 4}})
            model_id = ids.model_id(sid, 0)
            wait_for(lambda: gw.control_plane.runtime_for(ids.job_name(model_id)) is not None, 30, "the job to run")
            assert adapter_ids(rt)
            wait_for(lambda: jobs_in(cluster) == [], 30, "the expired session's LoRAJob to be deleted")
            wait_for(lambda: adapter_ids(rt) == [], 30, "the runtime to free the adapter")
            saved = artifacts.TinkerPath(model_id, "weights", "session-expired")
            folder = Path(artifacts.checkpoint_url(store_url, saved).removeprefix("file://"))
            assert (folder / "adapter_model.safetensors").exists() and (folder / "checkpoint.json").exists()
            assert httpx.post(f"{gw.url}/api/v1/session_heartbeat", headers=headers,
                              json={"session_id": sid}).status_code == 410
    finally:
        rt.stop()
