"""The operator through Kopf against the emulator with real runtimes (tiny model) on loopback.

A declarative job applied from examples/ trains to Succeeded and leaves a PEFT-loadable state; a
runtime killed mid-training hands the job to another runtime, which resumes from the checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from loraplane.api.gateway import utcnow
from loraplane.api.records import Records
from loraplane.core import artifacts, errors
from tests.operator.harness import ROOT, Cluster, operator, runtime_pod, wait_for
from tests.operator.real_runtime import RealRuntime

ROWS = [{"prompt": f"Q{i}: 2+{i}?", "completion": f" {2 + i}"} for i in range(8)]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)



@pytest.fixture
def dataset(tmp_path: Path) -> str:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return f"file://{path}"


def example_job(dataset: str, **training: Any) -> dict[str, Any]:
    """examples/lorajob-training.yaml, pointed at the tiny model and a local dataset."""
    body = yaml.safe_load((ROOT / "examples" / "lorajob-training.yaml").read_text())
    body["metadata"]["namespace"] = "default"
    body["spec"]["baseModel"] = "tiny"
    body["spec"]["lora"] = {"rank": 4, "alpha": 8}
    body["spec"]["training"].update({"dataset": dataset, "maxSeqLen": 32, "batchSize": 2, **training})
    return body


def test_declarative_job_from_the_example_trains_to_succeeded_with_a_checkpoint(
    cluster: Cluster, kubeconfig_path: Path, tiny_model_dir: Path, dataset: str, tmp_path: Path
) -> None:
    rt = RealRuntime(tiny_model_dir).start()
    store = tmp_path / "store"
    try:
        cluster.add_pod(runtime_pod("rt-0", rt.url))
        with operator(kubeconfig_path, f"file://{store}"):
            cluster.emulator.create(example_job(dataset, steps=4, checkpointEvery=2))
            status = cluster.wait_phase("support-bot-sft", "Succeeded", timeout=60)
        assert status["progress"]["step"] == 4 and status["progress"]["loss"] > 0
        assert status["latestCheckpoint"]["path"] == "tinker://default.support-bot-sft/weights/final"
        final = store / "runs" / "default.support-bot-sft" / "weights" / "final"
        assert (final / "adapter_model.safetensors").exists() and (final / "adapter_config.json").exists()
        assert (final.parent / "step-2" / "adapter_model.safetensors").exists()
        assert rt.get("/v1/adapters").json()["adapters"] == []  # the slot is free again
        # the Tinker API sees the run as the job's tenant's: `tinker checkpoint list` and loads read these
        records = Records(artifacts.ArtifactStore(f"file://{store}"), utcnow)
        assert records.run("support", "default.support-bot-sft")["base_model"] == "tiny"
        listed = {c["checkpoint_id"]: c for c in records.checkpoints("support", "default.support-bot-sft")}
        assert set(listed) == {"weights/step-2", "weights/step-4", "weights/final"}
        assert listed["weights/final"]["size_bytes"] > 0
        final_record = records.checkpoint("support", artifacts.parse_tinker_path(status["latestCheckpoint"]["path"]))
        assert final_record["step"] == 4
        with pytest.raises(errors.NotFound):
            records.run("someone-else", "default.support-bot-sft")
    finally:
        rt.stop()


def test_runtime_killed_mid_training_resumes_on_another_from_its_last_checkpoint(
    cluster: Cluster, kubeconfig_path: Path, tiny_model_dir: Path, dataset: str, tmp_path: Path
) -> None:
    a = RealRuntime(tiny_model_dir).start()
    b: RealRuntime | None = None
    store = tmp_path / "store"
    try:
        cluster.add_pod(runtime_pod("rt-a", a.url))
        with operator(kubeconfig_path, f"file://{store}"):
            cluster.emulator.create(example_job(dataset, steps=400, checkpointEvery=2))
            ckpt = wait_for(lambda: cluster.status("support-bot-sft").get("latestCheckpoint"), 60, "a checkpoint")
            a.stop()
            b = RealRuntime(tiny_model_dir).start()
            cluster.add_pod(runtime_pod("rt-b", b.url))
            status = cluster.wait_phase("support-bot-sft", "Succeeded", timeout=120)
            events = cluster.events("support-bot-sft")
        assert status["progress"]["step"] == 400 and status["attempts"] == 1
        run = "tinker://default.support-bot-sft/weights/step-"
        restored = {c["type"]: c for c in status["conditions"]}["Restored"]
        assert restored["status"] == "True"
        assert restored["message"].startswith(f"restored on rt-b from {run}")
        lost = next(e for e in events if e["reason"] == "RuntimeLost")
        assert lost["message"].startswith("runtime rt-a lost at step ")
        assert f"restoring from {run}" in lost["message"] and "step(s) lost" in lost["message"]
        assert ckpt["step"] >= 2
        assert (store / "runs" / "default.support-bot-sft" / "weights" / "final" / "adapter_model.safetensors").exists()
    finally:
        a.stop()
        if b is not None:
            b.stop()
