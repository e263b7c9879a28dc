"""Every command-line mistake a new user makes is one line on stderr, exit code 2, and no traceback.

Each test runs `loraplane.cli.main` as the `loraplane` script does (in process where it can, as a
subprocess where a signal or a real socket is the point) and asserts the line and the exit code.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loraplane import cli
from loraplane.core import errors

KEY = ["--api-key", "alice=tml-alice-0123456789"]


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `loraplane ARGV`, whether it returns or exits."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line(err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    return lines[0]


@pytest.fixture
def serve_args(tiny_model_dir: Path, tmp_path: Path) -> list[str]:
    return ["serve", "--model", f"m={tiny_model_dir}", *KEY, "--store", str(tmp_path / "store"), "--device", "cpu"]


def test_an_unknown_store_scheme_names_the_schemes_that_work(serve_args, capsys) -> None:
    code, _, err = run_main([*serve_args, "--store", "bogus://somewhere"], capsys)
    assert code == 2
    assert_one_line(err, "loraplane serve:", "unknown scheme 'bogus://'", "s3://bucket/prefix")


def test_an_s3_store_without_s3fs_says_to_install_the_s3_extra(serve_args, capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "s3fs", None)  # import s3fs fails, installed or not
    code, _, err = run_main([*serve_args, "--store", "s3://bucket/prefix"], capsys)
    assert code == 2
    assert_one_line(err, "pip install 'loraplane[s3]'")


def test_a_store_that_is_a_file_is_refused_at_start(serve_args, capsys, tmp_path) -> None:
    (tmp_path / "plain-file").write_text("not a folder")
    code, _, err = run_main([*serve_args, "--store", f"file://{tmp_path / 'plain-file'}"], capsys)
    assert code == 2
    assert_one_line(err, "is a file; pass a folder")


def test_a_folder_that_is_not_a_model_says_which_file_is_missing(capsys, tmp_path) -> None:
    (tmp_path / "notes.txt").write_text("a folder of other things")
    code, _, err = run_main(["serve", "--model", f"m={tmp_path}", *KEY, "--store", str(tmp_path / "s")], capsys)
    assert code == 2
    line = assert_one_line(err, "--model m=", "not a model folder", "no config.json")
    assert "sentencepiece" not in line


def test_a_model_without_weights_is_named(capsys, tmp_path, tiny_model_dir) -> None:
    for name in ("config.json", "tokenizer.json"):
        (tmp_path / name).write_bytes((tiny_model_dir / name).read_bytes())
    code, _, err = run_main(["serve", "--model", f"m={tmp_path}", *KEY, "--store", str(tmp_path / "s")], capsys)
    assert code == 2
    assert_one_line(err, "has no weights")


def test_cuda_without_a_gpu_says_to_use_the_cpu(serve_args, capsys, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code, _, err = run_main([*serve_args, "--device", "cuda"], capsys)
    assert code == 2
    assert_one_line(err, "no CUDA GPU", "--device cpu")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "mps"])
def test_an_unknown_device_lists_the_devices_that_work(serve_args, capsys, device) -> None:
    code, _, err = run_main([*serve_args, "--device", device], capsys)
    assert code == 2
    assert_one_line(err, f"unknown device {device!r}", "auto, cpu, cuda or cuda:N")


@pytest.mark.parametrize(("value", "needle"), [("99999", "99999 is not a port"), ("http", "'http' is not a port")])
@pytest.mark.parametrize("command", ["serve", "gateway", "runtime"])
def test_a_port_out_of_range_is_refused(command, value, needle, capsys) -> None:
    code, _, err = run_main([command, "--port", value], capsys)
    assert code == 2
    assert_one_line(err, f"loraplane {command}: argument --port", needle, f"loraplane {command} --help")


def test_a_missing_model_flag_is_one_line(capsys, monkeypatch) -> None:
    monkeypatch.delenv("LORAPLANE_MODELS", raising=False)
    code, _, err = run_main(["serve", *KEY], capsys)
    assert code == 2
    assert_one_line(err, "no model to serve", "--model NAME=PATH")


def test_debug_shows_the_traceback_instead(serve_args) -> None:
    with pytest.raises(errors.InvalidInput, match="unknown scheme"):
        cli.main([*serve_args, "--store", "bogus://x", "--debug"])


def test_runtime_usage_errors_go_to_stderr(capsys, monkeypatch) -> None:
    monkeypatch.delenv("LORAPLANE_RUNTIME__BASE_MODEL", raising=False)
    monkeypatch.delenv("LORAPLANE_RUNTIME__MODEL_PATH", raising=False)
    code, out, err = run_main(["runtime"], capsys)
    assert (code, out) == (2, "")
    assert_one_line(err, "loraplane runtime:", "--base-model and --model-path")


def test_an_unknown_command_is_one_line(capsys) -> None:
    code, _, err = run_main(["serv"], capsys)
    assert code == 2
    assert_one_line(err, "invalid choice: 'serv'", "loraplane --help")


def test_a_port_in_use_is_named_before_anything_loads(serve_args, capsys) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        started = time.monotonic()
        code, _, err = run_main([*serve_args, "--port", str(port)], capsys)
    assert code == 2
    assert_one_line(err, f"port {port} on 127.0.0.1 is already in use", "--port N")
    assert time.monotonic() - started < 30


def _spawn(argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """The command as a user starts it in a terminal: Ctrl-C (SIGINT) reaches it even where the
    tests run as a background job, which starts with SIGINT ignored and hands that down."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "LORAPLANE_LOG_LEVEL": "info", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "loraplane", *argv], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env=full_env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(proc: subprocess.Popen[str], pattern: str, timeout_s: float = 120) -> tuple[re.Match[str], list[str]]:
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen.append(line)
        if m := re.search(pattern, line):
            return m, seen
    proc.kill()
    raise AssertionError(f"{pattern!r} never logged:\n{''.join(seen)}")


def test_ctrl_c_stops_serve_with_one_line_and_no_traceback(tiny_model_dir, tmp_path) -> None:
    """Also while a request is still open (as a long poll is): it is cut after the grace period, quietly."""
    proc = _spawn(["serve", "--host", "127.0.0.1", "--port", "0", "--model", f"m={tiny_model_dir}", *KEY,
                   "--store", str(tmp_path / "store"), "--device", "cpu", "--threads", "1"])
    try:
        match, _ = _wait_for(proc, r"loraplane serving at http://127\.0\.0\.1:(\d+)")
        with socket.create_connection(("127.0.0.1", int(match.group(1)))) as open_request:
            open_request.sendall(b"POST /api/v1/create_session HTTP/1.1\r\nHost: x\r\n"
                                 b"X-API-Key: tml-alice-0123456789\r\n"
                                 b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            time.sleep(0.5)  # the request has reached the app, which waits for the rest of its body
            proc.send_signal(signal.SIGINT)
            _, rest = proc.communicate(timeout=60)
            answer = open_request.recv(200)
    finally:
        proc.kill()
    assert answer.startswith(b"HTTP/1.1 503"), answer  # a retryable answer, not a dropped connection
    assert proc.returncode == cli.INTERRUPTED
    assert "Traceback" not in rest and "ERROR" not in rest, rest
    lines = [line for line in rest.strip().splitlines() if not line.startswith("access ")]
    assert lines == ["loraplane serve: stopped (Ctrl-C)"]


def test_gateway_logs_its_url_once_the_port_answers(tmp_path) -> None:
    """The URL in the log is the bound one (not port 0) and answers at the moment it is logged."""
    import httpx

    proc = _spawn(["gateway", "--host", "127.0.0.1", "--port", "0", "--store", str(tmp_path / "store")],
                  env={"LORAPLANE_GATEWAY__API_KEYS": "alice=tml-alice-0123456789",
                       "KUBECONFIG": str(tmp_path / "no-cluster")})
    try:
        match, _ = _wait_for(proc, r"loraplane gateway at (http://127\.0\.0\.1:(\d+))", timeout_s=60)
        assert int(match.group(2)) != 0
        assert httpx.get(match.group(1) + "/healthz", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_gateway_with_a_port_in_use_is_one_line(capsys, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LORAPLANE_GATEWAY__API_KEYS", "alice=tml-alice-0123456789")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run_main(["gateway", "--host", "127.0.0.1", "--port", str(port),
                                 "--store", str(tmp_path / "store")], capsys)
    assert code == 2
    assert_one_line(err, "loraplane gateway:", "already in use")


@pytest.mark.parametrize("command", ["gateway", "operator"])
def test_every_command_checks_its_store_at_start(command, capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("LORAPLANE_GATEWAY__API_KEYS", "alice=tml-alice-0123456789")
    code, _, err = run_main([command, "--store", "bogus://x"], capsys)
    assert code == 2
    assert_one_line(err, f"loraplane {command}:", "unknown scheme 'bogus://'")
