"""Hostile numbers in the JSON calls: Infinity and NaN, integers past 64 bits, 5000-digit literals,
deep nesting. Python's JSON parser accepts all of them, so each must be refused by validation
(a 400 naming the field) or, where the value is legal, served correctly and promptly.

Every body is sent as raw text, exactly as written here. The table names which it must be:
`refuse` (400/413/422 naming the field), `serve` (a 200 whose future completes within
`FUTURE_DEADLINE_S`), or `either` (refused as above, or served as above). After the table, the
tenant's own training and sampling must still work, with no queue left stalled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.fuzz.answers import ONE_SHOT, assert_json_error, explain, send
from tests.fuzz.conftest import Deaths, Harness
from tests.fuzz.tinker_http import PROTOBUF

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(120)]

#: a served hostile call's future must complete within this (a stalled queue fails the case)
FUTURE_DEADLINE_S = 10.0


@dataclass
class Ctx:
    """Ids the bodies refer to: alice's session, her model, a second model for ordered-seq cases,
    and a sampler on the base model."""

    session: str
    model: str
    seq_model: str
    sampler: str
    base_model: str


@dataclass(frozen=True)
class Case:
    name: str
    path: str
    body: Callable[[Ctx], str]
    expect: str  # "refuse", "serve" or "either"
    #: a word the refusal's `field` must hold (None: any field)
    field: str | None = None
    refused: tuple[int, ...] = (400, 413, 422)


def _optim(adam: str, seq: str = "") -> Callable[[Ctx], str]:
    return lambda c: f'{{"model_id": "{c.model}", {seq}"adam_params": {{{adam}}}, "type": "optim_step"}}'


def _optim_seq(seq: str) -> Callable[[Ctx], str]:
    return lambda c: f'{{"model_id": "{c.seq_model}", "seq_id": {seq}, "adam_params": {{}}, "type": "optim_step"}}'


def _create_model(fields: str) -> Callable[[Ctx], str]:
    return lambda c: f'{{"session_id": "{c.session}", "base_model": "{c.base_model}", {fields}}}'


def _sample(params: str = "", extra: str = "", prompt: str = "[1, 72, 104]") -> Callable[[Ctx], str]:
    return lambda c: (f'{{"sampling_session_id": "{c.sampler}", "prompt": {{"chunks": [{{"type": "encoded_text", '
                      f'"tokens": {prompt}}}]}}, "sampling_params": {{"max_tokens": 3{params}}}{extra}}}')


BIG = 2**64
HUGE_LITERAL = "7" * 5000

CASES = [
    # -- non-finite floats
    Case("optim_learning_rate_infinity", "optim_step", _optim('"learning_rate": Infinity'), "refuse", "learning_rate"),
    Case("optim_learning_rate_nan", "optim_step", _optim('"learning_rate": NaN'), "refuse", "learning_rate"),
    Case("optim_learning_rate_1e999", "optim_step", _optim('"learning_rate": 1e999'), "refuse", "learning_rate"),
    Case("optim_beta1_nan", "optim_step", _optim('"beta1": NaN'), "refuse", "beta1"),
    Case("optim_eps_infinity", "optim_step", _optim('"eps": Infinity'), "refuse", "eps"),
    Case("optim_weight_decay_infinity", "optim_step", _optim('"weight_decay": Infinity'), "refuse", "weight_decay"),
    Case("sample_temperature_infinity", "asample", _sample(', "temperature": Infinity'), "refuse", "temperature"),
    Case("sample_temperature_nan", "asample", _sample(', "temperature": NaN'), "refuse", "temperature"),
    Case("sample_top_p_nan", "asample", _sample(', "top_p": NaN'), "refuse", "top_p"),
    Case("sample_temperature_1e-300", "asample", _sample(', "temperature": 1e-300'), "either", "temperature"),
    # -- integers past 64 bits, and past Python's digit limit
    Case("optim_seq_id_2^63", "optim_step", _optim_seq(str(2**63)), "refuse", "seq_id"),
    Case("optim_seq_id_2^64", "optim_step", _optim_seq(str(BIG)), "refuse", "seq_id"),
    Case("optim_seq_id_5000_digits", "optim_step", _optim_seq(HUGE_LITERAL), "refuse"),
    Case("create_model_seq_id_2^40", "create_model", _create_model(f'"model_seq_id": {2**40}'), "either"),
    Case("create_model_seq_id_2^64", "create_model", _create_model(f'"model_seq_id": {BIG}'), "refuse", "model_seq_id"),
    Case("create_model_seed_2^64", "create_model", _create_model(f'"model_seq_id": 7, "lora_config": {{"rank": 4, "seed": {BIG}}}'),
         "either"),
    Case("create_model_seed_2^63", "create_model", _create_model(f'"model_seq_id": 8, "lora_config": {{"rank": 4, "seed": {2**63}}}'),
         "either"),
    Case("create_model_5000_digit_seq_id", "create_model", _create_model(f'"model_seq_id": {HUGE_LITERAL}'), "refuse"),
    Case("sample_seed_2^64", "asample", _sample(f', "seed": {BIG}'), "either"),
    Case("sample_seed_negative", "asample", _sample(', "seed": -1'), "either"),
    Case("sample_prompt_token_2^64", "asample", _sample(prompt=f"[1, {BIG}]"), "refuse", "prompt"),
    Case("sample_prompt_logprobs_last_n_2^64", "asample", _sample(extra=f', "prompt_logprobs_last_n": {BIG}'), "either"),
    Case("sample_num_samples_2^40", "asample", _sample(extra=f', "num_samples": {2**40}'), "refuse", "num_samples"),
    Case("sampling_session_seq_id_2^64", "create_sampling_session",
         lambda c: f'{{"session_id": "{c.session}", "sampling_session_seq_id": {BIG}, "base_model": "{c.base_model}"}}',
         "either"),
    Case("save_weights_ttl_2^64", "save_weights",
         lambda c: f'{{"model_id": "{c.model}", "path": "ttl-huge", "ttl_seconds": {BIG}}}', "either"),
    Case("save_weights_ttl_infinity", "save_weights",
         lambda c: f'{{"model_id": "{c.model}", "path": "ttl-inf", "ttl_seconds": Infinity}}', "refuse", "ttl_seconds"),
    # -- shapes of JSON
    Case("create_session_metadata_nested_50000_deep", "create_session",
         lambda c: '{"tags": [], "user_metadata": {"a": ' + "[" * 50000 + "]" * 50000 + "}}", "refuse"),
    Case("create_session_tags_not_strings", "create_session", lambda c: '{"tags": [1, {"x": NaN}]}', "refuse", "tags"),
    Case("retrieve_future_request_id_100k", "retrieve_future",
         lambda c: json.dumps({"request_id": "r" * 100_000}), "refuse", refused=(400, 404, 413, 422)),
    Case("retrieve_future_request_id_not_a_string", "retrieve_future", lambda c: '{"request_id": Infinity}', "refuse",
         "request_id"),
]


class Tenant:
    """alice's ids on the harness's current server, made once per server."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self._for_start = 0
        self.ctx: Ctx | None = None

    def ensure(self, after: str) -> Ctx:
        self.harness.ensure(after)
        if self.ctx is None or self._for_start != self.harness.starts:
            a, base = self.harness.alice, self.harness.server.model
            session = a.session()
            model = a.create_model(session, base, model_seq_id=0)
            seq_model = a.create_model(session, base, model_seq_id=1)
            sampler = a.ok_json("create_sampling_session", {"session_id": session, "sampling_session_seq_id": 0,
                                                            "base_model": base})["sampling_session_id"]
            self.ctx = Ctx(session, model, seq_model, sampler, base)
            self._for_start = self.harness.starts
        return self.ctx


@pytest.fixture(scope="module")
def tenant(harness: Harness, deaths: Deaths) -> Tenant:
    return Tenant(harness)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_json_number_is_refused_naming_the_field_or_served(tenant: Tenant, case: Case) -> None:
    ctx = tenant.ensure(after="the previous case")
    server, alice = tenant.harness.server, tenant.harness.alice
    log_from = server.log_size()
    body = case.body(ctx)
    what = f"{case.name}: POST /api/v1/{case.path} {body[:200]}"
    response = send(lambda: alice.http.post(f"/api/v1/{case.path}", content=body,
                                            headers={"content-type": "application/json", **ONE_SHOT}))
    if case.expect == "refuse" or (case.expect == "either" and not isinstance(response, Exception)
                                   and response.status_code != 200):
        assert_json_error(server, response, case.refused, what, log_from, field=case.field)
        return
    assert not isinstance(response, Exception), explain(server, f"{what}: no answer ({response!r})", log_from, dropped=True)
    assert response.status_code == 200, explain(server, f"{what}: {response.status_code} {response.text[:300]}",
                                                 log_from)
    request_id = response.json().get("request_id")
    if request_id is None:  # a direct answer (create_sampling_session)
        return
    result = alice.result(request_id, deadline_s=FUTURE_DEADLINE_S)
    assert result.status_code == 200, explain(server, f"{what}: its future answered {result.status_code} "
                                                      f"{result.text[:300]}", log_from)
    if result.headers.get("content-type", "").startswith("application/json"):
        assert "error" not in result.json(), explain(server, f"{what}: served, then failed: {result.text[:300]}",
                                                     log_from)
    if case.path == "create_model":  # the model it made must be usable
        model_id = result.json()["model_id"]
        info = alice.post_json("get_info", {"model_id": model_id})
        assert info.status_code == 200, explain(server, f"{what}: get_info {info.status_code} {info.text[:300]}",
                                                log_from)
        alice.seq[model_id] = 0
        alice.step(model_id)


def test_after_hostile_json_the_tenant_still_trains_samples_and_lists(tenant: Tenant, deaths: Deaths) -> None:
    """Nothing the table did left a stalled queue, a poisoned model or an unlistable record."""
    ctx = tenant.ensure(after="the hostile JSON cases")
    harness = tenant.harness
    died = deaths.since_module_start()
    assert not died, f"the server died {len(died)} time(s) under hostile JSON:\n" + "\n\n".join(died)
    alice, server = harness.alice, harness.server
    log_from = server.log_size()
    # the ordered-seq model's next step must not wait behind a hostile seq_id
    alice.seq[ctx.seq_model] = alice.seq.get(ctx.seq_model, 0)
    losses = [alice.step(ctx.seq_model) for _ in range(3)]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), f"loss did not fall: {losses}"
    fut = alice.ok_json("asample", json.loads(_sample()(ctx)))["request_id"]
    sampled = alice.result(fut, deadline_s=FUTURE_DEADLINE_S)
    assert sampled.headers.get("content-type", "").startswith(PROTOBUF), explain(
        server, f"sampling after the table: {sampled.status_code} {sampled.text[:300]}", log_from)
    for path in ("/api/v1/sessions", "/api/v1/training_runs", "/api/v1/checkpoints",
                 f"/api/v1/sessions/{ctx.session}"):
        r = alice.http.get(path)
        assert r.status_code == 200, explain(server, f"GET {path}: {r.status_code} {r.text[:300]}", log_from)
