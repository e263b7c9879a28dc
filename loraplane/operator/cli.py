"""`loraplane operator`: run the Kopf operator that schedules and follows LoRAJobs.

Kopf runs unmodified and programmatically (`kopf.operator`), standalone (no peering) unless
`--peering` names a peering object, in one namespace (`--namespace`, or settings.operator.namespace)
or in all of them. The liveness probe is Kopf's own endpoint; Prometheus metrics are on
`--metrics-port`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

import kopf

from loraplane.cli import port
from loraplane.clients import artifact_store
from loraplane.core import artifacts, logs
from loraplane.core.settings import OperatorSettings, Settings
from loraplane.operator import handlers


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--namespace", default=None, help="namespace to watch ('' = all; default: settings)")
    parser.add_argument(
        "--kubeconfig", default=None, help="kubeconfig file (default: in-cluster, then $KUBECONFIG)"
    )
    parser.add_argument("--store", default=None, help="artifact store URL (default: settings.store.url)")
    parser.add_argument(
        "--liveness", default=None,
        help="Kopf's liveness endpoint (default http://0.0.0.0:8080/healthz; port: LORAPLANE_OPERATOR__LIVENESS_PORT)",
    )
    parser.add_argument("--metrics-port", type=port, default=None,
                        help="Prometheus /metrics port, 0 = off (default 9090; LORAPLANE_OPERATOR__METRICS_PORT)")
    parser.add_argument("--peering", default=None, help="Kopf peering object name (default: standalone)")
    parser.add_argument("--log-level", default=None, help="debug, info, warning")


async def run_operator(
    settings: OperatorSettings,
    *,
    store_url: str,
    kubeconfig: str | None = None,
    liveness_endpoint: str | None = None,
    metrics_port: int | None = None,
    peering_name: str | None = None,
    stop_flag: Any = None,
    ready_flag: Any = None,
    backoff_base_s: float | None = None,
) -> None:
    """Run the operator until `stop_flag` (an asyncio/threading Event or Future) is set."""
    if kubeconfig:
        os.environ["KUBECONFIG"] = kubeconfig  # Kopf's own login reads it from the environment
    registry = handlers.build_registry(
        settings,
        store_url=store_url,
        kubeconfig=kubeconfig,
        metrics_port=metrics_port,
        backoff_base_s=backoff_base_s,
    )
    kopf_settings = kopf.OperatorSettings()
    handlers.configure_kopf(kopf_settings)
    namespaces = [settings.namespace] if settings.namespace else []
    # Watching one namespace (as the chart deploys it), Kopf would otherwise list and watch every
    # Namespace and CRD of the cluster to follow them as they come and go: cluster-scoped reads that
    # the chart's namespaced Role does not grant, so each start would spend a minute retrying 403s
    # before falling back. The LoRAJob CRD exists before the operator starts (the chart installs
    # it first); a CRD changed later is picked up at the next restart.
    kopf_settings.scanning.disabled = bool(namespaces)
    await kopf.operator(
        registry=registry,
        settings=kopf_settings,
        standalone=peering_name is None,
        peering_name=peering_name,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=liveness_endpoint,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def run(args: argparse.Namespace) -> int:
    settings = Settings()
    op = settings.operator
    if args.namespace is not None:
        op = op.model_copy(update={"namespace": args.namespace})
    logs.configure(args.log_level or settings.log_level, settings.log_format)
    store = artifact_store.open_store(args.store or settings.store.url or artifacts.default_store_url())
    metrics_port = op.metrics_port if args.metrics_port is None else args.metrics_port
    asyncio.run(
        run_operator(
            op,
            store_url=store.url,
            kubeconfig=args.kubeconfig,
            liveness_endpoint=args.liveness or f"http://0.0.0.0:{op.liveness_port}/healthz",
            metrics_port=metrics_port or None,
            peering_name=args.peering,
        )
    )
    return 0
