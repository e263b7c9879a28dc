"""Wire codecs of the gateway: the forward_backward protobuf body and JSON future answers.

Callers: `routes.training` (forward_backward), `routes.futures` (retrieve_future), `routes.sampling`.

Design notes
============
The gateway forwards the forward_backward protobuf to the runtime byte for byte. It needs only
`model_id` (field 1) and `seq_id` (field 2) to route it, so `routing_fields` reads the protobuf wire
format up to those two fields and skips everything else without decoding it: the cost does not
grow with the batch. The runtime parses the full message (and rejects a malformed one with a 400).
"""

from __future__ import annotations

import json
from typing import Any, TypeVar

import pydantic
import zstandard
from fastapi.responses import JSONResponse

from loraplane.api import ids, protocol
from loraplane.api.records import SamplerRecord
from loraplane.core import artifacts, errors
from loraplane.core.params import SamplingParams
from loraplane.core.runtime_ops import SampleBody

PROTOBUF = "application/x-protobuf"
_WIRE_VARINT, _WIRE_I64, _WIRE_LEN, _WIRE_I32 = 0, 1, 2, 5


def is_identity(content_encoding: str | None) -> bool:
    return (content_encoding or "identity").strip().lower() in ("", "identity")


def decode_body(body: bytes, content_encoding: str | None, *, max_bytes: int) -> bytes:
    """Undo `Content-Encoding: zstd` (the SDK's `proto_compress_fwdbwd`). Pure."""
    encoding = (content_encoding or "identity").strip().lower()
    if is_identity(encoding):
        return body
    if encoding != "zstd":
        raise errors.InvalidInput(
            f"unsupported Content-Encoding {content_encoding!r}; accepted: identity, zstd", field="content-encoding"
        )
    try:
        with zstandard.ZstdDecompressor().stream_reader(body) as reader:
            out = reader.read(max_bytes + 1)
    except zstandard.ZstdError as exc:
        raise errors.InvalidInput(f"body is not valid zstd: {exc}", field="body") from exc
    if len(out) > max_bytes:
        raise errors.PayloadTooLarge(f"decompressed body is {len(out)}+ bytes, over the limit of {max_bytes}",
                                     field="body")
    return out


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise errors.InvalidInput("malformed protobuf: truncated varint", field="body")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def routing_fields(body: bytes) -> tuple[str, int]:
    """(model_id, seq_id) of a serialized ForwardBackwardRequest, reading only what routing needs.

    Pure; called by the forward_backward route. Raises InvalidInput on malformed wire data or a
    missing model_id.
    """
    model_id: str | None = None
    seq_id = 0
    pos, end = 0, len(body)
    while pos < end:
        key, pos = _varint(body, pos)
        number, wire = key >> 3, key & 7
        if wire == _WIRE_VARINT:
            value, pos = _varint(body, pos)
            if number == 2:
                seq_id = value - (1 << 64) if value >= 1 << 63 else value
        elif wire == _WIRE_LEN:
            length, pos = _varint(body, pos)
            if pos + length > end:
                raise errors.InvalidInput("malformed protobuf: field runs past the end of the body", field="body")
            if number == 1:
                try:
                    model_id = body[pos : pos + length].decode()
                except UnicodeDecodeError as exc:
                    raise errors.InvalidInput("malformed protobuf: model_id is not UTF-8", field="model_id") from exc
            pos += length
        elif wire == _WIRE_I64:
            pos += 8
        elif wire == _WIRE_I32:
            pos += 4
        else:
            raise errors.InvalidInput(f"malformed protobuf: wire type {wire}", field="body")
        if model_id is not None and number > 2:
            break
    if pos > end:
        raise errors.InvalidInput("malformed protobuf: truncated field", field="body")
    if not model_id:
        raise errors.InvalidInput("forward_backward body has no model_id", field="model_id")
    return model_id, seq_id


class FutureJSON(JSONResponse):
    """A future's JSON answer, with non-finite metrics spelt `Infinity` / `NaN`: the SDK's JSON parser
    reads them, and a strict encoder would turn an overflowed metric into a 500 that the SDK polls
    forever."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False, allow_nan=True, separators=(",", ":")).encode()


def try_again(request_id: str) -> dict[str, Any]:
    """The long-poll answer for a future still running."""
    return {"type": "try_again", "request_id": request_id, "queue_state": "active"}


def failed(message: str, category: str) -> dict[str, Any]:
    """A failed future, as the SDK raises it (`RequestFailedError`)."""
    return {"error": message, "category": category if category in ("user", "server") else "unknown"}


def sequence_ids(sampler_id: str, seq_id: int, num_samples: int) -> list[str]:
    """`sample_sequence_ids` of one asample call: one per requested sample. Pure."""
    return [f"{sampler_id}:{seq_id}:{i}" for i in range(num_samples)]


def prompt_tokens(prompt: dict[str, Any]) -> list[int]:
    """Flatten a ModelInput's encoded_text chunks; other chunk types are rejected. Pure."""
    chunks = prompt.get("chunks") if isinstance(prompt, dict) else None
    if not isinstance(chunks, list):
        raise errors.InvalidInput("prompt.chunks must be a list", field="prompt.chunks")
    tokens: list[int] = []
    for i, chunk in enumerate(chunks):
        if not isinstance(chunk, dict) or chunk.get("type", "encoded_text") != "encoded_text":
            kind = chunk.get("type") if isinstance(chunk, dict) else type(chunk).__name__
            raise errors.InvalidInput(
                f"prompt.chunks[{i}]: chunk type {kind!r} is not supported; accepted: encoded_text",
                field=f"prompt.chunks[{i}].type",
            )
        toks = chunk.get("tokens")
        if not isinstance(toks, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in toks):
            raise errors.InvalidInput(f"prompt.chunks[{i}].tokens must be a list of ints", field=f"prompt.chunks[{i}].tokens")
        tokens.extend(toks)
    if not tokens:
        raise errors.InvalidInput("prompt has no tokens", field="prompt")
    return tokens

M = TypeVar("M", bound=pydantic.BaseModel)


def checked(model: type[M], values: dict[str, Any]) -> M:
    """`values` as `model`, a body the gateway sends on from what a client sent: a value the
    runtime would refuse is the client's 400 here, naming the field. No side effects."""
    try:
        return model.model_validate(values)
    except pydantic.ValidationError as exc:
        raise errors.invalid_input(exc.errors()) from None


def sample_request(tenant: str, record: SamplerRecord, body: protocol.Sample, tokens: list[int],
                   sequence_ids: list[str], *, store_url: str) -> SampleBody:
    """The runtime's sample body of an `asample` call on `record`'s sampler. Pure."""
    recording = bool(body.record_stability_info)
    return checked(SampleBody, {
        "adapter_id": record.adapter_id, "owner": ids.owner_key(record.sampler_id), "tenant": tenant,
        "prompt_tokens": tokens, "num_samples": body.num_samples,
        "sampling_params": SamplingParams.model_validate(body.sampling_params.model_dump()),
        "prompt_logprobs": body.prompt_logprobs, "prompt_logprobs_last_n": body.prompt_logprobs_last_n,
        "topk_prompt_logprobs": body.topk_prompt_logprobs, "topk_sample_logprobs": body.topk_sample_logprobs,
        "prompt_alt_tokens_k": body.prompt_alt_tokens_k,
        "target_prompt_logprobs": body.target_prompt_logprobs,  # the SDK's TensorData; the runtime checks it
        "record_sequence_ids": sequence_ids if recording else None,
        "record_url": artifacts.sequences_url(store_url, record.session_id) if recording else None,
    })
