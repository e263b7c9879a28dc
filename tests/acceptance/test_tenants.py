"""Two tenants, four SDK clients training at once: results as if alone, and no tenant sees the other."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import tinker

from tests.acceptance.conftest import KEYS, Server
from tests.acceptance.helpers import TEXTS, ce_batch, close, train

#: (tenant, seed, data) of the four clients
CLIENTS = [("alice", 11, TEXTS[:2]), ("alice", 12, TEXTS[1:]), ("bob", 13, TEXTS), ("bob", 14, TEXTS[:1])]


def _losses(server: Server, tenant: str, seed: int, texts: list[str]) -> tuple[str, list[float]]:
    service = tinker.ServiceClient(base_url=server.url, api_key=KEYS[tenant])
    client = service.create_lora_training_client(base_model=server.model, rank=4, seed=seed).result()
    losses = train(client, 3, data=ce_batch(texts))
    path = client.save_state(f"seed-{seed}").result().path
    service.close("success").result()
    return path, losses


def test_four_clients_of_two_tenants_train_as_if_alone_and_stay_apart(server: Server) -> None:
    alone = [_losses(server, *c)[1] for c in CLIENTS]
    with ThreadPoolExecutor(len(CLIENTS)) as pool:
        together = list(pool.map(lambda c: _losses(server, *c), CLIENTS))
    for (_, losses), reference in zip(together, alone, strict=True):
        assert close(losses, reference, tol=1e-3), (losses, reference)

    alice_path = together[0][0]
    alice_run = alice_path.split("/")[2]
    bob = tinker.ServiceClient(base_url=server.url, api_key=KEYS["bob"])
    rest = tinker.RestClient(base_url=server.url, api_key=KEYS["bob"])
    assert alice_run not in [r.training_run_id for r in rest.list_training_runs(limit=1000).result().training_runs]
    assert alice_path not in [c.tinker_path for c in rest.list_user_checkpoints(limit=1000).result().checkpoints]
    with pytest.raises(tinker.NotFoundError):
        rest.list_checkpoints(alice_run).result()
    with pytest.raises(tinker.NotFoundError):
        rest.delete_checkpoint(alice_run, alice_path.split("/", 3)[3]).result()
    with pytest.raises(tinker.NotFoundError):
        rest.get_weights_info_by_tinker_path(alice_path).result()
    with pytest.raises(tinker.NotFoundError):
        bob.create_sampling_client(model_path=alice_path).result()
    with pytest.raises((tinker.NotFoundError, tinker.RequestFailedError)):
        bob.create_training_client_from_state(alice_path).result()
    alice = tinker.ServiceClient(base_url=server.url, api_key=KEYS["alice"])
    # Alice's checkpoint is untouched by Bob's attempts.
    assert alice_path in [c.tinker_path for c in tinker.RestClient(base_url=server.url, api_key=KEYS["alice"]).list_checkpoints(alice_run).result().checkpoints]
    bob.close("success").result()
    alice.close("success").result()
