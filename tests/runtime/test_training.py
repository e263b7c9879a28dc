"""Declarative training: dataset parsing and rendering decisions, and full runs on the tiny model."""

from __future__ import annotations

import asyncio
import json
import threading

import httpx
import pytest
import torch
from safetensors.torch import load_file

from loraplane.core import errors, runtime_ops
from loraplane.core.settings import RuntimeSettings
from loraplane.runtime import training
from loraplane.runtime.api import RuntimeState, create_app
from loraplane.runtime.engine import Engine, LoraSpec
from loraplane.runtime.executor import Executor
from tests.utils.tiny_models import build_byte_tokenizer

PC = '{"prompt": "Q: 1+1?", "completion": " 2"}'
CHAT = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}'


@pytest.mark.parametrize(
    ("text", "fmt", "rows"),
    [
        (PC, "auto", 1),
        (f"{PC}\n\n{CHAT}\n", "auto", 2),
        (CHAT, "chat", 1),
        (PC, "prompt_completion", 1),
    ],
)
def test_parse_rows_accepts_both_formats(text, fmt, rows):
    assert len(training.parse_rows(text, fmt)) == rows


@pytest.mark.parametrize(
    ("text", "fmt", "message"),
    [
        (f"{PC}\nnot json", "auto", "line 2"),
        (f'{PC}\n{PC}\n{{"prompt": 3, "completion": "x"}}', "auto", "line 3"),
        ('{"messages": [{"role": "user"}]}', "auto", "line 1"),
        (CHAT, "prompt_completion", "line 1"),
        ("\n\n", "auto", "no rows"),
    ],
)
def test_parse_rows_names_the_bad_line(text, fmt, message):
    with pytest.raises(errors.InvalidInput, match=message) as info:
        training.parse_rows(text, fmt)
    assert info.value.field == "dataset"


def test_prompt_completion_weighs_only_the_completion_and_eos():
    tok = build_byte_tokenizer()
    tokens, weights = training.render_row({"prompt": "ab", "completion": "cd"}, tok, 100)
    assert tokens[0] == tok.bos_token_id and tokens[-1] == tok.eos_token_id
    assert weights == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert tok.decode(tokens[3:5]) == "cd"


def test_chat_without_template_renders_role_lines_and_weighs_assistant_content():
    tok = build_byte_tokenizer()
    tokens, weights = training.render_row(json.loads(CHAT), tok, 100)
    weighted = tok.decode([t for t, w in zip(tokens, weights, strict=True) if w and t != tok.eos_token_id])
    assert tok.decode(tokens[1:-1]) == "user: hi\nassistant: yo\n" and weighted == "yo\n"


def test_chat_with_template_weighs_assistant_turns_only():
    tok = build_byte_tokenizer()
    tok.chat_template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}</{{ m.role }}>{% endfor %}"
    tokens, weights = training.render_row(json.loads(CHAT), tok, 100)
    weighted = tok.decode([t for t, w in zip(tokens, weights, strict=True) if w and t != tok.eos_token_id])
    assert tok.decode(tokens[:-1]) == "<user>hi</user><assistant>yo</assistant>"
    assert weighted == "<assistant>yo</assistant>"


def test_render_truncates_to_max_seq_len():
    tokens, weights = training.render_row({"prompt": "abc", "completion": "defgh"}, build_byte_tokenizer(), 4)
    assert len(tokens) == len(weights) == 4


@pytest.mark.parametrize(
    ("rows", "batch", "steps", "epochs", "total"),
    [(10, 4, None, None, 3), (10, 4, 7, None, 7), (10, 4, None, 2.0, 5), (3, 8, None, 0.1, 1)],
)
def test_total_steps(rows, batch, steps, epochs, total):
    assert training.total_steps(rows, batch, steps, epochs) == total


@pytest.mark.parametrize(
    ("step", "batch", "rows", "expected"),
    [(0, 3, 5, [0, 1, 2]), (1, 3, 5, [3, 4, 0]), (2, 2, 3, [1, 2]), (0, 4, 2, [0, 1, 0, 1])],
)
def test_batch_rows_wrap_around_the_dataset(step, batch, rows, expected):
    assert training.batch_rows(step, batch, rows) == expected


def test_build_work_normalises_weights_over_the_batch():
    work = training.build_work("a", [([1, 2, 3], [0.0, 1.0, 1.0]), ([4, 5], [0.0, 1.0])])
    assert sum(float(d.loss_inputs["weights"].sum()) for d in work.data) == pytest.approx(1.0)
    assert work.data[0].tokens.tolist() == [1, 2] and work.data[0].loss_inputs["target_tokens"].tolist() == [2, 3]


# ---- runs on the tiny model ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def runtime(tiny_model_dir):
    torch.set_num_threads(1)
    settings = RuntimeSettings(base_model="tiny", model_path=str(tiny_model_dir))
    state = RuntimeState(settings=settings)
    executor = Executor(Engine(str(tiny_model_dir), device="cpu", dtype="float32"), settings)
    state.attach(executor)
    yield state
    executor.close()


def write_dataset(path) -> str:
    rows = [{"prompt": f"Q{i}:", "completion": " yes"} for i in range(6)]
    rows.append({"messages": [{"role": "user", "content": "ok?"}, {"role": "assistant", "content": "yes"}]})
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_training_run_lowers_the_loss_writes_checkpoints_and_resumes_exactly(runtime, tmp_path):
    dataset = write_dataset(tmp_path / "data.jsonl")
    body = {"dataset": dataset, "steps": 12, "batch_size": 4, "learning_rate": 0.02, "max_seq_len": 64,
            "checkpoint_every": 4, "checkpoint_prefix": str(tmp_path / "ckpt"), "output": str(tmp_path / "final")}
    runtime.executor.create_adapter("sft", LoraSpec(rank=8, seed=5)).result(30)
    before = _batch_loss(runtime, "sft", dataset)
    gate = threading.Event()
    runtime.executor.call(lambda _engine: gate.wait(30))  # hold the model thread: the run cannot finish yet

    async def scenario():
        transport = httpx.ASGITransport(app=create_app(runtime))
        async with httpx.AsyncClient(transport=transport, base_url="http://runtime") as http:
            started = await http.post("/v1/adapters/sft/train", json=body)
            again = await http.post("/v1/adapters/sft/train", json=body)
            other = await http.post("/v1/adapters/sft/train", json={**body, "steps": 13})
            progress = (await http.get("/v1/adapters/sft/train")).json()
            return started, again, other, progress

    try:
        started, again, other, progress = asyncio.run(scenario())
    finally:
        gate.set()
    assert started.status_code == 202 and started.json()["state"] == "running"
    assert again.status_code == 200 and other.status_code == 409
    assert progress["state"] == "running" and progress["step"] == 0
    status = runtime.trainings.join("sft", timeout=120)
    assert status.state == "succeeded", status.error
    assert status.step == status.total_steps == 12 and status.tokens > 0
    assert status.last_checkpoint == {"url": str(tmp_path / "final"), "step": 12}
    for n in (4, 8, 12):
        assert (tmp_path / "ckpt" / f"step-{n}" / "adapter_model.safetensors").exists()
    after = _batch_loss(runtime, "sft", dataset)
    assert after < 0.7 * before, (before, after)

    # resume from step 4 on another adapter: the same final weights as the uninterrupted run
    runtime.executor.load_adapter("resumed", str(tmp_path / "ckpt" / "step-4"), True, None).result(30)
    resumed = runtime_ops.TrainBody(**{**body, "start_step": 4, "output": str(tmp_path / "resumed"),
                                   "checkpoint_prefix": str(tmp_path / "ckpt2")})
    runtime.trainings.start("resumed", resumed)
    status = runtime.trainings.join("resumed", timeout=120)
    assert status.state == "succeeded", status.error
    assert status.step == 12 and not (tmp_path / "ckpt2" / "step-4").exists()
    a = load_file(str(tmp_path / "final" / "adapter_model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)


def _batch_loss(state, adapter_id, dataset) -> float:
    tok = state.executor.engine.tokenizer
    rows = training.parse_rows(open(dataset).read(), "auto")
    work = training.build_work(adapter_id, [training.render_row(r, tok, 64) for r in rows[:4]])
    work.forward_only = True
    _, future = state.executor.submit(adapter_id, None, work)
    return future.result(30).metrics["loss:sum"]


def test_bad_dataset_row_fails_the_run_naming_the_line(runtime, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(f'{PC}\n{{"prompt": "x"}}\n')
    runtime.executor.create_adapter("bad-data", LoraSpec(rank=2)).result(30)
    runtime.trainings.start("bad-data", runtime_ops.TrainBody(dataset=str(path), steps=2, batch_size=1))
    status = runtime.trainings.join("bad-data", timeout=30)
    assert status.state == "failed" and "line 2" in status.error


def test_missing_dataset_fails_the_run_with_its_path(runtime, tmp_path):
    runtime.executor.create_adapter("no-data", LoraSpec(rank=2)).result(30)
    missing = str(tmp_path / "absent.jsonl")
    runtime.trainings.start("no-data", runtime_ops.TrainBody(dataset=missing, steps=1, batch_size=1))
    status = runtime.trainings.join("no-data", timeout=30)
    assert status.state == "failed" and "absent.jsonl" in status.error


def test_training_an_unknown_adapter_is_404(runtime):
    with pytest.raises(errors.NotFound):
        runtime.trainings.start("nobody", runtime_ops.TrainBody(dataset="x", steps=1))


def test_a_row_advantage_must_be_a_finite_number():
    with pytest.raises(errors.InvalidInput, match="line 1: advantage") as info:
        training.parse_rows('{"prompt": "a", "completion": "b", "advantage": "high"}', "auto")
    assert info.value.field == "dataset"


def test_importance_sampling_is_honoured_negative_advantages_unlearn_the_rows(runtime, tmp_path):
    rows = [{"prompt": f"Q{i}:", "completion": " yes", "advantage": -1.0} for i in range(4)]
    path = tmp_path / "scored.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    body = {"dataset": str(path), "steps": 3, "batch_size": 4, "learning_rate": 0.02, "max_seq_len": 64}
    losses = {}
    for loss in ("cross_entropy", "importance_sampling"):
        adapter = f"scored-{loss}"
        runtime.executor.create_adapter(adapter, LoraSpec(rank=4, seed=7)).result(30)
        before = _batch_loss(runtime, adapter, str(path))
        runtime.trainings.start(adapter, runtime_ops.TrainBody(**body, loss=loss))
        status = runtime.trainings.join(adapter, timeout=60)
        assert status.state == "succeeded", status.error
        losses[loss] = (before, _batch_loss(runtime, adapter, str(path)))
    assert losses["cross_entropy"][1] < losses["cross_entropy"][0]  # cross_entropy ignores advantages
    assert losses["importance_sampling"][1] > losses["importance_sampling"][0]  # the advantage -1 pushed away
