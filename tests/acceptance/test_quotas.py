"""Tenant quotas through the official SDK against `loraplane serve`: each limit refuses the one too
many with a clear error, and never touches another tenant."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import tinker

from tests.acceptance.conftest import KEYS, Server, start_server
from tests.acceptance.helpers import ce_batch


@pytest.fixture(scope="module")
def limited(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("quotas")
    keys = folder / "keys"
    keys.write_text(
        f"alice={KEYS['alice']} max_training_clients=1 max_lora_rank=8 max_sampling_clients=1 "
        "max_storage_bytes=1\n"
        f"bob={KEYS['bob']}\n")
    keys.chmod(0o600)
    srv = start_server(tiny_model_dir, f"file://{folder}/store", args=["--api-keys-file", str(keys)])
    yield srv
    srv.stop()


def _service(server: Server, tenant: str) -> tinker.ServiceClient:
    return tinker.ServiceClient(base_url=server.url, api_key=KEYS[tenant])


def test_a_rank_over_the_tenants_limit_is_refused_with_403(limited: Server) -> None:
    with pytest.raises(tinker.PermissionDeniedError, match="max_lora_rank=8"):
        _service(limited, "alice").create_lora_training_client(base_model=limited.model, rank=16).result()


def test_one_training_client_too_many_is_refused_and_the_other_tenant_goes_on(limited: Server) -> None:
    alice = _service(limited, "alice")
    first = alice.create_lora_training_client(base_model=limited.model, rank=4).result()
    with pytest.raises(tinker.PermissionDeniedError, match=r"holds 1 training clients.*max_training_clients=1"):
        alice.create_lora_training_client(base_model=limited.model, rank=4).result()
    bob = _service(limited, "bob")
    for _ in range(2):
        bob.create_lora_training_client(base_model=limited.model, rank=16).result()
    # storage: alice's first save fills her 1-byte quota; the next is refused
    first.forward_backward(ce_batch(), "cross_entropy").result()
    first.save_state("kept").result()
    with pytest.raises(tinker.PermissionDeniedError, match="max_storage_bytes=1"):
        first.save_state("refused").result()


def test_one_sampling_client_too_many_is_refused(limited: Server) -> None:
    alice = _service(limited, "alice")
    alice.create_sampling_client(base_model=limited.model).result()
    with pytest.raises(tinker.PermissionDeniedError, match="max_sampling_clients=1"):
        alice.create_sampling_client(base_model=limited.model).result()
    _service(limited, "bob").create_sampling_client(base_model=limited.model).result()
