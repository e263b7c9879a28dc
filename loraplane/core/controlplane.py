"""The control-plane interface between the gateway and wherever LoRAJobs live.

Two implementations:
    loraplane.singlenode.controlplane.EmbeddedControlPlane   jobs in process, persisted to the store
    loraplane.api.kube.KubeControlPlane                      jobs as LoRAJob custom resources

The gateway turns Tinker's session-level calls into these operations and asks `runtime_for` on
every per-step call, so implementations answer that from a local cache, never a remote read.
"""

from __future__ import annotations

from typing import Protocol

from loraplane.core.models.v1alpha1 import LoRAJob, RuntimeRef


class ControlPlane(Protocol):
    async def create_job(self, job: LoRAJob) -> LoRAJob:
        """Create the job; creating a job that exists with the same spec returns it (idempotent)."""
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
