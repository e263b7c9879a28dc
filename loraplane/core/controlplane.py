"""The control-plane interface between the gateway and wherever LoRAJobs live.

Two implementations:
    loraplane.singlenode.controlplane.EmbeddedControlPlane   jobs in an SQLite file, the shared reconcile loop
    loraplane.api.kube.KubeControlPlane                      jobs as LoRAJob custom resources

The gateway turns Tinker's session-level calls into these operations and asks `runtime_for` on
every per-step call, so implementations answer that from a local cache, never a remote read.
"""

from __future__ import annotations

from typing import Any, Protocol

from loraplane.core.models.v1alpha1 import LoRAJob, RuntimeRef


class ControlPlane(Protocol):
    async def create_job(self, job: LoRAJob) -> LoRAJob:
        """Create the job; creating a job that exists with the same spec returns it (idempotent)."""
        ...

    async def apply_job(self, manifest: dict[str, Any], *, tenant: str) -> tuple[LoRAJob, bool]:
        """Create a manifest's job, or update the mutable fields of the tenant's job of that name,
        as `kubectl apply` does: (the stored job, whether it was created). The manifest is checked
        against the LoRAJob schema (InvalidInput naming the field); `spec.tenant` must be `tenant`
        (Forbidden), and a name taken by another tenant is a Conflict."""
        ...

    async def job_events(self, name: str) -> list[dict[str, Any]]:
        """The job's Events, oldest first: {type, reason, message, lastTimestamp}."""
        ...

    async def get_job(self, name: str) -> LoRAJob | None: ...

    async def list_jobs(self, *, tenant: str | None = None) -> list[LoRAJob]: ...

    async def delete_job(self, name: str) -> None:
        """Delete the job (its adapter is unloaded by whoever owns status). Unknown names are ignored."""
        ...

    async def wait_running(self, name: str, timeout: float) -> LoRAJob:
        """Wait until the job is Running; raise `CapacityError` on timeout, `UserError` if it Failed."""
        ...

    def adapter_id(self, name: str) -> str:
        """The id under which the job's adapter lives on its runtime (`runtime_ops.job_adapter_id`
        of wherever the job lives). Callers address the adapter by it and never compute their own."""
        ...

    def runtime_for(self, name: str) -> RuntimeRef | None:
        """The runtime that holds the job's adapter now, from a local cache (None if not placed)."""
        ...

    async def runtimes_for_model(self, base_model: str) -> list[RuntimeRef]:
        """Ready runtimes that serve `base_model` (used to place samplers and base-model sampling)."""
        ...

    async def close(self) -> None: ...
