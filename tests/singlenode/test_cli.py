"""`loraplane serve` configuration: flags over environment, and refusals that say what to do."""

from __future__ import annotations

import argparse

import pytest

from loraplane.cli import main
from loraplane.singlenode import cli


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    ("entries", "expected"),
    [(["a=/m/a"], {"a": "/m/a"}), (["Org/Name=/x/y", "b=/z"], {"Org/Name": "/x/y", "b": "/z"})],
)
def test_model_entries_map_names_to_paths(entries: list[str], expected: dict[str, str]) -> None:
    assert cli.parse_models(entries) == expected


@pytest.mark.parametrize("entry", ["nopath", "=x", "a=", " = "])
def test_bad_model_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="NAME=PATH"):
        cli.parse_models([entry])


def test_environment_fills_what_flags_leave_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORAPLANE_GATEWAY__API_KEYS", "alice=tml-a")
    monkeypatch.setenv("LORAPLANE_STORE__URL", "file:///env/store")
    monkeypatch.setenv("LORAPLANE_RUNTIME__THREADS", "3")
    config = cli.config_from(_args("--port", "9000"), {"LORAPLANE_MODELS": "m=/p,n=/q"})
    assert config.models == {"m": "/p", "n": "/q"}
    assert config.store_url == "file:///env/store"
    assert config.keys.tenant_for("tml-a") == "alice"
    assert (config.gateway.host, config.gateway.port, config.runtime.threads) == ("127.0.0.1", 9000, 3)
    flagged = cli.config_from(_args("--model", "x=/y", "--api-key", "bob=tml-b", "--threads", "1", "--store", "memory://s"),
                              {"LORAPLANE_MODELS": "m=/p"})
    assert flagged.models == {"x": "/y"} and flagged.runtime.threads == 1 and flagged.store_url == "memory://s"
    assert flagged.keys.tenant_for("tml-b") == "bob"


def test_serve_refuses_to_start_without_a_key(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                             tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("LORAPLANE_GATEWAY__API_KEYS", raising=False)
    monkeypatch.delenv("LORAPLANE_GATEWAY__API_KEYS_FILE", raising=False)
    assert main(["serve", "--model", f"m={tmp_path}"]) == 2
    assert "--api-key TENANT=tml-" in capsys.readouterr().err


def test_serve_refuses_bad_keys_and_missing_models(capsys: pytest.CaptureFixture[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    assert main(["serve", "--model", f"m={tmp_path}", "--api-key", "alice=nokey"]) == 2
    assert "must start with 'tml-'" in capsys.readouterr().err
    assert main(["serve", "--model", f"m={tmp_path}/absent", "--api-key", "alice=tml-a"]) == 2
    assert "not a local directory" in capsys.readouterr().err
