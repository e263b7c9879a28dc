"""Tenant quotas on LoRAJobs that reach the control plane without the gateway's own checks:
`kubectl apply` on a cluster, and jobs already stored when `loraplane serve` starts.

Callers: `loop.JobLoop.schedule`, before a job is placed, in both modes. The decision is
`core.quotas.job_breach`, the same rank and training-client limits the gateway checks; this module
gathers what it needs: the tenant's quota from the control context's table, the tenant's jobs
from the job store.

Design notes
============
* Only a job that has never run is checked: a quota lowered later does not end a job that is
  running already when its runtime is lost and it is placed again.
* The tenant's jobs are listed (in the namespace the control plane watches, or all of them) only
  when its quota limits training clients, so jobs of unlimited tenants cost nothing.
* A job over a quota fails (phase Failed, reason QuotaExceeded) rather than waiting in Pending: the
  gateway refuses the same request with a 403, and a job left waiting would count against the
  tenant's training clients, so its other clients would be refused while it waited.
"""

from __future__ import annotations

from typing import Any

from loraplane.control.store import JobStore
from loraplane.core import quotas
from loraplane.core.models.v1alpha1.lorajob import TERMINAL_PHASES, LoRAJob
from loraplane.core.settings import OperatorSettings


def table(settings: OperatorSettings) -> quotas.QuotaTable:
    """The operator's quota table: its settings' defaults and per-tenant table."""
    return quotas.QuotaTable.build(settings.tenant_defaults, settings.tenant_quotas)


def facts(body: dict[str, Any]) -> quotas.JobFacts:
    """What admission needs to know of a stored LoRAJob. Pure."""
    meta = body.get("metadata") or {}
    phase = (body.get("status") or {}).get("phase")
    return quotas.JobFacts(name=f"{meta.get('namespace')}/{meta.get('name')}",
                           created=meta.get("creationTimestamp") or "",
                           live=phase not in {p.value for p in TERMINAL_PHASES})


async def breach(table: quotas.QuotaTable, jobs: JobStore, namespace: str | None,
                 job: LoRAJob) -> quotas.Breach | None:
    """The quota a job that has never run would pass by running now; None when it may run.

    `namespace` is where the control plane's jobs live ("" or None: all namespaces)."""
    if job.status.start_time is not None:
        return None
    tenant = job.spec.tenant
    quota = table.for_tenant(tenant)
    others: list[quotas.JobFacts] = []
    if quota.max_training_clients is not None and quotas.rank_breach(tenant, job.spec.lora.rank, quota) is None:
        listed = await jobs.list(namespace or None)
        others = [facts(b) for b in listed if (b.get("spec") or {}).get("tenant") == tenant]
    me = quotas.JobFacts(f"{job.metadata.namespace}/{job.metadata.name}", job.metadata.creationTimestamp or "", True)
    return quotas.job_breach(tenant, quota, rank=job.spec.lora.rank, job=me, others=others)
