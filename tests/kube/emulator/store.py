"""The object store: current objects, the global resourceVersion counter and the event history.

Owned by the server and touched only from the emulator's event loop, so it needs no
locks. Every write gets the next value of one global counter as its resourceVersion,
is appended to a bounded history and is pushed to each open watch's queue in the same
synchronous step, so a watch that reads the history and then subscribes (also without
awaiting in between) can neither miss nor repeat an event.

When the history is full the oldest events are dropped and :attr:`ObjectStore.compacted_rv`
moves up; a watch asking to resume from before that point gets ``410 Gone``, as from the
real server after etcd compaction.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import dataclasses
from collections.abc import Iterator
from typing import Any

StorageKey = tuple[str, str]  # (group, plural)


@dataclasses.dataclass(frozen=True)
class Event:
    """One committed change, as kept in the history and fanned out to watches."""

    resource_version: int
    type: str  #: ADDED, MODIFIED or DELETED
    key: StorageKey
    namespace: str  #: "" for cluster-scoped objects
    old: dict[str, Any] | None  #: the object before the change (None for ADDED)
    new: dict[str, Any]  #: the object after the change (the last state for DELETED)


class TooOldResourceVersion(Exception):
    """A resume point older than the kept history (answered with 410 Gone)."""

    def __init__(self, requested: int, oldest: int) -> None:
        super().__init__(f"too old resource version: {requested} ({oldest})")


class Subscription:
    """An open watch's inbox: the store puts events in, the watch handler takes them out."""

    def __init__(self, key: StorageKey, namespace: str | None) -> None:
        self.key = key
        self.namespace = namespace  #: None for all namespaces
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue()  #: None means "close the stream"

    def wants(self, event: Event) -> bool:
        """Whether the event concerns this watch's resource and namespace."""
        return event.key == self.key and (self.namespace is None or event.namespace == self.namespace)


class ObjectStore:
    """Objects by (storage key, namespace, name), with history and watch fan-out.

    Args:
        history_size: how many events to keep for resuming watches.
    """

    def __init__(self, history_size: int = 1000) -> None:
        self.objects: dict[tuple[StorageKey, str, str], dict[str, Any]] = {}  #: the current objects
        self.resource_version = 0  #: the last assigned resourceVersion
        self.history: collections.deque[Event] = collections.deque(maxlen=history_size)  #: recent events
        self.compacted_rv = 0  #: events up to this resourceVersion may have been dropped
        self.subscriptions: set[Subscription] = set()  #: open watches

    def get(self, key: StorageKey, namespace: str, name: str) -> dict[str, Any] | None:
        """A deep copy of the stored object, or None."""
        obj = self.objects.get((key, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def iter_objects(self, key: StorageKey, namespace: str | None = None) -> Iterator[dict[str, Any]]:
        """Stored objects of one resource (in one namespace, or all), sorted by namespace and name."""
        for (obj_key, obj_ns, _), obj in sorted(self.objects.items(), key=lambda item: item[0][1:]):
            if obj_key == key and (namespace is None or obj_ns == namespace):
                yield obj

    def all_objects(self) -> Iterator[tuple[StorageKey, dict[str, Any]]]:
        """Every stored object with its storage key (for garbage collection and namespace deletion)."""
        for (key, _, _), obj in list(self.objects.items()):
            yield key, obj

    def _commit(self, event_type: str, key: StorageKey, namespace: str, old: dict | None, new: dict) -> None:
        event = Event(self.resource_version, event_type, key, namespace, old, new)
        if len(self.history) == self.history.maxlen:
            self.compacted_rv = self.history[0].resource_version
        self.history.append(event)
        for subscription in self.subscriptions:
            if subscription.wants(event):
                subscription.queue.put_nowait(event)

    def put(self, key: StorageKey, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new or changed object under a new resourceVersion; returns a copy as stored."""
        metadata = obj["metadata"]
        namespace, name = metadata.get("namespace", ""), metadata["name"]
        old = self.objects.get((key, namespace, name))
        self.resource_version += 1
        stored = copy.deepcopy(obj)
        stored["metadata"]["resourceVersion"] = str(self.resource_version)
        self.objects[(key, namespace, name)] = stored
        self._commit("ADDED" if old is None else "MODIFIED", key, namespace, old, stored)
        return copy.deepcopy(stored)

    def remove(self, key: StorageKey, obj: dict[str, Any]) -> dict[str, Any]:
        """Delete an object; the DELETED event carries its last state under a new resourceVersion."""
        metadata = obj["metadata"]
        namespace, name = metadata.get("namespace", ""), metadata["name"]
        old = self.objects.pop((key, namespace, name))
        self.resource_version += 1
        final = copy.deepcopy(obj)
        final["metadata"]["resourceVersion"] = str(self.resource_version)
        self._commit("DELETED", key, namespace, old, final)
        return copy.deepcopy(final)

    def events_since(self, resource_version: int, subscription: Subscription) -> list[Event]:
        """Kept events after a resume point that the subscription wants.

        Raises:
            TooOldResourceVersion: when events after that point were already dropped.
        """
        if resource_version < self.compacted_rv:
            raise TooOldResourceVersion(resource_version, self.compacted_rv + 1)
        return [event for event in self.history
                if event.resource_version > resource_version and subscription.wants(event)]

    def subscribe(self, subscription: Subscription) -> None:
        """Start fanning events out to a watch (call without awaiting after reading the history)."""
        self.subscriptions.add(subscription)

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop fanning events out to a watch."""
        self.subscriptions.discard(subscription)

    def close_subscriptions(self) -> int:
        """Ask every open watch to end its stream; returns how many there were."""
        for subscription in self.subscriptions:
            subscription.queue.put_nowait(None)
        return len(self.subscriptions)
