"""The engine: one frozen base model and many LoRA adapters trained and sampled in shared passes.

Callers: the executor's model thread (`loraplane.runtime.executor`), which batches ready operations
of many adapters into one `forward_backward` call, and tests/benchmarks. The engine is used from ONE
thread; it holds no locks and starts no threads.

## Batching
`forward_backward` takes works of any adapters, validates each (a bad work fails alone, in its own
result slot), orders the rows so that each adapter's rows are contiguous, right-pads them into one
batch with an attention mask and runs one forward pass with a routing table (rows -> adapter) set on
the model's `MultiLoraLinear` layers. Losses are token-level sums, so the backward pass of their sum
leaves in every adapter's `.grad` exactly that adapter's own gradient. Gradients accumulate until
`optim_step`, which runs AdamW over that adapter's tensors alone (`loraplane.runtime.optim`).

## Adapter state
LoRA weights live in the wrapped layers, keyed by adapter id; the engine's `_Adapter` record holds
the spec, the optimizer state and where the adapter is (device, host memory or a directory). Tensor
names are PEFT's checkpoint keys, so that saving, loading and optimizer state share one naming.
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field

import pydantic
import torch

from loraplane.core import age, errors
from loraplane.core.params import LoraConfig
from loraplane.runtime import (
    checkpoints,
    decoding,
    lora,
    losses,
    model_host,
    optim,
    prompt_scoring,
    residency,
    sampling,
    stability,
)

AdamParams = optim.AdamParams
SamplingParams = sampling.SamplingParams
SampledSequence = sampling.SampledSequence
SampleResult = sampling.SampleResult


@dataclass(frozen=True)
class LoraSpec:
    """What adapter to build: Tinker's LoRA config plus alpha. Validated on construction."""

    rank: int = 32
    alpha: float = 32.0
    seed: int | None = None
    train_attn: bool = True
    train_mlp: bool = True
    train_unembed: bool = True

    def __post_init__(self) -> None:
        # The ranges are `core.params.LoraConfig`'s; the largest rank is this runtime's (`_create`).
        try:
            LoraConfig.model_validate(dataclasses.asdict(self))
        except pydantic.ValidationError as exc:
            raise errors.invalid_input(exc.errors()) from None

    def targets(self) -> tuple[str, ...]:
        return lora.target_suffixes(self.train_attn, self.train_mlp, self.train_unembed)


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


@dataclass
class _Adapter:
    spec: LoraSpec
    #: PEFT key -> the trainable tensor in its wrapped layer.
    params: dict[str, torch.nn.Parameter]
    #: True for read-only sampler snapshots.
    sampler: bool = False
    #: Optimizer steps this adapter's weights have taken (carried over by saves and loads).
    step: int = 0
    optim_state: optim.AdamState = field(default_factory=optim.AdamState)
    #: None when on the device; else "host" or the directory the tensors were written to.
    offloaded: str | None = None
    #: Sampler snapshots taken of this adapter that still exist, oldest first.
    snapshots: list[str] = field(default_factory=list)
    #: Loss per weighted token of the adapter's last forward_backward (what status shows), if any.
    last_loss: float | None = None


def mean_token_loss(work: FwdBwdWork, result: FwdBwdResult) -> float:
    """`loss:sum` over the request's total token weight (its token count without weights). Pure.

    Called after each forward_backward, for the adapter's status: the SDK's `loss:sum` grows with
    the batch, a per-token figure is comparable from step to step and to declarative runs.
    """
    weight = sum(float(d.loss_inputs["weights"].sum()) for d in work.data if "weights" in d.loss_inputs)
    if weight <= 0:
        weight = sum(int(d.tokens.shape[0]) for d in work.data)
    return result.metrics["loss:sum"] / max(weight, 1e-9)


class Engine:
    """A base model with multi-adapter LoRA layers; see the module docstring."""

    def __init__(
        self,
        model_path: str,
        *,
        base_model: str | None = None,
        device: str = "auto",
        dtype: str = "auto",
        threads: int = 0,
        max_lora_rank: int = 512,
        max_pass_tokens: int | None = None,
        prefill_chunk_tokens: int = 512,
    ) -> None:
        """Load the base model and wrap its target linears.

        Args:
            model_path: local directory or id in the local HF cache (never downloaded).
            base_model: the name clients use for it (default: `model_path`).
            device: "auto", "cpu", "cuda", "cuda:N".
            dtype: "auto" (bf16 on CUDA, fp32 on CPU), "float32", "bfloat16", "float16".
            threads: torch CPU threads (0 = torch's default).
            max_lora_rank: largest rank `create_adapter` accepts.
            max_pass_tokens: padded tokens per forward pass; a `forward_backward` call over more
                runs several passes, split between adapters (never inside one). None = one pass
                on CUDA, 1024 on CPU, where larger passes spill the caches and run slower than
                the per-adapter ones they replace.
            prefill_chunk_tokens: padded prompt tokens per prefill pass of the decode batch.
        """
        if threads > 0:
            torch.set_num_threads(threads)
        #: Sequences sampled with record_stability_info, for stable_reinforce.
        self.sequences = stability.SequenceRecords()
        host = model_host.load_base(model_path, device=device, dtype=dtype)
        self.model_path = model_path
        self.base_model = base_model or model_path
        self.model = host.model
        self.tokenizer = host.tokenizer
        self.device = host.device
        self.dtype = host.dtype
        self.vocab_size = host.vocab_size
        self.eos_token_ids = host.eos_token_ids
        self.max_positions = host.max_positions
        self.max_lora_rank = max_lora_rank
        if max_pass_tokens is None:
            max_pass_tokens = 1 << 62 if self.device.type == "cuda" else 1024
        #: Padded tokens per forward pass (see `lora.plan_passes`).
        self.max_pass_tokens = max_pass_tokens
        self._router = lora.LoraRouter()
        self._layers = lora.wrap_linears(self.model, self._router)
        #: Whether rows of different lengths run attention unpadded (see model_host).
        self._packed_attention = model_host.install_packed_attention(self.model, self._router)
        self._adapters: dict[str, _Adapter] = {}
        self.prefill_chunk_tokens = prefill_chunk_tokens
        #: (layers, kv heads, head dim) of the KV cache
        self.kv_geometry = model_host.kv_geometry(self.model.config)
        element = torch.empty((), dtype=self.dtype).element_size()
        #: bytes one token of one sequence takes in the KV cache
        self.kv_bytes_per_token = 2 * self.kv_geometry[0] * self.kv_geometry[1] * self.kv_geometry[2] * element
        #: the decode batch the executor's model thread drives
        self.decoder = self.new_decoder()

    def new_decoder(self) -> decoding.Decoder:
        """A decode batch over this model (the executor keeps one; `sample` makes a private one)."""
        additive = getattr(self.model.config, "_attn_implementation", "sdpa") not in (
            "sdpa", model_host.PACKED_ATTENTION)
        return decoding.Decoder(self.model, self._router, self.tokenizer, self.device, self.kv_geometry,
                                self.dtype, additive, self.prefill_chunk_tokens)

    # ---- adapters ----------------------------------------------------------------------------

    def create_adapter(self, adapter_id: str, spec: LoraSpec) -> None:
        """Create adapter `adapter_id`; a no-op if it exists with the same spec, Conflict otherwise."""
        self._create(adapter_id, spec, sampler=False)

    def _create(self, adapter_id: str, spec: LoraSpec, sampler: bool) -> _Adapter:
        if not isinstance(adapter_id, str) or not adapter_id:
            raise errors.InvalidInput("adapter_id must be a non-empty string", field="adapter_id")
        existing = self._adapters.get(adapter_id)
        if existing is not None:
            if existing.spec != spec or existing.sampler != sampler:
                raise errors.Conflict(
                    f"adapter {adapter_id!r} exists with another config ({existing.spec})", field="adapter_id"
                )
            return existing
        if spec.rank > self.max_lora_rank:
            raise errors.InvalidInput(
                f"rank {spec.rank} exceeds this runtime's largest LoRA rank, {self.max_lora_rank} "
                "(LORAPLANE_RUNTIME__MAX_LORA_RANK)", field="rank"
            )
        targets = lora.layers_for(self._layers, spec.targets())
        if not targets:
            raise errors.InvalidInput(
                f"the base model has no linear modules named {', '.join(spec.targets())}", field="train_attn"
            )
        seed = spec.seed if spec.seed is not None else secrets.randbits(63)
        generator = torch.Generator().manual_seed(seed)
        params: dict[str, torch.nn.Parameter] = {}
        for name, layer in targets.items():
            layer.add_adapter(adapter_id, spec.rank, spec.alpha, generator)
            for tensor_name in lora.ADAPTER_TENSORS:
                param = getattr(layer, tensor_name)[adapter_id]
                param.requires_grad_(not sampler)
                params[checkpoints.peft_key(name, tensor_name)] = param
        record = _Adapter(spec=spec, params=params, sampler=sampler)
        self._adapters[adapter_id] = record
        return record

    def delete_adapter(self, adapter_id: str) -> None:
        """Drop the adapter's weights and optimizer state everywhere. NotFound if unknown."""
        record = self._get(adapter_id)
        for layer in self._layers.values():
            layer.remove_adapter(adapter_id)
        checkpoints.discard(record.offloaded)
        del self._adapters[adapter_id]

    def has_adapter(self, adapter_id: str) -> bool:
        return adapter_id in self._adapters

    def adapter_ids(self) -> list[str]:
        return list(self._adapters)

    def adapter_spec(self, adapter_id: str) -> LoraSpec:
        return self._get(adapter_id).spec

    def adapter_step(self, adapter_id: str) -> int:
        return self._get(adapter_id).step

    def adapter_loss(self, adapter_id: str) -> float | None:
        """Loss per weighted token of the adapter's last forward_backward (None before the first)."""
        return self._get(adapter_id).last_loss

    def is_sampler(self, adapter_id: str) -> bool:
        return self._get(adapter_id).sampler

    def _get(self, adapter_id: str | None) -> _Adapter:
        record = self._adapters.get(adapter_id) if isinstance(adapter_id, str) else None
        if record is None:
            raise errors.NotFound(f"unknown adapter {adapter_id!r}", field="adapter_id")
        return record

    # ---- training ----------------------------------------------------------------------------

    def validate(self, work: FwdBwdWork) -> None:
        """Cheap checks of one work; raises InvalidInput / NotFound naming the bad field."""
        record = self._get(work.adapter_id)
        if record.sampler and not work.forward_only:
            raise errors.InvalidInput(
                f"adapter {work.adapter_id!r} is a read-only sampler snapshot and cannot be trained",
                field="adapter_id",
            )
        losses.check_loss_name(work.loss_fn)
        losses.resolve_config(work.loss_fn, work.loss_config)
        if not work.data:
            raise errors.InvalidInput("data must hold at least one datum", field="data")
        for i, datum in enumerate(work.data):
            n = self._check_tokens(datum.tokens, f"data[{i}].model_input")
            prefix = f"data[{i}].loss_fn_inputs"
            losses.check_inputs(work.loss_fn, datum.loss_inputs, n, prefix)
            self._check_token_range(datum.loss_inputs["target_tokens"], f"{prefix}.target_tokens")
            if work.loss_fn == "stable_reinforce":
                sampler_lp, mask = stability.resolve(
                    datum.tokens, datum.loss_inputs["target_tokens"], datum.loss_inputs["advantages"],
                    datum.provenance, self.sequences, work.session_id, f"data[{i}]", work.sequences_url,
                )
                datum.loss_inputs[losses.STABILITY_LOGPROBS] = sampler_lp
                datum.loss_inputs[losses.STABILITY_MASK] = mask

    def _check_tokens(self, tokens: object, field_name: str) -> int:
        if not isinstance(tokens, torch.Tensor) or tokens.dim() != 1:
            raise errors.InvalidInput("tokens must be a 1-D tensor of token ids", field=field_name)
        n = int(tokens.shape[0])
        if n == 0:
            raise errors.InvalidInput("the input holds no tokens", field=field_name)
        if n > self.max_positions:
            raise errors.InvalidInput(
                f"{n} tokens exceed the model's {self.max_positions} positions", field=field_name
            )
        self._check_token_range(tokens, field_name)
        return n

    def _check_token_range(self, tokens: torch.Tensor, field_name: str) -> None:
        if tokens.dtype.is_floating_point or tokens.dtype.is_complex or tokens.dtype == torch.bool:
            raise errors.InvalidInput(f"token ids must be integers, got {tokens.dtype}", field=field_name)
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.vocab_size):
            raise errors.InvalidInput(
                f"token ids must lie in 0..{self.vocab_size - 1} (the vocabulary); got "
                f"{int(tokens.min())}..{int(tokens.max())}",
                field=field_name,
            )

    def forward_backward(self, works: list[FwdBwdWork]) -> list[FwdBwdResult | Exception]:
        """One batched pass over all rows of all works; each work's result or exception in its slot.

        Training works' gradients accumulate in their adapters until `optim_step`.
        """
        results: list[FwdBwdResult | Exception | None] = [None] * len(works)
        ready: list[int] = []
        for i, work in enumerate(works):
            try:
                self.validate(work)
                self.ensure_resident(work.adapter_id)
                ready.append(i)
            except errors.LoraplaneError as exc:
                results[i] = exc
        for part in lora.plan_passes(
            [(works[i].adapter_id, [int(d.tokens.shape[0]) for d in works[i].data]) for i in ready],
            self.max_pass_tokens,
        ):
            members = [ready[j] for j in part]
            try:
                self._run_batch(works, members, results)
            except Exception as exc:  # a fault of the pass (e.g. out of memory) fails its works only
                self._fail_pass(works, members, results, exc)
        return [r if r is not None else errors.ServerError("work was not run") for r in results]

    def _run_batch(
        self, works: list[FwdBwdWork], ready: list[int], results: list[FwdBwdResult | Exception | None]
    ) -> None:
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
        segments = lora.segments_for([works[wi].adapter_id for wi, _ in rows], lengths)
        train = any(not works[i].forward_only for i in ready)
        groups = model_host.length_groups(lengths, self.device) if self._packed_attention else None
        padded = min(lengths) != width and groups is None
        attention = mask.to(self.device) if padded else None
        with torch.set_grad_enabled(train), self._router.route(segments, groups):
            logits = self.model(
                input_ids=input_ids.to(self.device), attention_mask=attention, use_cache=False
            ).logits
            if min(lengths) == width:  # no padding: every position is a token of some row
                flat, flat_targets = logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1)
            else:
                flat, flat_targets = logits[mask.to(logits.device)].float(), targets[mask]
            flat_targets = flat_targets.to(flat.device)
            token_lp = flat.gather(-1, flat_targets[:, None]).squeeze(-1) - torch.logsumexp(flat, dim=-1)
            del logits, flat
        per_row = torch.split(token_lp, lengths)
        by_work: dict[int, list[torch.Tensor]] = {i: [torch.empty(0)] * len(works[i].data) for i in ready}
        for r, (wi, di) in enumerate(rows):
            by_work[wi][di] = per_row[r]
        total: torch.Tensor | None = None
        for wi in ready:
            work = works[wi]
            try:
                loss, result = self._work_loss(work, by_work[wi])
            except errors.LoraplaneError as exc:
                results[wi] = exc
                continue
            results[wi] = result
            if not work.forward_only:
                total = loss if total is None else total + loss
                self._adapters[work.adapter_id].last_loss = mean_token_loss(work, result)
        if total is not None and total.requires_grad:
            try:
                total.backward()
            except Exception:
                # A backward pass that stops midway leaves partial sums in `.grad`: drop them, so
                # that the next optim_step cannot apply a gradient nobody asked for.
                for wi in ready:
                    for p in self._adapters[works[wi].adapter_id].params.values():
                        p.grad = None
                raise

    def _fail_pass(
        self,
        works: list[FwdBwdWork],
        members: list[int],
        results: list[FwdBwdResult | Exception | None],
        exc: Exception,
    ) -> None:
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

    def _work_loss(self, work: FwdBwdWork, row_lps: list[torch.Tensor]) -> tuple[torch.Tensor, FwdBwdResult]:
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

    def optim_step(self, adapter_id: str, params: AdamParams) -> dict[str, float]:
        """Apply AdamW to the adapter from its accumulated gradients, then zero them."""
        record = self._get(adapter_id)
        if record.sampler:
            raise errors.InvalidInput(
                f"adapter {adapter_id!r} is a read-only sampler snapshot and cannot be trained", field="adapter_id"
            )
        self.ensure_resident(adapter_id)
        metrics = optim.adamw_step(record.params, record.optim_state, params)
        self._weights_changed()
        record.step += 1
        return metrics

    # ---- sampling ----------------------------------------------------------------------------

    def prepare_sample(
        self,
        adapter_id: str | None,
        prompt: list[int] | torch.Tensor,
        num_samples: int,
        params: SamplingParams,
        options: prompt_scoring.PromptOptions | None = None,
    ) -> decoding.SampleJob:
        """Check a sample request and resolve its stops; raises InvalidInput / NotFound naming the field.

        Read-only, so the executor calls it at submit time from any thread: a bad request fails
        at once and alone, before it reaches the decode batch.
        """
        if adapter_id is not None:
            self._get(adapter_id)
        prompt_t = torch.as_tensor(prompt) if not isinstance(prompt, torch.Tensor) else prompt
        n = self._check_tokens(prompt_t, "prompt_tokens")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise errors.InvalidInput(f"num_samples must be a positive integer, got {num_samples!r}", field="num_samples")
        if n + params.max_tokens > self.max_positions:
            raise errors.InvalidInput(
                f"prompt plus max_tokens exceeds the model's {self.max_positions} positions",
                field="sampling_params.max_tokens",
            )
        options = options or prompt_scoring.PromptOptions()
        prompt_scoring.check_options(options, n, self.vocab_size)
        stops = sampling.resolve_stops(params.stop, self.eos_token_ids, self.vocab_size)
        return decoding.SampleJob(adapter_id, [int(t) for t in prompt_t.tolist()], num_samples, params, stops, options)

    def sample(
        self,
        adapter_id: str | None,
        prompt: list[int],
        num_samples: int,
        params: SamplingParams,
        prompt_logprobs: bool = False,
        options: prompt_scoring.PromptOptions | None = None,
    ) -> SampleResult:
        """Generate `num_samples` continuations of `prompt` alone, through the same decode loop.

        Args:
            adapter_id: the adapter (training or sampler snapshot) every row runs on; None for the
                base model alone.
            prompt: token ids, each in the vocabulary.
            num_samples: sequences to draw (the prompt is prefilled once).
            params: see `sampling.SamplingParams` and the choices in `loraplane.runtime.sampling`.
            prompt_logprobs: also return log p(prompt[i] | prompt[:i]) for i >= 1 (entry 0 is None).
            options: the other prompt-side outputs (`prompt_scoring.PromptOptions`).
        """
        if options is None:
            options = prompt_scoring.PromptOptions(logprobs=prompt_logprobs)
        job = self.prepare_sample(adapter_id, prompt, num_samples, params, options)
        if adapter_id is not None:
            self.ensure_resident(adapter_id)
        decoder = self.new_decoder()
        decoder.add(job)
        with torch.no_grad():
            while True:
                for _, outcome in decoder.step().finished:
                    if isinstance(outcome, Exception):
                        raise outcome
                    return outcome

    # ---- saving, loading, snapshots ----------------------------------------------------------

    def save_state(self, adapter_id: str, dest: str, optimizer: bool = True) -> int:
        """Write PEFT files + trainer_state.json (+ optimizer.pt) to `dest`; returns bytes written."""
        record = self._get(adapter_id)
        kind = "sampler" if record.sampler else "train"
        return self._save(adapter_id, dest, kind=kind, optimizer=optimizer and not record.sampler)

    def save_sampler(self, adapter_id: str, dest: str) -> int:
        """Write only what a sampler needs (PEFT files + trainer_state.json); returns bytes written."""
        return self._save(adapter_id, dest, kind="sampler", optimizer=False)

    def save_external(self, adapter_id: str, dest: str, recipients: list[str] | None = None) -> int:
        """Write a plain PEFT adapter folder to `dest`, age-encrypted to `recipients` if given."""
        parsed = age.parse_recipients(recipients) if recipients else None
        record = self._get(adapter_id)
        self.ensure_resident(adapter_id)
        return checkpoints.export_peft(
            dest, weights=record.params, config=checkpoints.LoraConfig.from_spec(record.spec),
            base_model=self.base_model, recipients=parsed,
        )

    def _save(self, adapter_id: str, dest: str, *, kind: str, optimizer: bool) -> int:
        record = self._get(adapter_id)
        self.ensure_resident(adapter_id)
        return checkpoints.save(
            dest,
            weights=record.params,
            config=checkpoints.LoraConfig.from_spec(record.spec),
            base_model=self.base_model,
            step=record.step,
            kind=kind,
            optimizer=record.optim_state.state_dict() if optimizer else None,
        )

    def load_state(self, adapter_id: str, source: str, optimizer: bool = True, sampler: bool = False) -> LoraSpec:
        """Load weights (and optimizer state) saved at `source` into `adapter_id`, creating it if missing.

        Args:
            adapter_id: the adapter to load into; Conflict if it exists with another LoRA config.
            source: a path or fsspec URL written by `save_state`/`save_sampler` (or any PEFT adapter
                directory of this base model's module names).
            optimizer: restore AdamW moments when the state has them; else they restart from zero.
            sampler: load as a read-only sampler adapter.
        """
        saved = checkpoints.load(source, with_optimizer=optimizer)
        spec = LoraSpec(**saved.lora.spec_kwargs())
        existing = self._adapters.get(adapter_id)
        if existing is not None and existing.sampler == sampler and _same_shape(existing.spec, spec):
            spec = existing.spec  # the seed only chose initial weights, which the load replaces
        record = self._create(adapter_id, spec, sampler=sampler)
        self.ensure_resident(adapter_id)
        missing = sorted(set(record.params) - set(saved.weights))
        unknown = sorted(set(saved.weights) - set(record.params))
        if missing or unknown:
            raise errors.InvalidInput(
                f"saved adapter at {source} does not fit this base model (missing {missing[:3]}, unexpected {unknown[:3]})",
                field="source",
            )
        with torch.no_grad():
            for key, param in record.params.items():
                value = saved.weights[key]
                if value.shape != param.shape:
                    raise errors.InvalidInput(f"{key} has shape {list(value.shape)}, expected {list(param.shape)}", field="source")
                param.copy_(value)
                param.grad = None
        self._weights_changed()
        record.step = saved.step
        if saved.optimizer is not None and not sampler:
            record.optim_state = optim.AdamState.from_state_dict(saved.optimizer, self.device)
        else:
            record.optim_state = optim.AdamState()
        return spec

    def snapshot(self, adapter_id: str, sampler_id: str, keep: int = 4) -> list[str]:
        """Copy the adapter's current weights into read-only sampler `sampler_id` (replaced if present).

        Only the newest `keep` snapshots of an adapter stay (`residency.snapshots_to_drop`); the
        older ones are deleted and returned. Snapshots hold no training slot.
        """
        record = self._get(adapter_id)
        self.ensure_resident(adapter_id)
        if sampler_id in self._adapters:
            if not self._adapters[sampler_id].sampler:
                raise errors.Conflict(f"{sampler_id!r} is a training adapter, not a sampler", field="sampler_id")
            self.delete_adapter(sampler_id)
        copy = self._create(sampler_id, record.spec, sampler=True)
        with torch.no_grad():
            for key, param in copy.params.items():
                param.copy_(record.params[key])
        self._weights_changed()
        copy.step = record.step
        record.snapshots = [s for s in record.snapshots if s != sampler_id and s in self._adapters] + [sampler_id]
        dropped = residency.snapshots_to_drop(record.snapshots, keep)
        for old in dropped:
            self.delete_adapter(old)
        record.snapshots = [s for s in record.snapshots if s not in dropped]
        return dropped

    def training_adapter_count(self) -> int:
        """Adapters that hold a training slot (sampler snapshots do not)."""
        return sum(1 for record in self._adapters.values() if not record.sampler)

    # ---- memory ------------------------------------------------------------------------------

    def offload(self, adapter_id: str, to: str = "host") -> None:
        """Move the adapter's weights and optimizer state off the device ("host" or a directory)."""
        record = self._get(adapter_id)
        if record.offloaded is not None:
            return
        record.offloaded = checkpoints.offload(adapter_id, record.params, record.optim_state, to)
        self._weights_changed()

    def is_resident(self, adapter_id: str) -> bool:
        return self._get(adapter_id).offloaded is None

    def ensure_resident(self, adapter_id: str) -> None:
        """Bring an offloaded adapter back to the device; a no-op when it is there."""
        record = self._get(adapter_id)
        if record.offloaded is None:
            return
        checkpoints.restore(record.offloaded, record.params, record.optim_state, self.device)
        record.offloaded = None
        self._weights_changed()

    def _weights_changed(self) -> None:
        """Adapter weights changed or moved: the layers' kept sampling layouts are stale."""
        for layer in self._layers.values():
            layer.forget_layout()

    def resident_bytes(self, adapter_id: str) -> int:
        """Bytes of weights + optimizer state on the device (0 when offloaded)."""
        record = self._get(adapter_id)
        if record.offloaded is not None:
            return 0
        tensors = list(record.params.values()) + record.optim_state.tensors()
        return sum(t.numel() * t.element_size() for t in tensors)


def _same_shape(a: LoraSpec, b: LoraSpec) -> bool:
    """Whether two specs build the same tensors (everything but the seed). Pure; for `load_state`."""
    return (a.rank, a.alpha, a.train_attn, a.train_mlp, a.train_unembed) == (
        b.rank,
        b.alpha,
        b.train_attn,
        b.train_mlp,
        b.train_unembed,
    )
