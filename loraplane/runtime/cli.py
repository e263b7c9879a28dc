"""`loraplane runtime`: serve one base model and its adapters on the internal API.

Flags override the `LORAPLANE_RUNTIME__*` environment (`loraplane.core.settings`). The HTTP server
starts first so that liveness answers while the model loads; `/readyz` turns 200, and one line
with the URL is logged, once the model is on its device. Nothing heavy is imported before `run`,
so `--help` works without torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from typing import Any

from loraplane.cli import port
from loraplane.core import logs

log = logging.getLogger("loraplane.runtime")

#: flag dest -> RuntimeSettings field
_OVERRIDES = ("base_model", "model_path", "host", "port", "device", "dtype", "max_resident_adapters",
              "max_adapters", "offload_to", "threads", "seq_gap_timeout_s", "max_batch_tokens")


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the runtime's flags; every default comes from the settings (environment)."""
    add = parser.add_argument
    add("--base-model", help="name clients use as base_model, e.g. Qwen/Qwen3-0.6B")
    add("--model-path", help="local directory of the model (never downloaded)")
    add("--host", help="address to listen on (default 0.0.0.0)")
    add("--port", type=port, help="port of the internal API (default 8001)")
    add("--device", help="auto, cpu, cuda or cuda:N (default auto)")
    add("--dtype", help="auto, float32, bfloat16 or float16 (default auto: bf16 on GPU)")
    add("--max-resident-adapters", type=int, help="adapters kept on the device at once (default 16)")
    add("--max-adapters", type=int, help="adapters accepted in all, resident or offloaded (default 64)")
    add("--offload-to", help='where idle adapters go: "host" or a directory (default host)')
    add("--threads", type=int, help="torch CPU threads (0 = torch's default)")
    add("--seq-gap-timeout-s", type=float, help="seconds before a missing seq_id is skipped (default 30)")
    add("--max-batch-tokens", type=int, help="tokens gathered into one forward/backward (default 16384)")
    add("--max-request-mb", type=float, default=None, help="largest request body in MiB (default 64)")
    add("--log-level", default=None, help="debug, info or warning")
    add("--log-format", default=None, choices=logs.FORMATS, help="text or json (LORAPLANE_LOG_FORMAT)")


def settings_from_args(args: argparse.Namespace) -> Any:
    """Environment settings with the given flags applied. No side effects; called by `run`."""
    from loraplane.core.settings import RuntimeSettings, Settings

    settings = Settings()
    merged = settings.runtime.model_dump()
    merged.update({k: getattr(args, k) for k in _OVERRIDES if getattr(args, k, None) is not None})
    settings.runtime = RuntimeSettings(**merged)
    return settings


def run(args: argparse.Namespace) -> int:
    import uvicorn
    from pydantic import ValidationError

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = "--" + "-".join(str(p) for p in first["loc"]).replace("_", "-")
        print(f"loraplane runtime: {flag}: {first['msg']}", file=sys.stderr)
        return 2
    logs.configure(args.log_level or settings.log_level, getattr(args, "log_format", None) or settings.log_format)
    rs = settings.runtime
    if not rs.base_model or not rs.model_path:
        print("loraplane runtime: --base-model and --model-path (or LORAPLANE_RUNTIME__BASE_MODEL / "
              "LORAPLANE_RUNTIME__MODEL_PATH) are required", file=sys.stderr)
        return 2

    from loraplane.runtime.api import RuntimeState, create_app

    max_body = int((args.max_request_mb or settings.gateway.max_request_bytes / 2**20) * 2**20)
    state = RuntimeState(settings=rs, max_body_bytes=max_body)
    server = uvicorn.Server(uvicorn.Config(create_app(state), host=rs.host, port=rs.port, log_level="warning",
                                           access_log=False))
    failed: list[BaseException] = []
    loader = threading.Thread(target=_load, args=(state, server, failed), name="model-loader", daemon=True)
    loader.start()
    server.run()
    if state.executor is not None:
        state.executor.close()
    return 1 if failed else 0


def _load(state: Any, server: Any, failed: list[BaseException]) -> None:
    """Load the engine, attach it, and log the URL once both model and server are up."""
    rs = state.settings
    try:
        from loraplane.runtime.engine import Engine
        from loraplane.runtime.executor import Executor

        engine = Engine(rs.model_path, base_model=rs.base_model, device=rs.device, dtype=rs.dtype,
                        threads=rs.threads, max_lora_rank=rs.max_lora_rank, max_pass_tokens=rs.max_pass_tokens)
        state.attach(Executor(engine, rs, metrics=state.metrics))
    except BaseException as exc:  # a model that cannot load ends the process with a clear message
        log.error("cannot load %s from %s: %s", rs.base_model, rs.model_path, exc)
        failed.append(exc)
        server.should_exit = True
        return
    while not server.started and not server.should_exit:
        threading.Event().wait(0.05)
    host = "127.0.0.1" if rs.host in ("0.0.0.0", "::") else rs.host
    log.info("loraplane runtime ready at http://%s:%d (base model %s on %s, %s)", host, rs.port,
             rs.base_model, engine.device, str(engine.dtype).removeprefix("torch."))
