"""The engine: one frozen base model and many LoRA adapters trained and sampled in shared passes.

Callers: the executor's model thread (`loraplane.runtime.executor`), which batches ready operations
of many adapters into one `forward_backward` call, the op payloads (`loraplane.runtime.ops`), the
runtime API's reads, and tests/benchmarks. The engine is used from ONE thread; it holds no locks
and starts no threads.

## Layers
`Engine` is the facade the model thread calls: it loads the base model, wraps its linears and
hands each call to the part that holds it:
- `loraplane.runtime.adapters`: the adapter store (create, delete, load, save, snapshot, offload;
  optimizer states; residency);
- `loraplane.runtime.passes`: the batched forward/backward passes over many adapters, losses and
  their metrics;
- `loraplane.runtime.decoding`: the decode batch of sample requests (`new_decoder`).
The data types callers build (`LoraSpec`, `Datum`, `FwdBwdWork`, ...) are re-exported here, so
that callers import one module.
"""

from __future__ import annotations

import torch

from loraplane.core import errors
from loraplane.runtime import (
    adapters,
    decoding,
    lora,
    model_host,
    optim,
    passes,
    prompt_scoring,
    sampling,
    stability,
)

AdamParams = optim.AdamParams
SamplingParams = sampling.SamplingParams
SampledSequence = sampling.SampledSequence
SampleResult = sampling.SampleResult
LoraSpec = adapters.LoraSpec
Datum = passes.Datum
FwdBwdWork = passes.FwdBwdWork
FwdBwdResult = passes.FwdBwdResult
mean_token_loss = passes.mean_token_loss


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
        self._wrap(max_pass_tokens)
        self.prefill_chunk_tokens = prefill_chunk_tokens
        #: (layers, kv heads, head dim) of the KV cache
        self.kv_geometry = model_host.kv_geometry(self.model.config)
        element = torch.empty((), dtype=self.dtype).element_size()
        #: bytes one token of one sequence takes in the KV cache
        self.kv_bytes_per_token = 2 * self.kv_geometry[0] * self.kv_geometry[1] * self.kv_geometry[2] * element
        #: the decode batch the executor's model thread drives
        self.decoder = self.new_decoder()

    def _wrap(self, max_pass_tokens: int) -> None:
        """Wrap the base model's linears for many adapters, and build the parts that use them."""
        self._router = lora.LoraRouter()
        self._layers = lora.wrap_linears(self.model, self._router)
        #: Whether rows of different lengths run attention unpadded (see model_host).
        self._packed_attention = model_host.install_packed_attention(self.model, self._router)
        #: every adapter, its optimizer state and where it lives
        self.store = adapters.AdapterStore(self._layers, device=self.device, base_model=self.base_model,
                                           max_lora_rank=self.max_lora_rank)
        self._adapters = self.store.records  # the same dict, by the name the engine's tests read
        self._limits = passes.TokenLimits(max_positions=self.max_positions, vocab_size=self.vocab_size)
        #: the batched forward/backward passes over the store's adapters
        self.passes = passes.PassRunner(self.model, self._router, self.store, self.sequences, self._limits,
                                        device=self.device, packed_attention=self._packed_attention,
                                        max_pass_tokens=max_pass_tokens)

    @property
    def max_pass_tokens(self) -> int:
        """Padded tokens per forward pass (see `lora.plan_passes`)."""
        return self.passes.max_pass_tokens

    def new_decoder(self) -> decoding.Decoder:
        """A decode batch over this model (the executor keeps one; `sample` makes a private one)."""
        additive = getattr(self.model.config, "_attn_implementation", "sdpa") not in (
            "sdpa", model_host.PACKED_ATTENTION)
        return decoding.Decoder(self.model, self._router, self.tokenizer, self.device, self.kv_geometry,
                                self.dtype, additive, self.prefill_chunk_tokens)

    # ---- adapters (`adapters.AdapterStore`) --------------------------------------------------

    def create_adapter(self, adapter_id: str, spec: LoraSpec) -> None:
        """Create adapter `adapter_id`; a no-op if it exists with the same spec, Conflict otherwise."""
        self.store.create(adapter_id, spec, sampler=False)

    def delete_adapter(self, adapter_id: str) -> None:
        """Drop the adapter's weights and optimizer state everywhere. NotFound if unknown."""
        self.store.delete(adapter_id)

    def has_adapter(self, adapter_id: str) -> bool:
        return adapter_id in self.store.records

    def adapter_ids(self) -> list[str]:
        return list(self.store.records)

    def adapter_spec(self, adapter_id: str) -> LoraSpec:
        return self.store.get(adapter_id).spec

    def adapter_step(self, adapter_id: str) -> int:
        return self.store.get(adapter_id).step

    def adapter_loss(self, adapter_id: str) -> float | None:
        """Loss per weighted token of the adapter's last forward_backward (None before the first)."""
        return self.store.get(adapter_id).last_loss

    def is_sampler(self, adapter_id: str) -> bool:
        return self.store.get(adapter_id).sampler

    def training_adapter_count(self) -> int:
        """Adapters that hold a training slot (sampler snapshots do not)."""
        return self.store.training_count()

    # ---- training (`passes.PassRunner`) ------------------------------------------------------

    def validate(self, work: FwdBwdWork) -> None:
        """Cheap checks of one work; raises InvalidInput / NotFound naming the bad field."""
        self.passes.validate(work)

    def forward_backward(self, works: list[FwdBwdWork]) -> list[FwdBwdResult | Exception]:
        """One batched pass over all rows of all works; each work's result or exception in its slot.

        Training works' gradients accumulate in their adapters until `optim_step`.
        """
        return self.passes.forward_backward(works)

    def optim_step(self, adapter_id: str, params: AdamParams) -> dict[str, float]:
        """Apply AdamW to the adapter from its accumulated gradients, then zero them."""
        return self.store.optim_step(adapter_id, params)

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
            self.store.get(adapter_id)
        prompt_t = torch.as_tensor(prompt) if not isinstance(prompt, torch.Tensor) else prompt
        n = self._limits.check_tokens(prompt_t, "prompt_tokens")
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

    # ---- saving, loading, snapshots (`adapters.AdapterStore`) --------------------------------

    def save_state(self, adapter_id: str, dest: str, optimizer: bool = True) -> int:
        """Write PEFT files + trainer_state.json (+ optimizer.pt) to `dest`; returns bytes written."""
        record = self.store.get(adapter_id)
        kind = "sampler" if record.sampler else "train"
        return self.store.save(adapter_id, dest, kind=kind, optimizer=optimizer and not record.sampler)

    def save_sampler(self, adapter_id: str, dest: str) -> int:
        """Write only what a sampler needs (PEFT files + trainer_state.json); returns bytes written."""
        return self.store.save(adapter_id, dest, kind="sampler", optimizer=False)

    def save_external(self, adapter_id: str, dest: str, recipients: list[str] | None = None) -> int:
        """Write a plain PEFT adapter folder to `dest`, age-encrypted to `recipients` if given."""
        return self.store.export(adapter_id, dest, recipients)

    def load_state(self, adapter_id: str, source: str, optimizer: bool = True, sampler: bool = False) -> LoraSpec:
        """Load weights (and optimizer state) saved at `source` into `adapter_id`, creating it if missing.

        Args:
            adapter_id: the adapter to load into; Conflict if it exists with another LoRA config.
            source: a path or fsspec URL written by `save_state`/`save_sampler` (or any PEFT adapter
                directory of this base model's module names).
            optimizer: restore AdamW moments when the state has them; else they restart from zero.
            sampler: load as a read-only sampler adapter.
        """
        return self.store.load(adapter_id, source, optimizer=optimizer, sampler=sampler)

    def snapshot(self, adapter_id: str, sampler_id: str, keep: int = 4) -> list[str]:
        """Copy the adapter's current weights into read-only sampler `sampler_id` (replaced if present).

        Only the newest `keep` snapshots of an adapter stay (`residency.snapshots_to_drop`); the
        older ones are deleted and returned. Snapshots hold no training slot.
        """
        return self.store.snapshot(adapter_id, sampler_id, keep=keep)

    # ---- memory (`adapters.AdapterStore`) ----------------------------------------------------

    def offload(self, adapter_id: str, to: str = "host") -> None:
        """Move the adapter's weights and optimizer state off the device ("host" or a directory)."""
        self.store.offload(adapter_id, to)

    def is_resident(self, adapter_id: str) -> bool:
        return self.store.get(adapter_id).offloaded is None

    def ensure_resident(self, adapter_id: str) -> None:
        """Bring an offloaded adapter back to the device; a no-op when it is there."""
        self.store.ensure_resident(adapter_id)

    def resident_bytes(self, adapter_id: str) -> int:
        """Bytes of weights + optimizer state on the device (0 when offloaded)."""
        return self.store.resident_bytes(adapter_id)
