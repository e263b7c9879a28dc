"""Which adapters stay on the device: the memory-budget decisions of the executor.

The executor's model thread calls `choose_evictions` before every batch and before every
single-adapter op, then applies the answer with `engine.ensure_resident` / `engine.offload`.
Keeping the choice here, as a plain function of plain data, lets one table test pin the policy
without an engine.

Policy
------
- The adapters a batch needs are never evicted, even when they alone exceed the budget (the
  batch must run; the budget is a target, not a hard wall).
- Adapters with queued work are "busy": they are evicted only when idle ones do not free enough
  room, since evicting them now means bringing them back a moment later.
- Among equals, the least recently used goes first; ties break on the adapter id so that the
  answer never depends on dict order.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def choose_evictions(
    resident: Mapping[str, float],
    needed: Collection[str],
    busy: Collection[str],
    budget: int,
) -> list[str]:
    """Return the resident adapters to offload so that at most `budget` stay on the device.

    No side effects; called by `OpRunner.make_resident` (`loraplane.runtime.running`) on the model thread.

    Args:
        resident: adapter id -> last-used time (any monotonic unit) of every adapter on the device,
            including the needed ones that are already resident.
        needed: adapters the next batch uses; they will be resident after it and are never chosen.
        busy: adapters with queued work; chosen only after every idle candidate.
        budget: how many adapters may be resident at once (>= 1).

    Returns:
        Adapter ids in the order to offload them.
    """
    if budget < 1:
        raise ValueError(f"budget must be >= 1, got {budget}")
    needed_set = set(needed)
    busy_set = set(busy)
    after = set(resident) | needed_set
    excess = len(after) - budget
    if excess <= 0:
        return []
    candidates = [a for a in resident if a not in needed_set]
    candidates.sort(key=lambda a: (a in busy_set, resident[a], a))
    return candidates[:excess]


def snapshots_to_drop(snapshots: list[str], keep: int) -> list[str]:
    """The oldest snapshots beyond the newest `keep` (`snapshots` is oldest first).

    No side effects; called by `Engine.snapshot`. An RL loop takes a snapshot per iteration and
    samples from the newest: keeping a few bounds memory, and a sampler that needs to outlive them
    is saved with a path (its files stay loadable).
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    return snapshots[: max(0, len(snapshots) - keep)]


def free_slots(total_adapters: int, max_adapters: int) -> int:
    """How many more adapters this runtime accepts; reported by `/readyz` as `capacity.free_slots`.

    No side effects; called by the runtime API's health route and by `Executor.create_adapter`.
    """
    return max(0, max_adapters - total_adapters)
