"""The Tinker training protocol spoken with bare httpx: sessions, models, steps, futures.

Callers: the fuzz tests (to reach the per-step routes with a real model behind them, and to prove
training still works after the hostile requests) and `bench/flood.py` (the flooding tenant, which
must not be slowed down by the SDK's own retries and backoff). The request bodies are those the
official SDK 0.38 sends (tinker-protocol sections 3-5).
"""

from __future__ import annotations

import math
import time
from typing import Any

import httpx
import numpy as np
from tinker.proto import tinker_public_pb2 as pb

PROTOBUF = "application/x-protobuf"
TEXTS = ["the cat sat on the mat", "a quick brown fox", "loraplane trains"]


def tokens_of(text: str) -> list[int]:
    """The byte tokenizer of the tiny model: bos, then byte b as token b + 3."""
    return [1] + [b + 3 for b in text.encode()]


def forward_backward_request(model_id: str, seq_id: int, texts: list[str] = TEXTS,
                             loss_fn: str = "cross_entropy") -> pb.ForwardBackwardRequest:
    """A valid next-token cross-entropy request, as the SDK builds it for `texts`."""
    req = pb.ForwardBackwardRequest(model_id=model_id, seq_id=seq_id, loss_fn=loss_fn)
    for text in texts:
        tokens = tokens_of(text)
        n = len(tokens) - 1
        datum = req.data.add()
        datum.model_input.add().encoded_text.tokens = np.asarray(tokens[:-1], dtype="<i4").tobytes()
        target = datum.loss_fn_inputs["target_tokens"]
        target.dense, target.dtype = np.asarray(tokens[1:], dtype="<i8").tobytes(), pb.DTYPE_INT64
        target.shape.append(n)
        weights = datum.loss_fn_inputs["weights"]
        weights.dense, weights.dtype = np.ones(n, dtype="<f4").tobytes(), pb.DTYPE_FLOAT32
        weights.shape.append(n)
    return req


class PatientTransport(httpx.HTTPTransport):
    """Resends a request answered 429 after its Retry-After (at most `RETRY_WAIT_S` each time, at
    most `RETRIES` times), as the SDK does: the tests' own tenants are throttled, not failed, by a
    server's rate limits. A streamed body cannot be resent; its 429 is returned as it is."""

    RETRIES = 10
    RETRY_WAIT_S = 1.0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        for _ in range(self.RETRIES):
            response = super().handle_request(request)
            if response.status_code != 429 or not isinstance(request.stream, httpx.ByteStream):
                return response
            response.read()
            response.close()
            try:
                wait = float(response.headers.get("retry-after", "0.2"))
            except ValueError:
                wait = 0.2
            time.sleep(min(max(wait, 0.0), self.RETRY_WAIT_S))
        return super().handle_request(request)


class TinkerHttp:
    """One tenant's protocol client over an `httpx.Client` (sync, one connection pool)."""

    def __init__(self, base_url: str, api_key: str, *, timeout_s: float = 60.0) -> None:
        self.http = httpx.Client(base_url=base_url, headers={"x-api-key": api_key}, timeout=timeout_s,
                                 transport=PatientTransport())
        self.seq: dict[str, int] = {}

    def close(self) -> None:
        self.http.close()

    def post_json(self, path: str, body: Any) -> httpx.Response:
        return self.http.post(f"/api/v1/{path}", json=body)

    def ok_json(self, path: str, body: Any) -> dict[str, Any]:
        r = self.post_json(path, body)
        if r.status_code != 200:
            raise AssertionError(f"{path}: {r.status_code} {r.text[:500]}")
        return r.json()

    def result(self, request_id: str, *, deadline_s: float = 120.0) -> httpx.Response:
        """Long-poll `retrieve_future` until the answer is not try_again; AssertionError past the deadline."""
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            r = self.post_json("retrieve_future", {"request_id": request_id, "allow_metadata_only": False})
            if r.status_code == 200 and r.headers.get("content-type", "").startswith("application/json"):
                if r.json().get("type") == "try_again":
                    continue
            return r
        raise AssertionError(f"future {request_id} still running after {deadline_s:g} s")

    def session(self) -> str:
        return self.ok_json("create_session", {"tags": [], "user_metadata": {}, "sdk_version": "0.38.0"})["session_id"]

    def create_model(self, session_id: str, base_model: str, *, model_seq_id: int = 0, rank: int = 8,
                     seed: int = 0) -> str:
        fut = self.ok_json("create_model", {"session_id": session_id, "model_seq_id": model_seq_id,
                                            "base_model": base_model, "lora_config": {"rank": rank, "seed": seed}})
        r = self.result(fut["request_id"])
        if r.status_code != 200 or "model_id" not in r.json():
            raise AssertionError(f"create_model: {r.status_code} {r.text[:500]}")
        model_id = r.json()["model_id"]
        self.seq[model_id] = 0
        return model_id

    def next_seq(self, model_id: str) -> int:
        self.seq[model_id] = self.seq.get(model_id, 0) + 1
        return self.seq[model_id]

    def submit_forward_backward(self, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.http.post("/api/v1/forward_backward", content=body,
                              headers={"content-type": PROTOBUF, **(headers or {})})

    def step(self, model_id: str, *, lr: float = 1e-2) -> float:
        """One forward_backward + optim_step on the fixed batch; the loss (sum) before the step."""
        body = forward_backward_request(model_id, self.next_seq(model_id)).SerializeToString()
        r = self.submit_forward_backward(body)
        if r.status_code != 200:
            raise AssertionError(f"forward_backward: {r.status_code} {r.text[:500]}")
        fb = r.json()["request_id"]
        opt = self.ok_json("optim_step", {"model_id": model_id, "seq_id": self.next_seq(model_id),
                                          "adam_params": {"learning_rate": lr}})["request_id"]
        out = self.result(fb)
        if out.status_code != 200 or not out.headers.get("content-type", "").startswith(PROTOBUF):
            raise AssertionError(f"forward_backward result: {out.status_code} {out.text[:500]}")
        done = self.result(opt)
        if done.status_code != 200 or "error" in done.json():
            raise AssertionError(f"optim_step result: {done.status_code} {done.text[:500]}")
        parsed = pb.ForwardBackwardOutput()
        parsed.ParseFromString(out.content)
        loss = float(parsed.metrics["loss:sum"])
        if not math.isfinite(loss):
            raise AssertionError(f"loss is {loss}")
        return loss
