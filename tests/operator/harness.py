"""Helpers of the operator's cluster tests: the operator in a thread, runtime pods, LoRAJob bodies.

The cluster itself is a real API server: tests/k8s/cluster.py.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from loraplane.core.models.v1alpha1.lorajob import API_VERSION, KIND
from loraplane.core.settings import OperatorSettings
from loraplane.operator import cli

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")

#: Short intervals so that the cluster tests take seconds.
FAST = OperatorSettings(namespace="default", progress_interval_s=0.05, health_interval_s=0.1)


def wait_for(predicate: Callable[[], T], timeout: float = 15.0, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.05)


def wait_event(events: Callable[[str], list[dict[str, Any]]], name: str, reason: str,
               timeout: float = 15.0) -> dict[str, Any]:
    """The first Event of `reason` about `name`, waited for: the operator posts Events from Kopf's
    queue after its status patch, so one can lag the status a test has just seen."""
    return wait_for(lambda: next((e for e in events(name) if e["reason"] == reason), None), timeout,
                    f"{name}'s {reason} Event")


def wait_phase(status: Callable[[str], dict[str, Any]], name: str, phase: str, timeout: float) -> dict[str, Any]:
    """Wait until `status(name)` (a job's status, read again each time) has `phase`; the status then."""
    try:
        return wait_for(lambda: status(name).get("phase") == phase and status(name), timeout)
    except AssertionError:
        raise AssertionError(f"{name} not {phase} within {timeout}s; status: {status(name)}") from None


@contextmanager
def operator(kubeconfig: Path, store_url: str, settings: OperatorSettings = FAST, **options: Any) -> Iterator[None]:
    """Run `loraplane operator` (through Kopf) in a thread until the block ends."""
    stop, ready = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(
                cli.run_operator(settings, store_url=store_url, kubeconfig=str(kubeconfig), stop_flag=stop,
                                 ready_flag=ready, **options)
            )
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    try:
        assert ready.wait(15) or errors, "operator did not start"
        assert not errors, errors
        yield
    finally:
        stop.set()
        thread.join(20)
    assert not thread.is_alive(), "operator did not stop"
    assert not errors, errors


def runtime_pod(name: str, url: str, *, ready: bool = True) -> dict[str, Any]:
    """A runtime pod whose runtime API is at `url` (the runtime-url annotation), for `Cluster.add_pod`."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": "default",
            "labels": {"loraplane.dev/component": "runtime"},
            "annotations": {"loraplane.dev/runtime-url": url},
        },
        "spec": {"containers": [{"name": "runtime", "image": "loraplane:test"}]},
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def lorajob(name: str, *, base_model: str = "tiny", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "namespace": "default", "labels": {"loraplane.dev/tenant": "t"}},
        "spec": {"baseModel": base_model, "tenant": "t", "lora": {"rank": 4}, **spec},
    }


def training(steps: int = 6, every: int = 2) -> dict[str, Any]:
    """`spec.training` of a declarative job over a dataset the fake runtimes never read."""
    return {"dataset": "file:///data/train.jsonl", "steps": steps, "batchSize": 2, "checkpointEvery": every}
