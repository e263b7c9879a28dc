"""Fixtures of the gateway's route tests: a gateway with no runtime behind it, served in process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from loraplane.api import auth
from loraplane.api.app import create_app
from loraplane.api.dataplane import Runtimes
from loraplane.api.gateway import Gateway
from loraplane.clients import artifact_store
from loraplane.core.settings import GatewaySettings
from loraplane.singlenode.controlplane import EmbeddedControlPlane
from loraplane.singlenode.jobstore import SqliteJobStore

#: The base model the gateway fixture offers.
MODEL = "tiny/base"
#: The bearer token the app fixture's /metrics takes.
METRICS = {"Authorization": "Bearer metrics-secret"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def gateway(tmp_path: Path) -> Gateway:
    store = artifact_store.ArtifactStore(f"file://{tmp_path}/store")
    return Gateway(control_plane=EmbeddedControlPlane(SqliteJobStore(tmp_path / "jobs.sqlite"), [], store_url=store.url), runtimes=Runtimes(), store=store,
                   models=[MODEL], max_request_bytes=4096, long_poll_s=0.1)


@pytest.fixture
async def client(gateway: Gateway) -> AsyncIterator[httpx.AsyncClient]:
    """The gateway's app with tenants alice (tml-alice) and bob (tml-bob), through an ASGI transport."""
    app = create_app(gateway, auth.load_keys(inline=["alice=tml-alice", "bob=tml-bob"]),
                     settings=GatewaySettings(metrics_token="metrics-secret", max_json_bytes=4096))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as c:
        yield c
