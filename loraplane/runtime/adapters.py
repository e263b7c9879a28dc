"""The adapter store: every LoRA adapter of one engine, its optimizer state, and where it lives.

Callers: `loraplane.runtime.engine` (the facade the model thread calls) and
`loraplane.runtime.passes` (which reads and trains the adapters held here). Used from the model
thread only; it holds no locks.

## Records
LoRA weights live in the wrapped layers (`lora.MultiLoraLinear`), keyed by adapter id; the store
keeps one `AdapterRecord` per adapter with its spec, its optimizer state, its step count and where
its tensors are (the device, host memory or a directory). Tensor names are PEFT's checkpoint keys,
so that saving, loading and optimizer state share one naming.

## Residency
`offload` moves an adapter's weights and moments off the device and `ensure_resident` brings them
back; every call that reads or writes weights brings its adapter back first. Which adapters to
offload is the executor's choice (`loraplane.runtime.residency`), not the store's.

## Snapshots
A snapshot is a read-only sampler adapter holding a copy of a training adapter's weights. It
holds no training slot, and only the newest few of an adapter stay (`residency.snapshots_to_drop`).
"""

from __future__ import annotations

import dataclasses
import secrets
from dataclasses import dataclass, field

import pydantic
import torch

from loraplane.core import age, errors
from loraplane.core.params import LoraConfig
from loraplane.runtime import checkpoints, lora, optim, residency


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
        # The ranges are `core.params.LoraConfig`'s; the largest rank is this runtime's (`create`).
        try:
            LoraConfig.model_validate(dataclasses.asdict(self))
        except pydantic.ValidationError as exc:
            raise errors.invalid_input(exc.errors()) from None

    def targets(self) -> tuple[str, ...]:
        return lora.target_suffixes(self.train_attn, self.train_mlp, self.train_unembed)


@dataclass
class AdapterRecord:
    """One adapter's state beside its weights (which live in the wrapped layers)."""

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


class AdapterStore:
    """The adapters of one base model's wrapped layers; see the module docstring.

    Args:
        layers: the base model's wrapped linears by module name (`lora.wrap_linears`).
        device: where resident adapters live.
        base_model: the base model's name, written into saved states.
        max_lora_rank: largest rank `create` accepts.
    """

    def __init__(
        self, layers: dict[str, lora.MultiLoraLinear], *, device: torch.device, base_model: str, max_lora_rank: int
    ) -> None:
        self._layers = layers
        self.device = device
        self.base_model = base_model
        self.max_lora_rank = max_lora_rank
        #: adapter id -> its record, in creation order
        self.records: dict[str, AdapterRecord] = {}

    # ---- life cycle --------------------------------------------------------------------------

    def create(self, adapter_id: str, spec: LoraSpec, sampler: bool = False) -> AdapterRecord:
        """Create adapter `adapter_id`; returns the existing record if it has the same spec, Conflict otherwise."""
        if not isinstance(adapter_id, str) or not adapter_id:
            raise errors.InvalidInput("adapter_id must be a non-empty string", field="adapter_id")
        existing = self.records.get(adapter_id)
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
        record = AdapterRecord(spec=spec, params=params, sampler=sampler)
        self.records[adapter_id] = record
        return record

    def delete(self, adapter_id: str) -> None:
        """Drop the adapter's weights and optimizer state everywhere. NotFound if unknown."""
        record = self.get(adapter_id)
        for layer in self._layers.values():
            layer.remove_adapter(adapter_id)
        checkpoints.discard(record.offloaded)
        del self.records[adapter_id]

    def get(self, adapter_id: str | None) -> AdapterRecord:
        """The adapter's record; NotFound naming `adapter_id` when there is none."""
        record = self.records.get(adapter_id) if isinstance(adapter_id, str) else None
        if record is None:
            raise errors.NotFound(f"unknown adapter {adapter_id!r}", field="adapter_id")
        return record

    def trainable(self, adapter_id: str) -> AdapterRecord:
        """The record of an adapter that may be trained; InvalidInput for a sampler snapshot."""
        record = self.get(adapter_id)
        if record.sampler:
            raise errors.InvalidInput(
                f"adapter {adapter_id!r} is a read-only sampler snapshot and cannot be trained", field="adapter_id"
            )
        return record

    def training_count(self) -> int:
        """Adapters that hold a training slot (sampler snapshots do not)."""
        return sum(1 for record in self.records.values() if not record.sampler)

    def optim_step(self, adapter_id: str, params: optim.AdamParams) -> dict[str, float]:
        """Apply AdamW to the adapter from its accumulated gradients, then zero them."""
        record = self.trainable(adapter_id)
        self.ensure_resident(adapter_id)
        metrics = optim.adamw_step(record.params, record.optim_state, params)
        self.weights_changed(adapter_id)
        record.step += 1
        return metrics

    # ---- saving, loading, snapshots ----------------------------------------------------------

    def save(self, adapter_id: str, dest: str, *, kind: str, optimizer: bool) -> int:
        """Write PEFT files + trainer_state.json (+ optimizer.pt when `optimizer`); returns bytes written."""
        record = self.get(adapter_id)
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

    def export(self, adapter_id: str, dest: str, recipients: list[str] | None = None) -> int:
        """Write a plain PEFT adapter folder to `dest`, age-encrypted to `recipients` if given."""
        parsed = age.parse_recipients(recipients) if recipients else None
        record = self.get(adapter_id)
        self.ensure_resident(adapter_id)
        return checkpoints.export_peft(
            dest, weights=record.params, config=checkpoints.LoraConfig.from_spec(record.spec),
            base_model=self.base_model, recipients=parsed,
        )

    def load(self, adapter_id: str, source: str, optimizer: bool = True, sampler: bool = False) -> LoraSpec:
        """Load a saved state into `adapter_id`, creating it if missing; see `Engine.load_state`."""
        saved = checkpoints.load(source, with_optimizer=optimizer)
        spec = LoraSpec(**saved.lora.spec_kwargs())
        existing = self.records.get(adapter_id)
        if existing is not None and existing.sampler == sampler and _same_shape(existing.spec, spec):
            spec = existing.spec  # the seed only chose initial weights, which the load replaces
        record = self.create(adapter_id, spec, sampler=sampler)
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
        self.weights_changed(adapter_id)
        record.step = saved.step
        if saved.optimizer is not None and not sampler:
            record.optim_state = optim.AdamState.from_state_dict(saved.optimizer, self.device)
        else:
            record.optim_state = optim.AdamState()
        return spec

    def snapshot(self, adapter_id: str, sampler_id: str, keep: int = 4) -> list[str]:
        """Copy the adapter's weights into read-only sampler `sampler_id`; returns the snapshots dropped."""
        record = self.get(adapter_id)
        self.ensure_resident(adapter_id)
        if sampler_id in self.records:
            if not self.records[sampler_id].sampler:
                raise errors.Conflict(f"{sampler_id!r} is a training adapter, not a sampler", field="sampler_id")
            self.delete(sampler_id)
        copy = self.create(sampler_id, record.spec, sampler=True)
        with torch.no_grad():
            for key, param in copy.params.items():
                param.copy_(record.params[key])
        self.weights_changed(sampler_id)
        copy.step = record.step
        record.snapshots = [s for s in record.snapshots if s != sampler_id and s in self.records] + [sampler_id]
        dropped = residency.snapshots_to_drop(record.snapshots, keep)
        for old in dropped:
            self.delete(old)
        record.snapshots = [s for s in record.snapshots if s not in dropped]
        return dropped

    # ---- memory ------------------------------------------------------------------------------

    def offload(self, adapter_id: str, to: str = "host") -> None:
        """Move the adapter's weights and optimizer state off the device ("host" or a directory)."""
        record = self.get(adapter_id)
        if record.offloaded is not None:
            return
        record.offloaded = checkpoints.offload(adapter_id, record.params, record.optim_state, to)
        self.weights_changed(adapter_id)

    def ensure_resident(self, adapter_id: str) -> None:
        """Bring an offloaded adapter back to the device; a no-op when it is there."""
        record = self.get(adapter_id)
        if record.offloaded is None:
            return
        checkpoints.restore(record.offloaded, record.params, record.optim_state, self.device)
        record.offloaded = None
        self.weights_changed(adapter_id)

    def weights_changed(self, adapter_id: str) -> None:
        """The adapter's weights changed or moved: what the layers keep of them for sampling is stale."""
        for layer in self._layers.values():
            layer.forget_adapter(adapter_id)

    def resident_bytes(self, adapter_id: str) -> int:
        """Bytes of weights + optimizer state on the device (0 when offloaded)."""
        record = self.get(adapter_id)
        if record.offloaded is not None:
            return 0
        tensors = list(record.params.values()) + record.optim_state.tensors()
        return sum(t.numel() * t.element_size() for t in tensors)


def _same_shape(a: LoraSpec, b: LoraSpec) -> bool:
    """Whether two specs build the same tensors (everything but the seed). Pure; for `AdapterStore.load`."""
    return (a.rank, a.alpha, a.train_attn, a.train_mlp, a.train_unembed) == (
        b.rank,
        b.alpha,
        b.train_attn,
        b.train_mlp,
        b.train_unembed,
    )
