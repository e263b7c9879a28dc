"""One tenant floods `loraplane serve` with 10,000 requests; the service bends, the other tenant does not.

The flooder runs in a process of its own (tests/utils/flooding.py), 64 connections sending
forward_backward and asample requests as fast as they are answered. It must be told to wait
(429), never be answered 503 or fail another tenant, and the server's memory must stay bounded;
the per-tenant series of `/metrics` must show who was refused and whose work the model ran.
Alice's training steps are measured alone and under the flood in the same test (medians of 21):
within 2x is the goal, and where the flood still costs her more the test reports it (xfail) with
the numbers rather than hiding them.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import tinker
from prometheus_client.parser import text_string_to_metric_families

from tests.acceptance.conftest import KEYS, Server, start_server
from tests.acceptance.helpers import ce_batch
from tests.fuzz.tinker_http import TinkerHttp

FLOOD_REQUESTS = 10_000
CONCURRENCY = 64
#: the flooder's deadline, a net against a server that hangs, not the flood's length: the flood
#: lasts as long as the server takes to answer 10,000 requests, which on a slow 2-core machine
#: (about 67 answers a second) is 150 s
FLOOD_DEADLINE_S = 480
#: alice's steps in each phase; the medians of 21 hold still from run to run where those of 9 did not
STEPS = 21
#: how much the server's peak resident memory may grow over its size before the flood (docs/limits.md)
RSS_GROWTH_BOUND = 256 * 2**20
METRICS = {"Authorization": "Bearer scrape"}
ENV = {
    "LORAPLANE_GATEWAY__METRICS_TOKEN": "scrape",
    # a rate and queues small enough that the flood meets each of them within the test's seconds
    "LORAPLANE_GATEWAY__RATE_PER_S": "200", "LORAPLANE_GATEWAY__RATE_BURST": "200",
    "LORAPLANE_RUNTIME__MAX_QUEUED_TOKENS_PER_TENANT": "2048", "LORAPLANE_RUNTIME__MAX_QUEUED_SAMPLES_PER_TENANT": "32",
    # passes sized to the model as in bench/fairness.py: about two steps of a tenant
    "LORAPLANE_RUNTIME__MAX_BATCH_TOKENS": "128", "LORAPLANE_RUNTIME__MAX_DECODE_ROWS": "16",
}


@pytest.fixture(scope="module")
def flooded(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    keys = {"alice": KEYS["alice"], "bob": f"{KEYS['bob']} max_lora_rank=8"}
    srv = start_server(tiny_model_dir, f"file://{tmp_path_factory.mktemp('store')}", keys=keys, env=ENV)
    yield srv
    srv.stop()


def series(server: Server) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the server's /metrics, keyed by name and labels."""
    text = httpx.get(f"{server.url}/metrics", headers=METRICS, timeout=30).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    """The sum of `name` over the samples whose labels include `labels` (0 when none)."""
    return sum(v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls)


def step_seconds(client: tinker.TrainingClient) -> float:
    start = time.perf_counter()
    fb = client.forward_backward(ce_batch(), "cross_entropy")
    client.optim_step(tinker.AdamParams(learning_rate=1e-3)).result()
    fb.result()
    return time.perf_counter() - start


def memory(pid: int, field: str) -> int:
    """VmRSS / VmHWM of a process, bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for pid {pid}")


def test_a_tenant_flooding_10000_requests_is_refused_while_another_keeps_its_step_latency(flooded: Server) -> None:
    alice = tinker.ServiceClient(base_url=flooded.url, api_key=KEYS["alice"]).create_lora_training_client(
        base_model=flooded.model, rank=4, seed=0).result()
    step_seconds(alice)  # warm-up
    alone = [step_seconds(alice) for _ in range(STEPS)]

    bob = TinkerHttp(flooded.url, KEYS["bob"])
    session = bob.session()
    bob_model = bob.create_model(session, flooded.model, rank=4)
    sampler = bob.ok_json("create_sampling_session", {"session_id": session, "sampling_session_seq_id": 0,
                                                      "base_model": flooded.model})["sampling_session_id"]
    bob.close()
    before = series(flooded)
    rss_before = memory(flooded.proc.pid, "VmRSS")

    flooder = subprocess.Popen(
        [sys.executable, "-m", "tests.utils.flooding", flooded.url, KEYS["bob"], bob_model, sampler,
         "--requests", str(FLOOD_REQUESTS), "--concurrency", str(CONCURRENCY), "--seconds", str(FLOOD_DEADLINE_S)],
        stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[2])
    try:
        assert flooder.stdout is not None and flooder.stdout.readline().strip() == "flooding"
        under_flood = []
        while len(under_flood) < STEPS:
            under_flood.append(step_seconds(alice))
        flood_went_on = flooder.poll() is None
        report = json.loads(flooder.stdout.readline())
        assert flooder.wait(timeout=60) == 0
    finally:
        flooder.kill()
    after = series(flooded)
    peak = memory(flooded.proc.pid, "VmHWM")

    ratio = statistics.median(under_flood) / statistics.median(alone)
    print(f"alice's step median: alone {statistics.median(alone) * 1e3:.1f} ms, under flood "
          f"{statistics.median(under_flood) * 1e3:.1f} ms ({ratio:.2f}x); flood: {report}; "
          f"RSS {rss_before / 2**20:.0f} MiB before, peak {peak / 2**20:.0f} MiB; steps alone "
          f"{[round(t * 1e3) for t in alone]} ms, flooded {[round(t * 1e3) for t in under_flood]} ms")
    assert flood_went_on, "the flood ended before alice's steps under it did; nothing was measured"
    assert report["sent"] == FLOOD_REQUESTS
    statuses = report["statuses"]
    assert sum(statuses.values()) == FLOOD_REQUESTS and set(statuses) <= {"200", "429"}, statuses  # no 503: a
    # tenant's samples are refused (429) before they fill the runtime's queue for everyone
    assert statuses.get("429", 0) > 0
    assert peak - rss_before < RSS_GROWTH_BOUND, f"peak RSS {peak / 2**20:.0f} MiB, {rss_before / 2**20:.0f} before"
    assert alice.forward_backward(ce_batch(), "cross_entropy").result().metrics  # alice is still served

    # what /metrics says: bob was refused by the rate limit and the runtime's queue limits ...
    refused = {limit: value(after, "loraplane_gateway_tenant_rejections_total", tenant="bob", limit=limit)
               - value(before, "loraplane_gateway_tenant_rejections_total", tenant="bob", limit=limit)
               for limit in ("rate_per_s", "max_queued_tokens_per_tenant", "max_queued_tokens",
                             "max_queued_samples_per_tenant")}
    assert sum(refused.values()) == statuses["429"], refused
    assert value(after, "loraplane_gateway_tenant_rejections_total", tenant="alice") == 0
    assert (value(after, "loraplane_gateway_tenant_requests_total", tenant="bob")
            - value(before, "loraplane_gateway_tenant_requests_total", tenant="bob")) >= FLOOD_REQUESTS
    # ... and both tenants' work ran on the model, each with its own ops, tokens and time
    for tenant in ("alice", "bob"):
        for name in ("loraplane_runtime_tenant_model_seconds_total", "loraplane_runtime_tenant_tokens_total"):
            assert value(after, name, tenant=tenant) > value(before, name, tenant=tenant), (name, tenant)
    ops = "loraplane_runtime_tenant_ops_total"
    assert (value(after, ops, tenant="alice", op="optim_step", outcome="ok")
            - value(before, ops, tenant="alice", op="optim_step", outcome="ok")) == STEPS
    assert value(after, "loraplane_runtime_tenant_sampled_tokens_total", tenant="bob") > 0
    assert value(after, "loraplane_runtime_tenant_sampled_tokens_total", tenant="alice") == 0

    # alice's steps: within 2x of alone is the goal; where the flood's admitted work still slows her
    # more (the runtime's side, measured here), the test says so with the numbers instead of passing.
    if ratio > 2.0:
        pytest.xfail(f"alice's median step under the flood is {ratio:.2f}x her median alone "
                     f"({[round(t * 1e3) for t in alone]} ms alone, {[round(t * 1e3) for t in under_flood]} ms flooded)")


def test_quota_refusals_and_queue_depth_are_counted_per_tenant(flooded: Server) -> None:
    service = tinker.ServiceClient(base_url=flooded.url, api_key=KEYS["bob"])
    before = series(flooded)
    with pytest.raises(tinker.PermissionDeniedError, match="max_lora_rank=8"):
        service.create_lora_training_client(base_model=flooded.model, rank=16).result()
    after = series(flooded)
    name = "loraplane_gateway_tenant_rejections_total"
    assert value(after, name, tenant="bob", limit="max_lora_rank") - value(before, name, tenant="bob",
                                                                           limit="max_lora_rank") == 1
    # queue depth is a gauge per tenant; nothing is queued once the work has run
    assert ("loraplane_runtime_tenant_queue_depth", frozenset({("tenant", "bob"), ("base_model", flooded.model)})) \
        in after or value(after, "loraplane_runtime_tenant_queue_depth", tenant="bob") == 0
