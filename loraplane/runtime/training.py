"""Declarative training: a JSONL dataset, a step budget and a checkpoint policy, run on one adapter.

Callers: the runtime API's `POST/GET /v1/adapters/{id}/train` (the operator starts a `training`
mode LoRAJob through it and reads the progress back). Each run is a thread that submits ordinary
ops of its adapter (forward_backward, optim_step, save_state) to the executor and waits for them,
so training shares the model thread and its batches with every interactive adapter.

Data
----
Rows are `{"prompt", "completion"}` or `{"messages": [{"role", "content"}, ...]}`, each with an
optional `advantage` (a number, default 1) that the `importance_sampling` loss weighs it by. Chats use the
tokenizer's chat template when it has one, else a plain `role: content` rendering; the loss covers
only completion / assistant tokens (and the closing EOS). Per-token weights are divided by the
batch's weighted token count, so `loss:sum` is the mean token loss of the batch; that loss before
the step is what the status reports, whichever loss trains (`TrainingSpec.loss`). Step k always
uses the same rows (`batch_rows`), which makes a run resumed from `start_step` after a restore
continue exactly where the checkpoint left off.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from dataclasses import dataclass, field
from typing import Any

import fsspec
import torch

from loraplane.core import errors, runtime_ops
from loraplane.core.params import AdamParams
from loraplane.runtime import engine as eng
from loraplane.runtime import ops, wire

log = logging.getLogger(__name__)


@dataclass
class TrainStatus:
    """Progress of one run, as `GET /v1/adapters/{id}/train` reports it."""

    state: str = "running"  # "running" | "succeeded" | "failed"
    step: int = 0
    total_steps: int = 0
    loss: float | None = None
    tokens: int = 0
    last_checkpoint: dict[str, Any] | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ---- decisions -------------------------------------------------------------------------------

def parse_rows(text: str, fmt: str) -> list[dict[str, Any]]:
    """Parse JSONL into rows of the given format; a bad row raises InvalidInput naming its line.

    No side effects; called by `TrainingRun`.
    """
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"dataset line {lineno}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise errors.InvalidInput(f"{where}: not JSON ({exc.msg})", field="dataset") from None
        kind = _row_kind(row)
        if kind is None or (fmt != "auto" and kind != fmt):
            want = "prompt/completion strings or a messages list" if fmt == "auto" else fmt
            raise errors.InvalidInput(f"{where}: expected {want}", field="dataset")
        advantage = row.get("advantage", 1.0)
        if isinstance(advantage, bool) or not isinstance(advantage, int | float) or not math.isfinite(advantage):
            raise errors.InvalidInput(f"{where}: advantage must be a finite number, got {advantage!r}", field="dataset")
        rows.append(row)
    if not rows:
        raise errors.InvalidInput("dataset holds no rows", field="dataset")
    return rows


def _row_kind(row: Any) -> str | None:
    if not isinstance(row, dict):
        return None
    if isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str):
        return "prompt_completion"
    messages = row.get("messages")
    if isinstance(messages, list) and messages and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
        for m in messages
    ):
        return "chat"
    return None


def render_row(row: dict[str, Any], tokenizer: Any, max_seq_len: int) -> tuple[list[int], list[float]]:
    """Tokens of a row and per-token weights (1 on completion / assistant tokens, else 0).

    No side effects; called by `TrainingRun`. Truncated to `max_seq_len` tokens.
    """
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    if "prompt" in row:
        segments = [(row["prompt"], 0.0), (row["completion"], 1.0)]
    else:
        segments = _chat_segments(row["messages"], tokenizer)
        bos = [] if getattr(tokenizer, "chat_template", None) else bos
    tokens, weights = list(bos), [0.0] * len(bos)
    for text, weight in segments:
        ids = tokenizer.encode(text, add_special_tokens=False)
        tokens += ids
        weights += [weight] * len(ids)
    tokens += eos
    weights += [1.0] * len(eos)
    return tokens[:max_seq_len], weights[:max_seq_len]


def _chat_segments(messages: list[dict[str, str]], tokenizer: Any) -> list[tuple[str, float]]:
    """Split a rendered chat into (text, weight) pieces: assistant turns weigh 1."""
    if getattr(tokenizer, "chat_template", None):
        pieces: list[tuple[str, float]] = []
        done = ""
        for i, message in enumerate(messages):
            text = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
            if not text.startswith(done):
                break  # a template that rewrites earlier turns: fall back to the plain rendering
            pieces.append((text[len(done):], 1.0 if message["role"] == "assistant" else 0.0))
            done = text
        else:
            return pieces
    out = []
    for m in messages:
        assistant = m["role"] == "assistant"
        out.append((f"{m['role']}: ", 0.0))
        out.append((m["content"] + "\n", 1.0 if assistant else 0.0))
    return out


def total_steps(n_rows: int, batch_size: int, steps: int | None, epochs: float | None) -> int:
    """Steps of a run: `steps` when given, else ceil(epochs * rows / batch); one epoch by default.

    No side effects; called by `TrainingRun`.
    """
    if steps is not None:
        return steps
    return max(1, math.ceil((epochs if epochs is not None else 1.0) * n_rows / batch_size))


def batch_rows(step: int, batch_size: int, n_rows: int) -> list[int]:
    """Row indices of step `step` (0-based): consecutive rows, wrapping around the dataset.

    No side effects; called by `TrainingRun`. Depends only on its arguments, so a resumed run
    sees the same batches as an uninterrupted one.
    """
    start = step * batch_size
    return [(start + j) % n_rows for j in range(batch_size)]


def build_work(adapter_id: str, examples: list[tuple[list[int], list[float]]], loss: str = "cross_entropy", *,
               forward_only: bool = False, before: list[torch.Tensor] | None = None,
               advantages: list[float] | None = None) -> eng.FwdBwdWork:
    """The work of a batch for `loss`: next-token targets, weights normalised over the batch. Pure.

    cross_entropy takes the weights. importance_sampling takes the targets' log-probabilities
    `before` the step (a forward pass of the same batch) and each row's advantage on its weighted
    tokens, so its gradient is the advantage-weighted likelihood's.
    """
    total = sum(sum(w[1:]) for _, w in examples) or 1.0
    data = []
    for i, (tokens, weights) in enumerate(examples):
        scaled = torch.tensor(weights[1:], dtype=torch.float32) / total
        inputs = {"target_tokens": torch.tensor(tokens[1:], dtype=torch.int64)}
        if loss == "cross_entropy":
            inputs["weights"] = scaled
        else:
            assert before is not None and advantages is not None
            inputs["logprobs"] = before[i].detach().to(torch.float32).cpu()
            inputs["advantages"] = scaled * float(advantages[i])
        data.append(eng.Datum(tokens=torch.tensor(tokens[:-1], dtype=torch.int64), loss_inputs=inputs))
    return eng.FwdBwdWork(adapter_id=adapter_id, data=data, loss_fn=loss, forward_only=forward_only)


# ---- runs ------------------------------------------------------------------------------------

@dataclass
class TrainingRun:
    """One run on a thread of its own; `status` is updated after every step."""

    adapter_id: str
    body: runtime_ops.TrainBody
    executor: Any
    status: TrainStatus = field(default_factory=TrainStatus)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.status.step = self.body.start_step
        self.thread = threading.Thread(target=self._run, name=f"train-{self.adapter_id}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self._train()
            self.status.state = "succeeded"
        except Exception as exc:
            if not isinstance(exc, errors.LoraplaneError):
                log.exception("training %s failed", self.adapter_id)
            self.status.error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            self.status.state = "failed"

    def _train(self) -> None:
        body = self.body
        with fsspec.open(body.dataset, "r", encoding="utf-8") as f:
            rows = parse_rows(f.read(), body.format)
        tokenizer = self.executor.engine.tokenizer
        examples = [render_row(r, tokenizer, body.max_seq_len) for r in rows]
        for i, (tokens, weights) in enumerate(examples):
            if len(tokens) < 2 or not any(weights[1:]):
                raise errors.InvalidInput(f"dataset row {i + 1} has no completion tokens to train on", field="dataset")
        total = total_steps(len(rows), body.batch_size, body.steps, body.epochs)
        self.status.total_steps = total
        params = wire.adam_params(AdamParams(learning_rate=body.learning_rate))
        for step in range(body.start_step, total):
            picked = batch_rows(step, body.batch_size, len(rows))
            batch = [examples[i] for i in picked]
            if body.loss == "cross_entropy":
                result = self._call(build_work(self.adapter_id, batch))
            else:
                result = self._call(build_work(self.adapter_id, batch, forward_only=True))
                self._call(build_work(self.adapter_id, batch, body.loss, before=result.logprobs,
                                      advantages=[float(rows[i].get("advantage", 1.0)) for i in picked]))
            self._call(ops.OptimStep(self.adapter_id, params))
            self.status.loss = float(result.metrics["loss:sum"])
            self.status.tokens += sum(len(t) - 1 for t, _ in batch)
            self.status.step = step + 1
            if body.checkpoint_every and body.checkpoint_prefix and (step + 1) % body.checkpoint_every == 0:
                self._checkpoint(f"{body.checkpoint_prefix.rstrip('/')}/step-{step + 1}", step + 1)
        if body.output:
            self._checkpoint(body.output, self.status.step)

    def _checkpoint(self, url: str, step: int) -> None:
        self._call(ops.SaveState(self.adapter_id, url, optimizer=True))
        self.status.last_checkpoint = {"url": url, "step": step}

    def _call(self, payload: Any) -> Any:
        _, future = self.executor.submit(self.adapter_id, None, payload)
        return future.result()


class TrainingRuns:
    """The runs of one runtime, one per adapter; the API's training routes call it."""

    def __init__(self, executor: Any) -> None:
        self.executor = executor
        self._runs: dict[str, TrainingRun] = {}
        self._lock = threading.Lock()

    def start(self, adapter_id: str, body: runtime_ops.TrainBody) -> tuple[TrainStatus, bool]:
        """Start a run; (status, created). The same body while it runs is a no-op; another is a 409."""
        if not self.executor.engine.has_adapter(adapter_id):
            raise errors.NotFound(f"unknown adapter {adapter_id!r}", field="adapter_id")
        with self._lock:
            current = self._runs.get(adapter_id)
            if current is not None and current.status.state == "running":
                if current.body == body:
                    return current.status, False
                raise errors.Conflict(f"adapter {adapter_id!r} is already training with another configuration")
            run = TrainingRun(adapter_id, body, self.executor)
            self._runs[adapter_id] = run
            run.start()
            return run.status, True

    def status(self, adapter_id: str) -> TrainStatus:
        with self._lock:
            run = self._runs.get(adapter_id)
        if run is None:
            raise errors.NotFound(f"no training run for adapter {adapter_id!r}", field="adapter_id")
        return run.status

    def join(self, adapter_id: str, timeout: float | None = None) -> TrainStatus:
        """Wait for a run to end (tests and the single-node demo); returns its final status."""
        with self._lock:
            run = self._runs.get(adapter_id)
        if run is None:
            raise errors.NotFound(f"no training run for adapter {adapter_id!r}", field="adapter_id")
        if run.thread is not None:
            run.thread.join(timeout)
        return run.status
