"""LoRAJob manifests in single-node mode: `loraplane jobs` against a real `loraplane serve`.

The declarative job here trains the tiny model for real; the server is killed (SIGKILL) in the
middle of its run and started again on the same data directory, and the job goes on from its last
checkpoint to Succeeded, saying how many steps the crash lost.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.acceptance.conftest import KEYS, Server, start_server

ROOT = Path(__file__).resolve().parents[2]
#: Short intervals of the shared job life cycle, so the restart is seen within seconds.
FAST_LOOP = {"LORAPLANE_OPERATOR__PROGRESS_INTERVAL_S": "0.1", "LORAPLANE_OPERATOR__HEALTH_INTERVAL_S": "0.2"}


def jobs_cli(server: Server, *args: str, tenant: str = "alice", stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LORAPLANE_URL": server.url, "LORAPLANE_API_KEY": KEYS[tenant]}
    return subprocess.run([sys.executable, "-m", "loraplane", "jobs", *args], capture_output=True, text=True,
                          env=env, input=stdin, timeout=60, cwd=ROOT)


def job(server: Server, name: str, tenant: str = "alice") -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/loraplane/v1/jobs/{name}", headers={"X-API-Key": KEYS[tenant]}, timeout=10)
    answer.raise_for_status()
    return answer.json()


def wait_for(check: Callable[[], Any], what: str, timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what}: not within {timeout}s")


def interactive(server: Server, name: str, tenant: str = "alice", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "loraplane.dev/v1alpha1", "kind": "LoRAJob", "metadata": {"name": name},
            "spec": {"baseModel": server.model, "tenant": tenant, "lora": {"rank": 4}, **spec}}


def test_jobs_cli_applies_lists_describes_and_deletes_a_tenants_own_jobs(server: Server) -> None:
    applied = jobs_cli(server, "apply", "-f", "-", stdin=yaml.safe_dump(interactive(server, "cli-chat")))
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip() == "lorajob.loraplane.dev/cli-chat created"
    wait_for(lambda: job(server, "cli-chat")["status"].get("phase") == "Running", "cli-chat running")

    table = jobs_cli(server, "get", "-o", "wide").stdout.splitlines()
    assert table[0].split() == ["NAME", "PHASE", "BASE", "MODEL", "RUNTIME", "STEP", "LOSS", "TENANT", "AGE"]
    assert any(line.split()[:2] == ["cli-chat", "Running"] and "alice" in line for line in table[1:])
    as_json = json.loads(jobs_cli(server, "get", "cli-chat", "-o", "json").stdout)
    assert as_json["metadata"]["namespace"] == "default" and as_json["metadata"]["uid"]
    assert as_json["kind"] == "LoRAJob" and as_json["spec"]["backoffLimit"] == 3
    described = jobs_cli(server, "describe", "cli-chat").stdout
    assert "Conditions:" in described and "Events:" in described and "Running" in described

    assert "cli-chat" not in jobs_cli(server, "get", tenant="bob").stdout  # the server is shared: bob has his own
    other = jobs_cli(server, "get", "cli-chat", tenant="bob")
    assert other.returncode == 2 and "404" in other.stderr and len(other.stderr.strip().splitlines()) == 1
    assert jobs_cli(server, "delete", "cli-chat", tenant="bob").returncode == 2

    immutable = jobs_cli(server, "apply", "-f", "-", stdin=yaml.safe_dump(
        interactive(server, "cli-chat", lora={"rank": 8})))
    assert immutable.returncode == 2 and "spec.lora is immutable" in immutable.stderr
    bad = jobs_cli(server, "apply", "-f", "-", stdin=yaml.safe_dump(interactive(server, "cli-bad", backoffLimit=-1)))
    assert bad.returncode == 2 and "spec.backoffLimit" in bad.stderr

    deleted = jobs_cli(server, "delete", "cli-chat")
    assert deleted.returncode == 0 and deleted.stdout.strip() == 'lorajob.loraplane.dev "cli-chat" deleted'
    assert "cli-chat" not in jobs_cli(server, "get").stdout


def test_a_declarative_job_survives_a_killed_server_and_succeeds_from_its_last_checkpoint(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    dataset = data_dir / "store" / "datasets" / "alice" / "train.jsonl"
    dataset.parent.mkdir(parents=True)
    dataset.write_text("".join(json.dumps({"prompt": f"question {i}: what is {i} plus {i}?",
                                           "completion": f" it is {2 * i}."}) + "\n" for i in range(32)))
    manifest = {"apiVersion": "loraplane.dev/v1alpha1", "kind": "LoRAJob", "metadata": {"name": "sft"},
                "spec": {"baseModel": str(tiny_model_dir), "tenant": "alice", "mode": "training",
                         "lora": {"rank": 4}, "training": {"dataset": f"file://{dataset}", "steps": 120,
                                                           "batchSize": 4, "checkpointEvery": 5}}}
    store = f"file://{data_dir}/store"
    server = start_server(tiny_model_dir, store, env=FAST_LOOP, args=["--data-dir", str(data_dir)])
    try:
        assert jobs_cli(server, "apply", "-f", "-", stdin=yaml.safe_dump(manifest)).returncode == 0
        wait_for(lambda: (job(server, "sft")["status"].get("latestCheckpoint") or {}).get("step", 0) >= 5
                 and job(server, "sft")["status"]["progress"]["step"] > 5, "a checkpoint and a step past it")
    finally:
        server.stop(kill=True)

    server = start_server(tiny_model_dir, store, env=FAST_LOOP, args=["--data-dir", str(data_dir)])
    try:
        done = wait_for(lambda: (lambda j: j if j["status"].get("phase") in ("Succeeded", "Failed") else None)(
            job(server, "sft")), "the job finished", timeout=300)
        status = done["status"]
        assert status["phase"] == "Succeeded", status
        assert status["attempts"] == 1 and status["progress"]["step"] == 120
        assert status["latestCheckpoint"]["path"] == "tinker://default.sft/weights/final"
        restored = {c["type"]: c for c in status["conditions"]}["Restored"]
        assert restored["status"] == "True"
        events = httpx.get(f"{server.url}/loraplane/v1/jobs/sft/events", headers={"X-API-Key": KEYS["alice"]},
                           timeout=10).json()["items"]
        lost = [e for e in events if e["reason"] == "RuntimeLost"]
        assert lost and "lost" in lost[0]["message"], events
    finally:
        server.stop()
