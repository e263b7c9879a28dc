"""Where LoRAJobs live, as the reconcile loop sees it: status writes, deletions and Events.

Implementations:
    loraplane.operator.kubeapi.KubeJobStore      the Kubernetes API (status subresource, Events via Kopf)
    loraplane.singlenode.jobstore.SqliteJobStore  an SQLite file in `loraplane serve`'s data directory

The loop reads jobs from a live body that its driver keeps current (Kopf's watch, or the SQLite
store's own copy) and writes through this interface only, so both drivers run the same loop.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol


class RetryLater(Exception):
    """A conflict or a server error: try again after `delay` seconds."""

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class JobGone(Exception):
    """The job no longer exists."""


class JobStore(Protocol):
    async def patch_status(self, namespace: str, name: str, status_patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch `.status`; return the object as stored (with its new resourceVersion).

        Raises `JobGone` when the job no longer exists and `RetryLater` on a transient failure.
        """
        ...

    async def list(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every job in `namespace` (all namespaces when None), as stored."""
        ...

    async def delete(self, namespace: str, name: str) -> None:
        """Delete the job (its TTL expired); a job already gone is not an error."""
        ...

    def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Record an Event about the job (`type_` is Normal or Warning); never raises."""
        ...
