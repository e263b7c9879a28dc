"""Where adapter tensors go when they leave the device: saved states (PEFT format) and offloads.

Callers: the adapter store, `loraplane.runtime.adapters.AdapterStore` (`save`, `export`, `load`,
`offload`, `ensure_resident`, `delete`).

## Saved state layout (docs/runtime-api.md, "Saved states on disk")
- `adapter_config.json`: PEFT's `LoraConfig` (r, lora_alpha, target_modules, task_type CAUSAL_LM,
  base_model_name_or_path, lora_dropout 0, bias none), so `peft.PeftModel.from_pretrained` loads it.
- `adapter_model.safetensors`: PEFT's key names, `base_model.model.<module>.lora_A.weight`.
  PEFT 0.21 also writes `lm_head.base_layer.weight` when `lm_head` is a target (it treats it as
  a possibly resized embedding); we do not, since the base weight is the unchanged base model's and
  would add vocab x hidden values to every checkpoint. `PeftModel.from_pretrained` loads the file
  without it and keeps the base model's own lm_head.
- `trainer_state.json`: `{"step", "lora": {rank, alpha, seed, train_attn, train_mlp, train_unembed},
  "base_model", "kind": "train"|"sampler"}`.
- `optimizer.pt` (training states only): `{"step", "exp_avg": {key: tensor}, "exp_avg_sq": {...}}`.

Every path goes through fsspec: `dest`/`source` may be a local path or any fsspec URL.
"""

from __future__ import annotations

import io
import json
import tempfile
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import fsspec
import torch
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from loraplane.core import age, artifacts, errors
from loraplane.runtime import lora, optim

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
TRAINER_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"


def peft_key(module_name: str, tensor_name: str) -> str:
    """PEFT's checkpoint key of one LoRA tensor. Pure; the engine names adapter tensors with it."""
    return f"base_model.model.{module_name}.{tensor_name}.weight"


@dataclass(frozen=True)
class LoraConfig:
    """The LoRA config as `trainer_state.json` records it (the engine's `LoraSpec` fields)."""

    rank: int
    alpha: float
    seed: int | None
    train_attn: bool
    train_mlp: bool
    train_unembed: bool

    @classmethod
    def from_spec(cls, spec: Any) -> LoraConfig:
        return cls(spec.rank, float(spec.alpha), spec.seed, spec.train_attn, spec.train_mlp, spec.train_unembed)

    def spec_kwargs(self) -> dict[str, Any]:
        return asdict(self)

    def targets(self) -> tuple[str, ...]:
        return lora.target_suffixes(self.train_attn, self.train_mlp, self.train_unembed)


def peft_config(cfg: LoraConfig, base_model: str) -> dict[str, Any]:
    """The `adapter_config.json` body PEFT reads. Pure; called by `save`."""
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": cfg.rank,
        "lora_alpha": cfg.alpha,
        "target_modules": list(cfg.targets()),
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "inference_mode": True,
        "modules_to_save": None,
    }


def config_from_peft(body: dict[str, Any]) -> LoraConfig:
    """A `LoraConfig` from a PEFT `adapter_config.json` without our trainer state. Pure; called by `load`."""
    targets = body.get("target_modules") or []
    if isinstance(targets, str):
        targets = [targets]
    leaves = {str(t).rsplit(".", 1)[-1] for t in targets}
    unknown = leaves - set(lora.ALL_TARGETS)
    if unknown:
        raise errors.InvalidInput(f"adapter targets modules we do not train: {sorted(unknown)}", field="source")
    return LoraConfig(
        rank=int(body["r"]),
        alpha=float(body.get("lora_alpha", body["r"])),
        seed=None,
        train_attn=bool(leaves & set(lora.ATTN_MODULES)),
        train_mlp=bool(leaves & set(lora.MLP_MODULES)),
        train_unembed=bool(leaves & set(lora.UNEMBED_MODULES)),
    )


def _join(path: str, name: str) -> str:
    return path.rstrip("/") + "/" + name


def save(
    dest: str,
    *,
    weights: dict[str, torch.nn.Parameter],
    config: LoraConfig,
    base_model: str,
    step: int,
    kind: str,
    optimizer: dict[str, object] | None,
) -> int:
    """Write one saved state to `dest` (path or fsspec URL); returns the bytes written."""
    fs, root = fsspec.core.url_to_fs(dest)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    blobs: dict[str, bytes] = {
        CONFIG_FILE: json.dumps(peft_config(config, base_model), indent=2).encode(),
        WEIGHTS_FILE: safetensors_save(tensors, metadata={"format": "pt"}),
        TRAINER_FILE: json.dumps(
            {"step": step, "lora": asdict(config), "base_model": base_model, "kind": kind}, indent=2
        ).encode(),
    }
    if optimizer is not None:
        buf = io.BytesIO()
        cpu_state = {
            "step": optimizer["step"],
            "exp_avg": {k: v.to("cpu") for k, v in dict(optimizer["exp_avg"]).items()},  # type: ignore[call-overload]
            "exp_avg_sq": {k: v.to("cpu") for k, v in dict(optimizer["exp_avg_sq"]).items()},  # type: ignore[call-overload]
        }
        torch.save(cpu_state, buf)
        blobs[OPTIMIZER_FILE] = buf.getvalue()
    write_folder(fs, root, blobs)
    return sum(len(b) for b in blobs.values())


def export_peft(
    dest: str,
    *,
    weights: dict[str, torch.nn.Parameter],
    config: LoraConfig,
    base_model: str,
    recipients: list[Any] | None = None,
) -> int:
    """Write a plain PEFT adapter folder (config + safetensors) to `dest`; returns the bytes written.

    With `recipients` (pyrage objects, `loraplane.core.age`) every file is age-encrypted and
    named with the `.age` suffix; nothing unencrypted is written.
    """
    fs, root = fsspec.core.url_to_fs(dest)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in weights.items()}
    blobs: dict[str, bytes] = {
        CONFIG_FILE: json.dumps(peft_config(config, base_model), indent=2).encode(),
        WEIGHTS_FILE: safetensors_save(tensors, metadata={"format": "pt"}),
    }
    if recipients:
        blobs = {name + age.AGE_SUFFIX: age.encrypt(blob, recipients) for name, blob in blobs.items()}
    write_folder(fs, root, blobs)
    return sum(len(b) for b in blobs.values())


def write_folder(fs: Any, root: str, blobs: dict[str, bytes]) -> None:
    """Write `blobs` as the files of folder `root`, all or nothing (I/O).

    The files go to a hidden sibling folder first, which then takes `root`'s place: a reader
    never sees half a checkpoint, and a write that fails (a full or read-only store) leaves nothing
    behind. A store error becomes `errors.StoreUnavailable`, which names the cause, not the path.
    """
    parent, _, name = root.rstrip("/").rpartition("/")
    staging = f"{parent}/.{name}.partial-{uuid.uuid4().hex[:12]}"
    replaced = f"{parent}/.{name}.old-{uuid.uuid4().hex[:12]}"
    try:
        fs.makedirs(staging, exist_ok=True)
        for file_name, blob in blobs.items():
            fs.pipe_file(_join(staging, file_name), blob)
        if fs.exists(root):
            fs.mv(root, replaced, recursive=True)
        fs.mv(staging, root, recursive=True)
    except OSError as exc:
        _remove(fs, staging)
        if not fs.exists(root) and fs.exists(replaced):
            fs.mv(replaced, root, recursive=True)
        raise artifacts.store_error(exc, "saving a checkpoint") from None
    _remove(fs, replaced)


def _remove(fs: Any, path: str) -> None:
    try:
        if fs.exists(path):
            fs.rm(path, recursive=True)
    except OSError:
        pass


@dataclass
class SavedState:
    """What `load` read back: weights by PEFT key, the LoRA config, step, optimizer state if asked."""

    weights: dict[str, torch.Tensor]
    lora: LoraConfig
    step: int
    base_model: str | None
    optimizer: dict[str, object] | None


def load(source: str, *, with_optimizer: bool) -> SavedState:
    """Read a saved state (or a plain PEFT adapter directory) from `source`."""
    fs, root = fsspec.core.url_to_fs(source)
    try:
        weights = safetensors_load(fs.cat_file(_join(root, WEIGHTS_FILE)))
    except FileNotFoundError:
        raise errors.NotFound(f"no saved adapter at {source} ({WEIGHTS_FILE} missing)", field="source") from None
    trainer: dict[str, Any] | None = None
    if fs.exists(_join(root, TRAINER_FILE)):
        trainer = json.loads(fs.cat_file(_join(root, TRAINER_FILE)))
    if trainer is not None:
        cfg = LoraConfig(**trainer["lora"])
        step = int(trainer.get("step", 0))
        base_model = trainer.get("base_model")
    else:
        try:
            cfg = config_from_peft(json.loads(fs.cat_file(_join(root, CONFIG_FILE))))
        except FileNotFoundError:
            raise errors.NotFound(f"no adapter config at {source}", field="source") from None
        step, base_model = 0, None
    weights = {k: v for k, v in weights.items() if ".lora_A." in k or ".lora_B." in k}
    state: dict[str, object] | None = None
    if with_optimizer and fs.exists(_join(root, OPTIMIZER_FILE)):
        state = torch.load(io.BytesIO(fs.cat_file(_join(root, OPTIMIZER_FILE))), weights_only=True)
    return SavedState(weights=weights, lora=cfg, step=step, base_model=base_model, optimizer=state)


# ---- offloading ----------------------------------------------------------------------------------


def offload(
    adapter_id: str, params: dict[str, torch.nn.Parameter], state: optim.AdamState, to: str
) -> str:
    """Move an adapter's tensors off the device; returns where they went ("host" or a file path).

    The `Parameter` objects stay (the layers hold them); only their storage moves, so restoring
    needs no re-wiring. Gradients pending on an offloaded adapter are kept with it on the host.
    """
    if to == "host":
        for p in params.values():
            p.data = p.data.to("cpu")
            if p.grad is not None:
                p.grad = p.grad.to("cpu")
        state.move("cpu")
        return "host"
    directory = Path(to)
    directory.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f"{adapter_id.replace('/', '_')}-", suffix=".pt", dir=directory)
    with open(handle, "wb") as fh:
        torch.save(
            {
                "params": {k: p.detach().to("cpu") for k, p in params.items()},
                "grads": {k: p.grad.to("cpu") for k, p in params.items() if p.grad is not None},
                "optim": state.state_dict(),
            },
            fh,
        )
    for p in params.values():
        p.data = torch.empty(0, dtype=p.dtype)
        p.grad = None
    state.exp_avg, state.exp_avg_sq = {}, {}
    return name


def restore(
    where: str, params: dict[str, torch.nn.Parameter], state: optim.AdamState, device: torch.device
) -> None:
    """Bring tensors offloaded by `offload` back onto `device`."""
    if where == "host":
        for p in params.values():
            p.data = p.data.to(device)
            if p.grad is not None:
                p.grad = p.grad.to(device)
        state.move(device)
        return
    saved = torch.load(where, weights_only=True)
    for key, p in params.items():
        p.data = saved["params"][key].to(device)
        grad = saved["grads"].get(key)
        p.grad = grad.to(device) if grad is not None else None
    restored = optim.AdamState.from_state_dict(saved["optim"], device)
    state.step, state.exp_avg, state.exp_avg_sq = restored.step, restored.exp_avg, restored.exp_avg_sq
    discard(where)


def discard(where: str | None) -> None:
    """Remove an offload file (no-op for "host" or None)."""
    if where is not None and where != "host":
        Path(where).unlink(missing_ok=True)

