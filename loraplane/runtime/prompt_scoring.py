"""What a sample request can ask about its prompt, and the scores computed in its prefill.

Callers: `loraplane.runtime.wire` builds `PromptOptions` from a request body; `Engine.prepare_sample`
checks them (`check_options`); the decode loop (`loraplane.runtime.decoding`) feeds each prefill
chunk's logits to `PromptScores.add_chunk`; `wire.encode_sample_response` writes the result.

## Meanings (the Tinker SDK's `SamplingClient.sample` options)
- `prompt_logprobs`: log p(prompt[i] | prompt[:i]) for i >= 1, untempered; entry 0 unscored.
- `topk_prompt_logprobs` k: at every prompt position i >= 1, the k most likely tokens of the
  untempered distribution over position i, with their log-probs.
- `prompt_logprobs_last_n` N: only the last N positions of the two above are scored (1 <= N <=
  len(prompt) - 1); it leaves `target_prompt_logprobs` and `prompt_alt_tokens_k` alone.
- `target_prompt_logprobs`: int64 ids of shape [len(prompt) - 1, K], dense or sparse CSR; cell
  [i, j] is scored at position i + 1, untempered; -1 asks for nothing and gets 0.0.
- `prompt_alt_tokens_k` k: k draws with replacement at every position i >= 1 from the request's
  tempered distribution (greedy: the argmax k times), taken with the request's own generator
  before any sampled token, with their log-probs under the distribution they were drawn from
  (the same choice as for sampled tokens).
- `topk_sample_logprobs` k: for each generated token, the k most likely tokens of the
  distribution its log-prob is reported under.

Each option's output is bounded: at most `MAX_K` per position and `MAX_CELLS` cells in all.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from loraplane.core import errors

#: widest top-k / alt-token / target row a request may ask for
MAX_K = 128
#: most cells (positions x width) one prompt-side output may hold
MAX_CELLS = 1 << 20
#: what an unscored top-k cell holds (the SDK reads a row of these as None)
MASK_ID, MASK_LOGPROB = 0, -99999.0


@dataclass(frozen=True)
class TargetIds:
    """Requested ids, dense [len(prompt) - 1, K] with -1 for no request; `csr` keeps a sparse layout."""

    ids: torch.Tensor
    csr: tuple[list[int], list[int]] | None = None


@dataclass(frozen=True)
class PromptOptions:
    """The prompt-side options of one sample request (see the module docstring)."""

    logprobs: bool = False
    last_n: int | None = None
    topk: int = 0
    topk_sample: int = 0
    target: TargetIds | None = None
    alt_k: int = 0

    @property
    def scores_prompt(self) -> bool:
        """Whether the prefill must keep the logits of every prompt position."""
        return self.logprobs or self.topk > 0 or self.target is not None or self.alt_k > 0


def check_options(options: PromptOptions, prompt_len: int, vocab_size: int) -> None:
    """Raise InvalidInput naming the field of an option this prompt cannot have. Pure; at submit."""
    for name, k in (("topk_prompt_logprobs", options.topk), ("topk_sample_logprobs", options.topk_sample),
                    ("prompt_alt_tokens_k", options.alt_k)):
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_K:
            raise errors.InvalidInput(f"{name} must be an integer from 0 to {MAX_K}, got {k!r}", field=name)
        if name != "topk_sample_logprobs" and k * prompt_len > MAX_CELLS:
            raise errors.InvalidInput(
                f"{name} {k} over a prompt of {prompt_len} tokens exceeds {MAX_CELLS} cells", field=name)
    if options.last_n is not None:
        if not options.logprobs:
            raise errors.InvalidInput("prompt_logprobs_last_n needs prompt_logprobs", field="prompt_logprobs_last_n")
        if not 1 <= options.last_n <= prompt_len - 1:
            raise errors.InvalidInput(
                f"prompt_logprobs_last_n must be from 1 to len(prompt) - 1 = {prompt_len - 1}, got {options.last_n}",
                field="prompt_logprobs_last_n")
    if options.target is not None:
        ids = options.target.ids
        field_name = "target_prompt_logprobs"
        if ids.dim() != 2 or ids.shape[0] != prompt_len - 1:
            raise errors.InvalidInput(
                f"{field_name} must have shape [len(prompt) - 1, K] = [{prompt_len - 1}, K], got {list(ids.shape)}",
                field=field_name)
        if ids.numel() > MAX_CELLS:
            raise errors.InvalidInput(f"{field_name} holds more than {MAX_CELLS} cells", field=field_name)
        if not bool((ids >= 0).any()):
            raise errors.InvalidInput(f"{field_name} must name at least one token id", field=field_name)
        if bool(((ids < -1) | (ids >= vocab_size)).any()):
            raise errors.InvalidInput(
                f"{field_name} ids must be -1 or lie in 0..{vocab_size - 1} (the vocabulary)", field=field_name)


@dataclass
class PromptScores:
    """The prompt-side outputs of one request, filled chunk by chunk during its prefill."""

    options: PromptOptions
    prompt: torch.Tensor  # (n,) long, on the device
    logprobs: np.ndarray | None = None  # (n,) float32, NaN where unscored
    topk_ids: np.ndarray | None = None  # (n, k) int32
    topk_logprobs: np.ndarray | None = None  # (n, k) float32
    target: np.ndarray | None = None  # (n - 1, K) float32
    alt_ids: np.ndarray | None = None  # (n - 1, k) int64
    alt_logprobs: np.ndarray | None = None  # (n - 1, k) float32
    _first_scored: int = field(default=1)

    def __post_init__(self) -> None:
        n, o = int(self.prompt.shape[0]), self.options
        if o.last_n is not None:
            self._first_scored = n - o.last_n
        if o.logprobs:
            self.logprobs = np.full(n, math.nan, dtype=np.float32)
        if o.topk:
            self.topk_ids = np.full((n, o.topk), MASK_ID, dtype=np.int32)
            self.topk_logprobs = np.full((n, o.topk), MASK_LOGPROB, dtype=np.float32)
        if o.target is not None:
            self.target = np.zeros(tuple(o.target.ids.shape), dtype=np.float32)
        if o.alt_k:
            self.alt_ids = np.zeros((n - 1, o.alt_k), dtype=np.int64)
            self.alt_logprobs = np.zeros((n - 1, o.alt_k), dtype=np.float32)

    def add_chunk(self, logits: torch.Tensor, start: int, temperature: float, generator: torch.Generator) -> None:
        """Score the positions this chunk's logits predict: row j of `logits` is position start + j + 1.

        Called by the decode loop for each prefill chunk of the request, in order (the alt-token
        draws advance the request's generator, before any sampled token).
        """
        n = int(self.prompt.shape[0])
        rows = min(int(logits.shape[0]), n - 1 - start)
        if rows <= 0:
            return
        lp = logits[:rows].float().log_softmax(-1)
        positions = slice(start + 1, start + 1 + rows)
        o = self.options
        if self.logprobs is not None or self.topk_ids is not None:
            lo = max(0, self._first_scored - (start + 1))  # rows before the scored suffix stay unscored
            if lo < rows:
                scored = slice(start + 1 + lo, start + 1 + rows)
                if self.logprobs is not None:
                    picked = lp[lo:].gather(-1, self.prompt[scored][:, None]).squeeze(-1)
                    self.logprobs[scored] = picked.cpu().numpy()
                if self.topk_ids is not None:
                    top = lp[lo:].topk(min(o.topk, lp.shape[-1]), dim=-1)
                    width = top.indices.shape[-1]
                    self.topk_ids[scored, :width] = top.indices.cpu().numpy()
                    self.topk_logprobs[scored, :width] = top.values.cpu().numpy()
        if self.target is not None and o.target is not None:
            ids = o.target.ids[start:start + rows].to(lp.device)
            values = lp.gather(-1, ids.clamp(min=0)).masked_fill(ids < 0, 0.0)
            self.target[start:start + rows] = values.cpu().numpy()
        if self.alt_ids is not None:
            if temperature == 0:
                draws = lp.argmax(-1, keepdim=True).expand(-1, o.alt_k)
                draw_lp = lp.gather(-1, draws)
            else:
                tempered = (logits[:rows].float() / temperature).log_softmax(-1)
                draws = torch.multinomial(tempered.exp(), o.alt_k, replacement=True, generator=generator)
                draw_lp = tempered.gather(-1, draws)
            self.alt_ids[positions.start - 1:positions.stop - 1] = draws.cpu().numpy()
            self.alt_logprobs[positions.start - 1:positions.stop - 1] = draw_lp.cpu().numpy()

    def prompt_logprob_list(self) -> list[float | None] | None:
        """`prompt_logprobs` as the engine's list form: None where unscored."""
        if self.logprobs is None:
            return None
        return [None if math.isnan(v) else float(v) for v in self.logprobs.tolist()]
