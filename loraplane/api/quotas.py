"""Per-tenant quotas: how much of the service one tenant may hold, and the errors past a limit.

Callers: `auth.load_keys` reads each tenant's overrides from its line of the keys file
(`alice=tml-... max_training_clients=4 max_lora_rank=64`); `Gateway` checks them before it creates
what they count. Tenants without a line of settings get `GatewaySettings.tenant_defaults`.

Design notes
============
* The checks are pure functions of the quota and the current use, which the gateway counts from
  the control plane (live training clients) and the store's per-tenant indexes (sampling clients,
  storage): every gateway replica sees the same use.
* Every limit answers 403 naming the limit, its setting and the current use. Not 409: the SDK
  (0.38) retries a 409 until its progress timeout, so a client over a count would hang instead of
  being told; a 403 is raised at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from loraplane.core import errors
from loraplane.core.settings import TenantQuota


@dataclass
class QuotaTable:
    """Each tenant's quota: the defaults, with the tenant's own overrides on top."""

    defaults: TenantQuota = field(default_factory=TenantQuota)
    #: tenant -> settings given on its line of the keys file
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._resolved = {tenant: resolve(self.defaults, values, source=f"tenant {tenant!r}")
                          for tenant, values in self.overrides.items()}

    def for_tenant(self, tenant: str) -> TenantQuota:
        return self._resolved.get(tenant, self.defaults)


def parse_overrides(tokens: list[str], *, source: str) -> dict[str, str]:
    """`name=value` tokens of a keys-file line -> {name: value}. Pure; raises InvalidInput naming
    the source and the accepted names."""
    out: dict[str, str] = {}
    for token in tokens:
        name, sep, value = token.partition("=")
        if not sep or name not in TenantQuota.model_fields:
            raise errors.InvalidInput(
                f"{source}: {token!r} is not a tenant setting; accepted: "
                f"{', '.join(f'{n}=N' for n in TenantQuota.model_fields)}")
        out[name] = value
    return out


def resolve(defaults: TenantQuota, overrides: Mapping[str, Any], *, source: str) -> TenantQuota:
    """The defaults with `overrides` applied and checked. Pure."""
    try:
        return TenantQuota.model_validate({**defaults.model_dump(), **overrides})
    except ValidationError as exc:
        first = exc.errors()[0]
        name = ".".join(str(p) for p in first["loc"])
        raise errors.InvalidInput(f"{source}: {name}: {first['msg']}", field=name) from None


def check_count(tenant: str, what: str, setting: str, used: int, limit: int | None) -> None:
    """403 when `tenant` already holds `limit` of `what`. Pure; called before creating one more."""
    if limit is not None and used >= limit:
        raise errors.Forbidden(
            f"tenant {tenant!r} holds {used} {what}, its limit ({setting}={limit}); close one first "
            "or ask the operator for a higher limit", field=setting)


def check_rank(tenant: str, rank: int, quota: TenantQuota) -> None:
    """403 when `rank` is over the largest LoRA rank `tenant` may use. Pure."""
    if quota.max_lora_rank is not None and rank > quota.max_lora_rank:
        raise errors.Forbidden(
            f"rank {rank} is over tenant {tenant!r}'s largest LoRA rank (max_lora_rank={quota.max_lora_rank})",
            field="lora_config.rank")


def check_storage(tenant: str, used_bytes: int, quota: TenantQuota) -> None:
    """403 when `tenant`'s checkpoints already take its storage quota. Pure; called before a save."""
    if quota.max_storage_bytes is not None and used_bytes >= quota.max_storage_bytes:
        raise errors.Forbidden(
            f"tenant {tenant!r}'s checkpoints take {used_bytes} bytes, its limit "
            f"(max_storage_bytes={quota.max_storage_bytes}); delete some checkpoints first",
            field="max_storage_bytes")
