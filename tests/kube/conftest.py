"""Fixtures of the emulator tests: a running emulator, a kubeconfig, an HTTP client and a watch reader."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.kube.emulator import KubeEmulator
from tests.kube.emulator.fixtures import TOKEN, kube_emulator, kubeconfig_path
from tests.kube.emulator.samples import GADGET_CRD, WIDGET_CRD
from tests.operator.harness import Cluster

__all__ = ["kube_emulator", "kubeconfig_path"]

WIDGETS = "/apis/testing.loraplane.io/v1/namespaces/default/widgets"


@pytest.fixture
def cluster(kube_emulator: KubeEmulator) -> Iterator[Cluster]:
    """The emulator with the LoRAJob CRD, seen through the operator tests' helpers; closed after the test."""
    c = Cluster(kube_emulator)
    yield c
    c.close()


@pytest.fixture
def client(kube_emulator: KubeEmulator) -> Iterator[httpx.Client]:
    """A plain HTTP client for the emulator, authenticated with the fixture's token."""
    with httpx.Client(base_url=kube_emulator.url, headers={"Authorization": f"Bearer {TOKEN}"},
                      timeout=5.0) as http:
        yield http


@pytest.fixture
def crds(kube_emulator: KubeEmulator) -> KubeEmulator:
    """The emulator with the sample Widget (namespaced) and Gadget (cluster-scoped) CRDs registered."""
    kube_emulator.create(WIDGET_CRD)
    kube_emulator.create(GADGET_CRD)
    return kube_emulator


WatchReader = Callable[..., list[dict[str, Any]]]


@pytest.fixture
def read_watch(client: httpx.Client) -> WatchReader:
    """Open a watch and return its first ``count`` events (or all, if the server ends it sooner).

    ``before_read`` runs once the stream is open, so a test can make changes the watch must see.
    """

    def read(path: str, count: int, before_read: Callable[[], Any] | None = None,
             **params: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        with client.stream("GET", path, params={"watch": "true", **params}) as response:
            assert response.status_code == 200, response.read()
            assert response.headers["content-type"].startswith("application/json")
            if before_read is not None:
                before_read()
            for line in response.iter_lines():
                if line:
                    events.append(json.loads(line))
                if len(events) >= count:
                    break
        return events

    return read
