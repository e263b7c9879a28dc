"""The operator's own writes to the Kubernetes API: LoRAJob status, deletion and Events.

Callers: the reconcile loop (`loraplane.control.loop`), through the `JobStore` interface. Kopf
watches; this module does what a long-running per-job loop needs beyond that: merge-patching the
status subresource at any moment (Kopf applies a daemon's patch only when the daemon returns),
deleting expired jobs, and posting Events (through Kopf's poster, which batches them).

Design notes
============
A 409, 429 or 5xx becomes `RetryLater`, which the reconcile loop turns into a short wait; a 404
means the job is gone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from loraplane.control.store import JobGone, RetryLater
from loraplane.core.models.v1alpha1.lorajob import GROUP, PLURAL, VERSION


def _translate(exc: ApiException, what: str) -> Exception:
    if exc.status == 404:
        return JobGone(what)
    if exc.status == 409 or exc.status == 429 or (exc.status or 0) >= 500:
        return RetryLater(f"{what}: {exc.status} {exc.reason}", delay=1.0)
    return exc


class KubeJobStore:
    """`JobStore` over LoRAJob custom resources."""
    def __init__(self, api_client: client.ApiClient) -> None:
        self._api_client = api_client
        self._api = client.CustomObjectsApi(api_client)

    async def close(self) -> None:
        await self._api_client.close()

    async def patch_status(self, namespace: str, name: str, status_patch: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch `.status`; returns the object as stored."""
        try:
            return await self._api.patch_namespaced_custom_object_status(
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                {"status": status_patch},
                _content_type="application/merge-patch+json",
            )
        except ApiException as exc:
            raise _translate(exc, f"patch status of {namespace}/{name}") from exc

    async def get(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return await self._api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            raise _translate(exc, f"get {namespace}/{name}") from exc

    async def list(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every LoRAJob in `namespace` (in all namespaces when None)."""
        try:
            if namespace is None:
                found = await self._api.list_cluster_custom_object(GROUP, VERSION, PLURAL)
            else:
                found = await self._api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        except ApiException as exc:
            raise _translate(exc, f"list LoRAJobs in {namespace or 'all namespaces'}") from exc
        return list(found.get("items") or [])

    async def delete(self, namespace: str, name: str) -> None:
        try:
            await self._api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as exc:
            translated = _translate(exc, f"delete {namespace}/{name}")
            if not isinstance(translated, JobGone):
                raise translated from exc

    def post_event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        kopf.event(dict(body), type=type_, reason=reason, message=message[:1000])
