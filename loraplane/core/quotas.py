"""Per-tenant quotas: how much of the service one tenant may hold, and the answer past a limit.

Callers: the gateway (`api/gateway.py`) checks them before it creates what they count; the
operator (`operator/quotas.py`) checks the same adapter-count and rank limits for LoRAJobs that
were applied directly with kubectl. `auth.load_keys` reads a tenant's overrides from its line of
the keys file (`alice=tml-... max_training_clients=4 max_lora_rank=64`).

Where a tenant's quota comes from, each layer over the one before: the defaults
(`tenant_defaults`), the tenant's entry of the settings' `tenant_quotas` table (the chart passes
the same table to gateway and operator), then the settings on its keys-file line (`serve`).

Design notes
============
* The decisions are pure functions of the quota and the current use, which the callers count
  from the control plane (live training clients) and the store's per-tenant indexes (sampling
  clients, storage): every gateway replica and the operator see the same use.
* Every limit answers 403 naming the limit, its setting and the current use. Not 409: the SDK
  (0.38) retries a 409 until its progress timeout, so a client over a count would hang instead of
  being told; a 403 is raised at once. The operator turns the same breach into phase Failed with
  reason `QuotaExceeded`.
* A LoRAJob counts against its tenant's training clients until it finishes. The operator counts
  only the tenant's live jobs created before the one it admits, so that of several jobs applied
  at once exactly the oldest ones up to the limit run, whatever order their loops run in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from loraplane.core import errors
from loraplane.core.settings import TenantQuota

#: The reason (condition, Event) of a LoRAJob refused by a quota.
QUOTA_EXCEEDED = "QuotaExceeded"


@dataclass(frozen=True)
class Breach:
    """One limit a request would pass: which setting, its value, the use, and what to tell the user."""

    setting: str  #: e.g. "max_lora_rank"
    limit: int
    used: int  #: the current use (for a rank: the rank asked for)
    message: str
    field: str  #: the request field to name in the 403

    def error(self) -> errors.Forbidden:
        return errors.Forbidden(self.message, field=self.field)


@dataclass
class QuotaTable:
    """Each tenant's quota: the defaults, with the tenant's own overrides on top."""

    defaults: TenantQuota = field(default_factory=TenantQuota)
    #: tenant -> settings that override the defaults (from the settings' table and the keys file)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._resolved = {tenant: resolve(self.defaults, values, source=f"tenant {tenant!r}")
                          for tenant, values in self.overrides.items()}

    @classmethod
    def build(cls, defaults: TenantQuota, table: Mapping[str, TenantQuota],
              lines: Mapping[str, Mapping[str, Any]] | None = None) -> QuotaTable:
        """The table of the settings (`tenant_defaults`, `tenant_quotas`) and the keys file's lines.

        A field a tenant's entry does not set keeps the default; its keys-file line wins over both."""
        overrides: dict[str, dict[str, Any]] = {t: q.model_dump(exclude_unset=True) for t, q in table.items()}
        for tenant, values in (lines or {}).items():
            overrides.setdefault(tenant, {}).update(values)
        return cls(defaults, overrides)

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


# -- decisions ---------------------------------------------------------------------------------------

def count_breach(tenant: str, what: str, setting: str, used: int, limit: int | None) -> Breach | None:
    """The breach when `tenant` already holds `limit` of `what` (before it creates one more). Pure."""
    if limit is None or used < limit:
        return None
    return Breach(setting, limit, used, (
        f"tenant {tenant!r} holds {used} {what}, its limit ({setting}={limit}); finish or delete one first "
        "or ask the operator for a higher limit"), field=setting)


def rank_breach(tenant: str, rank: int, quota: TenantQuota) -> Breach | None:
    """The breach when `rank` is over the largest LoRA rank `tenant` may use. Pure."""
    if quota.max_lora_rank is None or rank <= quota.max_lora_rank:
        return None
    return Breach("max_lora_rank", quota.max_lora_rank, rank, (
        f"rank {rank} is over tenant {tenant!r}'s largest LoRA rank (max_lora_rank={quota.max_lora_rank})"),
        field="lora_config.rank")


def storage_breach(tenant: str, used_bytes: int, quota: TenantQuota) -> Breach | None:
    """The breach when `tenant`'s checkpoints already take its storage quota (before a save). Pure."""
    if quota.max_storage_bytes is None or used_bytes < quota.max_storage_bytes:
        return None
    return Breach("max_storage_bytes", quota.max_storage_bytes, used_bytes, (
        f"tenant {tenant!r}'s checkpoints take {used_bytes} bytes, its limit "
        f"(max_storage_bytes={quota.max_storage_bytes}); delete some checkpoints first"), field="max_storage_bytes")


@dataclass(frozen=True)
class JobFacts:
    """What the admission of one LoRAJob needs to know about another of its tenant's jobs."""

    name: str  #: namespace/name
    created: str  #: creationTimestamp (RFC 3339, so it sorts as text)
    live: bool  #: not finished (Succeeded or Failed)


def job_breach(tenant: str, quota: TenantQuota, *, rank: int, job: JobFacts,
               others: Iterable[JobFacts]) -> Breach | None:
    """Whether a new LoRAJob of `tenant` may run: its rank, then its tenant's training clients.

    `others` are the tenant's other jobs; only the live ones created before `job` (by time, then
    name) count, so that a burst of jobs applied together admits the oldest up to the limit. Pure.
    """
    breach = rank_breach(tenant, rank, quota)
    if breach is not None:
        return breach
    ahead = sum(1 for o in others if o.live and o.name != job.name and (o.created, o.name) < (job.created, job.name))
    return count_breach(tenant, "training clients", "max_training_clients", ahead, quota.max_training_clients)


# -- the gateway's checks: the same decisions, raised as a 403 ------------------------------------------

def check_count(tenant: str, what: str, setting: str, used: int, limit: int | None) -> None:
    """403 when `tenant` already holds `limit` of `what`. Called before creating one more."""
    if (breach := count_breach(tenant, what, setting, used, limit)) is not None:
        raise breach.error()


def check_rank(tenant: str, rank: int, quota: TenantQuota) -> None:
    """403 when `rank` is over the largest LoRA rank `tenant` may use."""
    if (breach := rank_breach(tenant, rank, quota)) is not None:
        raise breach.error()


def check_storage(tenant: str, used_bytes: int, quota: TenantQuota) -> None:
    """403 when `tenant`'s checkpoints already take its storage quota. Called before a save."""
    if (breach := storage_breach(tenant, used_bytes, quota)) is not None:
        raise breach.error()
