"""`loraplane serve` as a child process on loopback, watched for memory, for hostile-input tests.

Callers: the fuzz tests' fixtures and `bench/flood.py`. The server runs as its own process so that
its peak memory (`VmHWM`) is its own and a request that makes it allocate gigabytes cannot take
the test runner (or the machine) with it: a watchdog thread reads its resident size every few
milliseconds and kills it past `rss_ceiling_bytes`, recording that it did. Its log goes to a file,
whose tail the tests attach to a failure so a 5xx comes with the server's traceback.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

READY = re.compile(r"loraplane serving at (http://\S+)")
#: tenants of the fuzz server and their keys
KEYS = {"alice": "tml-fuzz-alice-0123456789", "bob": "tml-fuzz-bob-0123456789"}


def proc_status_kib(pid: int, name: str) -> int:
    """A `kB` line of /proc/<pid>/status (VmRSS, VmHWM) in KiB; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


@dataclass
class ServedGateway:
    url: str
    model: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    rss_ceiling_bytes: int
    #: set by the watchdog when it killed the server for passing the ceiling
    killed_at_rss_bytes: int | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def peak_rss_bytes(self) -> int:
        """The server's high-water resident size so far (`VmHWM`)."""
        return proc_status_kib(self.pid, "VmHWM") * 1024

    def rss_bytes(self) -> int:
        return proc_status_kib(self.pid, "VmRSS") * 1024

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def log_size(self) -> int:
        try:
            return self.log_path.stat().st_size
        except FileNotFoundError:
            return 0

    def log_since(self, offset: int) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")

    def watch(self, interval_s: float = 0.005) -> None:
        """Start the memory watchdog (a daemon thread)."""

        def loop() -> None:
            while not self._stop.is_set() and self.alive():
                rss = self.rss_bytes()
                if rss > self.rss_ceiling_bytes:
                    self.killed_at_rss_bytes = rss
                    self.proc.kill()
                    return
                time.sleep(interval_s)

        threading.Thread(target=loop, name="rss-watchdog", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start(model_dir: Path, store_url: str, log_path: Path, *, rss_ceiling_bytes: int,
          env: dict[str, str] | None = None, keys: dict[str, str] = KEYS, timeout_s: float = 120) -> ServedGateway:
    """Run `loraplane serve` on 127.0.0.1 (a free port) with the tiny model exposed under its path.

    `env` adds `LORAPLANE_*` settings (the request-size limit, rate limits). Returns once the
    server logged its ready line; raises RuntimeError with the log's tail if it did not.
    """
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TINKER_TELEMETRY": "0",
                "LORAPLANE_LOG_LEVEL": "info", **(env or {})}
    key_args = [arg for tenant, key in keys.items() for arg in ("--api-key", f"{tenant}={key}")]
    cmd = [sys.executable, "-m", "loraplane", "serve", "--host", "127.0.0.1", "--port", "0", "--device", "cpu",
           "--threads", "1", "--model", f"{model_dir}={model_dir}", "--store", store_url, *key_args]
    with open(log_path, "wb") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                cwd=str(Path(__file__).resolve().parents[2]))
    served = ServedGateway(url="", model=str(model_dir), proc=proc, log_path=log_path,
                           rss_ceiling_bytes=rss_ceiling_bytes)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and served.alive():
        m = READY.search(log_path.read_text(errors="replace"))
        if m:
            served.url = m.group(1)
            served.watch()
            return served
        time.sleep(0.05)
    served.stop()
    raise RuntimeError("loraplane serve did not start:\n" + served.log_tail())
