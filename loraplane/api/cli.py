"""`loraplane gateway`: the Tinker gateway in front of a Kubernetes control plane.

The same app as `loraplane serve`, with `settings.gateway.control_plane = "kubernetes"`: LoRAJobs
are custom resources (`loraplane.api.kube.KubeControlPlane`, imported only here and only when this
command runs) and runtimes are pods. Flags override the `LORAPLANE_*` environment.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from loraplane.api.auth import load_keys, split_inline
from loraplane.core import artifacts, errors, logs
from loraplane.core.settings import Settings

log = logging.getLogger("loraplane")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="address to listen on (LORAPLANE_GATEWAY__HOST)")
    parser.add_argument("--port", type=int, help="port (LORAPLANE_GATEWAY__PORT)")
    parser.add_argument("--store", help="artifact store URL (LORAPLANE_STORE__URL)")
    parser.add_argument("--api-keys-file", help="file of tenant=key lines (LORAPLANE_GATEWAY__API_KEYS_FILE)")
    parser.add_argument("--namespace", help="namespace of LoRAJobs (LORAPLANE_GATEWAY__NAMESPACE)")
    parser.add_argument("--log-level", help="debug, info, warning (LORAPLANE_LOG_LEVEL)")
    parser.add_argument("--log-format", choices=logs.FORMATS, help="text or json (LORAPLANE_LOG_FORMAT)")
    parser.add_argument("--model", action="append", default=[], metavar="NAME",
                        help="a base model name to announce in get_server_capabilities (repeatable)")


def _control_plane(settings: Settings) -> Any:
    from loraplane.api import kube

    return kube.KubeControlPlane.from_settings(settings)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from loraplane.api.app import create_app
    from loraplane.api.dataplane import Runtimes
    from loraplane.api.gateway import Gateway

    settings = Settings()
    logs.configure(getattr(args, "log_level", None) or settings.log_level,
                   getattr(args, "log_format", None) or settings.log_format)
    gw_settings = settings.gateway.model_copy(update={
        k: v for k, v in {"host": args.host, "port": args.port, "api_keys_file": args.api_keys_file,
                          "namespace": args.namespace}.items() if v is not None
    } | {"control_plane": "kubernetes"})
    settings = settings.model_copy(update={"gateway": gw_settings})
    try:
        keys = load_keys(inline=split_inline(gw_settings.api_keys),
                         files=[f for f in [gw_settings.api_keys_file] if f])
    except errors.LoraplaneError as exc:
        print(f"loraplane gateway: {exc}", file=sys.stderr)
        return 2
    if len(keys) == 0:
        print("loraplane gateway: no API key configured; set LORAPLANE_GATEWAY__API_KEYS_FILE "
              "(tenant=key or tenant=sha256:<hex> lines) or pass --api-keys-file.", file=sys.stderr)
        return 2
    store = artifacts.ArtifactStore(args.store or settings.store.url or artifacts.default_store_url())
    gateway = Gateway(
        control_plane=_control_plane(settings), runtimes=Runtimes(timeout_s=gw_settings.long_poll_s + 60),
        store=store, models=list(args.model), long_poll_s=gw_settings.long_poll_s,
        max_request_bytes=gw_settings.max_request_bytes,
    )
    log.info("loraplane gateway at http://%s:%s", gw_settings.host, gw_settings.port)
    app = create_app(gateway, keys)
    app.state.url_signing_secret = gw_settings.url_signing_key
    app.state.session_expiry_s = gw_settings.session_expiry_s
    app.state.sdk_versions = gw_settings.sdk_versions
    uvicorn.run(app, host=gw_settings.host, port=gw_settings.port, log_level="warning",
                access_log=False, timeout_keep_alive=75)
    return 0
