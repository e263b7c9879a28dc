"""The operator and the gateway against the real API server, each as its chart ServiceAccount.

Only the chart's Roles authorize them: a verb the code uses and the Role lacks is a 403 here, so
these tests fail when the chart's RBAC and the code drift apart. Runtimes are real (tiny model)
on loopback addresses that their Pod objects carry as podIP.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tinker
import yaml

from loraplane.api import ids
from loraplane.api.gateway import utcnow
from loraplane.api.records import Records
from loraplane.clients import artifact_store
from loraplane.control import metrics as operator_metrics
from loraplane.core import artifacts, errors
from loraplane.core.runtime_ops import job_adapter_id
from tests.acceptance.helpers import train
from tests.k8s.controlplane import ROOT, ControlPlane
from tests.k8s.stack import LoraplaneStack, wait_gone
from tests.operator.harness import wait_for

ROWS = [{"prompt": f"Q{i}: 2+{i}?", "completion": f" {2 + i}"} for i in range(8)]


@pytest.fixture
def stack(control_plane: ControlPlane, system_release: str, namespace: str, tiny_model_dir: Path,
          tmp_path: Path) -> Iterator[LoraplaneStack]:
    s = LoraplaneStack(control_plane, namespace, tiny_model_dir, tmp_path)
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return f"file://{path}"


def example_job(dataset: str, **training: Any) -> dict[str, Any]:
    """examples/lorajob-training.yaml, pointed at the tiny model and a local dataset."""
    body = yaml.safe_load((ROOT / "examples" / "lorajob-training.yaml").read_text())
    body["spec"]["baseModel"] = "tiny"
    body["spec"]["lora"] = {"rank": 4, "alpha": 8}
    body["spec"]["training"].update({"dataset": dataset, "maxSeqLen": 32, "batchSize": 2, **training})
    return body


def dispatches() -> float:
    return sum(operator_metrics.REGISTRY.get_sample_value("loraplane_operator_dispatches_total", {"origin": o}) or 0
               for o in ("fresh", "restore", "resume"))


def adapters(stack: LoraplaneStack, pod: str) -> list[str]:
    return [a["adapter_id"] for a in stack.kubelet.runtimes[pod].get("/v1/adapters").json()["adapters"]]


def test_sdk_session_trains_samples_saves_and_closes(stack: LoraplaneStack) -> None:
    pod = stack.start_runtime_pod(0)
    with stack.operator(), stack.gateway() as gateway:
        service = stack.sdk(gateway)
        client = service.create_lora_training_client(base_model="tiny", rank=4, seed=1).result(timeout=60)
        name = ids.job_name(client.model_id)
        status = stack.status(name)
        assert status["phase"] == "Running" and status["runtime"]["pod"] == pod
        assert status["runtime"]["address"] == stack.kubelet.runtimes[pod].url
        assert adapters(stack, pod) == [job_adapter_id(stack.namespace, name)]
        losses = train(client, 4)
        assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0], losses
        sampler = client.save_weights_and_get_sampling_client().result()
        out = sampler.sample(prompt=tinker.ModelInput.from_ints([1, 70, 71]), num_samples=1,
                             sampling_params=tinker.SamplingParams(max_tokens=3, seed=1)).result()
        assert 1 <= len(out.sequences[0].tokens) <= 3
        saved = client.save_state("k8s").result().path
        assert saved == f"tinker://{client.model_id}/weights/k8s"
        service.close("success").result(timeout=30)
        wait_gone(stack, name)
        wait_for(lambda: adapters(stack, pod) == [], 30, "the runtime to hold no adapter")


def test_declarative_example_trains_to_succeeded(stack: LoraplaneStack, dataset: str) -> None:
    stack.start_runtime_pod(0)
    with stack.operator():
        stack.apply(example_job(dataset, steps=4, checkpointEvery=2))
        status = stack.wait_phase("support-bot-sft", "Succeeded", timeout=90)
    assert status["progress"]["step"] == 4 and status["progress"]["loss"] > 0
    assert status["latestCheckpoint"]["path"] == f"tinker://{stack.namespace}.support-bot-sft/weights/final"
    final = stack.work / "store" / "runs" / f"{stack.namespace}.support-bot-sft" / "weights" / "final"
    assert (final / "adapter_model.safetensors").exists()
    wide = stack.plane.kubectl("get", "lj", "-n", stack.namespace, "-o", "wide").stdout
    # A finished job holds no runtime: the RUNTIME cell is empty.
    row = wide.splitlines()[1].split()
    assert row[:4] == ["support-bot-sft", "Succeeded", "tiny", "4"] and row[-2] == "support", wide
    assert float(row[4]) == pytest.approx(status["progress"]["loss"]), wide
    # The Tinker API sees the run as its tenant's: `tinker checkpoint list` and loads read these.
    run_id = f"{stack.namespace}.support-bot-sft"
    records = Records(artifact_store.ArtifactStore(f"file://{stack.work / 'store'}"), utcnow)
    assert records.run("support", run_id)["base_model"] == "tiny"
    listed = {c["checkpoint_id"]: c for c in records.checkpoints("support", run_id)}
    assert set(listed) == {"weights/step-2", "weights/step-4", "weights/final"}
    assert listed["weights/final"]["size_bytes"] > 0
    assert records.checkpoint("support", artifacts.parse_tinker_path(status["latestCheckpoint"]["path"]))["step"] == 4
    with pytest.raises(errors.NotFound):
        records.run("someone-else", run_id)


def test_runtime_pod_lost_mid_training_is_restored_on_another_pod(stack: LoraplaneStack, dataset: str) -> None:
    first = stack.start_runtime_pod(0)
    second = stack.start_runtime_pod(1)
    with stack.operator():
        stack.apply(example_job(dataset, steps=400, checkpointEvery=2))
        running = stack.wait_phase("support-bot-sft", "Running")
        wait_for(lambda: stack.status("support-bot-sft").get("latestCheckpoint"), 60, "a checkpoint")
        lost = running["runtime"]["pod"]
        assert lost in (first, second)
        stack.kubelet.lose_pod(lost)
        other = ({first, second} - {lost}).pop()
        wait_for(lambda: (stack.status("support-bot-sft").get("runtime") or {}).get("pod") == other, 60,
                 f"the job to move to {other}")
        status = stack.wait_phase("support-bot-sft", "Succeeded", timeout=180)
        wait_for(lambda: any("Restor" in e["reason"] or "Lost" in e["reason"] for e in stack.events("support-bot-sft")),
                 30, "a RuntimeLost or Restored Event")
    assert status["progress"]["step"] == 400


def test_restarted_operator_dispatches_nothing_twice(stack: LoraplaneStack, dataset: str) -> None:
    pod = stack.start_runtime_pod(0)
    chat = yaml.safe_load((ROOT / "examples" / "lorajob-interactive.yaml").read_text())
    chat["spec"].update(baseModel="tiny", lora={"rank": 4})
    before = dispatches()
    with stack.operator():
        stack.apply(chat)
        stack.apply(example_job(dataset, steps=300, checkpointEvery=50))
        stack.wait_phase("alice-chat-1", "Running")
        wait_for(lambda: (stack.status("support-bot-sft").get("progress") or {}).get("step", 0) >= 2, 60, "step 2")
    assert dispatches() - before == 2
    with stack.operator():
        stack.wait_phase("support-bot-sft", "Succeeded", timeout=120)
        assert stack.status("alice-chat-1")["phase"] == "Running"
    assert dispatches() - before == 2  # one per job, none again after the restart
    assert sorted(adapters(stack, pod)) == [job_adapter_id(stack.namespace, "alice-chat-1")]
