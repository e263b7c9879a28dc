"""SDK versions: the supported range is admitted, others get a 426 that names the range."""

from __future__ import annotations

import pytest

from loraplane.api import sdk_versions as sv

pytestmark = pytest.mark.anyio
SUPPORTED = sv.parse_range(sv.SUPPORTED)


@pytest.mark.parametrize(
    ("headers", "version"),
    [
        ({b"x-stainless-package-version": b"0.24.1"}, "0.24.1"),
        ({b"x-sdk-version": b"0.38.0", b"x-stainless-package-version": b"0.37.0"}, "0.38.0"),
        ({b"user-agent": b"AsyncTinker/Python 0.30.2"}, "0.30.2"),
        ({b"user-agent": b"curl/8.5"}, None),
        ({}, None),
    ],
)
def test_the_sdk_version_is_read_from_the_headers_it_sends(headers, version):
    assert sv.sdk_version(headers) == version


@pytest.mark.parametrize(("version", "refused"), [("0.38.0", False), ("0.38.7", False), ("0.24.1", True),
                                                   ("0.37.9", True), ("0.39.0", True), ("banana", True)])
def test_versions_outside_the_range_are_refused(version, refused):
    error = sv.refusal(version, SUPPORTED)
    assert (error is not None) is refused
    if error is not None:
        assert error.status_code == 426
        assert f"tinker SDK {version} is not supported" in error.message
        assert ">=0.38.0, <0.39" in error.message and "pip install 'tinker==0.38.0'" in error.message


def test_a_bad_configured_range_is_a_readable_error():
    with pytest.raises(ValueError, match="not a version range"):
        sv.parse_range("newest please")


async def test_an_old_sdk_gets_a_426_naming_the_supported_versions(client):
    old = {"X-API-Key": "tml-alice", "X-Stainless-Package-Version": "0.24.1", "User-Agent": "Tinker/Python 0.24.1"}
    r = await client.post("/api/v1/create_session", headers=old, json={})
    assert r.status_code == 426
    assert "0.24.1" in r.json()["error"] and ">=0.38.0, <0.39" in r.json()["error"]
    current = {**old, "X-Stainless-Package-Version": "0.38.0", "User-Agent": "AsyncTinker/Python 0.38.0"}
    assert (await client.post("/api/v1/create_session", headers=current, json={})).status_code == 200
    assert (await client.post("/api/v1/create_session", headers={"X-API-Key": "tml-alice"}, json={})).status_code == 200
    assert (await client.get("/api/v1/healthz", headers=old)).status_code == 200


async def test_the_range_is_a_setting(client):
    client._transport.app.state.sdk_versions = ">=0.24,<0.39"  # type: ignore[attr-defined]
    old = {"X-API-Key": "tml-alice", "X-Stainless-Package-Version": "0.24.1"}
    assert (await client.post("/api/v1/create_session", headers=old, json={})).status_code == 200
