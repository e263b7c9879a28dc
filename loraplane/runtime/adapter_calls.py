"""The executor's control calls: adapters created, loaded, offloaded and deleted on the model thread.

Callers: the runtime's API and declarative training, through `Executor`, which inherits them. A
control call runs between two turns of the model thread (`Executor.call`), so it never races a
pass or a decode step that uses the same adapter.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from loraplane.core import errors
from loraplane.core.settings import RuntimeSettings
from loraplane.runtime import residency
from loraplane.runtime.ops import Op, new_request_id
from loraplane.runtime.queues import AdapterQueues
from loraplane.runtime.results import Results, settle
from loraplane.runtime.running import OpRunner


class AdapterCalls:
    """Control calls of the `Executor` (which sets these attributes)."""

    settings: RuntimeSettings
    _cond: threading.Condition
    _control: deque[Op]
    _queues: AdapterQueues
    _results: Results
    _runner: OpRunner
    _decoder: Any

    def _check_open(self) -> None:
        raise NotImplementedError

    def _register(self, adapter_id: str, expect_seq: int | None) -> None:
        raise NotImplementedError

    def call(self, fn: Callable[[Any], Any], name: str = "call") -> Future:
        """Run `fn(engine)` on the model thread between batches; its result or error goes to the future."""
        op = Op(request_id=new_request_id(), adapter_id=None, seq_id=None, kind=name, payload=fn)
        with self._cond:
            self._check_open()
            self._control.append(op)
            self._cond.notify_all()
        return op.future

    def create_adapter(self, adapter_id: str, spec: Any, expect_seq: int | None = 1) -> Future:
        """Create an adapter and its queue; fails with CapacityError when `max_adapters` are held."""
        return self._adapter_call(adapter_id, expect_seq, "create_adapter",
                                  lambda engine: engine.create_adapter(adapter_id, spec))

    def load_adapter(self, adapter_id: str, source: str, optimizer: bool, expect_seq: int | None) -> Future:
        """Load a saved state into an adapter, creating it (and its queue) when missing."""
        return self._adapter_call(adapter_id, expect_seq, "load_adapter",
                                  lambda engine: engine.load_state(adapter_id, source, optimizer=optimizer))

    def _adapter_call(self, adapter_id: str, expect_seq: int | None, name: str,
                      make: Callable[[Any], Any]) -> Future:
        """A control call that makes an adapter with `make(engine)`, within `max_adapters`, gives it a
        queue and brings it onto the device; its future gets what `make` returns."""

        def run(engine: Any) -> Any:
            if not engine.has_adapter(adapter_id):
                if residency.free_slots(engine.training_adapter_count(), self.settings.max_adapters) == 0:
                    raise errors.CapacityError(
                        f"this runtime holds its maximum of {self.settings.max_adapters} adapters"
                    )
            made = make(engine)
            self._register(adapter_id, expect_seq)
            self._runner.make_resident({adapter_id})
            return made

        return self.call(run, name)

    def delete_adapter(self, adapter_id: str) -> Future:
        """Delete an adapter; its queued ops fail with NotFound."""

        def delete(engine: Any) -> None:
            for job, exc in self._decoder.drop(adapter_id, errors.NotFound(f"adapter {adapter_id!r} was deleted")):
                self._results.finish(job.tag, exc=exc)
            engine.delete_adapter(adapter_id)
            with self._cond:
                entry = self._queues.remove(adapter_id)
            if entry is not None:
                for op in entry.queue.drain():
                    settle(op.future, exc=errors.NotFound(f"adapter {adapter_id!r} was deleted"))

        return self.call(delete, "delete_adapter")

    def offload_adapter(self, adapter_id: str) -> Future:
        """Move an adapter's weights and optimizer state off the device."""

        def offload(engine: Any) -> None:
            if not engine.has_adapter(adapter_id):
                raise errors.NotFound(f"unknown adapter {adapter_id!r}")
            if engine.is_resident(adapter_id):
                engine.offload(adapter_id, to=self.settings.offload_to)

        return self.call(offload, "offload_adapter")
