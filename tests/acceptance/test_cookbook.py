"""tinker-cookbook 0.6.1, unmodified, against `loraplane serve`: RL with its stable_reinforce loss on the
arithmetic environment (sync and async), and supervised training, offline.

The cookbook loads tokenizers by model name, so the tiny model is served as `NAME` and its tokenizer
files are put in a Hugging Face cache of this test's own (`HF_HOME`, `HF_HUB_OFFLINE=1`). Each run is
a subprocess, as a user's script would be, so those variables hold from its first import.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tinker

from tests.acceptance.conftest import KEYS, Server, start_server

pytest.importorskip("tinker_cookbook")

NAME = "loraplane-test/tiny-byte-llama"

RL = """
import asyncio, sys
from tinker_cookbook.rl import train
from tinker_cookbook.recipes.math_rl.arithmetic_env import ArithmeticDatasetBuilder
name, url, log_path, mode = sys.argv[1:5]
builder = ArithmeticDatasetBuilder(batch_size=2, model_name_for_tokenizer=name, renderer_name="role_colon",
                                   n_batches=2, group_size=2)
extra = {"loss_fn": "stable_reinforce"} if mode == "sync" else {
    "async_config": train.AsyncConfig(max_steps_off_policy=1, groups_per_batch=2)}
config = train.Config(learning_rate=1e-3, dataset_builder=builder, model_name=name, recipe_name="acceptance",
                      max_tokens=6, log_path=log_path, renderer_name="role_colon", base_url=url, lora_rank=4,
                      max_steps=2, **extra)
assert config.training_loss_fn() == "stable_reinforce"
asyncio.run(train.main(config))
"""

SL = """
import asyncio, sys
from tinker_cookbook.supervised import train
from tinker_cookbook.supervised.data import FromConversationFileBuilder
from tinker_cookbook.supervised.types import ChatDatasetBuilderCommonConfig
name, url, log_path, data = sys.argv[1:5]
common = ChatDatasetBuilderCommonConfig(model_name_for_tokenizer=name, renderer_name="role_colon", max_length=128,
                                        batch_size=2)
config = train.Config(log_path=log_path, model_name=name, recipe_name="acceptance", renderer_name="role_colon",
                      dataset_builder=FromConversationFileBuilder(file_path=data, common_config=common),
                      learning_rate=1e-3, lora_rank=4, base_url=url)
asyncio.run(train.main(config))
"""


@pytest.fixture(scope="module")
def named(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, str]]]:
    """A server that serves the tiny model as `NAME`, and the environment a cookbook user would have."""
    root = tmp_path_factory.mktemp("cookbook")
    repo = root / "hf" / "hub" / ("models--" + NAME.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in os.listdir(tiny_model_dir):
        if name.endswith(".json"):  # config + tokenizer files; AutoTokenizer needs config.json offline
            shutil.copy(tiny_model_dir / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    server = start_server(tiny_model_dir, f"file://{root / 'store'}", args=["--model", f"{NAME}={tiny_model_dir}"])
    env = {**os.environ, "HF_HOME": str(root / "hf"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TINKER_API_KEY": KEYS["alice"], "TINKER_BASE_URL": server.url, "WANDB_MODE": "disabled"}
    yield server, env
    server.stop()


def _run(env: dict[str, str], script: str, *args: str) -> None:
    out = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]


def _errors(server: Server) -> list[str]:
    return [line for line in list(server.log) if line.startswith("access ") and (" status=4" in line or " status=5" in line)]


def _metrics(log_path: Path) -> list[dict]:
    return [json.loads(line) for line in (log_path / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_cookbook_rl_trains_with_stable_reinforce_on_arithmetic(named, tmp_path: Path, mode: str) -> None:  # type: ignore[no-untyped-def]
    server, env = named
    _run(env, RL, NAME, server.url, str(tmp_path / "log"), mode)
    steps = [m for m in _metrics(tmp_path / "log") if "env/all/reward/total" in m]
    assert len(steps) == 2 and all(m["tokens/trained"] > 0 for m in steps)
    assert not _errors(server), _errors(server)
    rest = tinker.RestClient(base_url=server.url, api_key=KEYS["alice"])
    paths = [c.tinker_path for r in rest.list_training_runs().result().training_runs
             for c in rest.list_checkpoints(r.training_run_id).result().checkpoints]
    assert any(p.endswith("/weights/final") for p in paths)


def test_cookbook_supervised_training_lowers_the_loss(named, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server, env = named
    data = tmp_path / "conversations.jsonl"
    rows = [{"messages": [{"role": "user", "content": f"Say {w}."}, {"role": "assistant", "content": w}]}
            for w in ("cat", "dog", "sun", "sea", "red", "sky")]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    _run(env, SL, NAME, server.url, str(tmp_path / "log"), str(data))
    losses = [m["train_mean_nll"] for m in _metrics(tmp_path / "log") if "train_mean_nll" in m]
    assert len(losses) == 3 and losses[-1] < losses[0], losses
    assert not _errors(server), _errors(server)
