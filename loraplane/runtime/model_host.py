"""Loading the frozen base model and its tokenizer, from local files only; packed attention.

Callers: `loraplane.runtime.engine.Engine` when it loads the base model. The runtime never downloads: a model is a local
directory or an id already present in the local Hugging Face cache (`local_files_only=True`).

## Packed attention
A batched training pass right-pads rows of different lengths. With a padding mask, attention
reduces over the padded key length, so a row's numbers depend (at the 1e-7 level) on the longest
row it was batched with, and batched training would not reproduce an adapter trained alone. The
attention registered here (`PACKED_ATTENTION`) runs SDPA once per distinct row length on the rows
of that length, cut to it, with the causal flag and no mask: a row's result no longer depends on
its neighbours, and no attention is spent on padding. A decode step of the sampling batch runs
`loraplane.runtime.decode_attention` (each row masked to its own keys).
Without a layout (equal-length batches) it is plain SDPA.

## Weight layout on the CPU
`store_weights_for_gemm` keeps each fp32 linear weight of a CPU model as the transposed view of an
`[in, out]` tensor: the matmul of a few rows by it (a decode step) is then a plain row-major
product, which the CPU BLAS runs 25 to 30 % faster at 32 rows; at hundreds of rows (training) it
makes no difference, and in bf16 it is slower, so only fp32 on the CPU does it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
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
    if resolved.type not in ("cpu", "cuda"):
        raise errors.InvalidInput(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N", field="device")
    if resolved.type == "cuda" and not cuda_available:
        raise errors.InvalidInput(
            f"device {device!r} asked for but this machine has no CUDA GPU (or torch is a CPU build); "
            "use --device cpu or auto", field="device")
    return resolved


#: files that make a folder a transformers causal LM: any one of each group
_MODEL_FILES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("config.json", ("config.json",)),
    ("weights (*.safetensors or pytorch_model*.bin)", ("*.safetensors", "*.safetensors.index.json", "*.bin")),
    ("a tokenizer (tokenizer.json, tokenizer.model or vocab.json)", ("tokenizer.json", "tokenizer.model", "vocab.json")),
)


def model_dir_problem(path: str) -> str | None:
    """Why the folder at `path` is not a local model, or None when it looks like one.

    Reads only the folder's listing; called by `loraplane serve` before anything loads, so that a
    wrong folder is named at once instead of by a tokenizer's guess about missing packages.
    """
    folder = Path(path)
    if not folder.is_dir():
        return f"{path!r} is not a local directory"
    for what, patterns in _MODEL_FILES:
        if not any(next(folder.glob(p), None) is not None for p in patterns):
            return (f"{path!r} is not a model folder: it has no {what}; pass the folder that holds "
                    "config.json, the weights and the tokenizer (as save_pretrained writes them)")
    return None


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


PACKED_ATTENTION = "loraplane_packed"


def length_groups(
    lengths: Sequence[int], device: torch.device | None = None
) -> tuple[tuple[int, slice | torch.Tensor], ...] | None:
    """Rows grouped by true length, as (length, rows); None when all rows have the same length.

    Pure; called by the engine before a padded forward pass. Rows of one length that sit next to
    each other are given as a slice (a view, no copy), others as an index tensor.
    """
    if len(set(lengths)) <= 1:
        return None
    groups: list[tuple[int, slice | torch.Tensor]] = []
    for length in sorted(set(lengths)):
        rows = [i for i, n in enumerate(lengths) if n == length]
        if rows[-1] - rows[0] + 1 == len(rows):
            groups.append((length, slice(rows[0], rows[-1] + 1)))
        else:
            groups.append((length, torch.tensor(rows, dtype=torch.long, device=device)))
    return tuple(groups)


def packed_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """SDPA per group of equal-length rows (see the module docstring); transformers calls it."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layout = getattr(module, "loraplane_layout", None)
    groups = layout.length_groups if layout is not None else None
    if layout is not None and layout.mask_free:
        attention_mask = None  # every row starts at one position: the causal flag is the mask
    decode_bias = layout.decode_bias if layout is not None else None
    if decode_bias is not None:  # a decode step, rows of any lengths, each masked to its own keys
        from loraplane.runtime.decode_attention import decode_attention

        return decode_attention(module, query, key, value, decode_bias, chunks=layout.decode_chunks, **kwargs)
    if groups is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    batch, heads, width, _ = query.shape
    out = query.new_zeros(batch, width, heads, value.shape[-1])
    for length, rows in groups:
        part, _ = sdpa_attention_forward(
            module, query[rows, :, :length], key[rows, :, :length], value[rows, :, :length], None, **kwargs
        )
        out[rows, :length] = part
    return out, None


def packs_safely(config: Any) -> bool:
    """Whether `packed_attention` computes exactly what the model's own attention does.

    Pure; called by `install_packed_attention`. It does for models that run plain causal SDPA
    over full attention; not for sliding-window layers (the causal flag ignores the window) or
    models loaded with another attention implementation (eager soft-capping, flash kernels).
    """
    if getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layer_types = getattr(text, "layer_types", None)
    if layer_types and any(kind != "full_attention" for kind in layer_types):
        return False
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return False
    return True


def install_packed_attention(model: nn.Module, layout: object) -> bool:
    """Switch `model` to `packed_attention`, reading row lengths from `layout.length_groups`.

    Called once by the engine after loading. Returns False (and leaves the model as loaded) when
    the model does not take pluggable attention; the engine then pads with a mask instead.
    """
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    if config is None or not packs_safely(config):
        return False
    AttentionInterface.register(PACKED_ATTENTION, packed_attention)
    AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
    try:
        model.set_attn_implementation(PACKED_ATTENTION)  # type: ignore[operator]
    except (AttributeError, ValueError, NotImplementedError):
        return False
    for module in model.modules():
        if type(module).__name__.endswith("Attention"):
            module.loraplane_layout = layout
    return True


def kv_geometry(config: Any) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a decoder's KV cache. Pure; called by the engine."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = int(text.num_attention_heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    return int(text.num_hidden_layers), kv_heads, head_dim


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


def store_weights_for_gemm(model: nn.Module) -> int:
    """Re-store every untied `nn.Linear` weight as the transposed view of an `[in, out]` tensor.

    The weight keeps its shape and values; only its strides change, so every caller still sees the
    `[out, in]` weight it expects. A weight that another module holds too (an output head tied to
    the input embeddings) stays as it is: replacing it in one holder would untie it, and the
    embedding lookup wants rows contiguous. Returns how many weights moved.
    """
    holders = Counter(id(p) for m in model.modules() for p in m.parameters(recurse=False))
    moved = 0
    for module in model.modules():
        if not isinstance(module, nn.Linear) or holders[id(module.weight)] > 1 or not module.weight.is_contiguous():
            continue
        weight = module.weight
        module.weight = nn.Parameter(weight.detach().t().contiguous().t(), requires_grad=weight.requires_grad)
        moved += 1
    return moved


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
    if dev.type == "cpu" and dt == torch.float32:
        store_weights_for_gemm(model)
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
