"""Executor ops: the payloads callers submit and the record of one accepted request.

Callers: `loraplane.runtime.executor` (queues and runs them), `loraplane.runtime.wire` and
`loraplane.runtime.training` (build the payloads). A payload is either the engine's `FwdBwdWork`
(batched with other adapters' work) or one of the dataclasses below, each of which knows the one
engine call it makes. The per-adapter queues they wait in are `loraplane.runtime.queues`.
"""

from __future__ import annotations

import datetime as dt
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from loraplane.clients import artifact_store
from loraplane.core import logs
from loraplane.core.runtime_ops import FORWARD_KINDS, OpKind  # noqa: F401 (FORWARD_KINDS: the executor's)
from loraplane.runtime import prompt_scoring


@dataclass(frozen=True)
class OptimStep:
    """Apply the adapter's AdamW step with `params` (an engine `AdamParams`)."""

    adapter_id: str
    params: Any

    def apply(self, engine: Any) -> dict[str, float]:
        return engine.optim_step(self.adapter_id, self.params)


def _recorded(dest: str, step: int, size: int) -> dict[str, Any]:
    """Record a finished save in the store at once (I/O), so that it is listed, loadable and
    deletable even if its result is never fetched; the save's result."""
    now = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    artifact_store.record_saved_checkpoint(dest, now=now, step=step, size_bytes=size)
    return {"dest": dest, "step": step, "size_bytes": size}


@dataclass(frozen=True)
class _Save:
    """A save of the adapter's files to a store URL, recorded once complete; result
    `{"dest", "step", "size_bytes"}`. Each kind says what it writes (`write`, the bytes written)."""

    adapter_id: str
    dest: str

    def apply(self, engine: Any) -> dict[str, Any]:
        return _recorded(self.dest, engine.adapter_step(self.adapter_id), self.write(engine))

    def write(self, engine: Any) -> int:
        raise NotImplementedError


@dataclass(frozen=True)
class SaveState(_Save):
    """Weights and, unless `optimizer` is false, the optimizer's moments: a training state."""

    optimizer: bool = True

    def write(self, engine: Any) -> int:
        return engine.save_state(self.adapter_id, self.dest, optimizer=self.optimizer)


@dataclass(frozen=True)
class SaveSampler(_Save):
    """The PEFT adapter files only: a sampler's weights."""

    def write(self, engine: Any) -> int:
        return engine.save_sampler(self.adapter_id, self.dest)


@dataclass(frozen=True)
class SaveExternal(_Save):
    """The PEFT adapter folder for download, age-encrypted to `age_recipients` when given."""

    age_recipients: tuple[str, ...] = ()

    def write(self, engine: Any) -> int:
        return engine.save_external(self.adapter_id, self.dest, list(self.age_recipients) or None)


@dataclass(frozen=True)
class Snapshot:
    """Copy the live weights into the read-only sampler adapter `sampler_id`, keeping at most
    `keep` snapshots of this adapter (the oldest beyond are dropped; result names them)."""

    adapter_id: str
    sampler_id: str
    keep: int = 4

    def apply(self, engine: Any) -> dict[str, Any]:
        dropped = engine.snapshot(self.adapter_id, self.sampler_id, keep=self.keep)
        return {"sampler_id": self.sampler_id, "dropped": dropped}


@dataclass(frozen=True)
class LoadState:
    """Load a saved state into this (existing) adapter; result `{"source", "step"}`."""

    adapter_id: str
    source: str
    optimizer: bool = True

    def apply(self, engine: Any) -> dict[str, Any]:
        engine.load_state(self.adapter_id, self.source, optimizer=self.optimizer)
        return {"source": self.source, "step": engine.adapter_step(self.adapter_id)}


@dataclass(frozen=True)
class Sample:
    """A sampling request (adapter None = the base model); result an engine `SampleResult`."""

    adapter_id: str | None
    prompt: list[int]
    num_samples: int
    params: Any
    prompt_logprobs: bool = False
    prompt_logprobs_last_n: int | None = None  # positions before len(prompt) - n are reported unscored
    owner: str | None = None  # who may read the result (the gateway's sampler); None: anyone who knows its id
    tenant: str | None = None  # whose request (fair admission into the decode batch)
    record_sequence_ids: tuple[str, ...] = ()  # non-empty: record each sample for stable_reinforce
    record_url: str | None = None  # store folder to keep the records in too
    topk_prompt_logprobs: int = 0
    topk_sample_logprobs: int = 0
    target_prompt_logprobs: Any = None  # a `prompt_scoring.TargetIds`
    prompt_alt_tokens_k: int = 0

    def options(self) -> Any:
        """The request's `prompt_scoring.PromptOptions`."""
        return prompt_scoring.PromptOptions(
            logprobs=self.prompt_logprobs, last_n=self.prompt_logprobs_last_n, topk=self.topk_prompt_logprobs,
            topk_sample=self.topk_sample_logprobs, target=self.target_prompt_logprobs,
            alt_k=self.prompt_alt_tokens_k,
        )

    def record(self, engine: Any, result: Any) -> None:
        """Record the sampled sequences for stable_reinforce when the request asked (I/O with a
        `record_url`); called by the executor once the decode batch has finished the request."""
        if self.record_sequence_ids:
            engine.sequences.record(self.record_sequence_ids, self.prompt,
                                    [(s.tokens, s.logprobs) for s in result.sequences], persist_to=self.record_url)


_KINDS: dict[type, OpKind] = {
    OptimStep: OpKind.OPTIM_STEP, SaveState: OpKind.SAVE_STATE, SaveSampler: OpKind.SAVE_SAMPLER,
    SaveExternal: OpKind.SAVE_EXTERNAL, Snapshot: OpKind.SNAPSHOT, LoadState: OpKind.LOAD_STATE, Sample: OpKind.SAMPLE,
}


def result_owner(adapter_id: str | None, payload: Any) -> str | None:
    """Who may read an op's result: a sample's `owner`, else the adapter the op ran on. Pure;
    called by the runtime API, which answers a result read by anyone else as unknown."""
    return payload.owner if isinstance(payload, Sample) else adapter_id


def op_kind(payload: Any) -> OpKind:
    """The op type of a payload: its metric label and whether it is batched.

    No side effects; called by `Executor.submit`. A forward/backward payload is any object with
    `forward_only` and `data` (the engine's `FwdBwdWork`).
    """
    kind = _KINDS.get(type(payload))
    if kind is not None:
        return kind
    if hasattr(payload, "forward_only") and hasattr(payload, "data"):
        return OpKind.FORWARD if payload.forward_only else OpKind.FORWARD_BACKWARD
    raise TypeError(f"not an executor op: {type(payload).__name__}")


def work_tokens(work: Any) -> int:
    """Input tokens of a forward/backward work, the unit of `max_batch_tokens`. No side effects."""
    return sum(len(datum.tokens) for datum in work.data)


@dataclass
class Op:
    """One accepted request: what to run, and the future its result goes to."""

    request_id: str
    adapter_id: str | None
    seq_id: int | None
    kind: str
    payload: Any
    tokens: int = 0
    #: whose work it is (the gateway says so), for fair share and the per-tenant metrics
    tenant: str = ""
    future: Future = field(default_factory=Future)
    #: the gateway's request id of the call that submitted it (`core.logs`), for the op's log lines
    origin: str | None = field(default_factory=logs.request_id.get)
    #: sample requests: the checked request the decode batch runs, and when it was queued
    job: Any = None
    queued_at: float = 0.0


def new_request_id() -> str:
    """A new op's request id: random, so that ids cannot be guessed across tenants."""
    return uuid.uuid4().hex
