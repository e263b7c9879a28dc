"""Fixtures of the tests against a real API server: the control plane, namespaces, chart releases.

One control plane per test session; each test works in a namespace of its own. The binaries come
from scripts/k8s-binaries.sh; without them every test here is skipped, with the reason and the
command that builds them.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.k8s.cluster import Cluster
from tests.k8s.controlplane import ROOT, ControlPlane, find_binaries
from tests.k8s.proxy import FaultProxy
from tests.operator.fake_runtime import FakeRuntime

CHART = ROOT / "helm" / "loraplane"
#: The release the session installs first with the chart's default values; it brings the CRD.
SYSTEM_RELEASE = "loraplane"
SYSTEM_NAMESPACE = "loraplane"


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    bin_dir, reason = find_binaries()
    if bin_dir is None:
        if os.environ.get("LORAPLANE_REQUIRE_K8S") == "1":  # CI built them: a miss is a failure
            pytest.fail(reason)
        pytest.skip(reason)
    with ControlPlane(bin_dir, tmp_path_factory.mktemp("k8s")) as plane:
        yield plane


@pytest.fixture(scope="session")
def system_release(control_plane: ControlPlane) -> str:
    """`helm install` of the chart with its default values, which installs and establishes the CRD.

    Every test that needs LoRAJobs depends on this; releases in test namespaces set crds.enabled=false,
    as a second install of a cluster-wide CRD would, and the CRD is kept when a release goes.
    """
    control_plane.helm("install", SYSTEM_RELEASE, str(CHART), "--namespace", SYSTEM_NAMESPACE, "--create-namespace")
    control_plane.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                          "crd/lorajobs.loraplane.dev")
    control_plane.wait_served("/apis/loraplane.dev/v1alpha1/lorajobs")
    return SYSTEM_RELEASE


@pytest.fixture
def namespace(control_plane: ControlPlane, request: pytest.FixtureRequest) -> str:
    """A fresh namespace named after the test (nothing deletes namespaces' content here: no controllers)."""
    stem = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    return control_plane.create_namespace(f"{stem}-{uuid.uuid4().hex[:6]}")


def tiny_values(**extra: Any) -> dict[str, Any]:
    """Chart values of a release in a test namespace: one CPU runtime of the tiny model, no CRD."""
    values: dict[str, Any] = {
        "crds": {"enabled": False},
        "runtimes": [{"name": "tiny", "baseModel": "tiny", "gpus": 0, "replicas": 2,
                      "model": {"hub": {"id": "tiny", "cacheClaim": "models"}}}],
    }
    values.update(extra)
    return values


def write_values(path: Path, values: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.fixture(scope="session")
def fault_proxy(control_plane: ControlPlane) -> Iterator[FaultProxy]:
    """One fault proxy in front of the server for the session; each test starts with it disarmed."""
    pki = control_plane.pki
    proxy = FaultProxy(control_plane.url, pki / "ca.crt", pki / "server.crt", pki / "server.key").start()
    yield proxy
    proxy.close()


@pytest.fixture(scope="session")
def _admin_token_kubeconfig(control_plane: ControlPlane, system_release: str,
                            fault_proxy: FaultProxy, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ServiceAccount with cluster-admin, reached through the fault proxy (a token passes through it;
    a client certificate would not)."""
    control_plane.kubectl("create", "serviceaccount", "loraplane-tests", "-n", "default")
    control_plane.kubectl("create", "clusterrolebinding", "loraplane-tests", "--clusterrole=cluster-admin",
                          "--serviceaccount=default:loraplane-tests")
    path = control_plane.service_account_kubeconfig("default", "loraplane-tests",
                                                    tmp_path_factory.mktemp("kubeconfig") / "tests.kubeconfig")
    config = yaml.safe_load(path.read_text())
    config["clusters"][0]["cluster"]["server"] = fault_proxy.url
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def kubeconfig_path(_admin_token_kubeconfig: Path, fault_proxy: FaultProxy,
                    monkeypatch: pytest.MonkeyPatch) -> Path:
    """The kubeconfig of the code under test (operator, gateway) in the operator tests; also $KUBECONFIG."""
    fault_proxy.faults.reset()
    monkeypatch.setenv("KUBECONFIG", str(_admin_token_kubeconfig))
    return _admin_token_kubeconfig


@pytest.fixture
def cluster(control_plane: ControlPlane, kubeconfig_path: Path, fault_proxy: FaultProxy) -> Iterator[Cluster]:
    """Namespace default of the real API server, emptied, with the fault proxy's controls."""
    c = Cluster(control_plane, fault_proxy)
    yield c
    c.close()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    """Runtimes run in the test process beside the API server and etcd: one torch thread each
    keeps the two cores from fighting over a pass."""
    torch.set_num_threads(1)

@pytest.fixture
def runtimes() -> Iterator[list[FakeRuntime]]:
    """Fake runtimes a test starts; stopped when it ends."""
    started: list[FakeRuntime] = []
    yield started
    for rt in started:
        rt.stop()
