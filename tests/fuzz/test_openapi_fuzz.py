"""Schema-driven fuzzing of every gateway route (schemathesis), with a valid key, no key and a wrong key.

The schema comes from the app object (`app.openapi()`), not from `GET /openapi.json`, which a
production gateway does not serve. It is the single-node app `loraplane serve` builds, over the
same tiny model, and the requests go to a real `loraplane serve` on loopback (the harness). The
per-step routes read their bodies themselves, so the schema does not describe them; their JSON
bodies (`optim_step`, `retrieve_future`) are added here from the protocol models, so the fuzzer
sends them well-formed and malformed bodies too (forward_backward's protobuf has its own fuzzer).

Seeded (`derandomize`) and bounded: `EXAMPLES` per operation with the valid key, fewer without.
Asserts: never a 5xx or a dropped connection; every error answer is JSON with `detail` and
`error`; without a valid key every route but health answers 401.
"""

from __future__ import annotations

import copy
import tempfile
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings

from loraplane.api import auth, protocol
from loraplane.singlenode.server import ServeConfig, build_app
from tests.fuzz import served
from tests.fuzz.answers import explain, send
from tests.fuzz.conftest import Deaths, Harness

pytestmark = [pytest.mark.fuzz, pytest.mark.timeout(180)]

#: generated examples per operation with a valid key; without one, the answer must not depend on the body
EXAMPLES = 10
EXAMPLES_WITHOUT_KEY = 3
KEY_HEADER = "x-api-key"
#: request bodies of the routes that read their own (the schema has none for them)
OWN_BODIES = {"/api/v1/optim_step": protocol.OptimStep, "/api/v1/retrieve_future": protocol.RetrieveFuture}
PUBLIC_PATHS = ("/healthz", "/api/v1/healthz")
#: paths whose own signature is the credential: without one they are refused (403, or 400 for a
#: malformed name), key or no key
SIGNED_PREFIXES = ("/api/v1/external_weights_files/",)


def gateway_openapi() -> dict[str, Any]:
    """The OpenAPI document of the app `loraplane serve` builds (the app object's, not a route's),
    with the per-step routes' JSON bodies added. Building the app loads no model: that happens in
    its lifespan, which never runs here, so a placeholder model path does."""
    with tempfile.TemporaryDirectory() as store:
        app = build_app(ServeConfig(models={"tiny/base": store}, keys=auth.load_keys(inline=["x=tml-x"]),
                                    store_url=f"file://{store}"))
        schema = copy.deepcopy(app.openapi())
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for path, model in OWN_BODIES.items():
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
        schema["paths"][path]["post"]["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    return schema


schema = schemathesis.openapi.from_dict(gateway_openapi())


def _call(case: Any, harness: Harness, key: str | None) -> Any:
    harness.ensure(after="an earlier example")
    if case.headers:
        case.headers.pop(KEY_HEADER, None)
        case.headers.pop(KEY_HEADER.title(), None)
    headers = {KEY_HEADER: key} if key is not None else {}
    server = harness.server
    log_from = server.log_size()
    response = send(lambda: case.call(base_url=server.url, headers=headers, timeout=30))
    what = f"{case.method} {case.formatted_path} (key {'valid' if key in served.KEYS.values() else key!r})\n" \
           f"reproduce: {case.as_curl_command()}"
    assert not isinstance(response, Exception), explain(server, f"{what}: no answer ({response!r})", log_from, dropped=True)
    assert response.status_code < 500, explain(server, f"{what}: {response.status_code} {response.text[:300]}",
                                               log_from)
    if response.status_code >= 400:
        content_type = next((v[0] for k, v in response.headers.items() if k.lower() == "content-type"), "")
        assert content_type.startswith("application/json"), \
            f"{what}: {response.status_code} answer is not JSON: {response.text[:300]}"
        body = response.json()
        assert isinstance(body, dict) and body.get("detail") and body.get("error"), \
            f"{what}: {response.status_code} answer without detail/error: {body}"
    return response


COMMON = {"derandomize": True, "deadline": None, "database": None, "suppress_health_check": list(HealthCheck),
          "phases": [Phase.explicit, Phase.generate]}


@schema.parametrize()
@settings(max_examples=EXAMPLES, **COMMON)
def test_fuzzed_requests_with_a_valid_key_never_get_a_5xx_and_errors_are_json(case: Any, harness: Harness) -> None:
    _call(case, harness, served.KEYS["alice"])


@schema.parametrize()
@settings(max_examples=EXAMPLES_WITHOUT_KEY, **COMMON)
def test_fuzzed_requests_without_a_valid_key_get_401(case: Any, harness: Harness) -> None:
    # a method the path does not have may be refused (405) before authentication: it reveals nothing
    public = case.path in PUBLIC_PATHS or case.method.upper() != case.operation.method.upper()
    signed = case.path.startswith(SIGNED_PREFIXES)
    for key in (None, "tml-wrong-0123456789", ""):
        response = _call(case, harness, key)
        if signed and not public:
            assert response.status_code in (400, 403, 404), (
                f"{case.method} {case.formatted_path}: {response.status_code} {response.text[:300]} "
                "(an unsigned download must be refused)")
        elif not public:
            assert response.status_code == 401, (
                f"{case.method} {case.formatted_path} with key {key!r}: {response.status_code} "
                f"{response.text[:300]} (expected 401 before anything else)\nreproduce: {case.as_curl_command()}")


def test_the_server_survived_the_fuzzing(harness: Harness, deaths: Deaths) -> None:
    harness.ensure(after="the schema fuzzing")
    died = deaths.since_module_start()
    assert not died, f"the server died {len(died)} time(s) under schema fuzzing:\n" + "\n\n".join(died)
