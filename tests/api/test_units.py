"""Pure protocol units of the gateway: ids and request ids, tinker:// paths, keys, codecs, error mapping."""

from __future__ import annotations

import hashlib

import pytest
import zstandard
from tinker.proto import tinker_public_pb2 as pb

from loraplane.api import auth, codecs, ids
from loraplane.core import artifacts, errors
from loraplane.core.runtime_ops import OpKind

STORE = "file:///srv/store"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("s-0123456789ab:train:0", ("s-0123456789ab", 0)),
        ("s-0123456789ab:train:17", ("s-0123456789ab", 17)),
    ],
)
def test_model_ids_parse_into_session_and_seq(value: str, expected: tuple[str, int]) -> None:
    assert ids.parse_model_id(value) == expected


@pytest.mark.parametrize("value", ["", "s-0123456789ab", "s-0123456789AB:train:0", "x:train:0", 5, None,
                                   "s-0123456789ab:sample:0", "s-0123456789ab:train:-1"])
def test_malformed_model_ids_are_unknown_models(value: object) -> None:
    with pytest.raises(errors.NotFound) as info:
        ids.parse_model_id(value)
    assert info.value.field == "model_id"


def test_new_session_ids_are_lowercase_dns_safe() -> None:
    sid = ids.new_session_id()
    assert ids.SESSION_RE.match(sid) and sid == sid.lower()
    assert ids.job_name(ids.model_id(sid, 3)) == f"{sid}-train-3"


@pytest.mark.parametrize(
    "ref",
    [
        ids.FutureRef("s-0123456789ab-train-0", "runtime-0", OpKind.FORWARD_BACKWARD, "r-12.a"),
        ids.FutureRef("s-0123456789ab-sample-4", "pod-a", OpKind.SAMPLE, "abc"),
        ids.FutureRef("s-0123456789ab-train-2", "cp", OpKind.CREATE_MODEL, "0"),
    ],
)
def test_request_ids_round_trip_and_name_their_owner(ref: ids.FutureRef) -> None:
    assert ids.parse_request_id(ref.encode()) == ref
    assert ref.session_id == "s-0123456789ab"


@pytest.mark.parametrize(
    ("legacy", "op"),
    [("fwdbwd", OpKind.FORWARD_BACKWARD), ("optim", OpKind.OPTIM_STEP), ("save", OpKind.SAVE_STATE),
     ("load", OpKind.LOAD_STATE), ("create", OpKind.CREATE_MODEL), ("load_create", OpKind.CREATE_FROM_STATE),
     ("unload", OpKind.UNLOAD_MODEL), ("snapshot", OpKind.SNAPSHOT)],
)
def test_request_ids_of_earlier_releases_still_name_their_op(legacy: str, op: OpKind) -> None:
    assert ids.parse_request_id(f"s-0123456789ab-train-0.pod.{legacy}.1").op is op


@pytest.mark.parametrize("value", ["", "req-1", "a.b.c.d", "s-0123456789ab-train-0.pod.nope.1",
                                   "s-0123456789ab-train-0.POD.fwdbwd.1", "s-0123456789ab-train-0.pod.fwdbwd.", 3])
def test_malformed_request_ids_are_unknown_futures(value: object) -> None:
    with pytest.raises(errors.NotFound):
        ids.parse_request_id(value)


@pytest.mark.parametrize(
    ("path", "run", "segment", "name"),
    [
        ("tinker://s-0123456789ab:train:0/weights/step-5", "s-0123456789ab:train:0", "weights", "step-5"),
        ("tinker://run/sampler_weights/final.v2", "run", "sampler_weights", "final.v2"),
    ],
)
def test_tinker_paths_parse_and_map_onto_the_store(path: str, run: str, segment: str, name: str) -> None:
    parsed = artifacts.parse_tinker_path(path)
    assert (parsed.run_id, parsed.segment, parsed.name) == (run, segment, name)
    assert str(parsed) == path
    url = artifacts.checkpoint_url(STORE, parsed)
    assert url == f"{STORE}/runs/{run}/{segment}/{name}"
    assert artifacts.tinker_path_for_url(STORE, url) == parsed


@pytest.mark.parametrize("path", ["s3://x/y/z", "tinker://a/b", "tinker://a/weights/b/c", "tinker://a/other/b",
                                  "tinker://a/weights/..", "tinker://../weights/x", "tinker://a/weights/"])
def test_bad_tinker_paths_are_rejected_naming_the_field(path: str) -> None:
    with pytest.raises(errors.InvalidInput) as info:
        artifacts.parse_tinker_path(path, field="model_path")
    assert info.value.field == "model_path"


def test_store_urls_outside_runs_have_no_tinker_path() -> None:
    assert artifacts.tinker_path_for_url(STORE, "file:///elsewhere/runs/a/weights/b") is None
    assert artifacts.tinker_path_for_url(STORE, f"{STORE}/runs/a/other/b") is None


def test_default_store_follows_xdg_data_home() -> None:
    assert artifacts.default_store_url({"XDG_DATA_HOME": "/d"}) == "file:///d/loraplane/store"
    assert artifacts.default_store_url({"HOME": "/home/u"}) == "file:///home/u/.local/share/loraplane/store"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("alice=tml-secret", ("alice", hashlib.sha256(b"tml-secret").hexdigest())),
        ("  bob = sha256:" + "ab" * 32, ("bob", "ab" * 32)),
        ("# comment", None),
        ("", None),
    ],
)
def test_key_lines_become_tenant_and_hash(line: str, expected: tuple[str, str] | None) -> None:
    assert auth.parse_key_line(line, source="test") == expected


@pytest.mark.parametrize("line", ["alice", "alice=", "Alice=tml-x", "alice=plain-key", "a_b=tml-x", "=tml-x"])
def test_bad_key_lines_are_refused(line: str) -> None:
    with pytest.raises(errors.InvalidInput):
        auth.parse_key_line(line, source="keys.txt")


def test_key_table_maps_keys_to_tenants_and_rejects_others(tmp_path) -> None:  # type: ignore[no-untyped-def]
    f = tmp_path / "keys"
    f.write_text(f"# tenants\nbob=sha256:{hashlib.sha256(b'tml-bob').hexdigest()}\n")
    table = auth.load_keys(inline=auth.split_inline("alice=tml-alice, carol=tml-c"), files=[str(f)])
    assert table.tenant_for("tml-alice") == "alice"
    assert table.tenant_for("tml-bob") == "bob"
    for bad in (None, "", "tml-nobody", "tml-alic"):
        with pytest.raises(errors.Unauthenticated):
            table.tenant_for(bad)


def test_missing_keys_file_is_a_clear_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(errors.InvalidInput, match="cannot read API keys file"):
        auth.load_keys(files=[str(tmp_path / "absent")])


def _fb_request(model_id: str = "s-0123456789ab:train:0", seq_id: int = 7, n: int = 3) -> bytes:
    req = pb.ForwardBackwardRequest(model_id=model_id, seq_id=seq_id, loss_fn="cross_entropy")
    for _ in range(n):
        datum = req.data.add()
        datum.model_input.add().encoded_text.tokens = bytes(range(16))
        datum.loss_fn_inputs["target_tokens"].dense = b"\x01" * 32
    req.loss_fn_config["x"] = 1.0
    return req.SerializeToString()


@pytest.mark.parametrize(("model_id", "seq_id"), [("s-0123456789ab:train:0", 7), ("m", 0), ("s-a:train:1", 2**31 - 1)])
def test_routing_fields_read_model_and_seq_without_parsing_the_batch(model_id: str, seq_id: int) -> None:
    assert codecs.routing_fields(_fb_request(model_id, seq_id)) == (model_id, seq_id)


@pytest.mark.parametrize("body", [b"\xff\xff\xff", _fb_request()[:10], b"\x0a\x50abc", pb.ForwardBackwardRequest(seq_id=3).SerializeToString()])
def test_malformed_protobuf_is_invalid_input(body: bytes) -> None:
    with pytest.raises(errors.InvalidInput):
        codecs.routing_fields(body)


def test_zstd_bodies_are_decoded_and_bounded() -> None:
    raw = _fb_request(n=50)
    packed = zstandard.ZstdCompressor().compress(raw)
    assert codecs.decode_body(packed, "zstd", max_bytes=10**6) == raw
    assert codecs.decode_body(raw, None, max_bytes=10**6) == raw
    with pytest.raises(errors.PayloadTooLarge):
        codecs.decode_body(packed, "zstd", max_bytes=100)
    with pytest.raises(errors.InvalidInput, match="zstd"):
        codecs.decode_body(b"not zstd", "zstd", max_bytes=10**6)
    with pytest.raises(errors.InvalidInput, match="Content-Encoding"):
        codecs.decode_body(raw, "br", max_bytes=10**6)


@pytest.mark.parametrize(
    ("prompt", "tokens"),
    [
        ({"chunks": [{"type": "encoded_text", "tokens": [1, 2]}, {"tokens": [3]}]}, [1, 2, 3]),
    ],
)
def test_prompts_flatten_encoded_text(prompt: dict, tokens: list[int]) -> None:
    assert codecs.prompt_tokens(prompt) == tokens


@pytest.mark.parametrize(
    ("prompt", "field"),
    [
        ({}, "prompt.chunks"),
        ({"chunks": []}, "prompt"),
        ({"chunks": [{"type": "image", "data": "x"}]}, "prompt.chunks[0].type"),
        ({"chunks": [{"type": "encoded_text", "tokens": ["a"]}]}, "prompt.chunks[0].tokens"),
    ],
)
def test_bad_prompts_name_the_field(prompt: dict, field: str) -> None:
    with pytest.raises(errors.InvalidInput) as info:
        codecs.prompt_tokens(prompt)
    assert info.value.field == field


def test_sequence_ids_one_per_sample() -> None:
    assert codecs.sequence_ids("s-0123456789ab:sample:1", 4, 3) == [
        "s-0123456789ab:sample:1:4:0", "s-0123456789ab:sample:1:4:1", "s-0123456789ab:sample:1:4:2"]


@pytest.mark.parametrize(
    ("record", "now", "expired"),
    [
        ({}, "2026-01-01T00:00:00Z", False),
        ({"expires_at": None}, "2026-01-01T00:00:00Z", False),
        ({"expires_at": "2026-01-01T00:00:10Z"}, "2026-01-01T00:00:09Z", False),
        ({"expires_at": "2026-01-01T00:00:10Z"}, "2026-01-01T00:00:10Z", True),
        ({"expires_at": "not a time"}, "2026-01-01T00:00:10Z", False),
    ],
)
def test_checkpoint_expiry(record: dict, now: str, expired: bool) -> None:
    assert artifacts.is_expired(record, now) is expired


@pytest.mark.parametrize(("ttl", "expected"), [(None, None), (0, None), (90, "2026-01-01T00:01:30Z")])
def test_expiry_time_counts_from_the_save(ttl: int | None, expected: str | None) -> None:
    assert artifacts.expiry_time("2026-01-01T00:00:00Z", ttl) == expected


@pytest.mark.parametrize(
    ("stored", "rank", "alpha"),
    [({}, 32, 32), ({"rank": 8, "alpha": None, "seed": None}, 8, 32), ({"rank": 4, "alpha": 8.0, "dropout": 0.1}, 4, 8.0)],
)
def test_a_run_records_lora_config_of_any_release_rebuilds_the_adapter(stored: dict, rank: int, alpha: float) -> None:
    from loraplane.api import jobs

    lora = jobs.lora_of(stored)
    assert (lora.rank, lora.alpha) == (rank, alpha)
