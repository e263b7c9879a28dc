"""The operator and the gateway through a faulty connection to the real API server.

The fault proxy (proxy.py) sits between them and kube-apiserver: watches end, resumed watches and
lists get 410 Gone, writes get 409 Conflict or 503, every request is slowed. Kopf and the
gateway's watch-fed cache must converge all the same, and dispatch nothing twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from loraplane.api import ids
from tests.acceptance.helpers import train
from tests.k8s.controlplane import ROOT, ControlPlane
from tests.k8s.stack import LoraplaneStack, wait_gone
from tests.k8s.test_operator_gateway import adapters, dispatches
from tests.operator.harness import wait_for

JOBS = r"/apis/loraplane\.dev/v1alpha1/namespaces/[^/]+/lorajobs"


@pytest.fixture
def stack(control_plane: ControlPlane, system_release: str, namespace: str, tiny_model_dir: Path,
          tmp_path: Path) -> Iterator[LoraplaneStack]:
    s = LoraplaneStack(control_plane, namespace, tiny_model_dir, tmp_path)
    s.through_proxy()
    try:
        yield s
    finally:
        s.close()


def interactive_job(name: str = "alice-chat-1") -> dict:
    body = yaml.safe_load((ROOT / "examples" / "lorajob-interactive.yaml").read_text())
    body["metadata"]["name"] = name
    body["spec"].update(baseModel="tiny", lora={"rank": 4})
    return body


def test_operator_converges_through_dropped_watches_410_gone_and_conflicts(stack: LoraplaneStack) -> None:
    proxy = stack.proxy
    assert proxy is not None
    before = dispatches()
    with stack.operator():
        proxy.fail_next_watches(3)
        assert proxy.drop_watches(JOBS, at_least=1) >= 1  # the operator's LoRAJob watch, once it is open
        stack.apply(interactive_job())
        pod = stack.start_runtime_pod(0)
        proxy.drop_watches()
        proxy.conflict_next_writes(2, plural="lorajobs")
        status = stack.wait_phase("alice-chat-1", "Running", timeout=60)
    assert status["runtime"]["pod"] == pod
    assert dispatches() - before == 1
    assert len(adapters(stack, pod)) == 1
    assert proxy.request_count("watch", JOBS) >= 3  # the watches were rebuilt after each fault
    assert proxy.faults.gone_watches == 0 and proxy.faults.conflicts == []  # every fault was served


def test_operator_rides_out_server_errors_and_latency(stack: LoraplaneStack) -> None:
    proxy = stack.proxy
    assert proxy is not None
    proxy.set_latency(0.05)
    proxy.fail_next_requests(3, code=503, verb="patch", path=JOBS)
    pod = stack.start_runtime_pod(0)
    with stack.operator():
        stack.apply(interactive_job())
        status = stack.wait_phase("alice-chat-1", "Running", timeout=60)
    assert status["runtime"]["pod"] == pod
    assert proxy.faults.errors == []  # all three 503s were served


def test_sdk_training_goes_on_through_dropped_watches_and_410_and_reads_no_job_per_step(
    stack: LoraplaneStack,
) -> None:
    proxy = stack.proxy
    assert proxy is not None
    pod = stack.start_runtime_pod(0)
    with stack.operator(), stack.gateway() as gateway:
        service = stack.sdk(gateway)
        client = service.create_lora_training_client(base_model="tiny", rank=4, seed=2).result(timeout=60)
        name = ids.job_name(client.model_id)
        # Per-step calls find the runtime in the gateway's watch-fed cache, never by reading the job.
        gets, lists = proxy.request_count("get", JOBS), proxy.request_count("list", JOBS)
        before = train(client, 2, pipelined=False)
        assert proxy.request_count("get", JOBS) == gets and proxy.request_count("list", JOBS) == lists

        # Every watch ends; the resumed ones hit 410 Gone and must relist.
        proxy.fail_next_watches(2)
        assert proxy.drop_watches(JOBS, at_least=2) >= 2  # the gateway's and the operator's
        after = train(client, 3, pipelined=False)
        assert all(math.isfinite(x) for x in after) and after[-1] < before[0], before + after
        wait_for(lambda: proxy.request_count("list", JOBS) > lists, 15, "a relist of LoRAJobs")
        assert proxy.faults.gone_watches == 0

        # The rebuilt watches still deliver: the deletion reaches the gateway's cache and the operator.
        service.close("success").result(timeout=30)
        wait_gone(stack, name)
        wait_for(lambda: gateway.control_plane.runtime_for(name) is None, 15, "the gateway's cache to drop the job")
        wait_for(lambda: adapters(stack, pod) == [], 30, "the runtime to hold no adapter")
