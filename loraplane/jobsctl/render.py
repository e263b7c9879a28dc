"""What `loraplane jobs get` and `describe` print: kubectl's table, its ages, a job's description.

Pure functions over the objects the gateway returns. The columns are the CRD's printer columns
(`PRINTER_COLUMNS`, which `scripts/gen_crd.py` writes into the CRD), so that `loraplane jobs get`
and `kubectl get lj` print the same table.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

#: `kubectl get lorajobs` columns; priority 1 shows only with `-o wide`.
PRINTER_COLUMNS: list[dict[str, Any]] = [
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Base Model", "type": "string", "jsonPath": ".spec.baseModel"},
    {"name": "Runtime", "type": "string", "jsonPath": ".status.runtime.pod"},
    {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
    {"name": "Loss", "type": "number", "jsonPath": ".status.progress.loss"},
    {"name": "Tenant", "type": "string", "jsonPath": ".spec.tenant", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
]


def lookup(obj: Mapping[str, Any], json_path: str) -> Any:
    """The value at a simple `.a.b.c` path, or None."""
    value: Any = obj
    for part in json_path.strip(".").split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def age(seconds: float) -> str:
    """A duration as kubectl prints ages: 45s, 3m12s, 25m, 5h3m, 17h, 3d4h, 12d, 2y45d."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    m, h, d = s // 60, s // 3600, s // 86400
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if h < 3:
        return f"{m}m"
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    return f"{d // 365}y{d % 365}d" if d % 365 else f"{d // 365}y"


def cell(value: Any, kind: str, now: dt.datetime) -> str:
    if value is None:
        return "<none>" if kind == "date" else ""
    if kind == "date":
        when = parse_time(str(value))
        return age((now - when).total_seconds()) if when else str(value)
    if kind == "number" and isinstance(value, float):
        return f"{value:g}"
    return str(value)


def table(items: Sequence[Mapping[str, Any]], *, wide: bool, now: dt.datetime) -> str:
    """kubectl's table: NAME, then the printer columns, left-aligned, three spaces apart."""
    columns = [c for c in PRINTER_COLUMNS if wide or not c.get("priority")]
    rows = [["NAME", *(c["name"].upper() for c in columns)]]
    for item in items:
        name = lookup(item, ".metadata.name") or ""
        rows.append([str(name), *(cell(lookup(item, c["jsonPath"]), c["type"], now) for c in columns)])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def as_yaml(obj: Any) -> str:
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False)


def describe(job: Mapping[str, Any], events: Sequence[Mapping[str, Any]], *, now: dt.datetime) -> str:
    """`kubectl describe`'s shape: the object's fields, its conditions, then its events."""
    meta, spec, status = job.get("metadata", {}), job.get("spec", {}), job.get("status", {}) or {}
    lines = [f"Name:         {meta.get('name')}", f"Namespace:    {meta.get('namespace')}",
             f"Tenant:       {spec.get('tenant')}", f"Base Model:   {spec.get('baseModel')}",
             f"Mode:         {spec.get('mode')}", f"Created:      {meta.get('creationTimestamp')}",
             f"Phase:        {status.get('phase', 'Pending')}"]
    for label, path in (("Runtime", ".runtime.pod"), ("Step", ".progress.step"), ("Loss", ".progress.loss"),
                        ("Checkpoint", ".latestCheckpoint.path"), ("Attempts", ".attempts"),
                        ("Message", ".message")):
        value = lookup(status, path)
        if value not in (None, ""):
            lines.append(f"{label + ':':<14}{value}")
    lines += ["Spec:", *("  " + line for line in as_yaml(spec).rstrip().splitlines())]
    lines.append("Conditions:")
    conditions = status.get("conditions") or []
    if not conditions:
        lines.append("  <none>")
    else:
        rows = [["TYPE", "STATUS", "REASON", "AGE", "MESSAGE"]]
        for c in conditions:
            rows.append([str(c.get("type")), str(c.get("status")), str(c.get("reason")),
                         cell(c.get("lastTransitionTime"), "date", now), str(c.get("message") or "")])
        lines += _indented(rows)
    lines.append("Events:")
    if not events:
        lines.append("  <none>")
    else:
        rows = [["TYPE", "REASON", "AGE", "MESSAGE"]]
        for e in events:
            rows.append([str(e.get("type")), str(e.get("reason")), cell(e.get("lastTimestamp"), "date", now),
                         str(e.get("message") or "")])
        lines += _indented(rows)
    return "\n".join(lines)


def _indented(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "   ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
