"""An older tinker SDK, unmodified, gets one clear error naming the supported versions.

It needs that SDK installed apart from the current one (tests download nothing): scripts/setup.sh
puts it in `.venv/old-sdk/tinker-0.24.1` (`pip install --no-deps --target DIR tinker==0.24.1`);
`LORAPLANE_TEST_OLD_TINKER=DIR` names another folder. The same refusal is covered without it by the
gateway's own tests (tests/api/test_sdk_versions.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.acceptance.conftest import KEYS, Server

_SETUP_DIR = Path(__file__).resolve().parents[2] / ".venv" / "old-sdk" / "tinker-0.24.1"
OLD = os.environ.get("LORAPLANE_TEST_OLD_TINKER") or (str(_SETUP_DIR) if (_SETUP_DIR / "tinker").is_dir() else None)
SCRIPT = """
import sys, tinker
client = tinker.ServiceClient(base_url=sys.argv[1], api_key=sys.argv[2])
try:
    client.create_lora_training_client(base_model=sys.argv[3], rank=4)
except Exception as exc:
    print(tinker.__version__, type(exc).__name__, exc)
"""


@pytest.mark.skipif(not OLD, reason="no older tinker SDK: run scripts/setup.sh, or set LORAPLANE_TEST_OLD_TINKER to a folder with one")
def test_an_older_sdk_is_told_which_versions_are_supported(server: Server) -> None:
    env = {**os.environ, "PYTHONPATH": str(OLD)}
    out = subprocess.run([sys.executable, "-c", SCRIPT, server.url, KEYS["alice"], server.model],
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("0.2"), out.stdout + out.stderr
    assert "426" in out.stdout and "is not supported by this loraplane server" in out.stdout
    assert ">=0.38.0, <0.39" in out.stdout and "pip install 'tinker==0.38.0'" in out.stdout
