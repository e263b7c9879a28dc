"""`loraplane runtime` flags: environment defaults, flag overrides, and --help without torch."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from loraplane.runtime import cli


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    return parser.parse_args(argv)


def test_flags_override_the_environment(monkeypatch):
    monkeypatch.setenv("LORAPLANE_RUNTIME__MAX_RESIDENT_ADAPTERS", "3")
    monkeypatch.setenv("LORAPLANE_RUNTIME__BASE_MODEL", "from-env")
    monkeypatch.setenv("LORAPLANE_RUNTIME__PORT", "9001")
    settings = cli.settings_from_args(parse(["--base-model", "from-flag", "--max-adapters", "5"]))
    rs = settings.runtime
    assert (rs.base_model, rs.max_adapters, rs.max_resident_adapters, rs.port) == ("from-flag", 5, 3, 9001)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--model-path", "/m"], "--base-model and --model-path"),
        (["--base-model", "b", "--model-path", "/m", "--max-resident-adapters", "0"], "--max-resident-adapters"),
    ],
)
def test_bad_or_missing_flags_exit_2_with_one_line_on_stderr(argv, message, capsys, monkeypatch):
    monkeypatch.delenv("LORAPLANE_RUNTIME__BASE_MODEL", raising=False)
    assert cli.run(parse(argv)) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert message in out.err and len(out.err.strip().splitlines()) == 1


def test_help_does_not_import_torch():
    code = ("import sys\nfrom loraplane.cli import main\ntry:\n    main(['runtime', '--help'])\n"
            "except SystemExit:\n    pass\nassert 'torch' not in sys.modules, 'torch imported'\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--max-resident-adapters" in out.stdout and "--offload-to" in out.stdout
