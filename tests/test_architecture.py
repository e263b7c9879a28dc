"""The import direction of docs/architecture.md, checked on the source.

core imports no component and no framework; runtime imports core only (nothing web-facing of the
gateway or operator); api and operator import core only; only singlenode wires components together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "loraplane"

#: layer -> module prefixes it must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core": ("loraplane.api", "loraplane.operator", "loraplane.runtime", "loraplane.singlenode", "kopf", "fastapi"),
    "runtime": ("loraplane.api", "loraplane.operator", "loraplane.singlenode", "kopf"),
    "api": ("loraplane.runtime", "loraplane.operator", "loraplane.singlenode", "torch"),
    "operator": ("loraplane.api", "loraplane.runtime", "loraplane.singlenode", "torch", "fastapi"),
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
