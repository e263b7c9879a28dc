"""The gateway's access log: one line per request with its id, tenant, route, status, model and reason."""

from __future__ import annotations

import io
import json
import logging

import pytest

from loraplane.api import access_log
from loraplane.core import logs

pytestmark = pytest.mark.anyio


@pytest.fixture
def lines():  # type: ignore[no-untyped-def]
    """The access lines the app writes, as JSON objects (the `json` log format)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("loraplane.access")
    logger.addHandler(handler)
    old = logger.level
    logger.setLevel(logging.INFO)
    yield lambda: [json.loads(x) for x in stream.getvalue().splitlines()]
    logger.removeHandler(handler)
    logger.setLevel(old)


async def test_each_request_logs_one_line_with_tenant_route_status_and_id(client, lines):
    r = await client.post("/api/v1/create_session", headers={"X-API-Key": "tml-alice"}, json={})
    assert r.status_code == 200
    [line] = lines()
    assert line["request_id"] == r.headers["x-request-id"] and line["request_id"].startswith("req-")
    assert (line["tenant"], line["method"], line["route"], line["status"]) == (
        "alice", "POST", "/api/v1/create_session", 200)
    assert line["latency_ms"] >= 0 and "reason" not in line and "model_id" not in line


async def test_errors_log_their_reason_and_the_key_never_appears(client, lines):
    r = await client.post("/api/v1/get_info", headers={"X-API-Key": "tml-wrong-key"}, json={"model_id": "x"})
    assert r.status_code == 401
    r = await client.post("/api/v1/get_info", headers={"X-API-Key": "tml-alice", "X-Request-ID": "client-chosen-1"},
                          json={"model_id": "s-0000:train:3"})
    assert r.status_code == 404 and r.headers["x-request-id"] == "client-chosen-1"
    unauth, missing = lines()
    assert unauth["status"] == 401 and unauth["tenant"] == "-" and "API key" in unauth["reason"]
    assert missing["request_id"] == "client-chosen-1" and missing["model_id"] == "s-0000:train:3"
    assert missing["tenant"] == "alice" and "s-0000" in missing["reason"]
    text = json.dumps(lines())
    assert "tml-wrong-key" not in text and "tml-alice" not in text


async def test_a_malformed_request_id_is_replaced(client, lines):
    r = await client.get("/healthz", headers={"X-Request-ID": "bad id with spaces"})
    assert r.headers["x-request-id"].startswith("req-")


@pytest.mark.parametrize(
    ("path", "ctype", "body", "params", "expected"),
    [
        ("/api/v1/optim_step", "application/json", b'{"model_id": "s-1:train:0", "seq_id": 2}', {}, "s-1:train:0"),
        ("/api/v1/retrieve_future", "application/json", b'{"request_id": "s-000000000001-train-4.runtime-0.optim.abc"}', {},
         "s-000000000001:train:4"),
        ("/api/v1/retrieve_future", "application/json", b'{"request_id": "s-000000000001-sample-4.runtime-0.sample.abc"}', {},
         None),
        ("/api/v1/training_runs/s-1:train:2", "", b"", {"run_id": "s-1:train:2"}, "s-1:train:2"),
        ("/api/v1/create_session", "application/json", b"{}", {}, None),
        ("/api/v1/forward_backward", "application/x-protobuf", b"\x0a\x0bs-1:train:0\x10\x01", {}, "s-1:train:0"),
        ("/api/v1/forward_backward", "application/x-protobuf", b"\xff\xff", {}, None),
    ],
)
def test_the_model_id_is_found_where_the_call_names_it(path, ctype, body, params, expected):
    assert access_log.model_id_of(path, ctype, body, params) == expected


def test_text_lines_quote_values_with_spaces():
    fields = access_log.fields_of(request_id="r1", tenant="alice", method="POST", route="/x", status=400,
                                  latency_s=0.0123, model_id=None, reason='bad "field"')
    assert access_log.text_of(fields) == (
        'access request_id=r1 tenant=alice method=POST route=/x status=400 latency_ms=12.3 reason="bad \\"field\\""')
