"""JSON merge patch (RFC 7386) and JSON patch (RFC 6902), applied to plain dicts.

Used by the server adapter for PATCH requests. Both functions are pure: they return a
new document and never change their inputs. A failed JSON patch raises
:class:`~.statuses.StatusError` shaped as the real server shapes it: a failed ``test``
operation (how Kopf does optimistic concurrency) is a 422 whose cause carries the
patch library's message, and a malformed patch document is a 400.

Strategic merge patch is not implemented; the server treats it as a merge patch, which
is the same for everything but lists of objects with merge keys.
"""

from __future__ import annotations

import copy
from typing import Any

from . import statuses


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 merge patch: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _split_pointer(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise statuses.bad_request(f"JSON pointer must start with '/': {pointer!r}")
    return [_unescape(token) for token in pointer[1:].split("/")]


class _PatchFailed(Exception):
    """A JSON-patch operation that cannot apply to this document (answered with 422)."""


def _parent(doc: Any, tokens: list[str], pointer: str) -> tuple[Any, str]:
    """Walk to the container of the last token; raise when a step is missing."""
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict) and token in node:
            node = node[token]
        elif isinstance(node, list) and token.isdigit() and int(token) < len(node):
            node = node[int(token)]
        else:
            raise _PatchFailed(f"doc is missing path: \"{pointer}\": missing value")
    return node, tokens[-1]


def _get(doc: Any, pointer: str) -> Any:
    tokens = _split_pointer(pointer)
    if not tokens:
        return doc
    container, key = _parent(doc, tokens, pointer)
    if isinstance(container, dict) and key in container:
        return container[key]
    if isinstance(container, list) and key.isdigit() and int(key) < len(container):
        return container[int(key)]
    raise _PatchFailed(f"doc is missing path: \"{pointer}\": missing value")


def _remove(doc: Any, pointer: str) -> Any:
    container, key = _parent(doc, _split_pointer(pointer), pointer)
    if isinstance(container, dict) and key in container:
        return container.pop(key)
    if isinstance(container, list) and key.isdigit() and int(key) < len(container):
        return container.pop(int(key))
    raise _PatchFailed(f"unable to remove nonexistent key: {key}: missing value")


def _add(doc: Any, pointer: str, value: Any, replace: bool = False) -> Any:
    tokens = _split_pointer(pointer)
    if not tokens:
        return value
    container, key = _parent(doc, tokens, pointer)
    if isinstance(container, dict):
        if replace and key not in container:
            raise _PatchFailed(f"replace operation does not apply: doc is missing key: {pointer}: missing value")
        container[key] = value
    elif isinstance(container, list):
        if key == "-" and not replace:
            container.append(value)
        elif key.isdigit() and int(key) <= len(container) - (1 if replace else 0):
            if replace:
                container[int(key)] = value
            else:
                container.insert(int(key), value)
        else:
            raise _PatchFailed(f"Unable to access invalid index: {key}: invalid index referenced")
    else:
        raise _PatchFailed(f"doc is missing path: \"{pointer}\": missing value")
    return doc


def _apply_op(doc: Any, op: dict[str, Any]) -> Any:
    name, path = op.get("op"), op.get("path")
    if not isinstance(path, str):
        raise statuses.bad_request(f"JSON patch operation {op!r} lacks a string 'path'")
    if name in ("add", "replace", "test") and "value" not in op:
        raise statuses.bad_request(f"JSON patch operation {op!r} lacks a 'value'")
    if name == "add":
        return _add(doc, path, copy.deepcopy(op["value"]))
    if name == "replace":
        return _add(doc, path, copy.deepcopy(op["value"]), replace=True)
    if name == "remove":
        _remove(doc, path)
        return doc
    if name == "test":
        if _get(doc, path) != op["value"]:
            raise _PatchFailed(f"testing value {path} failed: test failed")
        return doc
    if name in ("move", "copy"):
        source = op.get("from")
        if not isinstance(source, str):
            raise statuses.bad_request(f"JSON patch operation {op!r} lacks a string 'from'")
        value = _remove(doc, source) if name == "move" else copy.deepcopy(_get(doc, source))
        return _add(doc, path, value)
    raise statuses.bad_request(f"Unexpected kind: {name}")


def json_patch(document: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch; returns the patched copy.

    Raises:
        StatusError: 400 when the patch document is malformed; 422 (reason ``Invalid``,
            the library message as an ``UnexpectedServerResponse`` cause) when an
            operation does not apply, including a failed ``test``.
    """
    if not isinstance(operations, list) or not all(isinstance(op, dict) for op in operations):
        raise statuses.bad_request("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(document)
    for op in operations:
        try:
            doc = _apply_op(doc, op)
        except _PatchFailed as exc:
            raise statuses.StatusError(
                "Invalid",
                "the server rejected our request due to an error in our request",
                {"causes": [{"reason": "UnexpectedServerResponse", "message": str(exc)}]},
            ) from exc
    return doc
