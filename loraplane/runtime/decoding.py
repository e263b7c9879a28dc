"""The continuous decode batch: every sample request on a runtime decodes in one loop.

Callers: the executor's model thread adds requests (`Decoder.add`) and runs one `Decoder.step` per
turn, between training passes; `Engine.sample` runs a private decoder to completion for one request.

## A step
1. Prefill: the prompts not yet in the cache advance by one padded pass of at most
   `chunk_tokens` tokens (`scheduling.prefill_chunks`); a long prompt takes several steps, so it
   never stalls the batch for long. A prompt whose last chunk ran draws its first tokens from its
   last logits (repeated for its `num_samples` rows) and its rows join the decode batch.
2. Decode: one forward pass over every decoding row, one new token each, each row at its own
   position (see `kv_cache`). Rows are kept ordered by adapter, so each adapter's rows form one
   routing segment of the shared LoRA layers, exactly as in training. Rows that stop leave the
   batch at once; a request answers when its last row stops.

## Same answers at any concurrency
A row's numbers depend only on its own tokens: its keys are masked to its own positions, the LoRA
update of its adapter runs on its rows, token choice is per row, and the randomness comes from its
request's own generator (`sampling.choose_rows`). The only host sync per step is the copy of the
chosen tokens and their log-probs, one for the whole batch.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from loraplane.core import errors
from loraplane.runtime import kv_cache, lora, prompt_scoring, sampling, scheduling


@dataclass
class SampleJob:
    """One validated sample request (`Engine.prepare_sample` builds it); `tag` is the caller's."""

    adapter_id: str | None
    prompt: list[int]
    num_samples: int
    params: sampling.SamplingParams
    stops: sampling.Stops
    options: prompt_scoring.PromptOptions = field(default_factory=prompt_scoring.PromptOptions)
    tag: Any = None

    def need(self, prefilling: bool) -> scheduling.KvNeed:
        return scheduling.request_need(len(self.prompt), self.num_samples, self.params.max_tokens, prefilling)


@dataclass
class _Row:
    request: _Request
    index: int
    tokens: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    topk_ids: list[list[int]] = field(default_factory=list)
    topk_lps: list[list[float]] = field(default_factory=list)
    reason: str | None = None


@dataclass
class _Request:
    job: SampleJob
    generator: torch.Generator
    window: int
    prompt: torch.Tensor
    added_at: float
    scores: prompt_scoring.PromptScores | None = None
    prefilled: int = 0
    rows: list[_Row] = field(default_factory=list)
    live: int = 0
    first_token_at: float | None = None
    failure: Exception | None = None


@dataclass
class StepReport:
    """What one `Decoder.step` did, for metrics; `finished` holds (job, SampleResult or exception)."""

    finished: list[tuple[SampleJob, Any]] = field(default_factory=list)
    decode_rows: int = 0
    prefill_tokens: int = 0
    new_tokens: int = 0
    ttft_s: list[float] = field(default_factory=list)


class Decoder:
    """The decode batch of one model (see the module docstring). Used from one thread only."""

    def __init__(
        self, model: torch.nn.Module, router: lora.LoraRouter, tokenizer: Any, device: torch.device,
        geometry: tuple[int, int, int], dtype: torch.dtype, additive_mask: bool, chunk_tokens: int,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.model, self.router, self.tokenizer, self.device = model, router, tokenizer, device
        self.chunk_tokens = chunk_tokens
        self._clock = clock
        layers, heads, dim = geometry
        self.prefill = kv_cache.KvStore(layers, heads, dim, dtype, device, additive_mask)
        self.decode = kv_cache.KvStore(layers, heads, dim, dtype, device, additive_mask)
        self._prefilling: list[_Request] = []  # row i of `prefill`
        self._rows: list[_Row] = []  # row i of `decode`
        self._row_params: sampling.RowParams | None = None
        self._segments: tuple[lora.Segment, ...] = ()
        self._draws: list[sampling.NoiseDraw] = []
        #: the last step's chosen tokens, as the next step's input ids, while the rows stay the same
        self._next_ids: torch.Tensor | None = None

    # ---- state -----------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        return not self._prefilling and not self._rows

    @property
    def decode_rows(self) -> int:
        return len(self._rows)

    def requests(self) -> list[_Request]:
        seen: dict[int, _Request] = {id(r): r for r in self._prefilling}
        for row in self._rows:
            seen.setdefault(id(row.request), row.request)
        return list(seen.values())

    def needs(self) -> list[scheduling.KvNeed]:
        """Each running request's charge against the KV budget (`scheduling.request_need`)."""
        out = []
        for req in self.requests():
            need = req.job.need(prefilling=req.prefilled < len(req.job.prompt))
            if req.rows:
                need = scheduling.KvNeed(rows=req.live, final_len=need.final_len, decode_rows=req.live)
            out.append(need)
        return out

    def adapters(self) -> set[str]:
        """Adapters with requests in the batch (their weights must stay put until those finish)."""
        return {r.job.adapter_id for r in self.requests() if r.job.adapter_id is not None}

    def kv_bytes(self) -> int:
        return self.prefill.nbytes() + self.decode.nbytes()

    # ---- joining and leaving ---------------------------------------------------------------

    def add(self, job: SampleJob) -> None:
        """Queue a validated request for prefill; it decodes from the next steps on."""
        seed = job.params.seed if job.params.seed is not None else secrets.randbits(63)
        request = _Request(
            job=job, generator=torch.Generator(device=self.device).manual_seed(seed),
            window=sampling.stop_window(job.stops),
            prompt=torch.tensor(job.prompt, dtype=torch.long, device=self.device), added_at=self._clock(),
        )
        if job.options.scores_prompt:
            request.scores = prompt_scoring.PromptScores(job.options, request.prompt)
        # Its cache row is made with those of the other requests that join before the next step
        # (`_rebuild_prefill`): one rebuild of the prefill store per turn, not one per request.
        self._prefilling.append(request)

    def drop(self, adapter_id: str, exc: Exception) -> list[tuple[SampleJob, Any]]:
        """Remove every request of `adapter_id` (it is being deleted); returns them with `exc`."""
        doomed = {id(r) for r in self.requests() if r.job.adapter_id == adapter_id}
        return self._remove(doomed, exc)

    def fail_all(self, exc: Exception) -> list[tuple[SampleJob, Any]]:
        """Remove every request (the batch hit a fault it cannot attribute); returns them with `exc`."""
        failed = [(r.job, exc) for r in self.requests()]
        self._prefilling, self._rows = [], []
        self._rebuild_prefill([])
        self._reassemble([], [])
        return failed

    def _remove(self, doomed: set[int], exc: Exception) -> list[tuple[SampleJob, Any]]:
        if not doomed:
            return []
        failed = [(r.job, exc) for r in self.requests() if id(r) in doomed]
        keep_p = [i for i, r in enumerate(self._prefilling) if id(r) not in doomed]
        self._rebuild_prefill(keep_p)
        keep_d = [i for i, row in enumerate(self._rows) if id(row.request) not in doomed]
        self._reassemble([(self.decode, i) for i in keep_d], [self._rows[i] for i in keep_d])
        return failed

    def _rebuild_prefill(self, keep: list[int]) -> None:
        """Keep the prompts `keep` (indices into `_prefilling`) in the prefill store, in that order;
        a request added since the last rebuild gets a new empty row."""
        self._prefilling = [self._prefilling[i] for i in keep]
        self.prefill.assemble([(self.prefill, i) if i < self.prefill.rows else (None, 0) for i in keep],
                              limit=max((len(r.job.prompt) for r in self._prefilling), default=0))

    def _reassemble(self, plan: list[tuple[kv_cache.KvStore | None, int]], rows: list[_Row]) -> None:
        """Lay the decode rows out by adapter (stable), so each adapter is one routing segment."""
        order = sorted(range(len(rows)), key=lambda i: rows[i].request.job.adapter_id or "")
        self.decode.assemble([plan[i] for i in order], limit=max(
            (len(r.request.job.prompt) + r.request.job.params.max_tokens for r in rows), default=0))
        self._rows = [rows[i] for i in order]
        adapters = [r.request.job.adapter_id for r in self._rows]
        self._segments = tuple(
            lora.Segment(s.adapter_id, s.start, s.end)
            for s in lora.segments_for([a or "" for a in adapters], [1] * len(adapters)) if s.adapter_id
        )
        self._row_params = (
            sampling.row_params([r.request.job.params for r in self._rows], self.device) if self._rows else None
        )
        self._draws = []
        self._next_ids = None
        blocks = []  # each request's rows, which hold its prompt alike (`KvStore.share_prompts`)
        i = 0
        while i < len(self._rows):
            req = self._rows[i].request
            j = i
            while j < len(self._rows) and self._rows[j].request is req:
                j += 1
            idx = [row.index for row in self._rows[i:j]]
            pick = None if idx == list(range(req.job.num_samples)) else torch.tensor(idx, device=self.device)
            self._draws.append(_draw(req, j - i, pick))
            blocks.append((i, j, len(req.job.prompt)))
            i = j
        self.decode.share_prompts(blocks)

    # ---- one step --------------------------------------------------------------------------

    def step(self) -> StepReport:
        """One prefill chunk (when prompts wait) and one decode step (when rows decode)."""
        report = StepReport()
        if self._prefilling:
            self._prefill_step(report)
        if self._rows:
            self._decode_step(report)
        return report

    def _prefill_step(self, report: StepReport) -> None:
        if self.prefill.rows < len(self._prefilling):
            self._rebuild_prefill(list(range(len(self._prefilling))))
        remaining = [len(r.job.prompt) - r.prefilled for r in self._prefilling]
        takes = scheduling.prefill_chunks(remaining, self.chunk_tokens)
        chosen = sorted((i for i, t in enumerate(takes) if t > 0),
                        key=lambda i: self._prefilling[i].job.adapter_id or "")
        width = max(takes[i] for i in chosen)
        ids = torch.zeros(len(chosen), width, dtype=torch.long)
        for j, i in enumerate(chosen):
            req = self._prefilling[i]
            ids[j, : takes[i]] = torch.tensor(req.job.prompt[req.prefilled: req.prefilled + takes[i]])
        keep_all = any(self._prefilling[i].scores is not None for i in chosen) or len({takes[i] for i in chosen}) > 1
        adapters = [self._prefilling[i].job.adapter_id or "" for i in chosen]
        segments = [lora.Segment(s.adapter_id or None, s.start, s.end)
                    for s in lora.segments_for(adapters, [width] * len(chosen))]
        try:
            positions, mask = self.prefill.prepare(width, chosen)
            with self.router.route(tuple(s for s in segments if s.adapter_id), mask_free=self.prefill.mask_free):
                logits = self.model(input_ids=ids.to(self.device), attention_mask=mask, position_ids=positions,
                                    cache=self.prefill.cache, use_cache=True,
                                    logits_to_keep=0 if keep_all else 1).logits
        except Exception as exc:  # a fault of the pass fails the requests in it, not the others
            report.finished += self._remove({id(self._prefilling[i]) for i in chosen}, sampling.pass_failure(exc))
            return
        self.prefill.advance([takes[i] for i in chosen], chosen)
        report.prefill_tokens += sum(takes[i] for i in chosen)
        done: list[tuple[_Request, torch.Tensor]] = []
        for j, i in enumerate(chosen):
            req = self._prefilling[i]
            take = takes[i]
            if req.scores is not None:
                req.scores.add_chunk(logits[j, :take], req.prefilled, req.job.params.temperature, req.generator)
            req.prefilled += take
            if req.prefilled == len(req.job.prompt):
                done.append((req, logits[j, take - 1] if keep_all else logits[j, -1]))
        if done:
            self._start_decoding(done, report)

    def _start_decoding(self, done: list[tuple[_Request, torch.Tensor]], report: StepReport) -> None:
        """Draw the first tokens of prompts just prefilled and move their rows to the decode batch."""
        starting = [(req, last) for req, last in done if req.job.params.max_tokens > 0]
        for req, _ in done:
            req.rows = [_Row(req, i) for i in range(req.job.num_samples)]
            req.live = len(req.rows)
            if req.job.params.max_tokens == 0:
                for row in req.rows:
                    row.reason = "length"
                req.live = 0
        if starting:
            logits = torch.cat([last[None].expand(req.job.num_samples, -1) for req, last in starting])
            rows = [row for req, _ in starting for row in req.rows]
            params = sampling.row_params([r.request.job.params for r in rows], self.device)
            noise = sampling.step_noise([_draw(req, req.job.num_samples) for req, _ in starting],
                                        logits.shape[-1], self.device)
            self._record(rows, logits, params, noise, report)
        plan = [(self.decode, i) for i in range(len(self._rows))]
        rows_after = list(self._rows)
        for req, _ in done:
            src = self._prefilling.index(req)
            for row in req.rows:
                if row.reason is None:
                    plan.append((self.prefill, src))
                    rows_after.append(row)
        self._reassemble(plan, rows_after)
        finished = {id(req) for req, _ in done}
        self._rebuild_prefill([i for i, r in enumerate(self._prefilling) if id(r) not in finished])
        report.finished += [(req.job, _outcome(req)) for req, _ in done if req.live == 0]

    def _decode_step(self, report: StepReport) -> None:
        rows = list(self._rows)
        ids = self._next_ids
        if ids is None:
            ids = torch.tensor([[r.tokens[-1]] for r in rows], dtype=torch.long, device=self.device)
        try:
            positions, mask = self.decode.prepare(1)
            with self.router.route(self._segments, mask_free=self.decode.mask_free, decode_bias=self.decode.decode_bias,
                                   decode_chunks=self.decode.decode_chunks):
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                    cache=self.decode.cache, use_cache=True, logits_to_keep=1).logits[:, -1]
        except Exception as exc:
            report.finished += self._remove({id(r.request) for r in rows}, sampling.pass_failure(exc))
            return
        self.decode.advance([1] * len(rows))
        report.decode_rows = len(rows)
        assert self._row_params is not None
        noise = sampling.step_noise(self._draws, logits.shape[-1], self.device)
        complete, tokens = self._record(rows, logits, self._row_params, noise, report)
        self._next_ids = tokens[:, None]
        if any(r.reason is not None for r in rows):
            keep = [i for i, r in enumerate(rows) if r.reason is None]
            self._reassemble([(self.decode, i) for i in keep], [rows[i] for i in keep])
        report.finished += [(req.job, _outcome(req)) for req in complete]

    def _record(self, rows: list[_Row], logits: torch.Tensor, params: sampling.RowParams,
                noise: torch.Tensor | None, report: StepReport) -> tuple[list[_Request], torch.Tensor]:
        """Choose each row's token and append it; returns the requests whose last live row stopped,
        and the chosen tokens (on the device: the next step's input)."""
        tokens, chosen_lp, logprobs = sampling.choose_rows(logits, params, noise)
        widths = [r.request.job.options.topk_sample for r in rows]
        top_ids: list[list[int]] | None = None
        top_lps: list[list[float]] | None = None
        if any(widths):
            top = logprobs.topk(min(max(widths), logprobs.shape[-1]), dim=-1)
            top_ids, top_lps = top.indices.tolist(), top.values.tolist()
        token_list, lp_list = tokens.tolist(), chosen_lp.tolist()
        now = self._clock()
        report.new_tokens += len(rows)
        complete: list[_Request] = []
        for i, row in enumerate(rows):
            req = row.request
            if req.failure is not None:
                continue
            if req.first_token_at is None:
                req.first_token_at = now
                report.ttft_s.append(now - req.added_at)
            try:
                row.tokens.append(int(token_list[i]))
                row.logprobs.append(float(lp_list[i]))
                if widths[i] and top_ids is not None and top_lps is not None:
                    row.topk_ids.append(top_ids[i][: widths[i]])
                    row.topk_lps.append(top_lps[i][: widths[i]])
                if sampling.stop_hit(row.tokens, req.job.stops, self.tokenizer, req.window):
                    row.reason = "stop"
                elif len(row.tokens) >= req.job.params.max_tokens:
                    row.reason = "length"
            except Exception as exc:  # host-side trouble with one request fails that request only
                req.failure = errors.ServerError(f"sampling failed: {type(exc).__name__}: {exc}")
                for other in req.rows:
                    other.reason = other.reason or "failed"
                req.live = 0
                complete.append(req)
                continue
            if row.reason is not None:
                req.live -= 1
                if req.live == 0:
                    complete.append(req)
        return complete, tokens


def _draw(req: _Request, count: int, pick: torch.Tensor | None = None) -> sampling.NoiseDraw:
    """`req`'s share of a step's noise: `count` of its rows (`pick`, or all of them)."""
    generator = None if req.job.params.temperature == 0 else req.generator
    return sampling.NoiseDraw(generator, req.job.num_samples, count, pick)


def _outcome(req: _Request) -> Any:
    return req.failure if req.failure is not None else _result(req)


def _result(req: _Request) -> sampling.SampleResult:
    sequences = []
    for row in req.rows:
        topk = None
        if req.job.options.topk_sample:
            k = req.job.options.topk_sample
            ids = np.full((len(row.tokens), k), prompt_scoring.MASK_ID, dtype=np.int32)
            lps = np.full((len(row.tokens), k), prompt_scoring.MASK_LOGPROB, dtype=np.float32)
            for t, (tid, tlp) in enumerate(zip(row.topk_ids, row.topk_lps, strict=True)):
                ids[t, : len(tid)], lps[t, : len(tlp)] = tid, tlp
            topk = (ids, lps)
        sequences.append(sampling.SampledSequence(row.tokens, row.logprobs, row.reason or "length", topk))
    scores = req.scores
    return sampling.SampleResult(
        sequences=sequences, prompt_logprobs=scores.prompt_logprob_list() if scores is not None else None,
        prompt_scores=scores,
    )
