"""The pure pieces of the reconcile loop: checkpoint paths, run ids and training requests."""

from __future__ import annotations

from typing import Any

import pytest

from loraplane.control import loop as reconciling
from loraplane.control import runs
from loraplane.core import artifacts, errors
from loraplane.core.models.v1alpha1.lorajob import Checkpoint, LoRAJob

STORE = "file:///store"


def job(**spec: Any) -> LoRAJob:
    return LoRAJob.from_body(
        {"metadata": {"name": "j", "namespace": "ns"}, "spec": {"baseModel": "m", "tenant": "t", **spec}}
    )


@pytest.mark.parametrize(
    ("path", "url"),
    [
        ("tinker://ns.j/weights/step-4", "file:///store/runs/ns.j/weights/step-4"),
        ("s3://bucket/states/x", "s3://bucket/states/x"),
    ],
)
def test_checkpoint_source_url(path: str, url: str) -> None:
    assert runs.checkpoint_source_url(STORE, path) == url
    assert runs.checkpoint_path(STORE, url) == path


def test_a_malformed_tinker_path_names_the_field() -> None:
    with pytest.raises(errors.InvalidInput, match="resumeFrom.path"):
        runs.checkpoint_source_url(STORE, "tinker://only-two/parts")


@pytest.mark.parametrize(
    ("spec", "run"),
    [
        ({}, "ns.j"),
        ({"session": {"sessionId": "s1", "modelId": "s1:train:0"}}, "s1:train:0"),
    ],
)
def test_run_id(spec: dict[str, Any], run: str) -> None:
    assert runs.run_id(job(**spec)) == run


@pytest.mark.parametrize(
    ("training", "expected"),
    [
        ({"dataset": "file:///d.jsonl", "steps": 10}, {"steps": 10, "epochs": None, "loss": "cross_entropy"}),
        ({"dataset": "file:///d.jsonl", "epochs": 1.5, "outputName": "v2"}, {"epochs": 1.5, "steps": None}),
        ({"dataset": "file:///d.jsonl", "loss": "importance_sampling", "maxSeqLen": 4096, "batchSize": 2},
         {"loss": "importance_sampling", "max_seq_len": 4096, "batch_size": 2}),
    ],
)
def test_train_request_carries_the_whole_training_spec(training: dict[str, Any], expected: dict[str, Any]) -> None:
    body = runs.train_request(job(mode="training", training=training), STORE, start_step=4)
    assert body.checkpoint_prefix == "file:///store/runs/ns.j/weights"
    assert body.output == f"file:///store/runs/ns.j/weights/{training.get('outputName', 'final')}"
    assert body.start_step == 4 and body.dataset == "file:///d.jsonl"
    assert {k: getattr(body, k) for k in expected} == expected


@pytest.mark.parametrize(
    ("live", "written", "written_over", "newer"),
    [
        ("7", "9", "6", False),  # an event from before our write arrived late (Kopf's own patch)
        ("9", "9", "6", True),
        ("12", "9", "6", True),
        ("6", "9", "6", False),
        ("b", "c", "a", True),  # opaque versions: any change from the base counts
        ("a", "c", "a", False),
    ],
)
def test_newer_tells_late_events_from_fresh_ones(live: str, written: str, written_over: str, newer: bool) -> None:
    assert reconciling._newer(live, written, written_over) is newer


WHEN = "2026-01-02T03:04:05.123456Z"


def record(step: Any = 4, *, time: Any = WHEN, expires_at: str | None = None) -> dict[str, Any]:
    return {"checkpoint_id": "x", "step": step, "time": time, "expires_at": expires_at}


@pytest.mark.parametrize(
    ("segment", "body", "kept"),
    [
        ("weights", record(), True),
        ("sampler_weights", record(), False),  # no optimizer state: never a restore source
        ("weights", None, False),  # no record yet: still being written
        ("weights", record(None), False),  # no step: cannot say what a restore loses
        ("weights", record(True), False),
        ("weights", record(-1), False),
        ("weights", record(time=None), False),
        ("weights", record(expires_at="2026-01-02T03:00:00Z"), False),
        ("weights", record(expires_at="2026-01-02T04:00:00Z"), True),
    ],
)
def test_saved_states_keep_complete_unexpired_training_states(
    segment: str, body: dict[str, Any] | None, kept: bool
) -> None:
    path = artifacts.TinkerPath("ns.j", segment, "mine")
    states = runs.saved_states([(path, body)], "2026-01-02T03:30:00Z")
    assert states == ([Checkpoint(path="tinker://ns.j/weights/mine", step=4, time=WHEN)] if kept else [])


@pytest.mark.parametrize(
    ("run", "placed", "start"),
    [
        (None, True, True),
        (None, False, True),
        # the adapter was just created or loaded: a finished run under its id is an earlier one's
        ({"state": "succeeded"}, True, True),
        ({"state": "failed"}, True, True),
        ({"state": "running"}, True, False),
        # the adapter was already there (operator restarted mid-dispatch): the run is this job's
        ({"state": "succeeded"}, False, False),
        ({"state": "running"}, False, False),
        ({"state": "failed"}, False, True),
    ],
)
def test_needs_new_run(run: dict[str, Any] | None, placed: bool, start: bool) -> None:
    assert runs.needs_new_run(run, adapter_was_placed=placed) is start


def test_suspend_path_names_the_step() -> None:
    assert str(runs.suspend_path(job(), 12)) == "tinker://ns.j/weights/suspend-step-12"


@pytest.mark.parametrize(
    ("names", "last_step", "final", "expected"),
    [
        (["step-2", "step-4", "final"], 2, None, [("step-2", 2)]),
        (["step-2", "step-4", "final"], 4, "final", [("step-2", 2), ("step-4", 4), ("final", None)]),
        (["mine", "suspend-step-3", "step-x", "step-6"], 4, None, []),
        ([], 10, "final", []),
    ],
)
def test_complete_states_of_a_declarative_run(names, last_step, final, expected) -> None:
    assert runs.complete_states(names, last_step=last_step, final=final) == expected


def test_the_run_record_of_a_declarative_job_belongs_to_its_tenant() -> None:
    job = LoRAJob.from_body({"metadata": {"name": "sft", "namespace": "team"},
                             "spec": {"baseModel": "m", "tenant": "alice", "mode": "training",
                                      "lora": {"rank": 4}, "training": {"dataset": "file:///d.jsonl"}}})
    record = runs.run_record(job, "2026-01-01T00:00:00Z")
    assert (record["training_run_id"], record["tenant"], record["base_model"]) == ("team.sft", "alice", "m")
    assert record["lora"]["rank"] == 4 and record["user_metadata"] == {"lorajob": "team/sft"}
