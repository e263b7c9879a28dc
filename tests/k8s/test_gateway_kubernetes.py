"""Kubernetes mode end to end: the official tinker SDK, the gateway, the operator and real runtimes.

Everything is real but the cluster: the SDK (0.38.0, unmodified) talks to the gateway app in
Kubernetes mode (uvicorn, loopback), which keeps LoRAJobs in a real kube-apiserver through
`KubeControlPlane`; the operator runs through Kopf against the same server and dispatches the
jobs to a runtime (its real API, engine and executor with the tiny model, served on loopback),
which an emulated pod points at with the `loraplane.dev/runtime-url` annotation. Gateway,
operator and runtime share a file:// store.

One test follows a session's life (Pending until a runtime is Ready, training, sampling, a saved
state and a run restored from it, close); the other drops every watch and compacts the history
mid-training, which the gateway's cache and the operator must both survive. Both reach the
server through the fault proxy (proxy.py), which also counts their requests.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import tinker

from loraplane.api import ids
from loraplane.core import artifacts
from loraplane.core.models.v1alpha1.lorajob import (
    API_VERSION,
    KIND,
    PLURAL,
    SESSION_LABEL,
    TENANT_LABEL,
)
from loraplane.core.runtime_ops import job_adapter_id
from tests.acceptance.helpers import ce_batch, close, train
from tests.k8s.cluster import Cluster
from tests.k8s.gateway import GatewayServer, kubernetes_settings
from tests.operator.harness import operator, runtime_pod, wait_for
from tests.operator.real_runtime import RealRuntime

KEYS = {"alice": "tml-alice-0123456789"}
#: Paths of LoRAJob objects in the proxy's request counts.
LORAJOB_PATHS = rf"/apis/{API_VERSION}/namespaces/default/{PLURAL}"


@dataclass
class Stack:
    """What a test talks to: the cluster, the runtime behind pod rt-0, the gateway and the store."""

    cluster: Cluster
    runtime: RealRuntime
    gateway: GatewayServer
    store_url: str

    def sdk(self) -> tinker.ServiceClient:
        return tinker.ServiceClient(base_url=self.gateway.url, api_key=KEYS["alice"])

    def set_runtime_ready(self) -> None:
        self.cluster.set_pod_status("rt-0", runtime_pod("rt-0", self.runtime.url)["status"])


@pytest.fixture
def stack(cluster: Cluster, kubeconfig_path: Path, tiny_model_dir: Path, tmp_path: Path) -> Iterator[Stack]:
    """Operator, gateway and one runtime; its pod rt-0 exists but is not Ready until the test says so."""
    store_url = f"file://{tmp_path / 'store'}"
    rt = RealRuntime(tiny_model_dir).start()
    try:
        cluster.add_pod(runtime_pod("rt-0", rt.url, ready=False))
        with operator(kubeconfig_path, store_url), GatewayServer(
            kubernetes_settings(), store_url, KEYS, kubeconfig=kubeconfig_path
        ) as gw:
            yield Stack(cluster, rt, gw, store_url)
    finally:
        rt.stop()
        cluster.close()


def jobs_in(cluster: Cluster) -> list[dict[str, Any]]:
    return cluster.api.list(API_VERSION, KIND, "default")


def adapter_ids(rt: RealRuntime) -> list[str]:
    return [a["adapter_id"] for a in rt.get("/v1/adapters").json()["adapters"]]


def test_sdk_session_runs_as_a_lorajob_placed_by_the_operator_and_is_unloaded_on_close(stack: Stack) -> None:
    cluster, rt, gw = stack.cluster, stack.runtime, stack.gateway
    service = stack.sdk()
    # The runtime pod is not Ready yet: the job must wait in Pending.
    creating = service.create_lora_training_client(base_model="tiny", rank=4, seed=1)

    body = wait_for(lambda: next(iter(jobs_in(cluster)), None), 30, "the LoRAJob to be created")
    name = body["metadata"]["name"]
    labels = body["metadata"]["labels"]
    assert labels[TENANT_LABEL] == "alice" and body["spec"]["tenant"] == "alice"
    assert labels[SESSION_LABEL] and name.startswith(labels[SESSION_LABEL])
    assert body["spec"]["baseModel"] == "tiny" and body["spec"]["lora"]["rank"] == 4
    pending = cluster.wait_phase(name, "Pending", timeout=30)
    assert pending.get("runtime") is None

    stack.set_runtime_ready()
    client = creating.result(timeout=60)
    assert ids.job_name(client.model_id) == name
    running = cluster.status(name)
    assert running["phase"] == "Running"
    assert running["runtime"]["pod"] == "rt-0" and running["runtime"]["address"] == rt.url
    assert cluster.job(name)["metadata"].get("finalizers"), "the operator guards the job with a finalizer"
    assert adapter_ids(rt) == [job_adapter_id("default", name)]  # the operator created it

    # Per-step calls find the runtime in the gateway's watch-fed cache, never by reading the job.
    reads = cluster.api.request_count("get", LORAJOB_PATHS)
    lists = cluster.api.request_count("list", LORAJOB_PATHS)
    losses = train(client, 4)
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
    out = client.forward(ce_batch(), "cross_entropy").result()
    assert out.metrics["loss:sum"] < losses[0]

    sampler = client.save_weights_and_get_sampling_client().result()
    prompt = tinker.ModelInput.from_ints([1, 70, 71, 72])
    sampled = sampler.sample(prompt=prompt, num_samples=2,
                             sampling_params=tinker.SamplingParams(max_tokens=4, temperature=1.0, seed=3)).result()
    assert len(sampled.sequences) == 2
    assert all(1 <= len(s.tokens) <= 4 and len(s.logprobs) == len(s.tokens) for s in sampled.sequences)

    saved = client.save_state("k8s").result().path
    assert saved == f"tinker://{client.model_id}/weights/k8s"
    assert cluster.api.request_count("get", LORAJOB_PATHS) == reads
    assert cluster.api.request_count("list", LORAJOB_PATHS) == lists
    folder = artifacts.checkpoint_url(stack.store_url, artifacts.parse_tinker_path(saved)).removeprefix("file://")
    assert (Path(folder) / "adapter_model.safetensors").exists()

    # A run from that state is a second job that the operator restores from the shared store.
    continued = train(client, 2, pipelined=False)
    resumed = service.create_training_client_from_state_with_optimizer(saved).result(timeout=60)
    second = ids.job_name(resumed.model_id)
    assert cluster.job(second)["spec"]["resumeFrom"] == {"path": saved, "optimizer": True}
    assert cluster.status(second)["runtime"]["pod"] == "rt-0"
    assert close(train(resumed, 2, pipelined=False), continued), continued

    # Closing the session deletes its jobs; the operator's finalizer unloads their adapters.
    service.close("success").result(timeout=30)
    for job in (name, second):
        wait_for(lambda job=job: cluster.job(job) is None, 30, f"LoRAJob {job} to be deleted")
    wait_for(lambda: adapter_ids(rt) == [], 30, "the runtime to hold no adapter")
    wait_for(lambda: gw.control_plane.runtime_for(name) is None, 15, "the gateway's cache to drop the job")


def test_training_goes_on_through_dropped_watches_and_410_and_the_cache_follows_the_job(stack: Stack) -> None:
    cluster, rt, gw = stack.cluster, stack.runtime, stack.gateway
    stack.set_runtime_ready()
    service = stack.sdk()
    client = service.create_lora_training_client(base_model="tiny", rank=4, seed=2).result(timeout=60)
    name = ids.job_name(client.model_id)
    before = train(client, 2, pipelined=False)

    # Every watch ends; the resumed ones hit a compacted history (410 Gone) and must relist.
    lists = cluster.api.request_count("list", LORAJOB_PATHS)
    cluster.api.fail_next_watches(2)
    assert cluster.api.drop_watches(LORAJOB_PATHS, at_least=1) >= 1
    after = train(client, 3, pipelined=False)
    assert after[-1] < before[0], before + after
    wait_for(lambda: cluster.api.request_count("list", LORAJOB_PATHS) > lists, 15, "a relist of LoRAJobs")

    # The rebuilt watch still delivers: the deletion reaches the gateway and the operator's finalizer.
    service.close("success").result(timeout=30)
    wait_for(lambda: cluster.job(name) is None, 30, f"LoRAJob {name} to be deleted")
    wait_for(lambda: gw.control_plane.runtime_for(name) is None, 15, "the gateway's cache to drop the job")
    wait_for(lambda: adapter_ids(rt) == [], 30, "the runtime to hold no adapter")
