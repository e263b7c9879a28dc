"""The gateway in Kubernetes mode, served by uvicorn in a thread on 127.0.0.1, for end-to-end tests.

It is wired as `loraplane gateway` wires it (`loraplane.api.cli.run`): gateway settings, a
`KubeControlPlane` built from those settings (it
finds the API server through $KUBECONFIG), API keys from inline `tenant=key` entries, and the
artifact store that the runtimes and the operator share. Only the listening socket differs: a
free loopback port, bound before uvicorn starts, so the test knows the URL without parsing logs.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

import httpx
import uvicorn

from loraplane.api.app import create_app
from loraplane.api.auth import load_keys
from loraplane.api.dataplane import Runtimes
from loraplane.api.gateway import Gateway
from loraplane.api.kube import KubeControlPlane
from loraplane.clients import artifact_store
from loraplane.core.quotas import QuotaTable
from loraplane.core.settings import GatewaySettings, Settings


def kubernetes_settings(*, namespace: str = "default", long_poll_s: float = 5.0,
                        session_expiry_s: float = 180.0) -> Settings:
    """Settings of a gateway in Kubernetes mode; a short long poll keeps retries of a pending job quick."""
    gateway = GatewaySettings(host="127.0.0.1", port=0, namespace=namespace,
                              long_poll_s=long_poll_s, session_expiry_s=session_expiry_s)
    return Settings(gateway=gateway)


class GatewayServer:
    """The gateway app on a free loopback port; a context manager that stops it on exit.

    `control_plane` is the gateway's `KubeControlPlane`, exposed so that a test can check what the
    gateway saw; it lives on the server thread's event loop, so only its synchronous reads
    (`runtime_for`) are safe to call from the test thread.
    """

    def __init__(self, settings: Settings, store_url: str, keys: dict[str, str], *, kubeconfig: Path,
                 from_environment: bool = True) -> None:
        if from_environment:
            # As the CLI builds it: the cluster is found through $KUBECONFIG, which the
            # kubeconfig_path fixture set after kubernetes_asyncio was imported.
            assert os.environ.get("KUBECONFIG") == str(kubeconfig), "use the kubeconfig_path fixture"
            self.control_plane = KubeControlPlane.from_settings(settings)
        else:
            # Its own credentials, whatever $KUBECONFIG says (an operator in the same process sets it).
            self.control_plane = KubeControlPlane(
                settings.gateway.namespace, runtime_selector=settings.operator.runtime_selector,
                runtime_port=settings.operator.runtime_port, kubeconfig=str(kubeconfig))
        table = load_keys(inline=[f"{tenant}={key}" for tenant, key in keys.items()])
        gateway = Gateway(
            control_plane=self.control_plane,
            runtimes=Runtimes(timeout_s=settings.gateway.long_poll_s + 60),
            store=artifact_store.ArtifactStore(store_url),
            long_poll_s=settings.gateway.long_poll_s, job_start_timeout_s=settings.gateway.job_start_timeout_s,
            max_request_bytes=settings.gateway.max_request_bytes,
            quotas=QuotaTable.build(settings.gateway.tenant_defaults, settings.gateway.tenant_quotas, table.overrides),
        )
        self._sock = socket.socket()
        self._sock.bind((settings.gateway.host, 0))
        self.port = self._sock.getsockname()[1]
        app = create_app(gateway, table, settings=settings.gateway)
        config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> GatewayServer:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError("gateway did not start")

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(15)
        self._sock.close()
        assert not self._thread.is_alive(), "gateway did not stop"

    def __enter__(self) -> GatewayServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
