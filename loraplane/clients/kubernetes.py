"""One way to reach the Kubernetes API, for the gateway and the operator alike.

Design notes
============
`kubernetes_asyncio` is the async port of the official `kubernetes` client (the same generated
API classes and kubeconfig handling, on aiohttp). The gateway and the operator are asyncio
programs and Kopf is built on aiohttp, so the port serves where the official client's blocking
calls would need a thread each.

Credentials: inside a pod (and when neither an explicit kubeconfig nor `$KUBECONFIG` is given),
the service account; otherwise the kubeconfig, read when connecting rather than at import, so
that a `$KUBECONFIG` set by a command line flag or a test is honoured.
"""

from __future__ import annotations

import os

from kubernetes_asyncio import client, config


async def api_client(kubeconfig: str | None = None) -> client.ApiClient:
    """An API client from the service account in a pod, else from the kubeconfig."""
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
        config.load_incluster_config()
        return client.ApiClient()
    configuration = client.Configuration()
    await config.load_kube_config(config_file=kubeconfig or os.environ.get("KUBECONFIG"),
                                  client_configuration=configuration)
    return client.ApiClient(configuration=configuration)
