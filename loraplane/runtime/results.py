"""Accepted ops by request id, and how an op finishes: its future settled, its outcome logged and counted.

Callers: `loraplane.runtime.executor` (remembers every op it accepts and finishes each one, on the
model thread or, when the runtime shuts down, on the closing thread) and, through
`Executor.lookup`, the runtime API's result reads. Thread-safe: it holds its own lock.

## Retention
The newest `MAX_RESULTS` ops stay retrievable by request id; older finished ones are forgotten.
An op that has not finished is never forgotten, so a result is never lost while it is awaited.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from concurrent.futures import Future
from typing import Any

from loraplane.core import errors, logs
from loraplane.runtime.metrics import RuntimeMetrics
from loraplane.runtime.ops import FORWARD_KINDS, Op

log = logging.getLogger(__name__)

#: how many finished results stay retrievable by request id
MAX_RESULTS = 50_000


class Results:
    """Every accepted op by request id (see the module docstring); finishes ops into `metrics`."""

    def __init__(self, metrics: RuntimeMetrics) -> None:
        self.metrics = metrics
        self._lock = threading.Lock()
        self._ops: OrderedDict[str, Op] = OrderedDict()

    def remember(self, op: Op) -> None:
        """Keep an accepted op retrievable; forget the oldest finished ones beyond `MAX_RESULTS`."""
        with self._lock:
            self._ops[op.request_id] = op
            while len(self._ops) > MAX_RESULTS:
                oldest_id, oldest = next(iter(self._ops.items()))
                if not oldest.future.done():
                    break
                del self._ops[oldest_id]

    def lookup(self, request_id: str) -> Op:
        """The op of a request id (its `future` holds the result); NotFound when unknown or expired."""
        with self._lock:
            op = self._ops.get(request_id)
        if op is None:
            raise errors.NotFound(f"unknown or expired request id {request_id!r}", field="request_id")
        return op

    def pending(self) -> list[Op]:
        """The remembered ops not finished yet."""
        with self._lock:
            return [op for op in self._ops.values() if not op.future.done()]

    def finish(self, op: Op, *, result: Any = None, exc: BaseException | None = None,
               seconds: float | None = None) -> None:
        """Settle the op's future with its result or error, and log and count the outcome."""
        token = logs.request_id.set(op.origin)
        try:
            self._settle_op(op, result=result, exc=exc, seconds=seconds)
        finally:
            logs.request_id.reset(token)

    def _settle_op(self, op: Op, *, result: Any, exc: BaseException | None, seconds: float | None) -> None:
        if op.kind in FORWARD_KINDS:
            op.payload = None  # the input tensors are not needed once done; results are kept for a while
        if exc is not None:
            outcome = "user_error" if isinstance(exc, errors.UserError) else "server_error"
            if not isinstance(exc, errors.LoraplaneError):
                log.error("%s of %s failed: %r", op.kind, op.adapter_id, exc, exc_info=exc)
            else:
                log.info("%s of %s failed: %s", op.kind, op.adapter_id, exc.message)
            self.metrics.op_finished(op.kind, outcome, tenant=op.tenant)
            settle(op.future, exc=exc)
        else:
            self.metrics.op_finished(op.kind, "ok", seconds, tenant=op.tenant)
            log.debug("%s of %s done in %.1f ms", op.kind, op.adapter_id, (seconds or 0.0) * 1000)
            settle(op.future, result=result)


def settle(future: Future, *, result: Any = None, exc: BaseException | None = None) -> None:
    """Complete a future unless a caller already cancelled it."""
    if future.done():
        return
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except Exception:  # cancelled between the check and the set
        pass
