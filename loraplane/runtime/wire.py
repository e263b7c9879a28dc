"""Tinker protobuf and the runtime's JSON bodies <-> the engine's dataclasses.

Callers: the runtime API (`loraplane.runtime.api`) decodes request bodies here and encodes results
here; nothing in this module touches the engine or the executor. The encodings follow the tinker
SDK 0.38 (`tinker.proto.tinker_public_pb2`, the SDK's own classes):

- `ForwardBackwardRequest` tensors are dense little-endian (`<f4`, `<i8`) or sparse CSR whose
  missing cells are 0; token chunks are int32 little-endian.
- `ForwardBackwardOutput` puts all datums in one `ArrayRecord` with int64 byte offsets.
- `SampleResponse` carries int32 tokens, float32 logprobs, and prompt logprobs with NaN where a
  position is not scored (position 0, and before `prompt_logprobs_last_n`).

The JSON bodies are `loraplane.core.runtime_ops`' models, shared with the runtime's client; every
decoding error is an `InvalidInput` whose `field` names the bad part (`data[2].loss_fn_inputs.weights`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import zstandard
from google.protobuf.message import DecodeError
from pydantic import BaseModel, ValidationError
from tinker.proto import tinker_public_pb2 as pb

from loraplane.core import age, errors, params, runtime_ops
from loraplane.core.runtime_ops import OpKind
from loraplane.runtime import engine as eng
from loraplane.runtime import ops, prompt_scoring, stability

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
#: The most values a loss input may hold per input token of its datum. Today's losses take one
#: per token; the headroom admits per-token vectors (top-k targets) without admitting a bomb.
MAX_VALUES_PER_TOKEN = 64
_NP_DTYPES = {pb.DTYPE_FLOAT32: np.dtype("<f4"), pb.DTYPE_INT64: np.dtype("<i8"), pb.DTYPE_INT32: np.dtype("<i4")}


# ---- forward_backward request ----------------------------------------------------------------

def is_compressed(body: bytes) -> bool:
    return body.startswith(_ZSTD_MAGIC)


def decompress(body: bytes, max_bytes: int) -> bytes:
    """Undo the SDK's optional zstd compression (recognised by its magic number), capped at `max_bytes`."""
    if not body.startswith(_ZSTD_MAGIC):
        return body
    try:
        out = zstandard.ZstdDecompressor().decompress(body, max_output_size=max_bytes)
    except zstandard.ZstdError as exc:
        raise errors.InvalidInput(f"body is not valid zstd: {exc}", field="body") from None
    if len(out) > max_bytes:
        raise errors.PayloadTooLarge(f"decompressed body exceeds {max_bytes} bytes", field="body")
    return out


def decode_forward_backward(adapter_id: str, body: bytes,
                            sequences_url: str | None = None) -> tuple[int | None, eng.FwdBwdWork]:
    """Parse a `ForwardBackwardRequest` into (seq_id, work); `seq_id` 0 (unset) means unordered.

    No side effects; called by the `POST /v1/adapters/{id}/ops` route.
    """
    request = pb.ForwardBackwardRequest()
    try:
        request.ParseFromString(body)
    except DecodeError as exc:
        raise errors.InvalidInput(f"body is not a ForwardBackwardRequest protobuf: {exc}", field="body") from None
    if not request.loss_fn:
        raise errors.InvalidInput("loss_fn is required", field="loss_fn")
    data = [_decode_datum(d, f"data[{i}]") for i, d in enumerate(request.data)]
    if not data:
        raise errors.InvalidInput("data must hold at least one datum", field="data")
    config: dict[str, float] = {k: float(v) for k, v in request.loss_fn_config.items()}
    for key, value in request.loss_fn_config_v2.items():
        if value.WhichOneof("value") == "number":
            config[key] = float(value.number)
    for key, number in config.items():
        if not math.isfinite(number):
            raise errors.InvalidInput(f"loss_fn_config {key!r} must be a finite number, got {number}",
                                      field=f"loss_fn_config.{key}")
    work = eng.FwdBwdWork(
        adapter_id=adapter_id, data=data, loss_fn=request.loss_fn, loss_config=config,
        forward_only=request.forward_only, session_id=request.model_id.split(":", 1)[0] or None,
        sequences_url=sequences_url,
    )
    return (request.seq_id if request.seq_id > 0 else None), work


def _decode_datum(datum: Any, where: str) -> eng.Datum:
    parts = []
    for j, chunk in enumerate(datum.model_input):
        kind = chunk.WhichOneof("chunk")
        if kind != "encoded_text":
            raise errors.InvalidInput(
                f"{where}.model_input[{j}] is a {kind or 'empty'} chunk; this runtime takes encoded_text only",
                field=f"{where}.model_input[{j}]",
            )
        raw = chunk.encoded_text.tokens
        if len(raw) % 4:
            raise errors.InvalidInput("token bytes are not a multiple of 4 (int32)", field=f"{where}.model_input[{j}]")
        parts.append(np.frombuffer(raw, dtype="<i4").astype(np.int64))
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    if tokens.size == 0:
        raise errors.InvalidInput(f"{where}.model_input holds no tokens", field=f"{where}.model_input")
    limit = tokens.size * MAX_VALUES_PER_TOKEN
    inputs = {key: decode_tensor(t, f"{where}.loss_fn_inputs.{key}", max_values=limit)
              for key, t in datum.loss_fn_inputs.items()}
    provenance = None
    if len(datum.model_input_spans) or len(datum.loss_fn_input_spans):
        provenance = stability.Provenance(
            model_input=_decode_spans(datum.model_input_spans, f"{where}.model_input_spans"),
            targets=_decode_spans(datum.loss_fn_input_spans, f"{where}.loss_fn_input_spans"),
        )
    return eng.Datum(tokens=torch.from_numpy(tokens), loss_inputs=inputs, provenance=provenance)


def _decode_spans(spans: Any, where: str) -> tuple[stability.Span, ...]:
    out = []
    for i, span in enumerate(spans):
        kind = span.WhichOneof("span")
        if kind is None:
            raise errors.InvalidInput("a provenance span must be prompt_tokens or sampled_tokens", field=f"{where}[{i}]")
        run = getattr(span, kind)
        out.append(stability.Span("prompt" if kind == "prompt_tokens" else "sampled", run.sequence_id,
                                  int(run.offset), int(run.length)))
    return tuple(out)


def decode_tensor(tensor: Any, field: str, *, max_values: int) -> torch.Tensor:
    """A proto `Tensor` (dense or CSR with zero fill) as a torch tensor of its declared shape.

    The declared shape is checked against `max_values` before anything is allocated: a sparse
    tensor of a few bytes may declare billions of cells.
    """
    dtype = _NP_DTYPES.get(tensor.dtype)
    if dtype is None:
        raise errors.InvalidInput(f"unsupported dtype {tensor.dtype}; use FLOAT32 or INT64", field=field)
    shape = tuple(int(s) for s in tensor.shape)
    if any(s < 0 for s in shape):
        raise errors.InvalidInput(f"negative dimension in shape {list(shape)}", field=field)
    if len(shape) > 2 or math.prod(shape) > max_values:
        raise errors.InvalidInput(
            f"shape {list(shape)} declares {math.prod(shape)} values; a loss input holds at most "
            f"{MAX_VALUES_PER_TOKEN} per input token ({max_values} here) in at most 2 dimensions",
            field=field,
        )
    encoding = tensor.WhichOneof("encoding")
    if encoding == "sparse_csr":
        array = _decode_csr(tensor.sparse_csr, dtype, shape, field)
    else:
        raw = tensor.dense if encoding == "dense" else b""
        if len(raw) % dtype.itemsize:
            raise errors.InvalidInput(f"{len(raw)} bytes is not a whole number of {dtype}", field=field)
        array = np.frombuffer(raw, dtype=dtype)
        if shape:
            if math.prod(shape) != array.size:
                raise errors.InvalidInput(f"shape {list(shape)} does not match {array.size} values", field=field)
            array = array.reshape(shape)
    # NumPy copies and widens: a torch kernel on this (API) thread could start a thread team there
    # (see `loraplane.runtime.host_checks`)
    return torch.from_numpy(array.astype(np.int64) if array.dtype == np.int32 else array.copy())


def _decode_csr(csr: Any, dtype: np.dtype, shape: tuple[int, ...], field: str) -> np.ndarray:
    if len(shape) not in (1, 2):
        raise errors.InvalidInput(f"sparse tensors must be 1-D or 2-D, got shape {list(shape)}", field=field)
    rows, cols = (1, shape[0]) if len(shape) == 1 else shape
    values = np.frombuffer(csr.values, dtype=dtype) if len(csr.values) % dtype.itemsize == 0 else None
    crow = np.frombuffer(csr.crow_indices, dtype="<i8") if len(csr.crow_indices) % 8 == 0 else None
    col = np.frombuffer(csr.col_indices, dtype="<i8") if len(csr.col_indices) % 8 == 0 else None
    if values is None or crow is None or col is None:
        raise errors.InvalidInput("sparse_csr buffers are not whole numbers of their dtypes", field=field)
    nnz = values.size
    if (crow.size != rows + 1 or col.size != nnz or crow[0] != 0 or crow[-1] != nnz
            or np.any(np.diff(crow) < 0) or np.any(col < 0) or np.any(col >= max(cols, 1))):
        raise errors.InvalidInput(f"inconsistent sparse_csr indices for shape {list(shape)}", field=field)
    dense = np.zeros((rows, cols), dtype=dtype)
    row_of = np.repeat(np.arange(rows), np.diff(crow))
    dense[row_of, col] = values
    return dense.reshape(shape)


# ---- results ---------------------------------------------------------------------------------

def encode_forward_backward_output(result: eng.FwdBwdResult) -> bytes:
    """`ForwardBackwardOutput` with one ArrayRecord holding every datum's `logprobs`. No side effects."""
    chunks = [lp.detach().to(torch.float32).cpu().numpy().astype("<f4").tobytes() for lp in result.logprobs]
    offsets = np.cumsum([0] + [len(c) for c in chunks], dtype=np.int64).astype("<i8")
    record = pb.ArrayRecord(type_tag="ArrayRecord", num_datums=len(chunks))
    field = record.fields["logprobs"]
    field.data = b"".join(chunks)
    field.offsets = offsets.tobytes()
    field.dtype = pb.DTYPE_FLOAT32
    out = pb.ForwardBackwardOutput(loss_fn_output_type="ArrayRecord")
    out.loss_fn_outputs.append(record)
    for key, value in result.metrics.items():
        out.metrics[key] = float(value)
    return out.SerializeToString()


def encode_sample_response(result: Any, prompt_len: int | None = None,
                           prompt_logprobs_last_n: int | None = None) -> bytes:
    """`SampleResponse` of an engine `SampleResult`; prompt logprobs NaN where unscored. No side effects.

    The prompt-side extras (`result.prompt_scores`, see `prompt_scoring`) fill the fields the SDK
    reads: `topk_prompt_logprobs`, `target_prompt_logprobs` (in the request's dense or sparse
    layout), `prompt_alt_tokens`, and each sequence's `topk_sampled_logprobs`.
    """
    out = pb.SampleResponse()
    for seq in result.sequences:
        msg = pb.SampledSequence(
            stop_reason=pb.STOP_REASON_LENGTH if seq.stop_reason == "length" else pb.STOP_REASON_STOP,
            tokens=np.asarray(seq.tokens, dtype="<i4").tobytes(),
            logprobs=np.asarray(seq.logprobs, dtype="<f4").tobytes(),
        )
        if getattr(seq, "topk", None) is not None:
            msg.topk_sampled_logprobs.CopyFrom(_topk(*seq.topk))
        out.sequences.append(msg)
    if result.prompt_logprobs is not None:
        values = np.array([math.nan if v is None else v for v in result.prompt_logprobs], dtype="<f4")
        if prompt_logprobs_last_n is not None and prompt_len is not None:
            values[: max(0, prompt_len - prompt_logprobs_last_n)] = math.nan
        out.prompt_logprobs = values.tobytes()
    scores = getattr(result, "prompt_scores", None)
    if scores is not None:
        if scores.topk_ids is not None:
            out.topk_prompt_logprobs.CopyFrom(_topk(scores.topk_ids, scores.topk_logprobs))
        if scores.target is not None:
            csr = scores.options.target.csr
            if csr is None:
                out.target_prompt_logprobs.CopyFrom(_tensor(scores.target, pb.DTYPE_FLOAT32, "<f4"))
            else:
                crow, col = csr
                rows = np.repeat(np.arange(len(crow) - 1), np.diff(crow))
                values = scores.target[rows, np.asarray(col, dtype=np.int64)] if col else np.zeros(0)
                out.target_prompt_logprobs.CopyFrom(pb.Tensor(
                    sparse_csr=pb.SparseCsr(values=np.asarray(values, dtype="<f4").tobytes(),
                                            crow_indices=np.asarray(crow, dtype="<i8").tobytes(),
                                            col_indices=np.asarray(col, dtype="<i8").tobytes()),
                    dtype=pb.DTYPE_FLOAT32, shape=list(scores.target.shape)))
        if scores.alt_ids is not None:
            out.prompt_alt_tokens.CopyFrom(pb.PromptAltTokens(
                tokens=_tensor(scores.alt_ids, pb.DTYPE_INT64, "<i8"),
                logprobs=_tensor(scores.alt_logprobs, pb.DTYPE_FLOAT32, "<f4")))
    return out.SerializeToString()


def _topk(ids: np.ndarray, logprobs: np.ndarray) -> Any:
    length, k = ids.shape
    return pb.TopkLogprobs(token_ids=np.ascontiguousarray(ids, dtype="<i4").tobytes(),
                           logprobs=np.ascontiguousarray(logprobs, dtype="<f4").tobytes(), k=k, length=length)


def _tensor(values: np.ndarray, dtype: int, np_dtype: str) -> Any:
    return pb.Tensor(dense=np.ascontiguousarray(values, dtype=np_dtype).tobytes(), dtype=dtype,
                     shape=list(values.shape))


# ---- JSON bodies -----------------------------------------------------------------------------

def parse_body(model: type[BaseModel], body: Any) -> Any:
    """Validate a JSON body; the first error becomes InvalidInput naming its field. No side effects."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise errors.invalid_input(exc.errors()) from None


def adam_params(body: params.AdamParams) -> eng.AdamParams:
    """The engine's AdamW hyperparameters of a checked body: every field set from it, so the
    defaults that apply are `params.AdamParams`' alone. No side effects."""
    return eng.AdamParams(**body.model_dump())


def op_from_body(adapter_id: str, body: runtime_ops.OpBody, *, keep_snapshots: int = 4) -> Any:
    """The executor payload of a JSON op; raises InvalidInput when a field it needs is missing.
    `keep_snapshots`: how many sampler snapshots of one adapter a `snapshot` keeps."""

    def need(name: str) -> Any:
        value = getattr(body, name)
        if value is None or value == "":
            raise errors.InvalidInput(f"{body.op} needs {name}", field=name)
        return value

    if body.op == OpKind.OPTIM_STEP:
        return ops.OptimStep(adapter_id, adam_params(body.adam_params or params.AdamParams()))
    if body.op == OpKind.SAVE_STATE:
        return ops.SaveState(adapter_id, need("dest"), optimizer=body.optimizer)
    if body.op == OpKind.SAVE_SAMPLER:
        return ops.SaveSampler(adapter_id, need("dest"))
    if body.op == OpKind.SAVE_EXTERNAL:
        if body.age_recipients:
            age.parse_recipients(body.age_recipients, field="age_recipients")
        return ops.SaveExternal(adapter_id, need("dest"), tuple(body.age_recipients or ()))
    if body.op == OpKind.SNAPSHOT:
        return ops.Snapshot(adapter_id, need("sampler_id"), keep=keep_snapshots)
    return ops.LoadState(adapter_id, need("source"), optimizer=body.optimizer)


def sample_from_body(body: runtime_ops.SampleBody, vocab_size: int) -> ops.Sample:
    """The executor payload of `POST /v1/sample`; token ids are checked against the vocabulary."""
    for i, tok in enumerate(body.prompt_tokens):
        if not 0 <= tok < vocab_size:
            raise errors.InvalidInput(
                f"prompt_tokens[{i}] = {tok} is outside the vocabulary (0..{vocab_size - 1})",
                field=f"prompt_tokens[{i}]",
            )
    if body.record_sequence_ids is not None and len(body.record_sequence_ids) != body.num_samples:
        raise errors.InvalidInput(
            f"record_sequence_ids holds {len(body.record_sequence_ids)} ids for {body.num_samples} samples",
            field="record_sequence_ids",
        )
    sp = body.sampling_params
    sampling = eng.SamplingParams(
        max_tokens=sp.new_tokens, temperature=sp.temperature, top_p=sp.top_p, top_k=sp.top_k,
        stop=sp.stop, seed=sp.seed,
    )
    target = None if body.target_prompt_logprobs is None else target_ids(body.target_prompt_logprobs)
    return ops.Sample(body.adapter_id, list(body.prompt_tokens), body.num_samples, sampling,
                      prompt_logprobs=body.prompt_logprobs or body.prompt_logprobs_last_n is not None,
                      prompt_logprobs_last_n=body.prompt_logprobs_last_n,
                      topk_prompt_logprobs=body.topk_prompt_logprobs, topk_sample_logprobs=body.topk_sample_logprobs,
                      target_prompt_logprobs=target, prompt_alt_tokens_k=body.prompt_alt_tokens_k,
                      owner=body.owner, tenant=body.tenant,
                      record_sequence_ids=tuple(body.record_sequence_ids or ()),
                      record_url=body.record_url)


def target_ids(body: runtime_ops.TensorDataBody) -> prompt_scoring.TargetIds:
    """The ids of `target_prompt_logprobs` as a dense [rows, K] tensor, -1 where nothing is asked.

    A sparse body keeps its layout for the answer. Raises InvalidInput naming the field when the
    shape and the data or indices disagree. No side effects.
    """
    field = "target_prompt_logprobs"
    shape = body.shape if body.shape is not None else [len(body.data)]
    if len(shape) != 2 or any(n < 0 for n in shape):
        raise errors.InvalidInput(f"{field} must be 2-D, [len(prompt) - 1, K], got shape {shape}", field=field)
    rows, cols = shape
    if rows * cols > prompt_scoring.MAX_CELLS:
        raise errors.InvalidInput(f"{field} holds more than {prompt_scoring.MAX_CELLS} cells", field=field)
    data = np.asarray(body.data, dtype=np.int64)
    if body.sparse_crow_indices is None and body.sparse_col_indices is None:
        if data.size != rows * cols:
            raise errors.InvalidInput(f"shape {shape} does not match {data.size} values", field=field)
        return prompt_scoring.TargetIds(torch.from_numpy(data.reshape(rows, cols).copy()))
    crow = np.asarray(body.sparse_crow_indices or [], dtype=np.int64)
    col = np.asarray(body.sparse_col_indices or [], dtype=np.int64)
    if (crow.size != rows + 1 or col.size != data.size or crow[0] != 0 or crow[-1] != data.size
            or np.any(np.diff(crow) < 0) or np.any(col < 0) or np.any(col >= max(cols, 1))):
        raise errors.InvalidInput(f"inconsistent sparse CSR indices for shape {shape}", field=field)
    dense = np.full((rows, cols), -1, dtype=np.int64)
    dense[np.repeat(np.arange(rows), np.diff(crow)), col] = data
    return prompt_scoring.TargetIds(torch.from_numpy(dense), csr=(crow.tolist(), col.tolist()))
