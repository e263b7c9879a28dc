"""Sampling: token choice (temperature, top-k, top-p), stop conditions, and the KV-cached decode loop.

Callers: `loraplane.runtime.engine.Engine.sample`, which validates the prompt and passes the model,
its LoRA router and the resolved stop conditions to `generate`.

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
- One `torch.Generator` per call, seeded from `seed` (random when None), draws every sample, so the
  same seed, prompt and parameters give the same tokens.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any

import torch

from loraplane.core import errors
from loraplane.runtime import lora

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


@dataclass
class SampleResult:
    sequences: list[SampledSequence]
    prompt_logprobs: list[float | None] | None  # [0] is None


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


def choose_tokens(
    logits: torch.Tensor, params: SamplingParams, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row of `logits` (rows, vocab); returns (tokens, their log-probs).

    Pure apart from advancing `generator`; called by `generate` at each decode step.
    """
    logits = logits.float()
    if params.temperature == 0:
        logprobs = logits.log_softmax(-1)
        tokens = logits.argmax(-1)
    else:
        logprobs = (logits / params.temperature).log_softmax(-1)
        kept = filter_logits(logprobs, params.top_k, params.top_p)
        tokens = torch.multinomial(kept.softmax(-1), 1, generator=generator).squeeze(-1)
    return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)


def stop_hit(tokens: list[int], stops: Stops, tokenizer: Any, window: int) -> bool:
    """Whether the last generated token completes a stop. Pure; called by `generate` per row and step.

    Strings are matched on the decoded tail of `window` tokens; since this runs after every token,
    the first match found is the one the last token completed.
    """
    if tokens and tokens[-1] in stops.token_ids:
        return True
    if stops.strings:
        text = tokenizer.decode(tokens[-window:], skip_special_tokens=False)
        return any(s in text for s in stops.strings)
    return False


def generate(
    model: torch.nn.Module,
    router: lora.LoraRouter,
    adapter_id: str | None,
    prompt: list[int],
    num_samples: int,
    params: SamplingParams,
    stops: Stops,
    tokenizer: Any,
    device: torch.device,
    want_prompt_logprobs: bool,
) -> SampleResult:
    """Decode `num_samples` continuations of `prompt` with a KV cache, every row on `adapter_id`.

    The prompt is run once (batch 1) and its cache repeated for the samples; then one token per row
    per step. Rows that have stopped keep decoding in the batch, their tokens discarded, until all
    rows stop or `max_tokens` is reached.
    """
    seed = params.seed if params.seed is not None else secrets.randbits(63)
    generator = torch.Generator(device=device).manual_seed(seed)
    window = max((len(s) for s in stops.strings), default=0) + 8
    segment = [lora.Segment(adapter_id, 0, num_samples)]
    ids = torch.tensor([prompt], dtype=torch.long, device=device)
    with router.route(segment):
        out = model(input_ids=ids, use_cache=True, logits_to_keep=0 if want_prompt_logprobs else 1)
    prompt_lps: list[float | None] | None = None
    if want_prompt_logprobs:
        lp = out.logits[0, :-1].float().log_softmax(-1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        prompt_lps = [None] + [float(v) for v in lp.tolist()]
    cache = out.cache
    logits = out.logits[:, -1].expand(num_samples, -1)
    if num_samples > 1:
        cache.batch_repeat_interleave(num_samples)
    tokens: list[list[int]] = [[] for _ in range(num_samples)]
    logprobs: list[list[float]] = [[] for _ in range(num_samples)]
    reasons: list[str | None] = [None] * num_samples
    for step in range(params.max_tokens):
        chosen, chosen_lp = choose_tokens(logits, params, generator)
        for row, (tok, tok_lp) in enumerate(zip(chosen.tolist(), chosen_lp.tolist(), strict=True)):
            if reasons[row] is not None:
                continue
            tokens[row].append(int(tok))
            logprobs[row].append(float(tok_lp))
            if stop_hit(tokens[row], stops, tokenizer, window):
                reasons[row] = "stop"
        if all(r is not None for r in reasons) or step == params.max_tokens - 1:
            break
        with router.route(segment):
            out = model(input_ids=chosen[:, None], cache=cache, use_cache=True)
        cache = out.cache
        logits = out.logits[:, -1]
    sequences = [
        SampledSequence(tokens=t, logprobs=lps, stop_reason=r or "length")
        for t, lps, r in zip(tokens, logprobs, reasons, strict=True)
    ]
    return SampleResult(sequences=sequences, prompt_logprobs=prompt_lps)
