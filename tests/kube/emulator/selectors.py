"""Label and field selectors: parsing the query strings and matching objects.

Used by the server adapter for ``labelSelector`` and ``fieldSelector`` on list and watch.
Both parsers are pure and raise :class:`~.statuses.StatusError` (400) on bad syntax, with
the real server's wording, so a client gets a clear error instead of an empty list.

Label selectors support ``=``, ``==``, ``!=``, ``in (...)``, ``notin (...)``, ``key``
(exists) and ``!key`` (does not exist). Field selectors support ``=``, ``==`` and ``!=``
on the fields the real server indexes for each resource (:data:`FIELDS_BY_RESOURCE`);
any other field is refused with 400 just as the real server refuses it.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from . import statuses

#: Field-selector fields every resource supports.
COMMON_FIELDS: frozenset[str] = frozenset({"metadata.name", "metadata.namespace"})

#: Extra indexed fields per (group, plural), as the real server registers them.
FIELDS_BY_RESOURCE: dict[tuple[str, str], frozenset[str]] = {
    ("", "pods"): frozenset({
        "spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
        "spec.hostNetwork", "status.phase", "status.podIP", "status.nominatedNodeName",
    }),
    ("", "events"): frozenset({
        "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
        "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
        "reason", "reportingComponent", "source", "type",
    }),
    ("", "secrets"): frozenset({"type"}),
    ("", "namespaces"): frozenset({"status.phase"}),
}

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_TERM = re.compile(rf"^\s*(?P<key>{_KEY})\s+(?P<op>in|notin)\s*\((?P<values>[^)]*)\)\s*$")
_EQ_TERM = re.compile(rf"^\s*(?P<key>{_KEY})\s*(?P<op>==|!=|=)\s*(?P<value>{_VALUE})\s*$")
_EXISTS_TERM = re.compile(rf"^\s*(?P<neg>!?)\s*(?P<key>{_KEY})\s*$")


@dataclasses.dataclass(frozen=True)
class Requirement:
    """One term of a label selector: ``key <op> values``."""

    key: str
    op: str  # one of: "=", "!=", "in", "notin", "exists", "!exists"
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether the labels satisfy this term (a missing key satisfies ``!=`` and ``notin``)."""
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        return not present or labels[self.key] not in self.values


def _split_terms(text: str) -> list[str]:
    """Split on commas outside parentheses, so ``k in (a,b),x=y`` gives two terms."""
    terms, depth, current = [], 0, ""
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append(current)
            current = ""
        else:
            current += char
    terms.append(current)
    return [term for term in terms if term.strip()]


def parse_label_selector(text: str) -> list[Requirement]:
    """Parse a ``labelSelector`` query value; pure, called by list and watch handlers.

    Raises:
        StatusError: 400 naming the term that does not parse.
    """
    requirements = []
    for term in _split_terms(text or ""):
        if match := _SET_TERM.match(term):
            values = frozenset(v.strip() for v in match["values"].split(",") if v.strip())
            requirements.append(Requirement(match["key"], match["op"], values))
        elif match := _EQ_TERM.match(term):
            op = "!=" if match["op"] == "!=" else "="
            requirements.append(Requirement(match["key"], op, frozenset({match["value"]})))
        elif match := _EXISTS_TERM.match(term):
            requirements.append(Requirement(match["key"], "!exists" if match["neg"] else "exists"))
        else:
            raise statuses.bad_request(f"unable to parse requirement: found '{term.strip()}', invalid label selector")
    return requirements


def labels_match(requirements: list[Requirement], obj: Mapping[str, Any]) -> bool:
    """Whether an object's ``metadata.labels`` satisfy every requirement (an empty selector matches all)."""
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return all(requirement.matches(labels) for requirement in requirements)


@dataclasses.dataclass(frozen=True)
class FieldRequirement:
    """One term of a field selector: ``field == value`` or ``field != value``."""

    field: str
    value: str
    negated: bool


def parse_field_selector(text: str, group: str, plural: str) -> list[FieldRequirement]:
    """Parse a ``fieldSelector`` for one resource; pure, called by list and watch handlers.

    Raises:
        StatusError: 400 for bad syntax or a field the resource does not index
            (``field label not supported: spec.foo``), as the real server answers.
    """
    allowed = COMMON_FIELDS | FIELDS_BY_RESOURCE.get((group, plural), frozenset())
    requirements = []
    for term in _split_terms(text or ""):
        match = re.match(r"^\s*([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*?)\s*$", term)
        if not match:
            raise statuses.bad_request(f"invalid selector: '{term.strip()}'; can't understand '{term.strip()}'")
        field, op, value = match.groups()
        if field not in allowed:
            raise statuses.bad_request(f'field label not supported: {field}')
        requirements.append(FieldRequirement(field, value, op == "!="))
    return requirements


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string form of a dotted field (``""`` when absent, booleans lower-cased), as the server indexes it."""
    value: Any = obj
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping) and path == "source":  # events index source.component
        return str(value.get("component", ""))
    return str(value)


def fields_match(requirements: list[FieldRequirement], obj: Mapping[str, Any]) -> bool:
    """Whether an object satisfies every field requirement."""
    return all((field_value(obj, req.field) == req.value) != req.negated for req in requirements)
