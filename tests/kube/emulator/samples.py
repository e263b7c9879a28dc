"""Sample CRDs for the emulator's own tests and for anyone who needs a small custom resource.

``Widget`` (namespaced, two served versions, status subresource, a schema that exercises
every validation keyword the emulator checks, CEL immutability and transition rules) and
``Gadget`` (cluster-scoped, no status subresource). Pure data; nothing here touches a server.
"""

from __future__ import annotations

import copy
from typing import Any

GROUP = "testing.loraplane.io"

_WIDGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "spec": {
            "type": "object",
            "required": ["size"],
            "x-kubernetes-validations": [
                {"rule": "!has(oldSelf.owner) || has(self.owner)", "message": "owner cannot be removed"},
            ],
            "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "color": {"type": "string", "enum": ["red", "green", "blue"], "default": "red"},
                "label": {"type": "string", "minLength": 1, "maxLength": 20, "pattern": "^[a-z]+$"},
                "serial": {
                    "type": "string",
                    "x-kubernetes-validations": [{"rule": "self == oldSelf", "message": "serial is immutable"}],
                },
                "owner": {"type": "string"},
                "ratio": {"type": "number", "nullable": True},
                "port": {"x-kubernetes-int-or-string": True},
                "tags": {"type": "array", "maxItems": 3, "items": {"type": "string"}},
                "options": {
                    "type": "object",
                    "properties": {"retries": {"type": "integer", "default": 3}},
                },
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "limits": {"type": "object", "additionalProperties": {"type": "integer"}},
            },
        },
        "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    },
}

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"widgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"],
                  "categories": ["loraplane"]},
        "versions": [
            {"name": "v1", "served": True, "storage": True, "subresources": {"status": {}},
             "schema": {"openAPIV3Schema": _WIDGET_SCHEMA}},
            {"name": "v1beta1", "served": True, "storage": False, "subresources": {"status": {}},
             "schema": {"openAPIV3Schema": _WIDGET_SCHEMA}},
        ],
    },
}

GADGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"gadgets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Cluster",
        "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
        "versions": [
            {"name": "v1", "served": True, "storage": True,
             "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}}},
        ],
    },
}


def widget(name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
    """A Widget manifest with ``size: 1`` unless the spec says otherwise."""
    return {"apiVersion": f"{GROUP}/v1", "kind": "Widget", "metadata": {"name": name, "namespace": namespace},
            "spec": {"size": 1, **copy.deepcopy(spec)}}
