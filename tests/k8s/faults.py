"""Fault injection and request counting, set from the tests and read by the fault proxy (proxy.py).

Tests run in their own thread while the proxy serves from its own event loop, so every field is
read and changed under one lock. Each ``take_*`` method is called by the proxy once per request and
answers whether (and how) to fail it, using up one unit of the matching rule; the tests arm the
rules through :class:`~tests.k8s.proxy.FaultProxy`.

Kinds of faults:

- ``gone_watches``/``gone_lists``: the next N watches answer a ``410 Gone`` ERROR event,
  the next N lists answer HTTP 410 (as after etcd compaction);
- conflicts: the next N updates/patches of matching objects answer ``409 Conflict``;
- errors: the next N requests matching a verb and a path regex answer a given 5xx (or any) code;
- latency: seconds added before every request is handled.
"""

from __future__ import annotations

import collections
import dataclasses
import re
import threading


@dataclasses.dataclass
class ErrorRule:
    """Fail the next ``remaining`` requests that match ``verb`` and ``path`` with ``code``."""

    remaining: int
    code: int
    verb: str | None  #: a Kubernetes verb (get, list, watch, create, update, patch, delete); None for any
    path: re.Pattern[str] | None  #: searched in the URL path; None for any


@dataclasses.dataclass
class ConflictRule:
    """Answer the next ``remaining`` writes (update/patch) of matching objects with 409 Conflict."""

    remaining: int
    plural: str | None
    namespace: str | None
    name: str | None


class Faults:
    """The armed faults and the request counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.latency = 0.0  #: seconds added to every request
        self.gone_watches = 0  #: how many of the next watches get a 410 ERROR event
        self.gone_lists = 0  #: how many of the next lists get HTTP 410
        self.errors: list[ErrorRule] = []  #: armed error rules, first match wins
        self.conflicts: list[ConflictRule] = []  #: armed conflict rules, first match wins
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()  #: (verb, path) -> requests

    def record(self, verb: str, path: str) -> None:
        """Count one request (called for every request, before any fault applies)."""
        with self._lock:
            self.counts[(verb, path)] += 1

    def take_error(self, verb: str, path: str) -> int | None:
        """The code to fail this request with, using up one unit of the first matching rule."""
        with self._lock:
            for rule in self.errors:
                if (rule.verb is None or rule.verb == verb) and (rule.path is None or rule.path.search(path)):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self.errors.remove(rule)
                    return rule.code
        return None

    def take_gone(self, verb: str) -> bool:
        """Whether this watch (or list) must answer 410 Gone, using up one unit."""
        with self._lock:
            if verb == "watch" and self.gone_watches > 0:
                self.gone_watches -= 1
                return True
            if verb == "list" and self.gone_lists > 0:
                self.gone_lists -= 1
                return True
        return False

    def take_conflict(self, plural: str, namespace: str | None, name: str) -> bool:
        """Whether this write must answer 409 Conflict, using up one unit of the first matching rule."""
        with self._lock:
            for rule in self.conflicts:
                if ((rule.plural is None or rule.plural == plural)
                        and (rule.namespace is None or rule.namespace == namespace)
                        and (rule.name is None or rule.name == name)):
                    rule.remaining -= 1
                    if rule.remaining <= 0:
                        self.conflicts.remove(rule)
                    return True
        return False

    def arm_error(self, rule: ErrorRule) -> None:
        """Add an error rule."""
        with self._lock:
            self.errors.append(rule)

    def arm_conflict(self, rule: ConflictRule) -> None:
        """Add a conflict rule."""
        with self._lock:
            self.conflicts.append(rule)

    def arm_gone(self, watches: int = 0, lists: int = 0) -> None:
        """Make the next watches and/or lists answer 410 Gone."""
        with self._lock:
            self.gone_watches += watches
            self.gone_lists += lists

    def snapshot_counts(self) -> collections.Counter[tuple[str, str]]:
        """A copy of the request counters."""
        with self._lock:
            return collections.Counter(self.counts)

    def reset(self) -> None:
        """Disarm every fault, drop the latency and zero the counters."""
        with self._lock:
            self.latency = 0.0
            self.gone_watches = self.gone_lists = 0
            self.errors.clear()
            self.conflicts.clear()
            self.counts.clear()
