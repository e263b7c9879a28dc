"""`loraplane jobs`: LoRAJob manifests against a running `loraplane serve` (or gateway).

    loraplane jobs apply -f examples/lorajob-training.yaml
    loraplane jobs get [NAME] [-o wide|yaml|json]
    loraplane jobs describe NAME
    loraplane jobs delete NAME

It talks to the gateway's authenticated `/loraplane/v1/jobs` routes (`api/routes/jobs.py`) with
`--url` and `--api-key`, or LORAPLANE_URL and LORAPLANE_API_KEY; the key's tenant sees and
changes only its own jobs. Refusals are one line (the gateway's message names the field) and
exit code 2; an unreachable server is one line and exit code 1.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from loraplane.core import errors
from loraplane.jobsctl import render

PREFIX = "/loraplane/v1/jobs"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help="the server (LORAPLANE_URL, default http://127.0.0.1:8000)")
    parser.add_argument("--api-key", help="your API key (LORAPLANE_API_KEY)")
    actions = parser.add_subparsers(dest="action", required=True, metavar="{apply,get,describe,delete}")
    apply = actions.add_parser("apply", help="create a job from a manifest, or update its mutable fields")
    apply.add_argument("-f", "--filename", required=True, help="a YAML or JSON manifest; '-' reads stdin")
    get = actions.add_parser("get", help="list your jobs, or show one")
    get.add_argument("name", nargs="?")
    get.add_argument("-o", "--output", choices=("wide", "yaml", "json"), help="output format")
    describe = actions.add_parser("describe", help="a job's fields, conditions and events")
    describe.add_argument("name")
    delete = actions.add_parser("delete", help="delete a job (its adapter is unloaded)")
    delete.add_argument("name")


def read_manifests(text: str, source: str) -> list[dict[str, Any]]:
    """The documents of a YAML (or JSON) stream, skipping empty ones. Pure; InvalidInput on bad YAML."""
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        raise errors.InvalidInput(f"{source}: not valid YAML: {exc}".splitlines()[0]) from None
    for doc in docs:
        if not isinstance(doc, dict):
            raise errors.InvalidInput(f"{source}: each document must be a LoRAJob object, got {type(doc).__name__}")
    if not docs:
        raise errors.InvalidInput(f"{source}: no manifest in it")
    return docs


class Client:
    """The gateway's job routes, errors turned into loraplane's own."""

    def __init__(self, url: str, api_key: str) -> None:
        self._http = httpx.Client(base_url=url.rstrip("/"), headers={"X-API-Key": api_key}, timeout=60.0)
        self.url = url

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        try:
            response = self._http.request(method, PREFIX + path, json=body)
        except httpx.HTTPError as exc:
            raise errors.ServerError(f"cannot reach {self.url}: {exc}; is `loraplane serve` running there?") from None
        try:
            payload = response.json()
        except ValueError:
            payload = {"detail": response.text}
        if response.status_code >= 400:
            detail = payload.get("detail") if isinstance(payload, dict) else payload
            if isinstance(detail, dict):
                detail = detail.get("message") or json.dumps(detail)
            message = f"{response.status_code}: {detail}"
            if response.status_code >= 500:
                raise errors.ServerError(message)
            raise errors.UserError(message)
        return response.status_code, payload


def run(args: argparse.Namespace) -> int:
    url = args.url or os.environ.get("LORAPLANE_URL") or "http://127.0.0.1:8000"
    key = args.api_key or os.environ.get("LORAPLANE_API_KEY")
    if not key:
        raise errors.InvalidInput("no API key: pass --api-key tml-... or set LORAPLANE_API_KEY")
    client = Client(url, key)
    now = dt.datetime.now(dt.UTC)
    if args.action == "apply":
        source = "stdin" if args.filename == "-" else args.filename
        try:
            text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
        except OSError as exc:
            raise errors.InvalidInput(f"-f {args.filename}: {exc.strerror or exc}") from None
        for manifest in read_manifests(text, source):
            status, job = client.call("POST", "", manifest)
            print(f"lorajob.loraplane.dev/{job['metadata']['name']} {'created' if status == 201 else 'configured'}")
    elif args.action == "get" and args.name is None:
        _, listing = client.call("GET", "")
        print(_render(listing, args.output, now, many=True))
    elif args.action == "get":
        _, job = client.call("GET", f"/{args.name}")
        print(_render(job, args.output, now, many=False))
    elif args.action == "describe":
        _, job = client.call("GET", f"/{args.name}")
        _, events = client.call("GET", f"/{args.name}/events")
        print(render.describe(job, events.get("items") or [], now=now))
    elif args.action == "delete":
        client.call("DELETE", f"/{args.name}")
        print(f'lorajob.loraplane.dev "{args.name}" deleted')
    return 0


def _render(obj: dict[str, Any], output: str | None, now: dt.datetime, *, many: bool) -> str:
    if output == "json":
        return json.dumps(obj, indent=2)
    if output == "yaml":
        return render.as_yaml(obj).rstrip()
    items = obj.get("items") or [] if many else [obj]
    if many and not items:
        return "No resources found."
    return render.table(items, wide=output == "wide", now=now)
