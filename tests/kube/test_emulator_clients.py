"""Real clients accept the emulator's formats: kubernetes_asyncio's API and watch, and Kopf's API functions."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from kopf._cogs.clients import auth, fetching, patching, scanning
from kopf._cogs.configs import configuration
from kopf._cogs.structs import credentials, patches, references
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio import watch as k8s_watch

from tests.kube.emulator import KubeEmulator
from tests.kube.emulator.fixtures import TOKEN
from tests.kube.emulator.samples import GROUP, widget

LOGGER = logging.getLogger(__name__)


async def _with_kubernetes_asyncio(kubeconfig: Path, work: Any) -> Any:
    configuration_ = k8s.Configuration()
    await k8s_config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration_)
    async with k8s.ApiClient(configuration_) as api:
        return await work(api)


def test_kubernetes_asyncio_creates_lists_and_reads_typed_objects(kubeconfig_path: Path) -> None:
    async def work(api: k8s.ApiClient) -> None:
        core = k8s.CoreV1Api(api)
        created = await core.create_namespaced_config_map(
            "default", k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="c", labels={"app": "x"}), data={"k": "v"}))
        assert created.metadata.uid and created.metadata.resource_version
        listed = await core.list_namespaced_config_map("default", label_selector="app=x")
        assert [item.metadata.name for item in listed.items] == ["c"]
        assert listed.metadata.resource_version
        with pytest.raises(k8s.ApiException) as caught:
            await core.create_namespaced_config_map("default", k8s.V1ConfigMap(metadata=k8s.V1ObjectMeta(name="c")))
        assert caught.value.status == 409
        with pytest.raises(k8s.ApiException) as caught:
            await core.read_namespaced_config_map("missing", "default")
        assert caught.value.status == 404
        status = await core.delete_namespaced_config_map("c", "default")
        assert status.status == "Success"

    asyncio.run(_with_kubernetes_asyncio(kubeconfig_path, work))


def test_kubernetes_asyncio_custom_objects_and_status(crds: KubeEmulator, kubeconfig_path: Path) -> None:
    async def work(api: k8s.ApiClient) -> dict[str, Any]:
        custom = k8s.CustomObjectsApi(api)
        await custom.create_namespaced_custom_object(GROUP, "v1", "default", "widgets", widget("w"))
        # For custom objects the client defaults to JSON patch, which (as on a real server) refuses a dict.
        await custom.patch_namespaced_custom_object_status(GROUP, "v1", "default", "widgets", "w",
                                                           {"status": {"phase": "Ready"}},
                                                           _content_type="application/merge-patch+json")
        return await custom.get_namespaced_custom_object(GROUP, "v1", "default", "widgets", "w")

    obj = asyncio.run(_with_kubernetes_asyncio(kubeconfig_path, work))
    assert obj["status"] == {"phase": "Ready"} and obj["metadata"]["generation"] == 1


def test_kubernetes_asyncio_watch_reads_the_stream(kube_emulator: KubeEmulator, kubeconfig_path: Path) -> None:
    kube_emulator.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "namespace": "default"}})

    async def work(api: k8s.ApiClient) -> list[tuple[str, str]]:
        core = k8s.CoreV1Api(api)
        seen = []
        async with k8s_watch.Watch() as watcher:
            async for event in watcher.stream(core.list_namespaced_config_map, "default", timeout_seconds=1):
                seen.append((event["type"], event["object"].metadata.name))
                if len(seen) == 1:
                    await core.patch_namespaced_config_map("a", "default", {"data": {"k": "v"}})
                if len(seen) == 2:
                    break
        return seen

    assert asyncio.run(_with_kubernetes_asyncio(kubeconfig_path, work)) == [("ADDED", "a"), ("MODIFIED", "a")]


async def _with_kopf_vault(url: str, work: Any) -> Any:
    vault = credentials.Vault()
    await vault.populate({"emulator": credentials.ConnectionInfo(server=url, token=TOKEN)})
    auth.vault_var.set(vault)
    try:
        return await work(configuration.OperatorSettings())
    finally:
        await vault.close()


def test_kopf_discovery_sees_crd_resources_with_status(crds: KubeEmulator) -> None:
    async def work(settings: configuration.OperatorSettings) -> Any:
        return await scanning.scan_resources(settings=settings, logger=LOGGER)

    found = {(r.group, r.version, r.plural): r for r in asyncio.run(_with_kopf_vault(crds.url, work))}
    widgets = found[(GROUP, "v1", "widgets")]
    assert widgets.kind == "Widget" and widgets.namespaced and widgets.subresources == frozenset({"status"})
    assert "wd" in widgets.shortcuts and "loraplane" in widgets.categories
    assert ("", "v1", "pods") in found and ("coordination.k8s.io", "v1", "leases") in found
    assert not found[(GROUP, "v1", "gadgets")].namespaced


def test_kopf_fetches_and_patches_objects(crds: KubeEmulator) -> None:
    crds.create(widget("w"))
    resource = references.Resource(GROUP, "v1", "widgets", kind="Widget", namespaced=True,
                                   subresources=frozenset({"status"}), verbs=frozenset({"list", "patch"}))

    async def work(settings: configuration.OperatorSettings) -> Any:
        chunks = [chunk async for chunk in fetching.fetch_objs(settings=settings, resource=resource,
                                                                namespace="default", logger=LOGGER)]
        patch = patches.Patch({"spec": {"size": 3}, "status": {"seen": True}})
        patched, remaining = await patching.patch_obj(settings=settings, resource=resource, namespace="default",
                                                      name="w", patch=patch, logger=LOGGER)
        return chunks, patched, remaining

    chunks, patched, remaining = asyncio.run(_with_kopf_vault(crds.url, work))
    ((items, version),) = chunks
    assert [item["metadata"]["name"] for item in items] == ["w"] and version.isdigit()
    assert patched["spec"]["size"] == 3 and patched["status"] == {"seen": True}
    assert not remaining
