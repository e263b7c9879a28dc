"""Request checks and decoding on the API's threads, done without torch kernels.

Callers: `passes.TokenLimits` (token ids in the vocabulary), `losses.check_inputs` (finite loss
inputs) and `stability.resolve` (a datum's provenance), all reached from the runtime's API
handlers, which run on the event loop or its worker threads while the model thread runs passes and
decode steps in the same process; and `wire.decode_tensor`.

## Why not torch
Every torch op releases the GIL for its kernel and takes it back afterwards. With the model thread
busy, taking it back means waiting until that thread's Python yields it, up to the interpreter's
switch interval (5 ms) per op, and the GIL handoffs slow the model thread's passes as well. Under
a flood of requests this doubled the wall time of one in ten passes (measured with
`tests/acceptance/test_flood.py`'s settings: 90th percentile of a two-step pass 28 ms, 10 ms
after). NumPy reduces a small array (a request's token ids and loss inputs, typically) without
letting go of the GIL, in microseconds, so such a check costs the same whatever the model thread
does. A tensor that is not a plain CPU tensor
(on a device, or needing grad) is reduced by torch, as before.

A large tensor is a second reason. A torch kernel over more than 32768 values runs on a team of
OpenMP threads owned by the calling thread, and the team outlives the call as long as that thread
does (an API worker thread is reused for many requests). Once the process has more such threads
than CPUs, the OpenMP runtime stops letting idle team members spin between parallel regions, so
the model thread's every matmul waits for its team to wake up. One forward_backward carrying a
100,000-value int32 loss input cut sampling on the hidden-512 benchmark model from 505 to 284
tokens/s for as long as that worker thread lived.
"""

from __future__ import annotations

import numpy as np
import torch


def _host(values: torch.Tensor) -> np.ndarray | None:
    """A NumPy view of a CPU tensor's values (no copy), or None when there is none to take."""
    if values.device.type != "cpu" or values.requires_grad or values.is_conj() or values.is_neg():
        return None
    try:
        return values.numpy()
    except (TypeError, RuntimeError):  # a dtype NumPy lacks (bfloat16, ...)
        return None


def host_array(values: torch.Tensor) -> np.ndarray:
    """The values as a NumPy array: a view of a plain CPU tensor, else a host copy made by torch
    (in float32 for a dtype NumPy lacks, such as bfloat16)."""
    array = _host(values)
    if array is not None:
        return array
    host = values.detach().cpu()
    try:
        return host.numpy()
    except TypeError:
        return host.float().numpy()


def value_range(values: torch.Tensor) -> tuple[int, int]:
    """The least and greatest of a non-empty integer tensor, as Python ints."""
    array = _host(values)
    if array is not None:
        return int(array.min()), int(array.max())
    return int(values.min()), int(values.max())


def all_finite(values: torch.Tensor) -> bool:
    """Whether no value is NaN or infinite."""
    array = _host(values)
    if array is not None:
        return bool(np.isfinite(array).all())
    return bool(torch.isfinite(values).all())
