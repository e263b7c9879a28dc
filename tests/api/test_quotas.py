"""Tenant quotas: parsing a tenant's settings, and the decisions at each limit (pure, table-tested)."""

from __future__ import annotations

import pytest

from loraplane.api import auth, quotas
from loraplane.core import errors
from loraplane.core.settings import TenantQuota


def test_settings_after_a_key_override_the_defaults_for_that_tenant_only() -> None:
    keys = auth.load_keys(inline=["alice=tml-a max_training_clients=2 max_lora_rank=16", "bob=tml-b"])
    table = quotas.QuotaTable(TenantQuota(max_lora_rank=64, max_sampling_clients=5), keys.overrides)
    alice, bob = table.for_tenant("alice"), table.for_tenant("bob")
    assert (alice.max_training_clients, alice.max_lora_rank, alice.max_sampling_clients) == (2, 16, 5)
    assert (bob.max_training_clients, bob.max_lora_rank) == (None, 64)
    assert keys.tenant_for("tml-a") == "alice"


@pytest.mark.parametrize(("line", "message"), [
    ("alice=tml-a max_rank=4", "not a tenant setting; accepted: max_training_clients=N"),
    ("alice=tml-a max_lora_rank=0", "max_lora_rank: Input should be greater than or equal to 1"),
    ("alice=tml-a max_storage_bytes=lots", "max_storage_bytes: Input should be a valid integer"),
])
def test_a_bad_tenant_setting_is_refused_at_start_up_naming_it(line: str, message: str) -> None:
    with pytest.raises(errors.InvalidInput, match=message):
        auth.load_keys(inline=[line])


@pytest.mark.parametrize(("used", "limit", "refused"), [(0, None, False), (3, None, False), (1, 2, False),
                                                         (2, 2, True), (5, 2, True), (0, 0, True)])
def test_a_count_at_its_limit_is_a_403_naming_limit_and_use(used: int, limit: int | None, refused: bool) -> None:
    if not refused:
        quotas.check_count("alice", "training clients", "max_training_clients", used, limit)
        return
    with pytest.raises(errors.Forbidden) as err:
        quotas.check_count("alice", "training clients", "max_training_clients", used, limit)
    assert err.value.status_code == 403
    assert f"holds {used} training clients" in err.value.message and f"max_training_clients={limit}" in err.value.message


@pytest.mark.parametrize(("rank", "limit", "refused"), [(8, None, False), (8, 8, False), (9, 8, True)])
def test_a_rank_over_the_tenants_largest_is_a_403(rank: int, limit: int | None, refused: bool) -> None:
    quota = TenantQuota(max_lora_rank=limit)
    if not refused:
        quotas.check_rank("alice", rank, quota)
        return
    with pytest.raises(errors.Forbidden, match=f"rank {rank} is over tenant 'alice'.*max_lora_rank={limit}") as err:
        quotas.check_rank("alice", rank, quota)
    assert err.value.status_code == 403 and err.value.field == "lora_config.rank"


@pytest.mark.parametrize(("used", "limit", "refused"), [(10, None, False), (99, 100, False), (100, 100, True)])
def test_storage_at_its_quota_refuses_the_next_save(used: int, limit: int | None, refused: bool) -> None:
    quota = TenantQuota(max_storage_bytes=limit)
    if not refused:
        quotas.check_storage("alice", used, quota)
        return
    with pytest.raises(errors.Forbidden, match=f"take {used} bytes.*max_storage_bytes={limit}"):
        quotas.check_storage("alice", used, quota)
