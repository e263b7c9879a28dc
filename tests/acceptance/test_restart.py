"""Kill `loraplane serve` after a save_state, start it again on the same store, and resume."""

from __future__ import annotations

from pathlib import Path

import pytest
import tinker

from tests.acceptance.conftest import KEYS, start_server
from tests.acceptance.helpers import close, train


def test_checkpoints_survive_a_killed_server_and_resume_exactly(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    store = f"file://{tmp_path_factory.mktemp('restart-store')}"
    server = start_server(tiny_model_dir, store)
    try:
        service = tinker.ServiceClient(base_url=server.url, api_key=KEYS["alice"])
        client = service.create_lora_training_client(base_model=server.model, rank=4, seed=21).result()
        train(client, 2)
        path = client.save_state("before-crash").result().path
        expected = train(client, 2, pipelined=False)
    finally:
        server.stop(kill=True)

    server = start_server(tiny_model_dir, store)
    try:
        service = tinker.ServiceClient(base_url=server.url, api_key=KEYS["alice"])
        rest = tinker.RestClient(base_url=server.url, api_key=KEYS["alice"])
        run_id = path.split("/")[2]
        assert path in [c.tinker_path for c in rest.list_checkpoints(run_id).result().checkpoints]
        resumed = service.create_training_client_from_state_with_optimizer(path).result()
        assert close(train(resumed, 2, pipelined=False), expected)
        service.close("success").result()
    finally:
        server.stop()
