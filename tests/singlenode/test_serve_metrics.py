"""`loraplane serve`'s `/metrics` carries the in-process runtimes' series beside the gateway's."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from loraplane.api.auth import load_keys
from loraplane.singlenode.server import ServeConfig, build_app

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_metrics_include_each_runtime_labelled_with_its_base_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = ServeConfig(models={"tiny-a": str(tiny_model_dir), "tiny-b": str(tiny_model_dir)},
                         keys=load_keys(inline=["alice=tml-alice-0123456789"], files=[]),
                         store_url=f"file://{tmp_path}")
    config.runtime = config.runtime.model_copy(update={"device": "cpu", "threads": 1})
    config.gateway = config.gateway.model_copy(update={"metrics_token": "scrape"})
    app = build_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve") as client:
            await client.get("/healthz")
            text = (await client.get("/metrics", headers={"Authorization": "Bearer scrape"})).text
    assert "loraplane_gateway_requests_total" in text
    for model in ("tiny-a", "tiny-b"):
        assert f'loraplane_runtime_adapters{{base_model="{model}",state="resident"}}' in text
        assert f'loraplane_runtime_queue_depth{{base_model="{model}"}} 0.0' in text
    assert text.count("# TYPE loraplane_runtime_queue_depth gauge") == 1
