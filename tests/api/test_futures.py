"""How runtime results become Tinker future answers (`futures.translate`), and framework errors JSON."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.exceptions import RequestValidationError

from loraplane.api import errors as api_errors
from loraplane.api import futures, ids
from loraplane.api.dataplane import Result, Runtimes
from loraplane.api.gateway import Gateway
from loraplane.clients import artifact_store
from loraplane.core import artifacts, errors
from loraplane.core.runtime_ops import OpKind
from loraplane.singlenode.controlplane import EmbeddedControlPlane
from loraplane.singlenode.jobstore import SqliteJobStore

RUN = "s-0123456789ab:train:0"


@pytest.fixture
def gw(tmp_path: Path) -> Gateway:
    store = artifact_store.ArtifactStore(f"file://{tmp_path}/store")
    return Gateway(control_plane=EmbeddedControlPlane(SqliteJobStore(tmp_path / "jobs.sqlite"), [], store_url=store.url), runtimes=Runtimes(), store=store,
                   clock=lambda: "2026-01-01T00:00:00Z")


def ref(op: str) -> ids.FutureRef:
    return ids.FutureRef("s-0123456789ab-train-0", "runtime-0", OpKind(op), "r1")


@pytest.mark.parametrize(
    ("op", "result", "expected"),
    [
        ("forward_backward", Result("pending"), {"type": "try_again", "request_id": ref("forward_backward").encode(), "queue_state": "active"}),
        ("optim_step", Result("failed", error="nan loss", category="user"), {"error": "nan loss", "category": "user"}),
        ("optim_step", Result("failed", error="x", category="weird"), {"error": "x", "category": "unknown"}),
        ("optim_step", Result("done", result={"grad_norm": 1.5, "lr": 1, "note": "x"}), {"metrics": {"grad_norm": 1.5, "lr": 1.0}}),
        ("optim_step", Result("done", result={"metrics": {"a": 2}}), {"metrics": {"a": 2.0}}),
        ("optim_step", Result("proto", payload=b"x"), {"error": "runtime returned protobuf for a optim_step op", "category": "server"}),
        ("forward_backward", Result("done", result={}), {"error": "runtime returned JSON for a forward_backward op", "category": "server"}),
        ("snapshot", Result("done", result={"sampler_id": "s-0123456789ab-sample-2"}),
         {"sampling_session_id": "s-0123456789ab:sample:2", "type": "save_weights_for_sampler"}),
    ],
)
def test_runtime_results_become_tinker_answers(gw: Gateway, op: str, result: Result, expected: dict) -> None:
    assert futures.translate(gw, ref(op), result) == expected


@pytest.mark.parametrize("op", ["forward_backward", "sample"])
def test_protobuf_results_pass_through_unchanged(gw: Gateway, op: str) -> None:
    response = futures.translate(gw, ref(op), Result("proto", payload=b"\x01\x02"))
    assert response.body == b"\x01\x02" and response.media_type == "application/x-protobuf"


def test_a_finished_save_writes_its_checkpoint_record_once(gw: Gateway) -> None:
    path = artifacts.TinkerPath(RUN, "weights", "step-3")
    gw.store.write_json(gw.records.pending_url(path), {"user_metadata": {"k": "v"}, "ttl_seconds": None})
    done = Result("done", result={"dest": artifacts.checkpoint_url(gw.store.url, path), "step": 3, "size_bytes": 10})
    for _ in range(2):
        assert futures.translate(gw, ref("save_state"), done) == {"path": str(path), "type": "save_weights"}
    record = gw.store.read_json(artifacts.checkpoint_record_url(gw.store.url, path))
    assert record == {"checkpoint_id": "weights/step-3", "checkpoint_type": "training", "time": "2026-01-01T00:00:00Z",
                      "size_bytes": 10, "step": 3, "user_metadata": {"k": "v"}, "expires_at": None}
    assert not gw.store.exists(gw.records.pending_url(path))


def test_a_save_outside_the_store_is_a_server_failure(gw: Gateway) -> None:
    out = futures.translate(gw, ref("save_state"), Result("done", result={"dest": "file:///elsewhere/x"}))
    assert out["category"] == "server"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([{"loc": ("body", "lora_config", "rank"), "msg": "too small", "type": "greater_than_equal"}], "lora_config.rank"),
        ([{"loc": ("query", "limit"), "msg": "bad", "type": "int_parsing"}], "limit"),
        ([{"loc": ("body", 5), "msg": "Expecting value", "type": "json_invalid"}], "body"),
        ([], "body"),
    ],
)
def test_validation_errors_name_the_field(raw: list, field: str) -> None:
    err = errors.invalid_input(RequestValidationError(raw).errors())
    assert isinstance(err, errors.InvalidInput) and err.field == field


def test_user_errors_tell_the_sdk_not_to_retry() -> None:
    assert api_errors.response_for(errors.NotFound("x")).headers["x-should-retry"] == "false"
    assert "x-should-retry" not in api_errors.response_for(errors.CapacityError("busy")).headers


def test_checkpoints_past_their_ttl_disappear_and_ttls_can_be_changed(tmp_path: Path) -> None:
    now = ["2026-01-01T00:00:00Z"]
    store = artifact_store.ArtifactStore(f"file://{tmp_path}/store")
    gw = Gateway(control_plane=EmbeddedControlPlane(SqliteJobStore(tmp_path / "jobs.sqlite"), [], store_url=store.url), runtimes=Runtimes(), store=store, clock=lambda: now[0])
    gw.records.put_run(artifacts.build_run_record(run_id=RUN, tenant="alice", base_model="m", lora={}, now=now[0]))
    keep, brief = artifacts.TinkerPath(RUN, "weights", "keep"), artifacts.TinkerPath(RUN, "weights", "brief")
    gw.store.write_json(gw.records.pending_url(brief), {"ttl_seconds": 60})
    for path in (keep, brief):
        gw.records.finish_save(path, now=now[0], step=1, size_bytes=1)
    assert [c["checkpoint_id"] for c in gw.records.checkpoints("alice", RUN)] == ["weights/brief", "weights/keep"]
    gw.records.set_ttl("alice", keep, 30)
    now[0] = "2026-01-01T00:00:45Z"
    assert [c["checkpoint_id"] for c in gw.records.checkpoints("alice", RUN)] == ["weights/brief"]
    assert not gw.store.exists(artifacts.checkpoint_url(gw.store.url, keep))
    gw.records.set_ttl("alice", brief, None)
    now[0] = "2027-01-01T00:00:00Z"
    assert gw.records.checkpoint("alice", brief)["expires_at"] is None
    with pytest.raises(errors.NotFound):
        gw.records.checkpoint("bob", brief)


@pytest.mark.parametrize(
    ("created", "now", "overdue"),
    [
        ("2026-01-01T00:00:00Z", "2026-01-01T00:04:59Z", False),
        ("2026-01-01T00:00:00Z", "2026-01-01T00:05:01Z", True),
        ("2026-01-01T00:00:00+00:00", "2026-01-01T01:00:00Z", True),
        (None, "2026-01-01T01:00:00Z", False),
    ],
)
def test_a_job_that_has_not_started_is_overdue_past_the_timeout(created: str | None, now: str, overdue: bool) -> None:
    assert futures.start_overdue(created, now, 300.0) is overdue


class _PendingJobs:
    """A control plane whose jobs never start (no runtime has room)."""

    def __init__(self, job: object) -> None:
        self.job: object | None = job
        self.deleted: list[str] = []

    async def get_job(self, name: str) -> object | None:
        return self.job

    async def wait_running(self, name: str, timeout: float) -> object:
        raise errors.CapacityError("not running yet")

    async def delete_job(self, name: str) -> None:
        self.deleted.append(name)
        self.job = None


@pytest.mark.anyio
@pytest.mark.parametrize(("now", "overdue"), [("2026-01-01T00:04:00Z", False), ("2026-01-01T00:06:00Z", True)])
async def test_a_training_client_that_cannot_start_in_time_fails_and_its_job_is_deleted(
    tmp_path: Path, now: str, overdue: bool
) -> None:
    from loraplane.api import jobs
    from loraplane.api.records import SessionRecord
    from loraplane.core.params import LoraConfig

    job = jobs.build_job(tenant="alice", session_id="s-0123456789ab", model_seq_id=0, base_model="org/m",
                         lora=LoraConfig())
    job.metadata.creationTimestamp = "2026-01-01T00:00:00Z"
    job.status.message = "no ready runtime serves 'org/m'"
    store = artifact_store.ArtifactStore(f"file://{tmp_path}/store")
    cp = _PendingJobs(job)
    gw = Gateway(control_plane=cp, runtimes=Runtimes(), store=store, clock=lambda: now,  # type: ignore[arg-type]
                 long_poll_s=0.01, job_start_timeout_s=300)
    gw.records.put_session(SessionRecord(session_id="s-0123456789ab", tenant="alice", created="2026-01-01T00:00:00Z"))
    ref = ids.FutureRef("s-0123456789ab-train-0", "cp", OpKind.CREATE_MODEL, "0")
    answer = await futures.retrieve(gw, "alice", ref.encode())
    if not overdue:
        assert answer["type"] == "try_again" and cp.deleted == []
    else:
        assert cp.deleted == [job.metadata.name] and answer["category"] == "server"
        assert "did not start within 300 s (no ready runtime serves 'org/m')" in answer["error"]
