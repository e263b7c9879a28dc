"""Loading the frozen base model and its tokenizer, from local files only.

Callers: `loraplane.runtime.engine.Engine.__init__`. The runtime never downloads: a model is a local
directory or an id already present in the local Hugging Face cache (`local_files_only=True`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from loraplane.core import errors

_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def resolve_device(device: str, cuda_available: bool) -> torch.device:
    """`auto` means the first CUDA device when there is one, else the CPU.

    Pure; called by `load_base`. Raises InvalidInput(field="device") for CUDA without a GPU.
    """
    if device == "auto":
        return torch.device("cuda" if cuda_available else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, ValueError):
        raise errors.InvalidInput(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N", field="device") from None
    if resolved.type == "cuda" and not cuda_available:
        raise errors.InvalidInput(f"device {device!r} asked for but no CUDA device is present", field="device")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` means bfloat16 on CUDA and float32 elsewhere. Pure; called by `load_base`."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in _DTYPES:
        raise errors.InvalidInput(f"unknown dtype {dtype!r}; use auto, {', '.join(_DTYPES)}", field="dtype")
    return _DTYPES[dtype]


def eos_ids(tokenizer: Any, generation_config: Any) -> list[int]:
    """The end-of-sequence ids: the generation config's (int or list) plus the tokenizer's.

    Pure; called by `load_base` for sampling's default stop condition.
    """
    found: list[int] = []
    candidates: list[Any] = []
    gen_eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    candidates.extend(gen_eos if isinstance(gen_eos, list | tuple) else [gen_eos])
    candidates.append(getattr(tokenizer, "eos_token_id", None))
    for cand in candidates:
        if isinstance(cand, int) and cand not in found:
            found.append(cand)
    return found


@dataclass
class BaseModel:
    """A loaded, frozen base model in eval mode with what the engine needs to know about it."""

    model: nn.Module
    tokenizer: Any
    device: torch.device
    dtype: torch.dtype
    vocab_size: int
    eos_token_ids: list[int]
    max_positions: int


def load_base(model_path: str, device: str = "auto", dtype: str = "auto") -> BaseModel:
    """Load the causal LM and tokenizer at `model_path` (local files only) and freeze it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = resolve_device(device, torch.cuda.is_available())
    dt = resolve_dtype(dtype, dev)
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dt, local_files_only=True)
    except OSError as exc:
        raise errors.NotFound(
            f"base model {model_path!r} is not a local directory or a cached model id: {exc}", field="model_path"
        ) from exc
    model.to(dev)
    model.eval()
    model.requires_grad_(False)
    config = model.config
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab_size = int(model.get_output_embeddings().weight.shape[0])
    return BaseModel(
        model=model,
        tokenizer=tokenizer,
        device=dev,
        dtype=dt,
        vocab_size=vocab_size,
        eos_token_ids=eos_ids(tokenizer, getattr(model, "generation_config", None)),
        max_positions=int(getattr(text_config, "max_position_embeddings", 0) or 1 << 30),
    )
