"""Pytest fixtures that start the emulator; tests/kube/conftest.py imports them, others may too.

Other test folders use them with ``from tests.kube.emulator.fixtures import kube_emulator,
kubeconfig_path`` in their conftest.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .emulator import KubeEmulator

#: The bearer token the fixture's emulator requires and its kubeconfig carries.
TOKEN = "emulator-token"


@pytest.fixture
def kube_emulator() -> Iterator[KubeEmulator]:
    """A running emulator on 127.0.0.1 (free port, own thread and loop), stopped after the test."""
    emulator = KubeEmulator(token=TOKEN).start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def kubeconfig_path(kube_emulator: KubeEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kubeconfig for the emulator (plain http, token user, namespace default); also set as $KUBECONFIG."""
    path = kube_emulator.write_kubeconfig(tmp_path / "kubeconfig.yaml")
    monkeypatch.setenv("KUBECONFIG", str(path))
    return path
