"""One tenant flooding `loraplane serve`: as many requests as `concurrency` connections can send.

Used by the flood test (tests/acceptance/test_flood.py) and `bench/flood.py`, each running it in
a process of its own (`python -m tests.utils.flooding ...`), so that the flood competes with the
measured tenant for the machine but not for its interpreter. Every request is sent at once,
never waiting for results: forward_backward on the flooder's own model and asample on its
sampler, in turn. A forward_backward that is refused gives its seq id to the next one, as the
SDK's retry would, so the accepted ones leave no gap that would hold the model's queue.

Prints `flooding` when the connections are open, then one JSON line: requests sent, seconds,
answers by status.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import heapq
import json
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from tests.fuzz.tinker_http import PROTOBUF, forward_backward_request, tokens_of


class Connection:
    """One keep-alive HTTP/1.1 connection, spoken directly: the flood must cost its sender far less
    than the server, or it would measure the sender (a general client takes about as long per
    request as the server's refusal)."""

    def __init__(self, host: str, port: int, key: str) -> None:
        self.host, self.port = host, port
        self.head = f"Host: {host}:{port}\r\nX-API-Key: {key}\r\n"
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, content_type: str) -> int:
        """POST and read the whole answer; returns its status."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write((f"POST {path} HTTP/1.1\r\n{self.head}Content-Type: {content_type}\r\n"
                           f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        headers = head.lower()
        length = int(headers.split(b"content-length:", 1)[1].split(b"\r\n", 1)[0]) if b"content-length:" in headers else 0
        await self.reader.readexactly(length)
        if b"connection: close" in headers:
            await self.close()
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer, self.reader = None, None


async def flood(url: str, key: str, model_id: str, sampler_id: str, *, requests: int, concurrency: int,
                sample_shape: tuple[int, int] = (4, 16), seconds: float = 120.0,
                kinds: tuple[str, ...] = ("forward_backward", "asample")) -> dict[str, Any]:
    num_samples, max_tokens = sample_shape
    sample = json.dumps({"sampling_session_id": sampler_id, "num_samples": num_samples,
                         "sampling_params": {"max_tokens": max_tokens},
                         "prompt": {"chunks": [{"type": "encoded_text", "tokens": tokens_of("flood")}]}}).encode()
    parsed = urlsplit(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    statuses: collections.Counter[str] = collections.Counter()
    sent = 0
    connections = [Connection(host, port, key) for _ in range(concurrency)]
    print("flooding", flush=True)
    start = time.monotonic()
    deadline = start + seconds
    next_seq, free = 1, []  # seq ids not sent yet, and those sent but refused (to send again)

    async def worker(http: Connection) -> None:
        nonlocal sent, next_seq
        while sent < requests and time.monotonic() < deadline:
            sent += 1
            try:
                if kinds[sent % len(kinds)] == "forward_backward":
                    if free:
                        seq = heapq.heappop(free)
                    else:
                        seq, next_seq = next_seq, next_seq + 1
                    body = forward_backward_request(model_id, seq).SerializeToString()
                    status = await http.post("/api/v1/forward_backward", body, PROTOBUF)
                    if status != 200:
                        heapq.heappush(free, seq)
                else:
                    status = await http.post("/api/v1/asample", sample, "application/json")
                statuses[str(status)] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                statuses[type(exc).__name__] += 1
                await http.close()
        await http.close()

    await asyncio.gather(*(worker(c) for c in connections))
    return {"sent": sent, "seconds": time.monotonic() - start, "statuses": dict(statuses)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("url")
    parser.add_argument("key")
    parser.add_argument("model_id")
    parser.add_argument("sampler_id")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--sample-num", type=int, default=4)
    parser.add_argument("--sample-tokens", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--kinds", default="forward_backward,asample", help="requests to send, in turn")
    args = parser.parse_args(argv)
    report = asyncio.run(flood(args.url, args.key, args.model_id, args.sampler_id, requests=args.requests,
                               concurrency=args.concurrency, sample_shape=(args.sample_num, args.sample_tokens),
                               seconds=args.seconds, kinds=tuple(args.kinds.split(","))))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
