"""Sampling: parameters, token choice (temperature, top-k, top-p) for a batch of rows, stop conditions.

Callers: `loraplane.runtime.engine.Engine.prepare_sample` (parameters, stops) and the decode loop
of `loraplane.runtime.decoding` (row parameters, `choose_rows`, `stop_hit`).

## Choices
- Reported log-probs of sampled tokens are under the model's distribution AFTER temperature
  (`log_softmax(logits / T)`) and BEFORE top-k/top-p truncation: the distribution the sample was
  drawn from, up to truncation. At temperature 1 this equals the learner's `logprobs` output of
  `forward`, which is what importance-sampling losses compare against. Greedy decoding
  (temperature 0) reports the untempered log-probs.
- Prompt log-probs are always untempered: `[None, log p(prompt[1] | prompt[:1]), ...]`.
- Stop conditions are exactly what the caller gives: `None` = the model's EOS ids, `[]` = none,
  token ids, or strings matched on the decoded generated text. The token that completes a stop
  (the stop id itself, or the token finishing a stop string) is kept in the output.
- One `torch.Generator` per request, seeded from `seed` (random when None), draws every sample of
  that request: at each step one (num_samples, vocab) block of Exp(1) noise (`step_noise`),
  whatever else is in the batch and however many of its rows have already stopped. The same seed,
  prompt and parameters therefore give the same tokens at any concurrency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from loraplane.core import errors

#: Below this (and above 0, which is greedy) a temperature divides logits into overflow.
MIN_TEMPERATURE = 1e-5


@dataclass(frozen=True)
class SamplingParams:
    """Tinker's sampling parameters; `stop` None = EOS, [] = never stop early; top_k -1 = off."""

    max_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    stop: None | str | list[str] | list[int] = None
    seed: int | None = None

    def __post_init__(self) -> None:
        prefix = "sampling_params."
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 0:
            raise errors.InvalidInput(f"max_tokens must be an integer >= 0, got {self.max_tokens!r}", field=prefix + "max_tokens")
        if (not _is_number(self.temperature) or not math.isfinite(self.temperature)
                or not (self.temperature == 0 or self.temperature >= MIN_TEMPERATURE)):
            raise errors.InvalidInput(
                f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE:g}, got {self.temperature!r}",
                field=prefix + "temperature")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise errors.InvalidInput(f"top_p must be in (0, 1], got {self.top_p!r}", field=prefix + "top_p")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < -1:
            raise errors.InvalidInput(f"top_k must be -1 (off) or a positive integer, got {self.top_k!r}", field=prefix + "top_k")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                                      or not -(2**63) <= self.seed < 2**64):
            raise errors.InvalidInput(f"seed must be a 64-bit integer or null, got {self.seed!r}", field=prefix + "seed")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass
class SampledSequence:
    tokens: list[int]
    logprobs: list[float]
    stop_reason: str  # "stop" | "length"
    #: with `topk_sample_logprobs`: per generated token, the k most likely (ids, log-probs) as two
    #: (len(tokens), k) arrays, under the same distribution as `logprobs`
    topk: tuple[Any, Any] | None = None


@dataclass
class SampleResult:
    sequences: list[SampledSequence]
    prompt_logprobs: list[float | None] | None  # [0] is None
    #: the prompt-side extras (`loraplane.runtime.prompt_scoring.PromptScores`), when asked for
    prompt_scores: Any = None


@dataclass(frozen=True)
class Stops:
    """Resolved stop conditions: token ids and strings."""

    token_ids: frozenset[int]
    strings: tuple[str, ...]


def resolve_stops(stop: object, eos_token_ids: list[int], vocab_size: int) -> Stops:
    """Turn `SamplingParams.stop` into ids and strings. Pure; called by `Engine.sample`."""
    field = "sampling_params.stop"
    if stop is None:
        return Stops(frozenset(eos_token_ids), ())
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list | tuple):
        raise errors.InvalidInput("stop must be null, a string, or a list of strings or token ids", field=field)
    ids: set[int] = set()
    strings: list[str] = []
    for item in stop:
        if isinstance(item, str):
            if not item:
                raise errors.InvalidInput("stop strings must not be empty", field=field)
            strings.append(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            if not 0 <= item < vocab_size:
                raise errors.InvalidInput(f"stop token id {item} is outside the vocabulary", field=field)
            ids.add(item)
        else:
            raise errors.InvalidInput(f"stop entries must be strings or token ids, got {item!r}", field=field)
    return Stops(frozenset(ids), tuple(strings))


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask (to -inf) the logits outside the top-k and outside the top-p nucleus, per row.

    Pure; called by `choose_tokens`. The nucleus is the smallest set of most likely tokens whose
    probability reaches `top_p`; the most likely token is always kept.
    """
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p  # mass before this token already enough
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def filter_rows(logprobs: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """`filter_logits` with each row's own top-k (<= 0: off) and top-p, in one pass over the batch.

    Pure; called by `choose_rows` when some row of the decode batch truncates. Ties at the k-th
    value are kept, and the nucleus is taken over the top-k survivors renormalised, as in
    `filter_logits`, so a row's choice does not depend on the other rows.
    """
    vocab = logprobs.shape[-1]
    sorted_lp, order = torch.sort(logprobs, dim=-1, descending=True)
    k = torch.where((top_k <= 0) | (top_k > vocab), vocab, top_k).clamp(min=1)
    kth = sorted_lp.gather(-1, (k - 1)[:, None])
    keep = logprobs >= kth
    masked = sorted_lp.masked_fill(sorted_lp < kth, float("-inf"))
    probs = masked.softmax(-1)
    drop_sorted = ((probs.cumsum(-1) - probs) >= top_p[:, None]) & (top_p < 1.0)[:, None]
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logprobs.masked_fill(~keep | drop, float("-inf"))


@dataclass
class RowParams:
    """The per-row sampling parameters of a decode batch, as device tensors (rebuilt on changes)."""

    temperature: torch.Tensor  # (rows,) float; 1.0 for greedy rows
    greedy: torch.Tensor  # (rows,) bool
    top_k: torch.Tensor  # (rows,) long; 0 = off
    top_p: torch.Tensor  # (rows,) float
    truncates: bool  # whether any sampled row has top-k or top-p
    any_sampled: bool


def row_params(params: list[SamplingParams], device: torch.device) -> RowParams:
    """Stack the rows' parameters for `choose_rows`. Pure; called when the batch's rows change."""
    greedy = [p.temperature == 0 for p in params]
    top_k = [0 if g else max(p.top_k, 0) for p, g in zip(params, greedy, strict=True)]
    top_p = [1.0 if g else float(p.top_p) for p, g in zip(params, greedy, strict=True)]
    return RowParams(
        temperature=torch.tensor([1.0 if g else float(p.temperature) for p, g in zip(params, greedy, strict=True)],
                                 dtype=torch.float32, device=device),
        greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
        top_k=torch.tensor(top_k, dtype=torch.long, device=device),
        top_p=torch.tensor(top_p, dtype=torch.float32, device=device),
        truncates=any(k > 0 for k in top_k) or any(p < 1.0 for p in top_p),
        any_sampled=not all(greedy),
    )


@dataclass(frozen=True)
class NoiseDraw:
    """One request's rows of a decode step's noise: its generator draws `num_samples` rows (None:
    greedy rows, whose noise is 1), of which the batch holds `count`, rows `pick` (None: all)."""

    generator: torch.Generator | None
    num_samples: int
    count: int
    pick: torch.Tensor | None = None


def step_noise(draws: Sequence[NoiseDraw], vocab: int, device: torch.device) -> torch.Tensor | None:
    """The decode batch's Exp(1) noise for `choose_rows`, rows in `draws` order; None when all are greedy.

    Called by the decode loop once per step. Each request draws its uniforms from its own generator
    into its rows of one buffer, a whole (num_samples, vocab) block even when some of its samples
    have stopped, and one `uniform_to_exp` turns the whole buffer into noise: one transform a step
    instead of four small ops per request. The transform is elementwise, so a request's noise does
    not depend on where its rows sit in the batch.
    """
    if all(d.generator is None for d in draws):
        return None
    noise = torch.empty(sum(d.count for d in draws), vocab, device=device)
    greedy: list[tuple[int, int]] = []
    at = 0
    for d in draws:
        rows = noise[at: at + d.count]
        if d.generator is None:
            greedy.append((at, at + d.count))
            rows.zero_()
        elif d.pick is None:
            rows.uniform_(generator=d.generator)
        else:
            full = torch.empty(d.num_samples, vocab, device=device).uniform_(generator=d.generator)
            torch.index_select(full, 0, d.pick, out=rows)
        at += d.count
    uniform_to_exp(noise)
    for start, end in greedy:
        noise[start:end] = 1.0
    return noise


def uniform_to_exp(block: torch.Tensor) -> torch.Tensor:
    """Turn uniform draws in [0, 1) into Exp(1) noise in place, as `-log(1 - U)`; returns `block`.

    Drawn by inverse CDF: torch's `exponential_` costs about 19 ns a number on the CPU against 3
    for `uniform_`, and a step needs a whole vocabulary's worth per sampled row (8% of a 32-row
    decode step of a 49k-vocabulary model). U = 0 gives 0, which `choose_rows` clamps; U never
    reaches 1, so the noise is always finite. Elementwise, so a row's noise is the same whatever
    else shares the block.
    """
    return block.neg_().add_(1.0).log_().neg_()  # 1 - U is exact in float; log_ is faster than log1p_


def choose_rows(
    logits: torch.Tensor, rows: RowParams, noise: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One token per row of `logits` (rows, vocab): (tokens, their log-probs, the rows' log-probs).

    Pure; called by the decode loop once per step for the whole batch. A sampled row takes the
    argmax of its truncated log-probs minus the log of its own Exp(1) noise (`noise`, drawn from
    the row's request generator), which draws exactly from the truncated distribution; a greedy
    row takes the argmax. Reported log-probs follow the module docstring's choices.
    """
    logprobs = (logits.float() / rows.temperature[:, None]).log_softmax(-1)
    if noise is None or not rows.any_sampled:
        tokens = logprobs.argmax(-1)
    else:
        kept = filter_rows(logprobs, rows.top_k, rows.top_p) if rows.truncates else logprobs
        tokens = (kept - noise.clamp(min=1e-30).log()).argmax(-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1), logprobs


def stop_hit(tokens: list[int], stops: Stops, tokenizer: Any, window: int) -> bool:
    """Whether the last generated token completes a stop. Pure; called by the decode loop per row and step.

    Strings are matched on the decoded tail of `window` tokens; since this runs after every token,
    the first match found is the one the last token completed.
    """
    if tokens and tokens[-1] in stops.token_ids:
        return True
    if stops.strings:
        text = tokenizer.decode(tokens[-window:], skip_special_tokens=False)
        return any(s in text for s in stops.strings)
    return False


def stop_window(stops: Stops) -> int:
    """How many trailing tokens `stop_hit` decodes: enough to hold the longest stop string. Pure."""
    return max((len(s) for s in stops.strings), default=0) + 8


def pass_failure(exc: Exception) -> Exception:
    """What the requests of a failed decode or prefill pass are told: out of memory is a retryable
    503 that says what to lower; anything else a 500 naming the error. Pure."""
    if isinstance(exc, torch.OutOfMemoryError):
        failure: Exception = errors.CapacityError(
            "out of device memory while sampling; retry, or lower num_samples or max_tokens")
    else:
        failure = errors.ServerError(f"sampling pass failed: {type(exc).__name__}: {exc}")
    failure.__cause__ = exc
    return failure
