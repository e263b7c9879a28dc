"""Sequences recorded at sampling time for `stable_reinforce`, and the provenance that names them.

Callers: `ops.Sample` records every sequence of a sampling request made with
`record_stability_info=True`; `PassRunner.validate` (`loraplane.runtime.passes`) resolves a `stable_reinforce` datum's provenance
spans against the records into the two per-token inputs the loss reads (the sampler's own
log-probabilities and the mask of sampled positions).

Why the server keeps them: the loss must use the log-probabilities the sampler really computed, in
its own numerics, not whatever the client sends back; and a training request may only name tokens
that its own session sampled. Rules (docs/losses.md):

* A record belongs to the session of the sampler that produced it (the session is the first part
  of every `sequence_id`); another session naming it gets the same error as for an unknown id.
* A record is kept for `retention_s` (one day) after it was sampled, and every training request
  that resolves it starts that day again. Expired records are dropped when new ones arrive.
* Records live in the memory of the runtime that sampled them and, when the gateway names a store
  folder (`record_url`, one JSON file per sampling request), in the store too: a training request
  on another runtime, or after a restart, finds them there (the gateway names the folder again on
  every forward_backward). Uses are written back to the store at most hourly, which is all the
  one-day rule needs; the gateway deletes the folder when the session finishes.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import fsspec
import numpy as np
import torch

from loraplane.core import errors
from loraplane.runtime import host_checks

log = logging.getLogger(__name__)

#: One day, as Tinker documents for recorded sequences.
DEFAULT_RETENTION_S = 86400.0
#: A use is written back to the store when the stored one is older than this share of the retention.
_WRITE_BACK_SHARE = 1 / 24


@dataclass(frozen=True)
class Span:
    """A run of `length` datum positions that are positions `offset..` of a recorded sequence's
    prompt (`kind="prompt"`) or sampled tokens (`kind="sampled"`)."""

    kind: Literal["prompt", "sampled"]
    sequence_id: str
    offset: int
    length: int


@dataclass
class SequenceRecord:
    session_id: str
    prompt: list[int]
    tokens: list[int]
    logprobs: list[float]
    expires_at: float
    #: store file of the sampling request (None: memory only), and the last use written there (wall clock)
    url: str | None = None
    stored_use: float = 0.0


@dataclass(frozen=True)
class Provenance:
    """A datum's spans: `model_input` tiles its input tokens, `targets` tiles `target_tokens`."""

    model_input: tuple[Span, ...]
    targets: tuple[Span, ...]


def session_of(sequence_id: str) -> str:
    """The session that owns a sequence id (`<session>:sample:<n>:<seq>:<i>`). Pure."""
    return sequence_id.split(":", 1)[0]


def request_file(folder: str, sequence_id: str) -> str:
    """The store file of the sampling request that produced `sequence_id`. Pure."""
    return folder.rstrip("/") + "/" + sequence_id.rsplit(":", 1)[0] + ".json"


class SequenceRecords:
    """Thread-safe map of sequence id -> record, with the retention rule above."""

    def __init__(self, retention_s: float = DEFAULT_RETENTION_S, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], float] = time.time) -> None:
        if retention_s <= 0:
            raise ValueError("retention_s must be > 0")
        self.retention_s = retention_s
        self._clock = clock
        self._wall = wall
        self._records: dict[str, SequenceRecord] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def record(self, sequence_ids: Sequence[str], prompt: Sequence[int],
               sequences: Sequence[tuple[Sequence[int], Sequence[float]]], persist_to: str | None = None) -> None:
        """Keep one record per sampled (tokens, logprobs) pair, aligned with `sequence_ids`; with
        `persist_to` (a store folder) also as one file there."""
        if len(sequence_ids) != len(sequences):
            raise errors.InvalidInput(
                f"{len(sequence_ids)} sequence ids for {len(sequences)} sequences", field="record_sequence_ids"
            )
        now = self._clock()
        prompt_list = [int(t) for t in prompt]
        url = request_file(persist_to, sequence_ids[0]) if persist_to and sequence_ids else None
        if url is not None:
            self._write(url, {
                "session_id": session_of(sequence_ids[0]), "prompt": prompt_list, "last_used": self._wall(),
                "sequences": {sid: {"tokens": [int(t) for t in toks], "logprobs": [float(x) for x in lps]}
                              for sid, (toks, lps) in zip(sequence_ids, sequences, strict=True)},
            })
        with self._lock:
            for sid in [k for k, r in self._records.items() if r.expires_at <= now]:
                del self._records[sid]
            for sid, (tokens, logprobs) in zip(sequence_ids, sequences, strict=True):
                self._records[sid] = SequenceRecord(
                    session_id=session_of(sid), prompt=prompt_list, tokens=[int(t) for t in tokens],
                    logprobs=[float(x) for x in logprobs], expires_at=now + self.retention_s,
                    url=url, stored_use=self._wall(),
                )

    def lookup(self, sequence_id: str, session_id: str | None, field: str, store_folder: str | None = None
               ) -> SequenceRecord:
        """The live record of `sequence_id` for a request of `session_id`; starts its retention again.

        A record not in memory is read from `store_folder` (the session's folder in the store).
        """
        now = self._clock()
        with self._lock:
            record = self._records.get(sequence_id)
            if record is not None and record.expires_at <= now:
                del self._records[sequence_id]
                record = None
        if record is None and store_folder and session_of(sequence_id) == session_id:
            record = self._load(request_file(store_folder, sequence_id), sequence_id)
        with self._lock:
            if record is None or (session_id is not None and record.session_id != session_id):
                raise errors.InvalidInput(
                    f"sequence_id {sequence_id!r} names no recorded sequence of this session: sample with "
                    "record_stability_info=True in the same session, and train on it within a day of its "
                    "sampling or last use",
                    field=field,
                )
            record.expires_at = now + self.retention_s
        if record.url is not None and self._wall() - record.stored_use >= self.retention_s * _WRITE_BACK_SHARE:
            self._write_back(record)
        return record

    def _load(self, url: str, sequence_id: str) -> SequenceRecord | None:
        """Bring the sampling request stored at `url` into memory; the record of `sequence_id`, if live."""
        body = self._read(url)
        if body is None:
            return None
        remaining = float(body.get("last_used", 0.0)) + self.retention_s - self._wall()
        if remaining <= 0:
            return None
        expires_at = self._clock() + remaining
        loaded = {
            sid: SequenceRecord(session_id=str(body.get("session_id")), prompt=list(body.get("prompt", [])),
                                tokens=list(seq.get("tokens", [])), logprobs=list(seq.get("logprobs", [])),
                                expires_at=expires_at, url=url, stored_use=float(body.get("last_used", 0.0)))
            for sid, seq in (body.get("sequences") or {}).items()
        }
        with self._lock:
            for sid, rec in loaded.items():
                self._records.setdefault(sid, rec)
            return self._records.get(sequence_id)

    def _write_back(self, record: SequenceRecord) -> None:
        assert record.url is not None
        body = self._read(record.url)
        if body is not None:
            body["last_used"] = self._wall()
            self._write(record.url, body)
        record.stored_use = self._wall()

    @staticmethod
    def _read(url: str) -> dict | None:
        try:
            fs, path = fsspec.core.url_to_fs(url)
            return json.loads(fs.cat_file(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("recorded sequences at %s unreadable: %s", url, exc)
            return None

    @staticmethod
    def _write(url: str, body: dict) -> None:
        try:
            fs, path = fsspec.core.url_to_fs(url)
            fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            fs.pipe_file(path, json.dumps(body).encode())
        except OSError as exc:  # memory still holds them: training on this runtime goes on
            log.warning("recorded sequences not written to %s: %s", url, exc)


def resolve(
    tokens: torch.Tensor,
    target_tokens: torch.Tensor,
    advantages: torch.Tensor,
    provenance: Provenance | None,
    records: SequenceRecords,
    session_id: str | None,
    where: str,
    store_folder: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The (sampler log-probabilities, sampled mask) of one datum, both float32 (N,).

    Checks that both span lists tile their field, that every span names a live record of this
    session within its bounds, that the datum's tokens are the recorded ones, and that advantages
    are zero wherever the target is not a sampled token. Each failure is an InvalidInput naming
    the datum's field. `where` is the datum's path (`data[3]`); `store_folder` is where the
    session's records are kept in the store, for those not in this runtime's memory.
    """
    if provenance is None:
        raise errors.InvalidInput(
            "loss_fn 'stable_reinforce' needs provenance on every datum (Datum.with_provenance naming "
            "the sequence_ids of a sampling client created with record_stability_info=True)",
            field=f"{where}.loss_fn_input_spans",
        )
    n = int(tokens.shape[0])
    _check_positions(provenance.model_input, host_checks.host_array(tokens), records, session_id,
                     f"{where}.model_input_spans", n, store_folder)
    sampler_lp = np.zeros(n, dtype=np.float32)
    mask = np.zeros(n, dtype=np.float32)
    for pos, span, record, offset in _check_positions(
        provenance.targets, host_checks.host_array(target_tokens), records, session_id,
        f"{where}.loss_fn_input_spans", n, store_folder,
    ):
        if span.kind == "sampled":
            sampler_lp[pos: pos + span.length] = record.logprobs[offset: offset + span.length]
            mask[pos: pos + span.length] = 1.0
    outside = np.flatnonzero((mask == 0) & (host_checks.host_array(advantages) != 0))
    if outside.size:
        first = int(outside[0])
        raise errors.InvalidInput(
            f"advantages[{first}] is non-zero but target {first} is not a sampled token; stable_reinforce "
            "trains only on sampled tokens, so give prompt and other tokens advantage 0",
            field=f"{where}.loss_fn_inputs.advantages",
        )
    return torch.from_numpy(sampler_lp), torch.from_numpy(mask)


def _check_positions(spans: tuple[Span, ...], values: np.ndarray, records: SequenceRecords,
                     session_id: str | None, field: str, n: int,
                     store_folder: str | None = None) -> list[tuple[int, Span, SequenceRecord, int]]:
    """Check that `spans` tile the field's `n` positions and that `values` hold the recorded tokens
    there; returns (first position, span, record, first offset) of each span."""
    total = sum(s.length for s in spans)
    if total != n:
        raise errors.InvalidInput(f"span lengths sum to {total}, but the field has {n} positions", field=field)
    out: list[tuple[int, Span, SequenceRecord, int]] = []
    pos = 0
    for i, span in enumerate(spans):
        if span.length < 0 or span.offset < 0 or not span.sequence_id:
            raise errors.InvalidInput("a span needs a sequence_id and offset, length >= 0", field=f"{field}[{i}]")
        record = records.lookup(span.sequence_id, session_id, f"{field}[{i}].sequence_id", store_folder)
        source = record.prompt if span.kind == "prompt" else record.tokens
        if span.offset + span.length > len(source):
            raise errors.InvalidInput(
                f"span covers {span.kind} positions {span.offset}..{span.offset + span.length - 1}, but sequence "
                f"{span.sequence_id!r} has {len(source)} {span.kind} tokens",
                field=f"{field}[{i}]",
            )
        wanted = np.asarray(source[span.offset: span.offset + span.length], dtype=np.int64)
        differ = np.flatnonzero(values[pos: pos + span.length] != wanted)
        if differ.size:
            k = int(differ[0])
            raise errors.InvalidInput(
                f"position {pos + k} holds token {int(values[pos + k])}, but {span.kind} position "
                f"{span.offset + k} of sequence {span.sequence_id!r} is {source[span.offset + k]}",
                field=f"{field}[{i}]",
            )
        out.append((pos, span, record, span.offset))
        pos += span.length
    return out
