"""Unmodified Kopf runs against the emulator: logs in by kubeconfig, discovers, watches, patches status."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import kopf

from tests.kube.emulator import KubeEmulator
from tests.kube.emulator.samples import GROUP, WIDGET_CRD, widget


def _wait_for(predicate: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def _operator_thread(registry: kopf.OperatorRegistry, stop: threading.Event, ready: threading.Event) -> threading.Thread:
    settings = kopf.OperatorSettings()
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 5
    settings.networking.request_timeout = 5

    def target() -> None:
        asyncio.run(kopf.operator(registry=registry, settings=settings, standalone=True, namespaces=["default"],
                                  stop_flag=stop, ready_flag=ready))

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_kopf_operator_reacts_to_a_created_resource_and_patches_its_status(
    kube_emulator: KubeEmulator, kubeconfig_path: Path,
) -> None:
    kube_emulator.create(WIDGET_CRD)
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create(GROUP, "v1", "widgets", id="widget_created", registry=registry)
    def widget_created(spec: kopf.Spec, body: kopf.Body, **_: Any) -> dict[str, Any]:
        kopf.info(body, reason="Doubled", message=f"size {spec['size']} doubled")
        return {"doubled": spec["size"] * 2}

    stop, ready = threading.Event(), threading.Event()
    thread = _operator_thread(registry, stop, ready)
    try:
        assert ready.wait(30)
        kube_emulator.create(widget("first", size=4))

        def handled() -> dict[str, Any] | None:
            obj = kube_emulator.get(f"{GROUP}/v1", "Widget", "first", "default")
            return obj if obj and (obj.get("status") or {}).get("widget_created") else None

        obj = _wait_for(handled)
        assert obj["status"]["widget_created"] == {"doubled": 8}
        assert obj["metadata"]["generation"] == 1  # status and annotation writes never bump it
        assert kube_emulator.request_count("watch", "/widgets$") >= 1
        assert kube_emulator.request_count("patch", "/widgets/first") >= 1

        def posted() -> list[dict[str, Any]]:
            return [event for event in kube_emulator.list("v1", "Event", "default")
                    if event["involvedObject"]["name"] == "first"]

        (event,) = _wait_for(posted)
        assert (event["reason"], event["message"], event["type"]) == ("Doubled", "size 4 doubled", "Normal")
        assert event["involvedObject"]["uid"] == obj["metadata"]["uid"]
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_kopf_finalizer_holds_a_deleted_resource_until_its_delete_handler_ran(
    kube_emulator: KubeEmulator, kubeconfig_path: Path,
) -> None:
    kube_emulator.create(WIDGET_CRD)
    registry = kopf.OperatorRegistry()
    deleted: list[str] = []

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.delete(GROUP, "v1", "widgets", id="widget_deleted", registry=registry)
    def widget_deleted(name: str, **_: Any) -> None:
        deleted.append(name)

    stop, ready = threading.Event(), threading.Event()
    thread = _operator_thread(registry, stop, ready)
    try:
        assert ready.wait(30)
        kube_emulator.create(widget("doomed"))

        def finalized() -> bool:
            obj = kube_emulator.get(f"{GROUP}/v1", "Widget", "doomed", "default")
            return bool(obj and obj["metadata"].get("finalizers"))

        _wait_for(finalized)
        kube_emulator.delete(f"{GROUP}/v1", "Widget", "doomed", "default")
        _wait_for(lambda: kube_emulator.get(f"{GROUP}/v1", "Widget", "doomed", "default") is None)
        assert deleted == ["doomed"]
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()


def test_kopf_recovers_from_dropped_watches_and_410_gone(kube_emulator: KubeEmulator, kubeconfig_path: Path) -> None:
    kube_emulator.create(WIDGET_CRD)
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_with_kubeconfig(**kwargs)

    @kopf.on.create(GROUP, "v1", "widgets", id="widget_created", registry=registry)
    def widget_created(**_: Any) -> str:
        return "seen"

    stop, ready = threading.Event(), threading.Event()
    thread = _operator_thread(registry, stop, ready)
    try:
        assert ready.wait(30)
        _wait_for(lambda: kube_emulator.request_count("watch", "/widgets$") >= 1)
        watches_before = kube_emulator.request_count("watch", "/widgets$")
        lists_before = kube_emulator.request_count("list", "/widgets$")
        kube_emulator.fail_next_watches(3)
        assert kube_emulator.drop_watches() >= 1
        kube_emulator.create(widget("after-the-storm"))

        def handled() -> bool:
            obj = kube_emulator.get(f"{GROUP}/v1", "Widget", "after-the-storm", "default")
            return bool(obj and (obj.get("status") or {}).get("widget_created") == "seen")

        _wait_for(handled)
        assert kube_emulator.request_count("watch", "/widgets$") > watches_before
        assert kube_emulator.request_count("list", "/widgets$") > lists_before  # 410 made Kopf list again
    finally:
        stop.set()
        thread.join(10)
    assert not thread.is_alive()
