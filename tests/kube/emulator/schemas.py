"""Structural-schema handling of custom resources: pruning, defaulting and validation.

Called by the server adapter on every create and update of a custom resource, in the
real server's order: unknown fields are pruned, then defaults are applied, then the
result is validated against the CRD version's ``openAPIV3Schema`` (including the
``x-kubernetes-validations`` CEL rules, evaluated by :mod:`.cel`). All functions are
pure: they return new values or lists of causes, and never raise for invalid data.

What is covered: ``type`` (with ``nullable`` and ``x-kubernetes-int-or-string``),
``required``, ``enum``, ``minimum``/``maximum`` (and their exclusive forms),
``minLength``/``maxLength``, ``pattern``, ``minItems``/``maxItems``,
``minProperties``/``maxProperties``, ``items``, ``properties``,
``additionalProperties``, ``allOf``/``anyOf``/``oneOf``/``not``,
``x-kubernetes-preserve-unknown-fields`` and ``x-kubernetes-embedded-resource``.
Formats are not checked.

Causes use the real server's shape: ``{"reason", "message", "field"}`` with messages such
as ``Invalid value: 0: spec.rank in body should be greater than or equal to 1``.
"""

from __future__ import annotations

import copy
import json
import re
from typing import Any

from . import cel

Cause = dict[str, str]
_MISSING = cel.MISSING


def _is_object_schema(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "object" or "properties" in schema or "additionalProperties" in schema


def prune(value: Any, schema: dict[str, Any] | None, root: bool = True) -> Any:
    """Drop fields the schema does not specify, and nulls where the schema is not nullable; pure.

    The root keeps ``apiVersion``, ``kind`` and ``metadata`` as the real server does.
    """
    if schema is None:
        return copy.deepcopy(value)
    if isinstance(value, dict) and (_is_object_schema(schema) or root):
        preserve = schema.get("x-kubernetes-preserve-unknown-fields", False)
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        result = {}
        for key, item in value.items():
            if root and key in ("apiVersion", "kind", "metadata"):
                result[key] = copy.deepcopy(item)
            elif schema.get("x-kubernetes-embedded-resource") and key in ("apiVersion", "kind", "metadata"):
                result[key] = copy.deepcopy(item)
            elif key in properties:
                sub = properties[key]
                if item is None and not sub.get("nullable", False):
                    continue
                result[key] = prune(item, sub, root=False)
            elif isinstance(additional, dict):
                result[key] = prune(item, additional, root=False)
            elif preserve or additional is True:
                result[key] = copy.deepcopy(item)
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"], root=False) for item in value]
    return copy.deepcopy(value)


def apply_defaults(value: Any, schema: dict[str, Any] | None) -> Any:
    """Fill in ``default`` values of absent properties, recursing into objects and arrays; pure."""
    if schema is None:
        return value
    if isinstance(value, dict):
        result = dict(value)
        for key, sub in (schema.get("properties") or {}).items():
            if key not in result and "default" in sub:
                result[key] = copy.deepcopy(sub["default"])
            if key in result:
                result[key] = apply_defaults(result[key], sub)
        additional = schema.get("additionalProperties")
        if isinstance(additional, dict):
            for key in result:
                if key not in (schema.get("properties") or {}):
                    result[key] = apply_defaults(result[key], additional)
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def _show(value: Any) -> str:
    """Render a value as the real server does in messages (JSON, with Go's ``null``)."""
    if isinstance(value, dict):
        return '"object"'
    if isinstance(value, list):
        return '"array"'
    return json.dumps(value)


def _type_ok(value: Any, schema: dict[str, Any]) -> bool:
    if value is None:
        return bool(schema.get("nullable"))
    if schema.get("x-kubernetes-int-or-string"):
        return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
    expected = schema.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        # JSON has one number type: an integral float (1.0) is an integer, as the real server decides.
        "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer()),
        "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
        "boolean": lambda v: isinstance(v, bool),
    }
    return expected not in checks or checks[expected](value)


def _go_type(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "integer",
            float: "number"}.get(type(value), "null")


def validate(value: Any, schema: dict[str, Any] | None, path: str = "", old: Any = _MISSING) -> list[Cause]:
    """All schema violations of a value, as causes naming each field; pure.

    Args:
        value: the (pruned, defaulted) value at ``path``.
        schema: the schema node for that value.
        path: the dotted field path (``spec.rank``, ``spec.items[0]``); empty at the root.
        old: the previous value at the same path on updates, for CEL transition rules
            (rules using ``oldSelf`` run only when it is present).
    """
    if schema is None:
        return []
    field = path or "<root>"
    if not _type_ok(value, schema):
        if value is None:
            return [{"reason": "FieldValueRequired", "field": field, "message": "Required value"}]
        expected = "string" if schema.get("x-kubernetes-int-or-string") else schema.get("type")
        return [{"reason": "FieldValueTypeInvalid", "field": field,
                 "message": f"Invalid value: {_show(value)}: {field} in body must be of type {expected}: "
                            f'"{_go_type(value)}"'}]
    if value is None:
        return []
    causes = _validate_constraints(value, schema, field)
    causes += _validate_children(value, schema, path, old)
    for keyword in ("allOf", "anyOf", "oneOf"):
        branches = schema.get(keyword) or []
        results = [validate(value, {**branch, "type": branch.get("type")}, path) for branch in branches]
        passing = sum(1 for result in results if not result)
        if keyword == "allOf":
            causes += [cause for result in results for cause in result]
        elif branches and keyword == "anyOf" and passing == 0:
            causes.append({"reason": "FieldValueInvalid", "field": field,
                           "message": f"Invalid value: {_show(value)}: {field} in body must match at least one schema"})
        elif branches and keyword == "oneOf" and passing != 1:
            causes.append({"reason": "FieldValueInvalid", "field": field,
                           "message": f"Invalid value: {_show(value)}: {field} in body must match exactly one schema"})
    if isinstance(schema.get("not"), dict) and not validate(value, schema["not"], path):
        causes.append({"reason": "FieldValueInvalid", "field": field,
                       "message": f"Invalid value: {_show(value)}: {field} in body must not match the schema"})
    if not causes:
        causes += cel.check_rules(schema.get("x-kubernetes-validations") or [], value, old, field)
    return causes


def _validate_constraints(value: Any, schema: dict[str, Any], field: str) -> list[Cause]:
    """Scalar and size constraints of one node (enum, bounds, lengths, pattern, counts)."""
    causes: list[Cause] = []

    def fail(message: str, reason: str = "FieldValueInvalid") -> None:
        causes.append({"reason": reason, "field": field, "message": f"Invalid value: {_show(value)}: {message}"})

    if "enum" in schema and value not in schema["enum"]:
        supported = ", ".join(_show(option) for option in schema["enum"])
        causes.append({"reason": "FieldValueNotSupported", "field": field,
                       "message": f"Unsupported value: {_show(value)}: supported values: {supported}"})
    if isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema:
            if schema.get("exclusiveMinimum") and value <= schema["minimum"]:
                fail(f"{field} in body should be greater than {schema['minimum']}")
            elif value < schema["minimum"]:
                fail(f"{field} in body should be greater than or equal to {schema['minimum']}")
        if "maximum" in schema:
            if schema.get("exclusiveMaximum") and value >= schema["maximum"]:
                fail(f"{field} in body should be less than {schema['maximum']}")
            elif value > schema["maximum"]:
                fail(f"{field} in body should be less than or equal to {schema['maximum']}")
    if isinstance(value, str):
        if "minLength" in schema and len(value) < schema["minLength"]:
            fail(f"{field} in body should be at least {schema['minLength']} chars long")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            causes.append({"reason": "FieldValueTooLong", "field": field,
                           "message": f"Too long: may not be more than {schema['maxLength']} bytes"})
        if "pattern" in schema and not re.search(schema["pattern"], value):
            fail(f"{field} in body should match '{schema['pattern']}'")
    if isinstance(value, list):
        if "minItems" in schema and len(value) < schema["minItems"]:
            fail(f"{field} in body should have at least {schema['minItems']} items")
        if "maxItems" in schema and len(value) > schema["maxItems"]:
            causes.append({"reason": "FieldValueTooMany", "field": field,
                           "message": f"Too many: {len(value)}: must have at most {schema['maxItems']} items"})
    if isinstance(value, dict):
        if "minProperties" in schema and len(value) < schema["minProperties"]:
            fail(f"{field} in body should have at least {schema['minProperties']} properties")
        if "maxProperties" in schema and len(value) > schema["maxProperties"]:
            fail(f"{field} in body should have at most {schema['maxProperties']} properties")
    return causes


def _validate_children(value: Any, schema: dict[str, Any], path: str, old: Any) -> list[Cause]:
    """Required properties, then each property, additional property and array item."""
    causes: list[Cause] = []
    prefix = f"{path}." if path else ""
    if isinstance(value, dict):
        for key in schema.get("required") or []:
            if key not in value:
                causes.append({"reason": "FieldValueRequired", "field": f"{prefix}{key}", "message": "Required value"})
        properties = schema.get("properties") or {}
        additional = schema.get("additionalProperties")
        old_map = old if isinstance(old, dict) else {}
        for key, item in value.items():
            sub = properties.get(key) or (additional if isinstance(additional, dict) else None)
            if sub is not None and not (path == "" and key in ("apiVersion", "kind", "metadata")):
                causes += validate(item, sub, f"{prefix}{key}", old_map.get(key, _MISSING))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            causes += validate(item, schema["items"], f"{path}[{index}]")
    return causes
