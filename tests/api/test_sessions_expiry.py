"""Session expiry decisions: when a session is overdue, when a heartbeat is written, what futures answer."""

from __future__ import annotations

import pytest

from loraplane.api import sessions_expiry as se
from loraplane.api.records import SessionRecord

T0 = "2026-01-01T00:00:00Z"


def session(**fields) -> SessionRecord:
    return SessionRecord.model_validate({"session_id": "s-1", "tenant": "alice", "created": T0, **fields})


@pytest.mark.parametrize(
    ("record", "now", "expired"),
    [
        ({"created": T0}, "2026-01-01T00:02:59Z", False),
        ({"created": T0}, "2026-01-01T00:03:00Z", True),
        ({"created": T0, "last_heartbeat": "2026-01-01T00:02:00Z"}, "2026-01-01T00:04:59Z", False),
        ({"created": T0, "last_heartbeat": "2026-01-01T00:02:00Z"}, "2026-01-01T00:05:00Z", True),
        ({"created": T0, "finished": {"time": T0, "reason": "success"}}, "2026-01-02T00:00:00Z", False),
        ({"created": ""}, "2026-01-02T00:00:00Z", False),
    ],
)
def test_a_session_expires_after_the_ttl_without_a_heartbeat(record, now, expired):
    assert se.is_expired(session(**record), now, 180.0) is expired


def test_a_gateway_start_gives_every_session_a_full_ttl():
    record = session()
    assert se.is_expired(record, "2026-01-01T01:00:00Z", 180.0)
    assert not se.is_expired(record, "2026-01-01T01:00:00Z", 180.0, watching_since="2026-01-01T00:58:00Z")
    assert se.is_expired(record, "2026-01-01T01:01:00Z", 180.0, watching_since="2026-01-01T00:58:00Z")


@pytest.mark.parametrize(
    ("last", "now", "write"),
    [(None, T0, True), (T0, "2026-01-01T00:00:29Z", False), (T0, "2026-01-01T00:00:30Z", True)],
)
def test_heartbeats_are_written_at_most_every_sixth_of_the_ttl(last, now, write):
    record = session(last_heartbeat=last)
    assert se.needs_write(record, now, 180.0) is write


def test_futures_of_an_expired_session_fail_naming_the_states_to_resume_from():
    record = session(finished={"time": T0, "reason": "expired", "after_s": 180,
                               "saved": {"s-1:train:0": "tinker://s-1:train:0/weights/session-expired"}})
    answer = se.future_answer(record)
    assert answer is not None and answer["category"] == "user"
    assert "expired after 180 s" in answer["error"] and "tinker://s-1:train:0/weights/session-expired" in answer["error"]
    assert se.future_answer(session(finished={"time": T0, "reason": "success"})) is None
    assert se.future_answer(session()) is None


def test_sampler_records_of_earlier_releases_say_their_kind_by_their_keys():
    from loraplane.api.records import SamplerRecord

    base = {"sampler_id": "s-1:sample:0", "tenant": "alice", "session_id": "s-1", "base_model": "m", "created": T0}
    assert SamplerRecord.model_validate({**base, "adapter_id": None}).kind == "base_model"
    assert SamplerRecord.model_validate({**base, "adapter_id": "ckpt-1", "source": "file:///x",
                                         "model_path": "tinker://r/sampler_weights/x"}).kind == "checkpoint"
    assert SamplerRecord.model_validate({**base, "adapter_id": "s-1-sample-0", "job": "j", "pod": "p"}).kind == "snapshot"


def test_the_default_expiry_is_eighteen_missed_sdk_heartbeats():
    assert se.DEFAULT_EXPIRY_S == 18 * 10
