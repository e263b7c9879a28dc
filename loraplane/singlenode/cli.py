"""`loraplane serve`: the Tinker API on one machine, no Kubernetes.

Every flag has an environment variable (flags win): LORAPLANE_MODELS="N=P,N2=P2",
LORAPLANE_DATA_DIR, LORAPLANE_STORE__URL, LORAPLANE_GATEWAY__API_KEYS, LORAPLANE_GATEWAY__API_KEYS_FILE,
LORAPLANE_GATEWAY__HOST / __PORT, LORAPLANE_RUNTIME__DEVICE / __DTYPE / __THREADS.
When the server listens it logs one line, "loraplane serving at http://HOST:PORT" (with the real
port when --port 0 asked for a free one).

Everything that can be checked before the models load is checked first (the store, each model
folder, the device), so a mistake is one line and exit code 2 within seconds (`loraplane.cli`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from loraplane.api.auth import load_keys, split_inline
from loraplane.api.cli import listen
from loraplane.cli import port
from loraplane.clients import artifact_store
from loraplane.core import artifacts, errors, logs
from loraplane.core.settings import Settings

log = logging.getLogger("loraplane")

NO_KEY_MESSAGE = (
    "no API key configured. Pass --api-key TENANT=tml-..., --api-keys-file FILE, "
    "or set LORAPLANE_GATEWAY__API_KEYS=tenant=tml-... (keys must start with 'tml-')."
)


def parse_models(entries: list[str]) -> dict[str, str]:
    """`NAME=PATH` entries -> {name: path}. Pure; called by `run`. Raises ValueError naming the entry."""
    models: dict[str, str] = {}
    for entry in entries:
        name, sep, path = entry.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ValueError(f"--model expects NAME=PATH, got {entry!r}")
        models[name.strip()] = path.strip()
    return models


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (LORAPLANE_GATEWAY__HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=port, help="port (LORAPLANE_GATEWAY__PORT, default 8000; 0 = any free port)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH",
                        help="serve the local model at PATH as base_model NAME (repeatable; LORAPLANE_MODELS)")
    parser.add_argument("--data-dir", help="where the job store (jobs.sqlite) and, by default, the artifact store "
                                           "live (LORAPLANE_DATA_DIR, default ~/.local/share/loraplane)")
    parser.add_argument("--store", help="artifact store URL (LORAPLANE_STORE__URL; default: DATA_DIR/store)")
    parser.add_argument("--api-key", action="append", default=[], metavar="TENANT=KEY",
                        help="accept KEY for TENANT (repeatable; LORAPLANE_GATEWAY__API_KEYS)")
    parser.add_argument("--api-keys-file", help="file of tenant=key lines (LORAPLANE_GATEWAY__API_KEYS_FILE)")
    parser.add_argument("--device", help="runtime device: auto, cpu, cuda, cuda:1 (LORAPLANE_RUNTIME__DEVICE)")
    parser.add_argument("--dtype", help="auto, float32, bfloat16, float16 (LORAPLANE_RUNTIME__DTYPE)")
    parser.add_argument("--threads", type=int, help="torch CPU threads, 0 = default (LORAPLANE_RUNTIME__THREADS)")
    parser.add_argument("--log-level", help="debug, info, warning (LORAPLANE_LOG_LEVEL)")
    parser.add_argument("--log-format", choices=logs.FORMATS,
                        help="text, or json for one JSON object per line (LORAPLANE_LOG_FORMAT)")
    parser.add_argument("--session-expiry-s", type=float, metavar="SECONDS",
                        help="expire sessions without a heartbeat for this long, 0 = never "
                             "(LORAPLANE_GATEWAY__SESSION_EXPIRY_S, default 180)")


def config_from(args: argparse.Namespace, environ: dict[str, str] | None = None) -> Any:
    """Flags over environment over defaults -> a `ServeConfig`. Raises ValueError/InvalidInput on bad input."""
    from loraplane.singlenode.server import ServeConfig

    env = os.environ if environ is None else environ
    settings = Settings()
    gateway = settings.gateway.model_copy(update={
        "host": args.host or env.get("LORAPLANE_GATEWAY__HOST") or "127.0.0.1",
        "port": args.port if args.port is not None else settings.gateway.port,
    } | ({"session_expiry_s": args.session_expiry_s} if getattr(args, "session_expiry_s", None) is not None else {}))
    if gateway.session_expiry_s < 0:
        raise ValueError("--session-expiry-s must be >= 0")
    from loraplane.api.sdk_versions import parse_range

    parse_range(gateway.sdk_versions)
    runtime = settings.runtime.model_copy(update={
        k: v for k, v in {"device": args.device, "dtype": args.dtype, "threads": args.threads}.items() if v is not None
    })
    models = parse_models(args.model or split_inline(env.get("LORAPLANE_MODELS")))
    inline = list(args.api_key) or split_inline(gateway.api_keys)
    files = [f for f in [args.api_keys_file or gateway.api_keys_file] if f]
    keys = load_keys(inline=inline, files=files)
    data_dir = getattr(args, "data_dir", None) or env.get("LORAPLANE_DATA_DIR")
    store_url = args.store or settings.store.url or artifacts.default_store_url(env, data_dir=data_dir)
    return ServeConfig(models=models, keys=keys, store_url=store_url, data_dir=Path(data_dir) if data_dir else None,
                       gateway=gateway, runtime=runtime, control=settings.operator)


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    try:
        logs.configure(args.log_level or settings.log_level, getattr(args, "log_format", None) or settings.log_format)
    except ValueError as exc:
        print(f"loraplane serve: {exc} (LORAPLANE_LOG_FORMAT)", file=sys.stderr)
        return 2
    try:
        config = config_from(args)
    except ValueError as exc:
        raise errors.InvalidInput(str(exc)) from None
    if not config.models:
        raise errors.InvalidInput("no model to serve. Pass --model NAME=PATH or set LORAPLANE_MODELS=NAME=PATH.")
    if len(config.keys) == 0:
        raise errors.InvalidInput(NO_KEY_MESSAGE)
    check_start(config)
    return serve(config)


def check_start(config: Any) -> None:
    """Refuse at start what would fail later: the store, each model folder, the device.

    Raises InvalidInput with the one line `loraplane.cli` prints. Imports torch (for the device).
    """
    from loraplane.runtime import model_host

    artifact_store.open_store(config.store_url)
    check_job_store(config.jobs_path())
    for name, path in config.models.items():
        problem = model_host.model_dir_problem(path)
        if problem is not None:
            raise errors.InvalidInput(f"--model {name}={path}: {problem}", field="model")
    import torch

    model_host.resolve_device(config.runtime.device, torch.cuda.is_available())
    model_host.resolve_dtype(config.runtime.dtype, torch.device("cpu"))


def check_job_store(path: Path) -> None:
    """Open (or create) the job store once, so an unusable data directory is one line at start."""
    import sqlite3

    from loraplane.singlenode.jobstore import SqliteJobStore

    try:
        SqliteJobStore(path).close()
    except (OSError, sqlite3.Error) as exc:
        raise errors.InvalidInput(f"--data-dir: cannot use the job store {path}: {exc}", field="data_dir") from None


def serve(config: Any) -> int:
    """Run the server until interrupted, logging the one ready line once the socket listens."""
    from loraplane.singlenode.server import build_app

    return listen(build_app(config), config.gateway, ready="loraplane serving at http://{host}:{port}")
