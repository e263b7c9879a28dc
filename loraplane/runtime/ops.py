"""Executor ops and the per-adapter order they run in.

Callers: `loraplane.runtime.executor` (queues and runs them), `loraplane.runtime.wire` and
`loraplane.runtime.training` (build the payloads). A payload is either the engine's `FwdBwdWork`
(batched with other adapters' work) or one of the dataclasses below, each of which knows the one
engine call it makes. `SeqQueue` holds one adapter's ops and releases them in the SDK's seq_id
order; it is plain data driven by the executor under its lock, with time passed in.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from loraplane.core import artifacts, errors, logs
from loraplane.core.runtime_ops import FORWARD_KINDS, OpKind  # noqa: F401 (FORWARD_KINDS: the executor's)
from loraplane.runtime import prompt_scoring

log = logging.getLogger(__name__)

#: How far a seq_id may run ahead of the next one to run, and how many seqs are remembered for
#: deduplication: the SDK keeps far fewer calls in flight than this.
MAX_SEQ_AHEAD = 4096


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
    artifacts.record_saved_checkpoint(dest, now=now, step=step, size_bytes=size)
    return {"dest": dest, "step": step, "size_bytes": size}


@dataclass(frozen=True)
class SaveState:
    """Save weights (and optimizer moments) to a store URL; result `{"dest", "step", "size_bytes"}`."""

    adapter_id: str
    dest: str
    optimizer: bool = True

    def apply(self, engine: Any) -> dict[str, Any]:
        size = engine.save_state(self.adapter_id, self.dest, optimizer=self.optimizer)
        return _recorded(self.dest, engine.adapter_step(self.adapter_id), size)


@dataclass(frozen=True)
class SaveSampler:
    """Save the PEFT adapter files only; result `{"dest", "step", "size_bytes"}`."""

    adapter_id: str
    dest: str

    def apply(self, engine: Any) -> dict[str, Any]:
        size = engine.save_sampler(self.adapter_id, self.dest)
        return _recorded(self.dest, engine.adapter_step(self.adapter_id), size)


@dataclass(frozen=True)
class SaveExternal:
    """Export the PEFT adapter folder, age-encrypted if recipients are given; result like SaveSampler."""

    adapter_id: str
    dest: str
    age_recipients: tuple[str, ...] = ()

    def apply(self, engine: Any) -> dict[str, Any]:
        size = engine.save_external(self.adapter_id, self.dest, list(self.age_recipients) or None)
        return _recorded(self.dest, engine.adapter_step(self.adapter_id), size)


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
    future: Future = field(default_factory=Future)
    #: the gateway's request id of the call that submitted it (`core.logs`), for the op's log lines
    origin: str | None = field(default_factory=logs.request_id.get)
    #: sample requests: the checked request the decode batch runs, and when it was queued
    job: Any = None
    queued_at: float = 0.0


class SeqQueue:
    """One adapter's ops, released in seq_id order; all methods run under the executor's lock.

    `waiting` holds ops whose seq is ahead of `next_seq`; `ready` holds releasable ops in order.
    """

    def __init__(self, expect_seq: int | None) -> None:
        self.next_seq: int | None = expect_seq   # the seq released next; None = learn it
        self.waiting: dict[int, Op] = {}          # seq -> op not releasable yet
        self.ready: deque[Op] = deque()           # releasable, in order
        self.seen: dict[int, Op] = {}             # seq -> first op submitted with it (dedup)
        self.blocked_since: float | None = None   # when the head-of-line gap was first seen
        self.first_arrival: float | None = None   # first seq'd arrival while next_seq is None

    def __len__(self) -> int:
        return len(self.waiting) + len(self.ready)

    def duplicate_of(self, seq_id: int | None) -> Op | None:
        """The op first submitted with this seq, if any (a retry must not run twice)."""
        return None if seq_id is None else self.seen.get(seq_id)

    def check_window(self, seq_id: int | None) -> None:
        """Refuse a seq too far ahead of the next one to run: it could only wait out the gap
        timeout and stall this adapter's queue. Raises InvalidInput naming `seq_id`."""
        if seq_id is None or self.next_seq is None:
            return
        if seq_id - self.next_seq > MAX_SEQ_AHEAD:
            raise errors.InvalidInput(
                f"seq_id {seq_id} is {seq_id - self.next_seq} ahead of the next one this model runs "
                f"({self.next_seq}); at most {MAX_SEQ_AHEAD} calls may be ahead in flight", field="seq_id")

    def push(self, op: Op, now: float) -> None:
        """Accept an op: in arrival order without a seq, else held until its turn."""
        if op.seq_id is None:
            self.ready.append(op)
            return
        self.seen[op.seq_id] = op
        if len(self.seen) > MAX_SEQ_AHEAD:
            for seq in sorted(self.seen)[: len(self.seen) - MAX_SEQ_AHEAD]:
                del self.seen[seq]
        if self.next_seq is not None and op.seq_id < self.next_seq:
            # its turn was skipped as a gap; running it late beats losing it
            log.warning("seq %d arrived after its gap was skipped; running it now", op.seq_id)
            self.ready.append(op)
            return
        self.waiting[op.seq_id] = op
        if self.next_seq is None and self.first_arrival is None:
            self.first_arrival = now
        self.promote(now, float("inf"), float("inf"))

    def promote(self, now: float, gap_timeout_s: float, reorder_window_s: float) -> None:
        """Move every op whose turn has come to `ready`, skipping gaps older than the timeout."""
        if self.next_seq is None:
            if not self.waiting or self.first_arrival is None or now - self.first_arrival < reorder_window_s:
                return
            self.next_seq = min(self.waiting)
        while True:
            while self.next_seq in self.waiting:
                self.ready.append(self.waiting.pop(self.next_seq))
                self.next_seq += 1
            if not self.waiting:
                self.blocked_since = None
                return
            if self.blocked_since is None:
                self.blocked_since = now
                return
            if now - self.blocked_since < gap_timeout_s:
                return
            skipped_to = min(self.waiting)
            log.warning("seq %d..%d never arrived within %.1fs; skipping the gap",
                        self.next_seq, skipped_to - 1, gap_timeout_s)
            self.next_seq = skipped_to
            self.blocked_since = None

    def deadline(self, gap_timeout_s: float, reorder_window_s: float) -> float | None:
        """When `promote` will next release something on its own (gap skip or learned baseline)."""
        if self.next_seq is None and self.first_arrival is not None and self.waiting:
            return self.first_arrival + reorder_window_s
        if self.waiting and self.blocked_since is not None:
            return self.blocked_since + gap_timeout_s
        return None

    def drain(self) -> list[Op]:
        """Remove and return every queued op (the adapter is going away)."""
        ops = list(self.ready) + [self.waiting[s] for s in sorted(self.waiting)]
        self.ready.clear()
        self.waiting.clear()
        return ops
