"""Protobuf and JSON codecs of the runtime API (`loraplane.runtime.wire`), checked against the SDK's own codecs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import zstandard
from tinker import types as tt
from tinker.proto import request_conv, response_conv
from tinker.proto import tinker_public_pb2 as pb

from loraplane.core import errors, runtime_ops
from loraplane.runtime import engine as eng
from loraplane.runtime import executor as ex
from loraplane.runtime import sampling, wire


def sdk_request(tokens, targets, weights=None, seq_id=3, **fbi) -> bytes:
    inputs = {"target_tokens": tt.TensorData(data=targets, dtype="int64")}
    if weights is not None:
        inputs["weights"] = tt.TensorData(data=weights, dtype="float32")
    datum = tt.Datum(model_input=tt.ModelInput.from_ints(tokens), loss_fn_inputs=inputs)
    fbi.setdefault("loss_fn", "cross_entropy")
    req = tt.ForwardBackwardRequest(forward_backward_input=tt.ForwardBackwardInput(data=[datum], **fbi),
                                    model_id="m", seq_id=seq_id)
    return request_conv.forward_backward_request_to_proto(req).SerializeToString()


def test_sdk_forward_backward_request_decodes_to_a_work():
    body = sdk_request([1, 2, 3], [2, 3, 4], [0.0, 1.0, 0.5], loss_fn="ppo",
                       loss_fn_config={"clip_low_threshold": 0.8, "note": "x"})
    seq, work = wire.decode_forward_backward("a", body)
    assert seq == 3 and work.adapter_id == "a" and work.loss_fn == "ppo"
    assert work.loss_config == {"clip_low_threshold": 0.8}
    assert work.data[0].tokens.tolist() == [1, 2, 3]
    assert work.data[0].loss_inputs["target_tokens"].dtype == torch.int64
    assert work.data[0].loss_inputs["weights"].tolist() == [0.0, 1.0, 0.5]


def _csr(values, crow, col, shape, dtype=pb.DTYPE_FLOAT32, np_dtype="<f4"):
    t = pb.Tensor(dtype=dtype, shape=shape)
    t.sparse_csr.values = np.asarray(values, dtype=np_dtype).tobytes()
    t.sparse_csr.crow_indices = np.asarray(crow, dtype="<i8").tobytes()
    t.sparse_csr.col_indices = np.asarray(col, dtype="<i8").tobytes()
    return t


@pytest.mark.parametrize(
    ("tensor", "expected"),
    [
        pytest.param(pb.Tensor(dense=np.array([1.5, -2], "<f4").tobytes(), dtype=pb.DTYPE_FLOAT32), [1.5, -2.0],
                     id="dense-f32-no-shape"),
        pytest.param(pb.Tensor(dense=np.array([7, 8], "<i8").tobytes(), dtype=pb.DTYPE_INT64, shape=[2]), [7, 8],
                     id="dense-i64"),
        pytest.param(_csr([3.0], [0, 1], [2], [4]), [0.0, 0.0, 3.0, 0.0], id="csr-1d-zero-fill"),
        pytest.param(_csr([1.0, 2.0], [0, 1, 1, 2], [0, 1], [3, 2]), [[1.0, 0.0], [0.0, 0.0], [0.0, 2.0]],
                     id="csr-2d"),
        pytest.param(_csr([5], [0, 1], [1], [3], pb.DTYPE_INT64, "<i8"), [0, 5, 0], id="csr-int64"),
    ],
)
def test_decode_tensor_dense_and_sparse(tensor, expected):
    assert wire.decode_tensor(tensor, "x", max_values=1000).tolist() == expected


@pytest.mark.parametrize(
    "tensor",
    [
        pytest.param(pb.Tensor(dense=b"\x00" * 5, dtype=pb.DTYPE_FLOAT32), id="ragged-bytes"),
        pytest.param(pb.Tensor(dense=b"\x00" * 8, dtype=pb.DTYPE_FLOAT32, shape=[3]), id="shape-mismatch"),
        pytest.param(pb.Tensor(dense=b"\x00" * 8, dtype=pb.DTYPE_BFLOAT16), id="unsupported-dtype"),
        pytest.param(_csr([1.0], [0, 1], [9], [4]), id="csr-col-out-of-range"),
        pytest.param(_csr([1.0], [0, 2], [0], [4]), id="csr-crow-inconsistent"),
    ],
)
def test_decode_tensor_rejects_malformed_tensors_naming_the_field(tensor):
    with pytest.raises(errors.InvalidInput) as info:
        wire.decode_tensor(tensor, "data[0].loss_fn_inputs.weights", max_values=1000)
    assert info.value.field == "data[0].loss_fn_inputs.weights"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param(b"\xff\xff\xff", "body", id="not-protobuf"),
        pytest.param(pb.ForwardBackwardRequest(seq_id=1, loss_fn="cross_entropy").SerializeToString(), "data",
                     id="no-data"),
        pytest.param(pb.ForwardBackwardRequest(seq_id=1).SerializeToString(), "loss_fn", id="no-loss-fn"),
    ],
)
def test_malformed_requests_name_the_problem(body, field):
    with pytest.raises(errors.InvalidInput) as info:
        wire.decode_forward_backward("a", body)
    assert info.value.field == field


def test_image_chunks_are_refused_with_their_position():
    req = pb.ForwardBackwardRequest(loss_fn="cross_entropy")
    d = req.data.add()
    d.model_input.add().image.data = b"png"
    with pytest.raises(errors.InvalidInput) as info:
        wire.decode_forward_backward("a", req.SerializeToString())
    assert info.value.field == "data[0].model_input[0]"


def test_zstd_bodies_are_decompressed_and_bombs_refused():
    body = sdk_request([1, 2], [2, 3])
    packed = zstandard.ZstdCompressor().compress(body)
    assert wire.decompress(packed, 1 << 20) == body
    assert wire.decompress(body, 1 << 20) == body
    with pytest.raises(errors.PayloadTooLarge):
        wire.decompress(zstandard.ZstdCompressor().compress(b"\0" * 10_000), 1000)


def test_forward_backward_output_reads_back_through_the_sdk():
    result = eng.FwdBwdResult(logprobs=[torch.tensor([-1.0, -2.0]), torch.tensor([-0.5])],
                              metrics={"loss:sum": 3.5})
    out = response_conv.deserialize_forward_backward_output(wire.encode_forward_backward_output(result))
    assert out.metrics == {"loss:sum": 3.5}
    assert [o["logprobs"].tolist() for o in out.loss_fn_outputs] == [[-1.0, -2.0], [-0.5]]


def test_sample_response_reads_back_through_the_sdk_with_nan_where_unscored():
    result = sampling.SampleResult(
        sequences=[sampling.SampledSequence([5, 6], [-0.1, -0.2], "length"),
                   sampling.SampledSequence([7], [-0.3], "stop")],
        prompt_logprobs=[None, -1.0, -2.0, -3.0],
    )
    out = response_conv.deserialize_sample_response(wire.encode_sample_response(result, 4, prompt_logprobs_last_n=2))
    assert [s.tokens for s in out.sequences] == [[5, 6], [7]]
    assert [s.stop_reason for s in out.sequences] == ["length", "stop"]
    assert out.sequences[0].logprobs == pytest.approx([-0.1, -0.2])
    assert out.prompt_logprobs[:2] == [None, None] and out.prompt_logprobs[2:] == [-2.0, -3.0]
    assert not any(isinstance(v, float) and math.isnan(v) for v in out.prompt_logprobs)


@pytest.mark.parametrize(
    ("body", "payload_type", "field"),
    [
        ({"op": "optim_step", "adam_params": {"learning_rate": 0.01}}, ex.OptimStep, None),
        ({"op": "save_state", "dest": "/tmp/x"}, ex.SaveState, None),
        ({"op": "snapshot", "sampler_id": "s"}, ex.Snapshot, None),
        ({"op": "save_state"}, None, "dest"),
        ({"op": "load_state"}, None, "source"),
        ({"op": "train"}, None, "op"),
        ({"op": "optim_step", "adam_params": {"learning_rate": -1}}, None, "adam_params.learning_rate"),
        ({"op": "optim_step", "adam_params": {"lr": 1}}, None, "adam_params.lr"),
        ({"op": "optim_step", "seq_id": "x"}, None, "seq_id"),
    ],
)
def test_json_ops_parse_or_name_the_bad_field(body, payload_type, field):
    if payload_type is not None:
        assert isinstance(wire.op_from_body("a", wire.parse_body(runtime_ops.OpBody, body)), payload_type)
        return
    with pytest.raises(errors.InvalidInput) as info:
        wire.op_from_body("a", wire.parse_body(runtime_ops.OpBody, body))
    assert info.value.field == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt_tokens": []}, "prompt_tokens"),
        ({"prompt_tokens": [1, 999]}, "prompt_tokens[1]"),
        ({"prompt_tokens": [1], "num_samples": 0}, "num_samples"),
        ({"prompt_tokens": [1], "sampling_params": {"top_p": 0}}, "sampling_params.top_p"),
    ],
)
def test_sample_bodies_name_the_bad_field(body, field):
    with pytest.raises(errors.InvalidInput) as info:
        wire.sample_from_body(wire.parse_body(runtime_ops.SampleBody, body), vocab_size=259)
    assert info.value.field == field
