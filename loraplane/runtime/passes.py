"""Forward/backward passes over the works of many adapters at once, their losses and metrics.

Callers: `loraplane.runtime.engine` (`Engine.forward_backward` and `Engine.validate`, on the model
thread; `validate` also at submit time, where it only reads). The adapters trained here are held by
`loraplane.runtime.adapters`.

## Batching
`forward_backward` takes works of any adapters, validates each (a bad work fails alone, in its own
result slot), orders the rows so that each adapter's rows are contiguous, right-pads them into one
batch with an attention mask and runs one forward pass with a routing table (rows -> adapter) set
on the model's `MultiLoraLinear` layers. A call over more than `max_pass_tokens` padded tokens runs
several passes, split between adapters and never inside one (`lora.plan_passes`).

## Losses
Losses are token-level sums, so the backward pass of their sum leaves in every adapter's `.grad`
exactly that adapter's own gradient. Gradients accumulate until `optim_step`
(`AdapterStore.optim_step`). A pass that fails (out of memory, say) fails its own works only, as a
retryable or a server error.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass, field

import torch

from loraplane.core import errors
from loraplane.runtime import adapters, host_checks, lora, losses, model_host, stability


@dataclass
class Datum:
    """One row: N input tokens and per-token loss inputs, each of shape (N,)."""

    tokens: torch.Tensor
    loss_inputs: dict[str, torch.Tensor]
    #: Where each token was sampled (stable_reinforce); None when the client sent no spans.
    provenance: stability.Provenance | None = None


@dataclass
class FwdBwdWork:
    """One forward_backward (or forward, when `forward_only`) request of one adapter."""

    adapter_id: str
    data: list[Datum]
    loss_fn: str = "cross_entropy"
    loss_config: dict[str, float] = field(default_factory=dict)
    forward_only: bool = False
    #: The Tinker session of the training client (from its model_id): provenance must name its own sequences.
    session_id: str | None = None
    #: Store folder of that session's recorded sequences (from the gateway), for those not in memory.
    sequences_url: str | None = None


@dataclass
class FwdBwdResult:
    """Per datum log p(target_tokens[i]) under the weights of the pass, float32 (N,); and metrics."""

    logprobs: list[torch.Tensor]
    metrics: dict[str, float]


#: each work's slot in a call: its result, its error, or None while it has not run
Slots = list[FwdBwdResult | Exception | None]


@dataclass(frozen=True)
class TokenLimits:
    """What token ids the base model takes; checks input against it, naming the bad field."""

    max_positions: int
    vocab_size: int

    def check_tokens(self, tokens: object, field_name: str) -> int:
        """Check a model input (1-D, non-empty, within the positions and the vocabulary); returns its length."""
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
            raise errors.InvalidInput("tokens must be a 1-D tensor of token ids", field=field_name)
        n = int(tokens.shape[0])
        if n == 0:
            raise errors.InvalidInput("the input holds no tokens", field=field_name)
        if n > self.max_positions:
            raise errors.InvalidInput(
                f"{n} tokens exceed the model's {self.max_positions} positions", field=field_name
            )
        self.check_range(tokens, field_name)
        return n

    def check_range(self, tokens: torch.Tensor, field_name: str) -> None:
        """Check that every id is an integer in the vocabulary."""
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise errors.InvalidInput(f"token ids must be integers, got {tokens.dtype}", field=field_name)
        if not tokens.numel():
            return
        low, high = host_checks.value_range(tokens)
        if low < 0 or high >= self.vocab_size:
            raise errors.InvalidInput(
                f"token ids must lie in 0..{self.vocab_size - 1} (the vocabulary); got {low}..{high}",
                field=field_name,
            )


def mean_token_loss(work: FwdBwdWork, result: FwdBwdResult) -> float:
    """`loss:sum` over the request's total token weight (its token count without weights). Pure.

    Called after each forward_backward, for the adapter's status: the SDK's `loss:sum` grows with
    the batch, a per-token figure is comparable from step to step and to declarative runs.
    """
    weight = sum(float(d.loss_inputs["weights"].sum()) for d in work.data if "weights" in d.loss_inputs)
    if weight <= 0:
        weight = sum(int(d.tokens.shape[0]) for d in work.data)
    return result.metrics["loss:sum"] / max(weight, 1e-9)


@dataclass
class _Packed:
    """The rows of one pass, right-padded: `rows[r]` = (work index, datum index)."""

    rows: list[tuple[int, int]]
    lengths: list[int]
    input_ids: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor


@dataclass
class PassRunner:
    """Runs batched forward/backward passes of many adapters over one model; see the module docstring.

    Args:
        model: the base model with its linears wrapped (`lora.wrap_linears`).
        router: the routing table those layers read.
        store: the adapters the works name.
        sequences: sampled sequences recorded for `stable_reinforce`.
        limits: the model's positions and vocabulary.
        device: where the model runs.
        packed_attention: whether rows of different lengths run attention unpadded (`model_host`).
        max_pass_tokens: padded tokens per forward pass.
    """

    model: torch.nn.Module
    router: lora.LoraRouter
    store: adapters.AdapterStore
    sequences: stability.SequenceRecords
    limits: TokenLimits
    _: KW_ONLY
    device: torch.device
    packed_attention: bool
    #: padded tokens per forward pass (see `lora.plan_passes`)
    max_pass_tokens: int

    def validate(self, work: FwdBwdWork) -> None:
        """Cheap checks of one work; raises InvalidInput / NotFound naming the bad field."""
        if work.forward_only:
            self.store.get(work.adapter_id)
        else:
            self.store.trainable(work.adapter_id)
        losses.check_loss_name(work.loss_fn)
        losses.resolve_config(work.loss_fn, work.loss_config)
        if not work.data:
            raise errors.InvalidInput("data must hold at least one datum", field="data")
        for i, datum in enumerate(work.data):
            n = self.limits.check_tokens(datum.tokens, f"data[{i}].model_input")
            prefix = f"data[{i}].loss_fn_inputs"
            losses.check_inputs(work.loss_fn, datum.loss_inputs, n, prefix)
            self.limits.check_range(datum.loss_inputs["target_tokens"], f"{prefix}.target_tokens")
            if work.loss_fn == "stable_reinforce":
                sampler_lp, mask = stability.resolve(
                    datum.tokens, datum.loss_inputs["target_tokens"], datum.loss_inputs["advantages"],
                    datum.provenance, self.sequences, work.session_id, f"data[{i}]", work.sequences_url,
                )
                datum.loss_inputs[losses.STABILITY_LOGPROBS] = sampler_lp
                datum.loss_inputs[losses.STABILITY_MASK] = mask

    def forward_backward(self, works: list[FwdBwdWork]) -> list[FwdBwdResult | Exception]:
        """One batched pass over all rows of all works; each work's result or exception in its slot.

        Training works' gradients accumulate in their adapters until `optim_step`.
        """
        results: Slots = [None] * len(works)
        ready: list[int] = []
        for i, work in enumerate(works):
            try:
                self.validate(work)
                self.store.ensure_resident(work.adapter_id)
                ready.append(i)
            except errors.LoraplaneError as exc:
                results[i] = exc
        for part in lora.plan_passes(
            [(works[i].adapter_id, [int(d.tokens.shape[0]) for d in works[i].data]) for i in ready],
            self.max_pass_tokens,
        ):
            members = [ready[j] for j in part]
            try:
                self._run_pass(works, members, results)
            except Exception as exc:  # a fault of the pass (e.g. out of memory) fails its works only
                _fail_pass(members, results, exc)
        return [r if r is not None else errors.ServerError("work was not run") for r in results]

    def _run_pass(self, works: list[FwdBwdWork], ready: list[int], results: Slots) -> None:
        packed = _pack(works, ready)
        train = any(not works[i].forward_only for i in ready)
        token_lp = self._token_logprobs(works, packed, train)
        per_row = torch.split(token_lp, packed.lengths)
        by_work: dict[int, list[torch.Tensor]] = {i: [torch.empty(0)] * len(works[i].data) for i in ready}
        for r, (wi, di) in enumerate(packed.rows):
            by_work[wi][di] = per_row[r]
        total: torch.Tensor | None = None
        for wi in ready:
            work = works[wi]
            try:
                loss, result = _work_loss(work, by_work[wi])
            except errors.LoraplaneError as exc:
                results[wi] = exc
                continue
            results[wi] = result
            if not work.forward_only:
                total = loss if total is None else total + loss
                self.store.records[work.adapter_id].last_loss = mean_token_loss(work, result)
        if total is not None and total.requires_grad:
            self._backward(total, [works[wi].adapter_id for wi in ready])

    def _token_logprobs(self, works: list[FwdBwdWork], packed: _Packed, train: bool) -> torch.Tensor:
        """Log p of every real (unpadded) target token of the pass, rows concatenated in order."""
        lengths, mask, width = packed.lengths, packed.mask, packed.input_ids.shape[1]
        segments = lora.segments_for([works[wi].adapter_id for wi, _ in packed.rows], lengths)
        groups = model_host.length_groups(lengths, self.device) if self.packed_attention else None
        padded = min(lengths) != width and groups is None
        attention = mask.to(self.device) if padded else None
        with torch.set_grad_enabled(train), self.router.route(segments, groups):
            logits = self.model(
                input_ids=packed.input_ids.to(self.device), attention_mask=attention, use_cache=False
            ).logits
            if min(lengths) == width:  # no padding: every position is a token of some row
                flat, flat_targets = logits.reshape(-1, logits.shape[-1]).float(), packed.targets.reshape(-1)
            else:
                flat, flat_targets = logits[mask.to(logits.device)].float(), packed.targets[mask]
            flat_targets = flat_targets.to(flat.device)
            token_lp = flat.gather(-1, flat_targets[:, None]).squeeze(-1) - torch.logsumexp(flat, dim=-1)
            del logits, flat
        return token_lp

    def _backward(self, total: torch.Tensor, adapter_ids: list[str]) -> None:
        try:
            total.backward()
        except Exception:
            # A backward pass that stops midway leaves partial sums in `.grad`: drop them, so
            # that the next optim_step cannot apply a gradient nobody asked for.
            for adapter_id in adapter_ids:
                for p in self.store.records[adapter_id].params.values():
                    p.grad = None
            raise


def _pack(works: list[FwdBwdWork], ready: list[int]) -> _Packed:
    """The rows of `ready` works, each adapter's rows contiguous, right-padded into one batch. Pure."""
    rows = [(wi, di) for wi in ready for di in range(len(works[wi].data))]
    rows.sort(key=lambda row: works[row[0]].adapter_id)  # stable: each adapter's rows contiguous
    lengths = [int(works[wi].data[di].tokens.shape[0]) for wi, di in rows]
    width = max(lengths)
    input_ids = torch.zeros(len(rows), width, dtype=torch.long)
    targets = torch.zeros(len(rows), width, dtype=torch.long)
    for r, (wi, di) in enumerate(rows):
        datum = works[wi].data[di]
        input_ids[r, : lengths[r]] = datum.tokens
        targets[r, : lengths[r]] = datum.loss_inputs["target_tokens"]
    mask = torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]
    return _Packed(rows, lengths, input_ids, targets, mask)


def _fail_pass(members: list[int], results: Slots, exc: Exception) -> None:
    """Put the pass's failure into each of its works' slots, as a retryable or server error."""
    if isinstance(exc, torch.OutOfMemoryError):
        failure: Exception = errors.CapacityError(
            "out of device memory for this batch; retry, or send fewer or shorter examples"
        )
    else:
        failure = errors.ServerError(f"forward/backward pass failed: {type(exc).__name__}: {exc}")
    failure.__cause__ = exc
    for wi in members:
        results[wi] = failure


def _work_loss(work: FwdBwdWork, row_lps: list[torch.Tensor]) -> tuple[torch.Tensor, FwdBwdResult]:
    """The loss of one work from its rows' token log-probs, and its result (log-probs on the CPU, metrics)."""
    config = losses.resolve_config(work.loss_fn, work.loss_config)
    device = row_lps[0].device
    loss = torch.zeros((), device=device)
    n_tokens = 0
    for datum, lp in zip(work.data, row_lps, strict=True):
        inputs = {
            k: v.to(device=device, dtype=torch.float32)
            for k, v in datum.loss_inputs.items()
            if k != "target_tokens"
        }
        loss = loss + losses.compute_loss(work.loss_fn, lp, inputs, config)
        n_tokens += int(lp.shape[0])
    logprobs = [lp.detach().to("cpu", torch.float32) for lp in row_lps]
    metrics = {"loss:sum": float(loss.detach()), "num_tokens:sum": float(n_tokens)}
    return loss, FwdBwdResult(logprobs=logprobs, metrics=metrics)
