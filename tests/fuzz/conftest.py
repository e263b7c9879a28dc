"""Fixtures of the hostile-input tests: one real `loraplane serve` over the tiny model.

A server that died (a crash, or the memory watchdog) is recorded and started again before the
next test, so every case still reports its own answer, and each module's last test fails on the
deaths recorded during that module (`deaths`). The request-size limit is lowered to 1 MiB so "oversized" costs the tests a
megabyte, not 64 MiB; the long poll to 2 s, so a stalled future shows within a test's time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fuzz import served
from tests.fuzz.tinker_http import TinkerHttp

#: the gateway's request-size limit during these tests
MAX_REQUEST_BYTES = 1024 * 1024
#: retrieve_future's hold before try_again: short, so a stalled future shows within a test's time
LONG_POLL_S = 2
#: the watchdog kills the server past this resident size (protects the machine, fails the test)
RSS_CEILING_BYTES = 3 * 1024**3


class Harness:
    """The module's server and its two tenants' clients; `ensure()` revives a dead server."""

    def __init__(self, model_dir: Path, tmp: Path) -> None:
        self.model_dir = model_dir
        self.tmp = tmp
        self.deaths: list[str] = []
        self.starts = 0
        self.server: served.ServedGateway
        self.alice: TinkerHttp
        self.bob: TinkerHttp
        self._start()

    def _start(self) -> None:
        self.starts += 1
        self.server = served.start(
            self.model_dir, f"file://{self.tmp}/store", self.tmp / f"serve-{self.starts}.log",
            rss_ceiling_bytes=RSS_CEILING_BYTES, env={"LORAPLANE_GATEWAY__MAX_REQUEST_BYTES": str(MAX_REQUEST_BYTES),
                 "LORAPLANE_GATEWAY__LONG_POLL_S": str(LONG_POLL_S)},
        )
        self.alice = TinkerHttp(self.server.url, served.KEYS["alice"])
        self.bob = TinkerHttp(self.server.url, served.KEYS["bob"])

    def ensure(self, after: str) -> None:
        """Start the server again if it died; `after` names what ran last, for the record."""
        if self.server.alive():
            return
        killed = self.server.killed_at_rss_bytes
        why = (f"killed by the watchdog at {killed / 2**20:.0f} MiB resident" if killed
               else f"exited with {self.server.proc.returncode}")
        self.deaths.append(f"after {after}: {why}; log tail:\n{self.server.log_tail(15)}")
        self.close()
        self._start()

    def close(self) -> None:
        self.alice.close()
        self.bob.close()
        self.server.stop()


@pytest.fixture(scope="session")
def harness(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tiny_model_dir, tmp_path_factory.mktemp("fuzz-server"))
    yield h
    h.close()


class Deaths:
    """The server deaths recorded since a module began (the harness outlives modules)."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        harness.ensure(after="the previous module")  # its death is its own
        self.mark = len(harness.deaths)

    def since_module_start(self) -> list[str]:
        return self.harness.deaths[self.mark:]


@pytest.fixture(scope="module", autouse=True)
def deaths(harness: Harness) -> Deaths:
    return Deaths(harness)
