"""Watch streams: which events a watch sends, and streaming them as the real server does.

Called by :mod:`.server` for ``GET <collection>?watch=true``. The stream is
newline-delimited JSON, one ``{"type": ..., "object": ...}`` per line:

- without ``resourceVersion`` (or with ``"0"``), every matching object first arrives as
  ``ADDED``, then live events follow;
- with a ``resourceVersion``, the kept history after it is replayed, then live events
  follow; one older than the kept history yields a single ``ERROR`` event carrying a
  ``410 Gone`` Status ("too old resource version"), after which the stream ends;
- ``sendInitialEvents=true`` (with ``allowWatchBookmarks``) ends the initial ``ADDED``
  events with a ``BOOKMARK`` annotated ``k8s.io/initial-events-end: "true"``;
- with ``allowWatchBookmarks=true``, a ``BOOKMARK`` carrying the current resourceVersion
  is sent every ``bookmark_interval`` seconds of quiet and when ``timeoutSeconds`` ends it;
- with selectors, an object that starts matching arrives as ``ADDED`` and one that stops
  matching as ``DELETED``, as the real server's filtered watch does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from . import selectors
from .resources import ResourceType
from .store import Event

Matcher = Callable[[dict[str, Any]], bool]


def translate(event: Event, matches: Matcher) -> str | None:
    """The event type a selector-filtered watch sends for a change, or None to skip it; pure."""
    was = event.old is not None and matches(event.old)
    now = matches(event.new)
    if event.type == "DELETED":
        return "DELETED" if was else None
    if event.type == "ADDED":
        return "ADDED" if now else None
    if was and now:
        return "MODIFIED"
    if now:
        return "ADDED"
    if was:
        return "DELETED"
    return None


def matcher(rt: ResourceType, label_selector: str, field_selector: str) -> Matcher:
    """A predicate for the watch's selectors; raises 400 on bad selectors before the stream starts."""
    labels = selectors.parse_label_selector(label_selector)
    fields = selectors.parse_field_selector(field_selector, rt.group, rt.plural)
    return lambda obj: selectors.labels_match(labels, obj) and selectors.fields_match(fields, obj)


def bookmark(rt: ResourceType, resource_version: int, initial_events_end: bool = False) -> dict[str, Any]:
    """A BOOKMARK event: only kind, apiVersion and metadata.resourceVersion, as the real server sends."""
    metadata: dict[str, Any] = {"resourceVersion": str(resource_version)}
    if initial_events_end:
        metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
    return {"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": metadata}}


async def next_event(queue: asyncio.Queue[Any], deadline: float, bookmark_interval: float) -> tuple[str, Any]:
    """Wait for the next queued event, the next bookmark time or the deadline, whichever is first.

    Returns ``("event", item)``, ``("bookmark", None)`` or ``("timeout", None)``.
    """
    loop = asyncio.get_running_loop()
    remaining = deadline - loop.time()
    if remaining <= 0:
        return "timeout", None
    wait = min(remaining, bookmark_interval)
    try:
        item = await asyncio.wait_for(queue.get(), timeout=wait)
    except TimeoutError:
        return ("timeout", None) if loop.time() >= deadline else ("bookmark", None)
    return "event", item
