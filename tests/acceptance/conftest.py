"""`loraplane serve` on loopback with the tiny model, for the official SDK to talk to.

The server runs as a subprocess (the real CLI, the real socket): the restart test kills and starts
it again on the same store. The tiny model is exposed under its absolute path, which has more than
two slashes, so `SamplingClient.get_tokenizer` resolves it locally (tinker-protocol section 7).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

READY = re.compile(r"loraplane serving at (http://\S+)")
KEYS = {"alice": "tml-alice-0123456789", "bob": "tml-bob-0123456789"}


@dataclass
class Server:
    url: str
    model: str
    store: str
    proc: subprocess.Popen[str]
    #: the server's stderr lines (its logs), kept as they arrive
    log: list[str] = field(default_factory=list)

    def stop(self, *, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_server(model_dir: Path, store: str, *, timeout_s: float = 120, name: str | None = None,
                 keys: dict[str, str] | None = None, env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> Server:
    """`loraplane serve` with the model at `model_dir` as base model `name` (default: its path), the
    tenants' `keys` (default alice and bob); `env` adds LORAPLANE_* settings, `args` flags
    (`--api-keys-file F` replaces the inline keys)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "LORAPLANE_LOG_LEVEL": "info",
           **(env or {})}
    args = list(args or [])
    key_args = [] if "--api-keys-file" in args else [
        arg for tenant, key in (keys or KEYS).items() for arg in ("--api-key", f"{tenant}={key}")]
    cmd = [sys.executable, "-m", "loraplane", "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
           "--threads", "1", "--model", f"{name or model_dir}={model_dir}", "--store", store, *key_args, *args]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    assert proc.stderr is not None
    deadline = time.monotonic() + timeout_s
    lines = []
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        m = READY.search(line)
        if m:
            server = Server(m.group(1), name or str(model_dir), store, proc, lines)
            # Keep draining stderr so the server never blocks on a full pipe.
            threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True).start()  # type: ignore[arg-type]
            return server
    proc.kill()
    raise RuntimeError("loraplane serve did not start:\n" + "".join(lines[-40:]))


@pytest.fixture(scope="session")
def server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tiny_model_dir, f"file://{tmp_path_factory.mktemp('store')}")
    yield srv
    srv.stop()
