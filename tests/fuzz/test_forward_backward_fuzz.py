"""Hostile `POST /api/v1/forward_backward` bodies, built with the SDK's own protobuf classes.

Every malformed body must get a JSON 4xx that names the bad field (413 for oversize), never a 5xx
or a dropped connection; the server's peak memory may grow by at most `PEAK_GROWTH_BOUND_BYTES`
over its warm size however large the shapes the bodies declare; and the server must still train
correctly afterwards. The hostile bodies go to bob's model with `seq_id` 0 (unordered), so a body
the server wrongly accepts cannot hold alice's ordered steps behind a gap.

The cases are a fixed table (sparse tensors declaring 2^30+ cells in a few hundred bytes, broken
CSR indices, wrong dtypes, shapes that disagree with the tokens, empty data, truncations, zstd
bombs, oversize) plus seeded random mutations of a valid request.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
import zstandard
from tinker.proto import tinker_public_pb2 as pb

from tests.fuzz.answers import ONE_SHOT, assert_json_error, explain, send
from tests.fuzz.conftest import MAX_REQUEST_BYTES, Deaths, Harness
from tests.fuzz.tinker_http import PROTOBUF, forward_backward_request

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(120)]

#: how far the server's peak resident size may rise above its warm size during the whole module
PEAK_GROWTH_BOUND_BYTES = 256 * 1024**2
#: random mutations of a valid request per run (seeded)
MUTATIONS = 150
SEED = 20261201


@dataclass(frozen=True)
class Hostile:
    name: str
    build: Callable[[str], bytes]  # model_id -> body
    #: accepted statuses; every one is a JSON error naming a field
    statuses: tuple[int, ...] = (400,)
    headers: tuple[tuple[str, str], ...] = ()


def _request(model_id: str) -> pb.ForwardBackwardRequest:
    return forward_backward_request(model_id, 0)


def _with(mutate: Callable[[pb.ForwardBackwardRequest], None]) -> Callable[[str], bytes]:
    def build(model_id: str) -> bytes:
        req = _request(model_id)
        mutate(req)
        return req.SerializeToString()
    return build


def _sparse(key: str, shape: list[int], *, values: bytes | None = None, crow: list[int] | None = None,
            col: list[int] | None = None, dtype: int = pb.DTYPE_FLOAT32) -> Callable[[pb.ForwardBackwardRequest], None]:
    """Replace loss input `key` of datum 0 with a CSR tensor (default: one cell set, in row 0)."""
    def mutate(req: pb.ForwardBackwardRequest) -> None:
        t = req.data[0].loss_fn_inputs[key]
        t.Clear()
        t.dtype = dtype
        t.shape.extend(shape)
        np_dtype = "<f4" if dtype == pb.DTYPE_FLOAT32 else "<i8"
        rows = 1 if len(shape) == 1 else shape[0]
        t.sparse_csr.values = values if values is not None else np.ones(1, dtype=np_dtype).tobytes()
        t.sparse_csr.crow_indices = np.asarray(crow if crow is not None else [0] + [1] * rows, dtype="<i8").tobytes()
        t.sparse_csr.col_indices = np.asarray(col if col is not None else [3], dtype="<i8").tobytes()
    return mutate


def _dense(key: str, array: np.ndarray, shape: list[int] | None = None, dtype: int | None = None,
           ) -> Callable[[pb.ForwardBackwardRequest], None]:
    def mutate(req: pb.ForwardBackwardRequest) -> None:
        t = req.data[0].loss_fn_inputs[key]
        t.Clear()
        t.dense = array.tobytes()
        t.dtype = dtype if dtype is not None else (pb.DTYPE_FLOAT32 if array.dtype.kind == "f" else pb.DTYPE_INT64)
        t.shape.extend(shape if shape is not None else list(array.shape))
    return mutate


def _n(req: pb.ForwardBackwardRequest) -> int:
    """Target length of datum 0."""
    return len(req.data[0].model_input[0].encoded_text.tokens) // 4


def _set_tokens(tokens: list[int]) -> Callable[[pb.ForwardBackwardRequest], None]:
    def mutate(req: pb.ForwardBackwardRequest) -> None:
        req.data[0].model_input[0].encoded_text.tokens = np.asarray(tokens, dtype="<i4").tobytes()
    return mutate


def _truncated(fraction: float) -> Callable[[str], bytes]:
    def build(model_id: str) -> bytes:
        body = _request(model_id).SerializeToString()
        return body[: max(1, int(len(body) * fraction))]
    return build


def _oversized(model_id: str) -> bytes:
    req = _request(model_id)
    req.data[0].model_input.add().encoded_text.tokens = np.full(MAX_REQUEST_BYTES // 4 + 16, 5, dtype="<i4").tobytes()
    return req.SerializeToString()


@functools.lru_cache(maxsize=4)
def _zstd_bomb(model_id: str) -> bytes:
    """About 8 KB of zstd (one frame) that inflates to a 256 MiB valid-looking request: one datum
    whose single token chunk is all zeros."""
    req = _request(model_id)
    head = req.SerializeToString()
    size = 256 * 1024**2
    chunk = _key(1, 2) + _varint(size) + b""  # encoded_text.tokens (inside EncodedTextChunk)
    text = _key(1, 2) + _varint(len(chunk) + size)
    datum_head = _key(1, 2) + _varint(len(text) + len(chunk) + size)
    data_head = _key(3, 2) + _varint(len(datum_head) + len(text) + len(chunk) + size)
    compressor = zstandard.ZstdCompressor(level=3)
    writer = compressor.compressobj()
    parts = [writer.compress(head + data_head + datum_head + text + chunk)]
    zeros = bytes(1024 * 1024)
    parts.extend(writer.compress(zeros) for _ in range(size // len(zeros)))
    parts.append(writer.flush())
    return b"".join(parts)


def _zstd_of(build: Callable[[str], bytes]) -> Callable[[str], bytes]:
    return lambda model_id: zstandard.ZstdCompressor().compress(build(model_id))


def _key(number: int, wire: int) -> bytes:
    return _varint(number << 3 | wire)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


GIB_CELLS = 2**30
ZSTD = (("content-encoding", "zstd"),)

HOSTILE = [
    # -- sparse tensors declaring huge dense shapes (a few hundred bytes each)
    Hostile("sparse_weights_1d_2^30_cells", _with(_sparse("weights", [GIB_CELLS])), (400, 413)),
    Hostile("sparse_weights_2d_1x2^30_cells", _with(_sparse("weights", [1, GIB_CELLS])), (400, 413)),
    Hostile("sparse_weights_2d_2x2^31_cells", _with(_sparse("weights", [2, 2**31], crow=[0, 1, 1])), (400, 413)),
    Hostile("sparse_weights_1d_2^34_cells", _with(_sparse("weights", [2**34])), (400, 413)),
    Hostile("sparse_weights_1d_2^63-1_cells", _with(_sparse("weights", [2**63 - 1])), (400, 413)),
    Hostile("sparse_targets_int64_2^30_cells", _with(_sparse("target_tokens", [GIB_CELLS], dtype=pb.DTYPE_INT64)),
            (400, 413)),
    Hostile("sparse_weights_huge_shape_zstd", _zstd_of(_with(_sparse("weights", [GIB_CELLS]))), (400, 413), ZSTD),
    # -- inconsistent CSR indices
    Hostile("csr_crow_not_starting_at_0", _with(_sparse("weights", [1, 8], crow=[1, 1]))),
    Hostile("csr_crow_decreasing", _with(_sparse("weights", [2, 8], crow=[0, 1, 0], col=[3]))),
    Hostile("csr_col_past_the_end", _with(_sparse("weights", [1, 8], col=[8]))),
    Hostile("csr_col_negative", _with(_sparse("weights", [1, 8], col=[-1]))),
    Hostile("csr_crow_length_wrong", _with(_sparse("weights", [3, 8], crow=[0, 1]))),
    Hostile("csr_nnz_disagrees_with_values", _with(_sparse("weights", [1, 8], crow=[0, 2], col=[1, 2]))),
    Hostile("csr_values_not_whole_floats", _with(_sparse("weights", [1, 8], values=b"\x00\x00\x80"))),
    Hostile("csr_3d_shape", _with(_sparse("weights", [1, 1, 8], crow=[0, 1]))),
    Hostile("csr_negative_dimension", _with(_sparse("weights", [1, -8], crow=[0, 1]))),
    # -- wrong dtypes
    Hostile("dtype_unknown_enum_value", _with(_dense("weights", np.ones(5, "<f4"), dtype=77))),
    Hostile("dtype_unspecified", _with(_dense("weights", np.ones(5, "<f4"), dtype=pb.DTYPE_UNSPECIFIED))),
    Hostile("dtype_bfloat16", _with(_dense("weights", np.ones(5, "<u2"), dtype=pb.DTYPE_BFLOAT16))),
    Hostile("dense_bytes_not_whole_values", _with(lambda r: setattr(r.data[0].loss_fn_inputs["weights"], "dense", b"\x00" * 7))),
    Hostile("target_tokens_as_float32", _with(lambda r: _dense("target_tokens", np.ones(_n(r), "<f4"))(r))),
    Hostile("target_tokens_past_vocabulary", _with(lambda r: _dense("target_tokens", np.full(_n(r), 10**9, "<i8"))(r))),
    Hostile("target_tokens_negative", _with(lambda r: _dense("target_tokens", np.full(_n(r), -7, "<i8"))(r))),
    # -- shapes that disagree with the tokens
    Hostile("weights_longer_than_tokens", _with(lambda r: _dense("weights", np.ones(_n(r) + 5, "<f4"))(r))),
    Hostile("targets_shorter_than_tokens", _with(lambda r: _dense("target_tokens", np.ones(_n(r) - 2, "<i8"))(r))),
    Hostile("targets_2d_for_1d_tokens", _with(lambda r: _dense("target_tokens", np.ones((2, _n(r)), "<i8"))(r))),
    Hostile("shape_disagrees_with_dense_bytes", _with(lambda r: _dense("weights", np.ones(4, "<f4"), shape=[5])(r))),
    Hostile("shape_product_overflows_int64", _with(lambda r: _dense("weights", np.ones(4, "<f4"), shape=[2**62, 2**62, 4])(r))),
    Hostile("target_tokens_missing", _with(lambda r: r.data[0].loss_fn_inputs.pop("target_tokens"))),
    # -- empty or missing parts
    Hostile("empty_body", lambda _: b""),
    Hostile("no_data", _with(lambda r: r.ClearField("data"))),
    Hostile("datum_without_model_input", _with(lambda r: r.data[0].ClearField("model_input"))),
    Hostile("datum_with_empty_tokens", _with(_set_tokens([]))),
    Hostile("token_bytes_not_whole_int32", _with(lambda r: setattr(r.data[0].model_input[0].encoded_text, "tokens", b"\x01\x02\x03"))),
    Hostile("input_tokens_past_vocabulary", _with(lambda r: _set_tokens([1] + [10**9] * (_n(r) - 1))(r))),
    Hostile("input_tokens_negative", _with(lambda r: _set_tokens([1] + [-3] * (_n(r) - 1))(r))),
    Hostile("image_chunk", _with(lambda r: r.data[0].model_input.add().image.SetInParent())),
    Hostile("no_loss_fn", _with(lambda r: r.ClearField("loss_fn"))),
    Hostile("unknown_loss_fn", _with(lambda r: setattr(r, "loss_fn", "no_such_loss"))),
    Hostile("no_model_id", _with(lambda r: r.ClearField("model_id"))),
    Hostile("unknown_model_id", _with(lambda r: setattr(r, "model_id", r.model_id + "x")), (404,)),
    Hostile("nan_in_loss_config", _with(lambda r: r.loss_fn_config.__setitem__("clip_low_threshold", float("nan")))),
    # -- truncations
    Hostile("truncated_to_1_byte", _truncated(0.0)),
    Hostile("truncated_at_a_third", _truncated(0.33)),
    Hostile("truncated_by_one_byte", _truncated(0.999)),
    # -- size and encodings
    Hostile("oversized_body", _oversized, (413,)),
    Hostile("zstd_bomb_256mib", _zstd_bomb, (413,), ZSTD),
    Hostile("zstd_header_on_plain_body", lambda m: _request(m).SerializeToString(), (400,), ZSTD),
    Hostile("zstd_truncated_frame", lambda m: zstandard.ZstdCompressor().compress(_request(m).SerializeToString())[:-6],
            (400,), ZSTD),
    Hostile("gzip_content_encoding", lambda m: _request(m).SerializeToString(), (400, 415),
            (("content-encoding", "gzip"),)),
]


class Models:
    """alice's model (trained after the fuzzing) and bob's (the target) on the harness's current
    server, each warmed by one step; and that server's warm peak memory, the memory bound's base."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self._for_start = 0
        self.alice = self.bob = ""
        self.warm_peak = 0

    def ensure(self, after: str) -> None:
        self.harness.ensure(after)
        if self._for_start == self.harness.starts:
            return
        h = self.harness
        self.alice = h.alice.create_model(h.alice.session(), h.server.model)
        self.bob = h.bob.create_model(h.bob.session(), h.server.model)
        h.alice.step(self.alice)
        h.bob.step(self.bob)
        self.warm_peak = h.server.peak_rss_bytes()
        self._for_start = h.starts


@pytest.fixture(scope="module")
def models(harness: Harness, deaths: Deaths) -> Models:
    return Models(harness)


@pytest.mark.parametrize("case", HOSTILE, ids=[c.name for c in HOSTILE])
def test_hostile_forward_backward_body_gets_a_json_4xx_naming_the_field(models: Models, case: Hostile) -> None:
    models.ensure(after="the previous case")
    server, bob = models.harness.server, models.harness.bob
    log_from = server.log_size()
    body = case.build(models.bob)
    response = send(lambda: bob.submit_forward_backward(body, {**dict(case.headers), **ONE_SHOT}))
    assert_json_error(server, response, case.statuses, f"{case.name} ({len(body)} bytes)", log_from)
    assert server.alive(), explain(server, f"{case.name}: server died", log_from)


def test_oversized_chunked_body_without_a_length_gets_413(models: Models) -> None:
    """A body streamed in chunks (no Content-Length) is cut off at the limit, not read to its end."""
    models.ensure(after="the hostile cases")
    server, bob = models.harness.server, models.harness.bob
    log_from = server.log_size()
    head = _request(models.bob).SerializeToString()
    pad = bytes(64 * 1024)

    def chunks() -> Iterator[bytes]:  # a valid start, then 4 MiB more (4x the limit) of a never-ending token chunk
        yield head + _key(3, 2) + _varint(4 * 1024**2)
        for _ in range(64):
            yield pad

    response = send(lambda: bob.http.post("/api/v1/forward_backward", content=chunks(),
                                          headers={"content-type": PROTOBUF}))
    assert_json_error(server, response, (413,), "4 MiB chunked body", log_from)


def _mutate(rng: random.Random, body: bytes) -> bytes:
    """One seeded mutation: byte flips, a cut, a duplicated slice, or random bytes spliced in."""
    data = bytearray(body)
    kind = rng.randrange(4)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
    elif kind == 1:
        del data[rng.randrange(len(data)):]
    elif kind == 2:
        i, j = sorted(rng.sample(range(len(data)), 2))
        data[i:i] = data[i:j]
    else:
        i = rng.randrange(len(data))
        data[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 12)))
    return bytes(data)


def test_random_mutations_of_a_valid_request_never_get_a_5xx(models: Models) -> None:
    """Seeded mutations: each is refused with a JSON 4xx naming a field, or accepted and then its
    future answers a result or a user-category failure, never a 5xx."""
    models.ensure(after="the hostile cases")
    server, bob = models.harness.server, models.harness.bob
    rng = random.Random(SEED)
    valid = _request(models.bob).SerializeToString()
    accepted = []
    for i in range(MUTATIONS):
        log_from = server.log_size()
        body = _mutate(rng, valid)
        response = send(lambda b=body: bob.submit_forward_backward(b, ONE_SHOT))
        what = f"mutation {i} (seed {SEED}): {body.hex()[:400]}"
        if not isinstance(response, Exception) and response.status_code == 200:
            accepted.append((what, response.json()["request_id"], log_from))
            continue
        assert_json_error(server, response, (400, 404), what, log_from)
    for what, request_id, log_from in accepted:
        result = bob.result(request_id)
        assert result.status_code == 200, explain(server, f"{what}: future answered {result.status_code} "
                                                           f"{result.text[:300]}", log_from)
        if result.headers.get("content-type", "").startswith("application/json"):
            failure = result.json()
            assert failure.get("error") and failure.get("category") == "user", explain(
                server, f"{what}: accepted, then its future answered {result.text[:300]} "
                        "(a bad request is the user's error, not the server's)", log_from)


def test_server_survives_with_bounded_memory_and_still_trains(models: Models, deaths: Deaths) -> None:
    """Runs after the hostile requests (pytest keeps file order): the server never died, its peak
    memory stayed within the bound, and alice's model still learns (the loss falls every step)."""
    harness = models.harness
    harness.ensure(after="the random mutations")
    died = deaths.since_module_start()
    assert not died, f"the server died {len(died)} time(s) under hostile requests:\n" + "\n\n".join(died)
    growth = harness.server.peak_rss_bytes() - models.warm_peak
    assert growth <= PEAK_GROWTH_BOUND_BYTES, (
        f"server peak memory rose {growth / 2**20:.0f} MiB over its warm peak "
        f"(bound {PEAK_GROWTH_BOUND_BYTES / 2**20:.0f} MiB)")
    losses = [harness.alice.step(models.alice) for _ in range(4)]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), f"loss did not fall: {losses}"


def test_hostile_bodies_without_a_key_get_401_before_the_body_is_used(harness: Harness) -> None:
    """A zstd bomb or a huge sparse shape with no key or a wrong key is a 401, and costs nothing."""
    harness.ensure(after="the training check")
    server = harness.server

    with httpx.Client(base_url=server.url, timeout=30) as anon:
        for headers in ({}, {"x-api-key": "tml-not-a-key-0123456789"}):
            for case in (c for c in HOSTILE if c.name in ("zstd_bomb_256mib", "sparse_weights_1d_2^30_cells",
                                                          "oversized_body", "empty_body")):
                log_from = server.log_size()
                body = case.build("some-model")
                r = anon.post("/api/v1/forward_backward", content=body,
                              headers={"content-type": PROTOBUF, **dict(case.headers), **headers})
                what = f"{case.name} with key {headers.get('x-api-key')!r}"
                assert r.status_code == 401, explain(server, f"{what}: {r.status_code} {r.text[:300]}", log_from)
                assert r.json().get("detail"), f"{what}: {r.text[:300]}"
