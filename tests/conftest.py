"""Fixtures shared by every test folder: one tiny model per test session, built from a config."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TINKER_TELEMETRY", "0")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight Llama (hidden 64, 2 layers, 259-token byte vocabulary) saved to a temp dir."""
    from tests.utils.tiny_models import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session", autouse=True)
def _quiet_sdk_heartbeats_of_stopped_servers() -> None:
    """SDK clients that a test module leaves open keep heartbeating, from their own threads, servers
    that the module's teardown stopped; their warnings then land on the closed capture streams of
    later tests ("--- Logging error ---"). Only the heartbeat's own logger is quieted, and for the
    rest of the process: those threads outlive the test session and warn while pytest exits."""
    import logging

    logging.getLogger("tinker.lib.internal_client_holder").setLevel(logging.ERROR)
