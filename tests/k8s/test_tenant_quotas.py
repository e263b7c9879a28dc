"""Tenant quotas set in the chart's values hold for LoRAJobs applied with kubectl, and for the SDK.

The chart passes `tenants.quotas` to the operator and the gateway; the stack runs both with the
settings their Deployments carry. A job over a quota never runs: it fails with reason
QuotaExceeded, a message naming the limit and the use, and a Warning Event.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tinker

from tests.k8s.controlplane import ControlPlane
from tests.k8s.stack import LoraplaneStack
from tests.operator.harness import wait_event

QUOTAS = {"tenants": {"defaults": {"maxLoraRank": 64},
                      "quotas": {"default": {"maxTrainingClients": 1, "maxLoraRank": 8}}}}


@pytest.fixture
def stack(control_plane: ControlPlane, system_release: str, namespace: str, tiny_model_dir: Path,
          tmp_path: Path) -> Iterator[LoraplaneStack]:
    s = LoraplaneStack(control_plane, namespace, tiny_model_dir, tmp_path, values=QUOTAS)
    try:
        yield s
    finally:
        s.close()


def job(name: str, rank: int, tenant: str = "default") -> dict[str, Any]:
    return {"apiVersion": "loraplane.dev/v1alpha1", "kind": "LoRAJob", "metadata": {"name": name},
            "spec": {"baseModel": "tiny", "tenant": tenant, "lora": {"rank": rank, "alpha": 2 * rank}}}


def refused(stack: LoraplaneStack, name: str) -> str:
    """The message of a job that failed on a quota, after checking its condition and Event."""
    status = stack.wait_phase(name, "Failed", timeout=30)
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "QuotaExceeded"), status
    assert "runtime" not in status and "startTime" not in status
    event = wait_event(stack.events, name, "QuotaExceeded", 30)
    assert event["type"] == "Warning" and event["message"] == status["message"]
    return status["message"]


def test_kubectl_applied_jobs_over_the_rank_or_the_count_limit_fail_with_quota_exceeded(
        stack: LoraplaneStack) -> None:
    stack.start_runtime_pod(0)
    with stack.operator(), stack.gateway() as gateway:
        stack.apply(job("too-wide", rank=16))
        message = refused(stack, "too-wide")
        assert "rank 16 is over tenant 'default'" in message and "max_lora_rank=8" in message

        stack.apply(job("first", rank=8))
        stack.wait_phase("first", "Running", timeout=60)
        stack.apply(job("second", rank=4))
        message = refused(stack, "second")
        assert "holds 1 training clients" in message and "max_training_clients=1" in message
        assert stack.status("first")["phase"] == "Running"  # the one within the limit is untouched

        # another tenant gets the defaults of the values: rank 64, any number of jobs
        stack.apply(job("other-wide", rank=128, tenant="carol"))
        assert "max_lora_rank=64" in refused(stack, "other-wide")

        # the gateway reads the same quota: the SDK's training client is refused at once
        service = stack.sdk(gateway)
        with pytest.raises(tinker.PermissionDeniedError, match="max_training_clients=1"):
            service.create_lora_training_client(base_model="tiny", rank=4).result(timeout=30)
