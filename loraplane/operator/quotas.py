"""Tenant quotas on LoRAJobs that reach the operator without the gateway (`kubectl apply`).

Callers: `reconciling.JobLoop.schedule`, before a job is placed. The decision is
`core.quotas.job_breach`, the same rank and training-client limits the gateway checks; this module
reads the quota table from the operator's settings and the tenant's jobs from the API server.

Design notes
============
* Only a job that has never run is checked: a quota lowered later does not end a job that is
  running already when its runtime is lost and it is placed again.
* The tenant's jobs are listed from the API server (in the namespace the operator watches, or all
  of them) only when its quota limits training clients, so jobs of unlimited tenants cost nothing.
* A job over a quota fails (phase Failed, reason QuotaExceeded) rather than waiting in Pending: the
  gateway refuses the same request with a 403, and a job left waiting would count against the
  tenant's training clients, so its other clients would be refused while it waited.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from loraplane.core import quotas
from loraplane.core.models.v1alpha1.lorajob import TERMINAL_PHASES, LoRAJob
from loraplane.core.settings import OperatorSettings
from loraplane.operator import kubeapi


@lru_cache(maxsize=8)
def _table(settings_json: str) -> quotas.QuotaTable:
    settings = OperatorSettings.model_validate_json(settings_json)
    return quotas.QuotaTable.build(settings.tenant_defaults, settings.tenant_quotas)


def table(settings: OperatorSettings) -> quotas.QuotaTable:
    """The quota table of `settings` (built once per distinct settings)."""
    return _table(settings.model_dump_json(include={"tenant_defaults", "tenant_quotas"}, exclude_unset=True))


def facts(body: dict[str, Any]) -> quotas.JobFacts:
    """What admission needs to know of a LoRAJob as the API server returns it. Pure."""
    meta = body.get("metadata") or {}
    phase = (body.get("status") or {}).get("phase")
    return quotas.JobFacts(name=f"{meta.get('namespace')}/{meta.get('name')}",
                           created=meta.get("creationTimestamp") or "",
                           live=phase not in {p.value for p in TERMINAL_PHASES})


async def breach(settings: OperatorSettings, jobs: kubeapi.LoRAJobs, job: LoRAJob) -> quotas.Breach | None:
    """The quota a job that has never run would pass by running now; None when it may run."""
    if job.status.start_time is not None:
        return None
    tenant = job.spec.tenant
    quota = table(settings).for_tenant(tenant)
    others: list[quotas.JobFacts] = []
    if quota.max_training_clients is not None and quotas.rank_breach(tenant, job.spec.lora.rank, quota) is None:
        listed = await jobs.list(settings.namespace or None)
        others = [facts(b) for b in listed if (b.get("spec") or {}).get("tenant") == tenant]
    me = quotas.JobFacts(f"{job.metadata.namespace}/{job.metadata.name}", job.metadata.creationTimestamp or "", True)
    return quotas.job_breach(tenant, quota, rank=job.spec.lora.rank, job=me, others=others)
