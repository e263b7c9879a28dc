"""Tenants' quotas in the chart reach gateway and operator alike, as the settings each one reads."""

from __future__ import annotations

from typing import Any

import helm_python as helm
import pytest

from loraplane.core.quotas import QuotaTable
from loraplane.core.settings import Settings
from tests.chart.rendering import by_kind, render

VALUES = {"tenants": {"defaults": {"maxTrainingClients": 4, "maxLoraRank": 64, "maxStorageBytes": 10_000_000_000},
                      "quotas": {"alice": {"maxTrainingClients": 32}, "bob": {"maxLoraRank": None}}}}


def _env(deployment: dict[str, Any]) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in container.get("env") or [] if "value" in e}


def test_gateway_and_operator_read_the_same_quota_of_each_tenant(monkeypatch: pytest.MonkeyPatch) -> None:
    tables = {}
    for deployment in by_kind(render(VALUES), "Deployment"):
        component = deployment["metadata"]["labels"]["loraplane.dev/component"]
        with monkeypatch.context() as env:
            for name, value in _env(deployment).items():
                if "TENANT" in name:
                    env.setenv(name, value)
            section = getattr(Settings(), component)
        tables[component] = QuotaTable.build(section.tenant_defaults, section.tenant_quotas)
    assert set(tables) == {"gateway", "operator"}
    for table in tables.values():
        alice, bob, carol = (table.for_tenant(t) for t in ("alice", "bob", "carol"))
        assert (alice.max_training_clients, alice.max_lora_rank) == (32, 64)
        assert (bob.max_training_clients, bob.max_lora_rank) == (4, None)
        assert (carol.max_training_clients, carol.max_lora_rank, carol.max_storage_bytes) == (4, 64, 10_000_000_000)


def test_without_tenant_values_no_quota_is_set() -> None:
    for deployment in by_kind(render({}), "Deployment"):
        assert not [name for name in _env(deployment) if "TENANT" in name]


@pytest.mark.parametrize(("values", "message"), [
    ({"tenants": {"defaults": {"maxRank": 4}}}, "additional properties 'maxRank' not allowed"),
    ({"tenants": {"quotas": {"alice": {"maxLoraRank": 0}}}}, "/tenants/quotas/alice/maxLoraRank"),
    ({"tenants": {"quotas": {"Alice": {}}}}, "invalid propertyName 'Alice'"),
])
def test_a_misspelt_or_impossible_quota_is_refused_by_the_schema(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError) as info:
        render(values)
    assert message in str(info.value)
