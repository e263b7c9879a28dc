"""What the model thread runs next for sampling: admission under the KV budget, prefill chunks, op holds.

Callers: `loraplane.runtime.turns` (admission and holds, every turn of the model thread), the
executor (a request's size at submit) and `loraplane.runtime.decoding` (prefill chunks and the KV
arithmetic). Everything here is a plain
function of plain data, with no side effects, so that table tests pin the policy without a model.

## The turn
`loraplane.runtime.turns` orders a turn of the model thread: control calls, newly admitted sample
requests, one batched forward/backward, the ready single ops, then one sampling step (one prefill
chunk and one decode step over every decoding row).

## KV memory
The decode cache is one tensor per layer of `rows x width` token slots (see `decoding`): rows of
different lengths share the width of the longest. A request is charged for that padded shape:
while it prefills, one prompt row plus its `num_samples` decode rows; afterwards, its unfinished
rows. The bound of a set of requests is `slots x bytes_per_token`, slots = their rows times the
longest `prompt + max_tokens` among them. Requests are admitted in arrival order while that bound
stays within the budget and the row limit; the first one that does not fit waits (and holds back
those behind it, so a large request is never starved by small ones). A request that cannot fit
even alone is refused at submit with an error naming the limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: ops that change an adapter's weights: they wait while that adapter has rows decoding
WEIGHT_CHANGING_OPS = frozenset({"optim_step", "load_state"})


@dataclass(frozen=True)
class KvNeed:
    """What one sample request holds in the decode cache: its live rows and their longest length."""

    rows: int
    final_len: int
    #: rows that decode (the prompt row of a prefilling request is not one)
    decode_rows: int = 0


def kv_bytes_per_token(num_layers: int, kv_heads: int, head_dim: int, element_size: int) -> int:
    """Bytes one token of one row takes in the cache: keys and values of every layer. Pure."""
    return 2 * num_layers * kv_heads * head_dim * element_size


def request_need(prompt_len: int, num_samples: int, max_tokens: int, prefilling: bool) -> KvNeed:
    """The charge of one request (see the module docstring). Pure; called at submit and every turn."""
    rows = num_samples + (1 if prefilling else 0)
    return KvNeed(rows=rows, final_len=prompt_len + max(max_tokens, 1), decode_rows=num_samples)


def kv_bound(needs: Sequence[KvNeed], bytes_per_token: int) -> int:
    """Bytes the padded cache of these requests can reach. Pure; for admission and `/readyz`."""
    if not needs:
        return 0
    rows = sum(n.rows for n in needs)
    width = max(n.final_len for n in needs)
    return rows * width * bytes_per_token


def oversize_reason(need: KvNeed, bytes_per_token: int, budget_bytes: int, max_rows: int) -> str | None:
    """Why a request can never run on this runtime (None when it can). Pure; called at submit.

    The answer names the limit and what to change, for the 4xx the request gets.
    """
    if need.decode_rows > max_rows:
        return (f"num_samples {need.decode_rows} exceeds this runtime's max_decode_rows {max_rows}; "
                "send fewer samples per request")
    alone = kv_bound([need], bytes_per_token)
    if alone > budget_bytes:
        return (f"this request needs {alone} bytes of KV cache ({need.rows} rows x {need.final_len} tokens x "
                f"{bytes_per_token} bytes), over this runtime's kv_cache_bytes budget of {budget_bytes}; "
                "lower num_samples, max_tokens or the prompt length")
    return None


def admit_count(
    active: Sequence[KvNeed],
    waiting: Sequence[KvNeed],
    bytes_per_token: int,
    budget_bytes: int,
    max_rows: int,
) -> int:
    """How many of `waiting` (in arrival order) join the running requests now. Pure.

    Called by `turns.plan_turn` every turn. Admission stops at the first request that would push the
    cache bound over `budget_bytes` or the decode rows over `max_rows`.
    """
    held = list(active)
    decode_rows = sum(n.decode_rows for n in held)
    admitted = 0
    for need in waiting:
        if held and (decode_rows + need.decode_rows > max_rows
                     or kv_bound([*held, need], bytes_per_token) > budget_bytes):
            break
        held.append(need)
        decode_rows += need.decode_rows
        admitted += 1
    return admitted


def prefill_chunks(remaining: Sequence[int], chunk_tokens: int) -> list[int]:
    """Tokens each prefilling request advances in this step's padded prefill pass. Pure.

    `remaining` are the prompt tokens left per request, in arrival order; the answer has one entry
    per request (0 = not this step). The pass is `rows x width` padded tokens, at most
    `chunk_tokens`: the width is the first request's next chunk, and later requests join while
    the rows still fit; a request with less left than the width takes what it has.
    """
    out = [0] * len(remaining)
    first = next((left for left in remaining if left > 0), 0)
    if first == 0 or chunk_tokens < 1:
        return out
    width = min(first, chunk_tokens)
    rows = 0
    for i, left in enumerate(remaining):
        if left <= 0:
            continue
        if (rows + 1) * width > chunk_tokens and rows:
            break
        out[i] = min(left, width)
        rows += 1
    return out


def op_must_wait(kind: str, adapter_id: str | None, decoding_adapters: set[str]) -> bool:
    """Whether an adapter's next single op waits for that adapter's decoding rows to finish. Pure.

    Called by `turns.plan_turn` when it picks single ops. A sample reads its adapter's weights at every
    decode step, so an op that changes them (an optimizer step, a load) would switch weights in the
    middle of a sequence; it waits instead. Ops of other adapters and reading ops never wait.
    """
    return kind in WEIGHT_CHANGING_OPS and adapter_id is not None and adapter_id in decoding_adapters
