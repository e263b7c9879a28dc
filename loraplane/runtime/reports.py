"""What a runtime says of itself: `/readyz` (`RuntimeHealth`), each adapter (`AdapterInfo`), and
the point-in-time gauges of `/metrics`.

Callers: the runtime's API (`runtime.api`), for `/readyz` and the adapter routes (the control
plane's health poll reads both, docs/runtime-api.md); the executor's metrics at scrape time
(`set_gauges`). Reads engine and executor state only.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from loraplane.core import errors
from loraplane.core.settings import RuntimeSettings
from loraplane.runtime import residency
from loraplane.runtime.metrics import RuntimeMetrics

if TYPE_CHECKING:
    from loraplane.runtime.executor import Executor


def health(settings: RuntimeSettings, executor: Executor | None) -> dict[str, Any]:
    """The `RuntimeHealth` body of `/readyz`. Reads engine state; no side effects."""
    s = settings
    if executor is None:
        return {"ready": False, "base_model": s.base_model or "", "model_path": s.model_path or "",
                "device": s.device, "dtype": s.dtype, "adapters": {"resident": 0, "offloaded": 0, "total": 0},
                "capacity": {"max_adapters": s.max_adapters, "free_slots": s.max_adapters}, "queue_depth": 0,
                "sampling": sampling_health(s, None)}
    engine = executor.engine
    ids = list(engine.adapter_ids())
    resident = sum(1 for a in ids if engine.is_resident(a))
    return {
        "ready": executor.alive, "base_model": engine.base_model, "model_path": engine.model_path,
        "device": str(engine.device), "dtype": str(engine.dtype).removeprefix("torch."),
        "adapters": {"resident": resident, "offloaded": len(ids) - resident, "total": len(ids)},
        "capacity": {"max_adapters": s.max_adapters,
                     "free_slots": residency.free_slots(engine.training_adapter_count(), s.max_adapters)},
        "queue_depth": executor.queue_depth(),
        "sampling": sampling_health(s, executor),
    }


def sampling_health(s: RuntimeSettings, executor: Executor | None) -> dict[str, Any]:
    """The `sampling` part of `/readyz`: the decode batch's limits and what it holds now."""
    body: dict[str, Any] = {
        "kv_cache_bytes": s.kv_cache_bytes, "kv_bytes_used": 0, "kv_bytes_reserved": 0, "decode_rows": 0,
        "max_decode_rows": s.max_decode_rows, "queued": 0, "max_queued_samples": s.max_queued_samples,
    }
    if executor is not None:
        decoder = executor.engine.decoder
        body.update(kv_bytes_used=decoder.kv_bytes(), kv_bytes_reserved=executor.kv_bytes_reserved,
                    decode_rows=decoder.decode_rows, queued=executor.sample_queue())
    return body


def adapter_info(executor: Executor, adapter_id: str) -> dict[str, Any]:
    """The `AdapterInfo` of an adapter; NotFound when unknown. No side effects."""
    engine = executor.engine
    if not engine.has_adapter(adapter_id):
        raise errors.NotFound(f"unknown adapter {adapter_id!r}", field="adapter_id")
    spec = engine.adapter_spec(adapter_id)
    next_seq, last_used = executor.adapter_progress(adapter_id)
    return {
        "adapter_id": adapter_id, "kind": "sampler" if engine.is_sampler(adapter_id) else "train",
        "rank": spec.rank, "alpha": spec.alpha, "seed": spec.seed, "train_attn": spec.train_attn,
        "train_mlp": spec.train_mlp, "train_unembed": spec.train_unembed,
        "step": engine.adapter_step(adapter_id), "loss": engine.adapter_loss(adapter_id), "resident": engine.is_resident(adapter_id),
        "last_used": last_used or time.time(), "next_seq": next_seq,
    }


def set_gauges(metrics: RuntimeMetrics, executor: Executor) -> None:
    """The gauges read at scrape time: queue depths, residency, the decode batch's KV bytes."""
    engine = executor.engine
    metrics.queue_depth.set(executor.queue_depth())
    ids = list(engine.adapter_ids())
    resident = sum(1 for a in ids if engine.is_resident(a))
    metrics.adapters.labels(state="resident").set(resident)
    metrics.adapters.labels(state="offloaded").set(len(ids) - resident)
    metrics.sample_queue.set(executor.sample_queue())
    metrics.kv_reserved_bytes.set(executor.kv_bytes_reserved)
    metrics.kv_budget_bytes.set(executor.settings.kv_cache_bytes)
    metrics.tenant_queues(executor.queued_by_tenant())
