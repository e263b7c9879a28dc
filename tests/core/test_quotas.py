"""Tenant quotas: where a tenant's quota comes from, and the decisions at each limit (pure, table-tested)."""

from __future__ import annotations

import pytest

from loraplane.api import auth
from loraplane.core import errors, quotas
from loraplane.core.quotas import JobFacts
from loraplane.core.settings import OperatorSettings, Settings, TenantQuota


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


def test_a_tenants_entry_overrides_only_the_fields_it_sets_and_its_keys_file_line_wins() -> None:
    settings = Settings(gateway={"tenant_defaults": {"max_lora_rank": 64, "max_training_clients": 4},
                                 "tenant_quotas": '{"alice": {"max_training_clients": 16}, "bob": {"max_lora_rank": null}}'})
    keys = auth.load_keys(inline=["alice=tml-a max_lora_rank=8", "bob=tml-b", "carol=tml-c"])
    table = quotas.QuotaTable.build(settings.gateway.tenant_defaults, settings.gateway.tenant_quotas, keys.overrides)
    alice, bob, carol = (table.for_tenant(t) for t in ("alice", "bob", "carol"))
    assert (alice.max_training_clients, alice.max_lora_rank) == (16, 8)
    assert (bob.max_training_clients, bob.max_lora_rank) == (4, None)  # explicitly unlimited
    assert (carol.max_training_clients, carol.max_lora_rank) == (4, 64)  # no settings: the defaults


@pytest.mark.parametrize(("table", "message"), [
    ('{"alice": {"max_rank": 4}}', "max_rank"),
    ('{"alice": {"max_lora_rank": 0}}', "greater than or equal to 1"),
    ('{"alice": 3', "not JSON"),
])
def test_a_bad_quota_table_is_refused_when_the_settings_are_read(table: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        OperatorSettings(tenant_quotas=table)


def _job(name: str, created: str = "2026-01-01T00:00:05Z", live: bool = True) -> JobFacts:
    return JobFacts(f"ns/{name}", created, live)


ME = _job("me")


@pytest.mark.parametrize(("quota", "rank", "others", "breach"), [
    (TenantQuota(), 512, [_job("a"), _job("b")], None),
    (TenantQuota(max_lora_rank=16), 16, [], None),
    (TenantQuota(max_lora_rank=16), 32, [], ("max_lora_rank", 16, 32)),
    # the rank is judged first: a job over both limits is told of its rank, which no waiting fixes
    (TenantQuota(max_lora_rank=16, max_training_clients=0), 32, [], ("max_lora_rank", 16, 32)),
    (TenantQuota(max_training_clients=2), 8, [_job("a", "2026-01-01T00:00:01Z")], None),
    (TenantQuota(max_training_clients=2), 8, [_job("a", "2026-01-01T00:00:01Z"), _job("b", "2026-01-01T00:00:02Z")],
     ("max_training_clients", 2, 2)),
    # finished jobs and jobs created after this one do not count
    (TenantQuota(max_training_clients=1), 8, [_job("a", "2026-01-01T00:00:01Z", live=False),
                                              _job("z", "2026-01-01T00:00:09Z")], None),
    # created in the same second: the name orders them
    (TenantQuota(max_training_clients=1), 8, [_job("a")], ("max_training_clients", 1, 1)),
    (TenantQuota(max_training_clients=1), 8, [_job("zz")], None),
    # the job itself, listed with the others, is not counted
    (TenantQuota(max_training_clients=1), 8, [ME], None),
    (TenantQuota(max_training_clients=0), 8, [], ("max_training_clients", 0, 0)),
], ids=["no-limits", "rank-at-limit", "rank-over", "rank-first", "one-ahead-of-two", "two-ahead-of-two",
        "finished-and-newer-ignored", "same-second-older-name", "same-second-newer-name", "itself", "zero"])
def test_a_lorajob_is_admitted_by_its_rank_and_the_live_jobs_created_before_it(
        quota: TenantQuota, rank: int, others: list[JobFacts], breach: tuple[str, int, int] | None) -> None:
    got = quotas.job_breach("alice", quota, rank=rank, job=ME, others=others)
    assert (got and (got.setting, got.limit, got.used)) == breach
    if got is not None:
        assert f"{got.setting}={got.limit}" in got.message and str(got.used) in got.message


def test_of_jobs_applied_together_exactly_the_oldest_up_to_the_limit_are_admitted() -> None:
    burst = [_job(f"j{i}", f"2026-01-01T00:00:0{i % 3}Z") for i in range(7)]
    admitted = [j.name for j in burst if quotas.job_breach(
        "alice", TenantQuota(max_training_clients=3), rank=8, job=j, others=burst) is None]
    assert admitted == ["ns/j0", "ns/j3", "ns/j6"]  # the three created first (second :00)
