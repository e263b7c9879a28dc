"""The operator's own writes to the Kubernetes API: LoRAJob status and deletion.

Callers: `reconciling`. Kopf watches and posts Events; this module does what a long-running
per-job loop needs beyond that: merge-patching the status subresource at any moment (Kopf
applies a daemon's patch only when the daemon returns) and deleting expired jobs.

Design notes
============
Credentials come from the kubeconfig (`$KUBECONFIG` or ~/.kube/config) or, inside a pod, the
service account, the same sources Kopf logs in with. A 409 or 5xx becomes `Retry`, which the
reconcile loop turns into a short wait; a 404 means the job is gone.
"""

from __future__ import annotations

import os
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException

from loraplane.core.models.v1alpha1.lorajob import GROUP, PLURAL, VERSION


class Retry(Exception):
    """A conflict or a server error: try again after `delay` seconds."""

    def __init__(self, message: str, delay: float = 1.0) -> None:
        super().__init__(message)
        self.delay = delay


class Gone(Exception):
    """The job no longer exists."""


async def load_config(kubeconfig: str | None = None) -> client.ApiClient:
    """An API client from the service account in a pod, else from the kubeconfig."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
        return client.ApiClient()
    configuration = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
    return client.ApiClient(configuration=configuration)


def _translate(exc: ApiException, what: str) -> Exception:
    if exc.status == 404:
        return Gone(what)
    if exc.status == 409 or exc.status == 429 or (exc.status or 0) >= 500:
        return Retry(f"{what}: {exc.status} {exc.reason}", delay=1.0)
    return exc


class LoRAJobs:
    """Status patches and deletes of LoRAJob objects."""

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
            if not isinstance(translated, Gone):
                raise translated from exc
