"""Fault injection and request counts over HTTP, for code under test that runs in another process."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from tests.kube.conftest import WIDGETS
from tests.kube.emulator import KubeEmulator
from tests.kube.emulator.samples import widget

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
MERGE = {"Content-Type": "application/merge-patch+json"}


def test_drop_watches_over_http(client: httpx.Client) -> None:
    with client.stream("GET", CONFIGMAPS, params={"watch": "true", "resourceVersion": "3"}) as response:
        assert client.post("/_emulator/faults/drop-watches").json() == {"dropped": 1}
        assert [line for line in response.iter_lines() if line] == []


def test_gone_conflicts_and_errors_over_http(client: httpx.Client, crds: KubeEmulator) -> None:
    client.post(WIDGETS, json=widget("w"))
    assert client.post("/_emulator/faults/gone", json={"lists": 1}).status_code == 200
    assert client.get(CONFIGMAPS).status_code == 410
    client.post("/_emulator/faults/conflicts", json={"count": 1, "name": "w"})
    assert client.patch(f"{WIDGETS}/w", json={"spec": {"size": 2}}, headers=MERGE).status_code == 409
    client.post("/_emulator/faults/errors", json={"count": 1, "code": 503, "verb": "get", "path": "/widgets/w$"})
    assert client.get(f"{WIDGETS}/w").status_code == 503
    assert client.get(f"{WIDGETS}/w").status_code == 200


def test_latency_and_reset_over_http(client: httpx.Client) -> None:
    client.post("/_emulator/faults/latency", json={"seconds": 0.2})
    started = time.monotonic()
    client.get("/version")
    assert time.monotonic() - started >= 0.2
    client.post("/_emulator/faults/reset")
    started = time.monotonic()
    client.get("/version")
    assert time.monotonic() - started < 0.2


def test_request_counts_over_http_leave_out_control_requests(client: httpx.Client) -> None:
    client.post("/_emulator/faults/reset")
    client.get(CONFIGMAPS)
    client.get(CONFIGMAPS)
    rows = client.get("/_emulator/requests").json()["requests"]
    assert rows == [{"verb": "list", "path": CONFIGMAPS, "count": 2}]


@pytest.mark.parametrize(("path", "body", "fragment"), [
    ("/_emulator/faults/errors", {}, "count: Required value"),
    ("/_emulator/faults/errors", {"count": "two"}, "count: Invalid value"),
    ("/_emulator/faults/errors", {"count": 1, "code": 200}, "code: Invalid value: 200"),
    ("/_emulator/faults/errors", {"count": 1, "path": "("}, "path: Invalid value"),
    ("/_emulator/faults/latency", {"seconds": -1}, "seconds: Invalid value: -1"),
    ("/_emulator/faults/gone", {"watches": True}, "watches: Invalid value: true"),
    ("/_emulator/faults/gone", ["watches"], "must be a JSON object"),
])
def test_bad_control_requests_are_400_naming_the_field(client: httpx.Client, path: str, body: Any,
                                                       fragment: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400 and fragment in response.json()["message"]


def test_unknown_controls_are_404(client: httpx.Client) -> None:
    assert client.post("/_emulator/faults/meteor").status_code == 404
    assert client.get("/_emulator/faults/reset").status_code == 404


def test_control_needs_the_token(kube_emulator: KubeEmulator) -> None:
    assert httpx.post(f"{kube_emulator.url}/_emulator/faults/reset").status_code == 401
