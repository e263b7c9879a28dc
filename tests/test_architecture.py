"""The import direction of docs/architecture.md, checked on the source.

core imports no component, no framework and no client library; clients (Kubernetes, runtime, store)
import core; control (the job life cycle) imports core and clients, no framework; runtime imports
core and clients; api imports core and clients; operator adds control and Kopf; jobsctl (the
`loraplane jobs` client) imports core only; asgi (the fast lane and the request frame that gateway
and runtime share) imports core and starlette; only singlenode wires components together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "loraplane"

#: layer -> module prefixes it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": ("loraplane.api", "loraplane.operator", "loraplane.runtime", "loraplane.singlenode", "loraplane.control",
             "loraplane.clients", "loraplane.jobsctl", "loraplane.asgi", "kopf", "fastapi", "kubernetes_asyncio",
             "torch", "httpx", "fsspec", "starlette"),
    "clients": ("loraplane.api", "loraplane.operator", "loraplane.runtime", "loraplane.singlenode",
                "loraplane.control", "loraplane.jobsctl", "kopf", "fastapi", "torch"),
    "control": ("loraplane.api", "loraplane.operator", "loraplane.runtime", "loraplane.singlenode",
                "loraplane.jobsctl", "kopf", "fastapi", "kubernetes_asyncio", "torch"),
    "runtime": ("loraplane.api", "loraplane.operator", "loraplane.singlenode", "loraplane.control",
                "loraplane.jobsctl", "kopf"),
    "api": ("loraplane.runtime", "loraplane.operator", "loraplane.singlenode", "loraplane.control",
            "loraplane.jobsctl", "torch"),
    "operator": ("loraplane.api", "loraplane.runtime", "loraplane.singlenode", "loraplane.jobsctl", "torch",
                 "fastapi"),
    "asgi": ("loraplane.api", "loraplane.operator", "loraplane.runtime", "loraplane.singlenode", "loraplane.control",
             "loraplane.clients", "loraplane.jobsctl", "kopf", "fastapi", "torch"),
    "jobsctl": ("loraplane.api", "loraplane.operator", "loraplane.runtime", "loraplane.singlenode",
                "loraplane.control", "loraplane.clients", "kopf", "fastapi", "torch"),
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _cases() -> list[tuple[str, Path]]:
    return [(layer, p) for layer in FORBIDDEN for p in sorted((PACKAGE / layer).rglob("*.py"))]


@pytest.mark.parametrize(("layer", "path"), _cases(), ids=lambda v: str(v).rsplit("loraplane/", 1)[-1])
def test_layer_imports_point_one_way(layer: str, path: Path) -> None:
    bad = sorted(
        name
        for name in imported_modules(path)
        for prefix in FORBIDDEN[layer]
        if name == prefix or name.startswith(prefix + ".")
    )
    assert not bad, f"{path.relative_to(PACKAGE.parent)} ({layer}) imports {bad}; see docs/architecture.md"
