"""Identifiers of the Tinker protocol as loraplane spells them (tinker-protocol section 5.7).

Callers: the gateway's routes. Every function here is pure.

    session_id   s-<12 hex>                        lowercase, DNS-safe
    model_id     <session_id>:train:<model_seq>    = training_run_id (the SDK computes it itself)
    sampler_id   <session_id>:sample:<n>
    job name     model_id with ':' -> '-'          (a LoRAJob / Kubernetes object name)
    request_id   <owner>.<pod>.<op>.<runtime id>   owner = job name or sampler key, op an `OpKind`

A gateway request id carries everything needed to route `retrieve_future` (the owner names the
job or sampler, hence the session and tenant; the pod names the runtime holding the future; the op
says how to translate the result), so any gateway replica can answer it without shared state.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from functools import cached_property

from loraplane.core import errors
from loraplane.core.runtime_ops import OpKind

SESSION_RE = re.compile(r"^s-[0-9a-f]{12}$")
MODEL_RE = re.compile(r"^(s-[0-9a-f]{12}):train:(\d{1,9})$")
SAMPLER_RE = re.compile(r"^(s-[0-9a-f]{12}):sample:(\d{1,12})$")
OWNER_RE = re.compile(r"^(s-[0-9a-f]{12})-(train|sample)-(\d{1,12})$")
POD_RE = re.compile(r"^[a-z0-9]([-a-z0-9_]*[a-z0-9])?$")

#: The op part of request ids that earlier releases handed out, still honoured while they are in flight.
_LEGACY_OPS = {
    "create": OpKind.CREATE_MODEL, "load_create": OpKind.CREATE_FROM_STATE, "unload": OpKind.UNLOAD_MODEL,
    "fwdbwd": OpKind.FORWARD_BACKWARD, "optim": OpKind.OPTIM_STEP, "save": OpKind.SAVE_STATE,
    "load": OpKind.LOAD_STATE,
}


def op_of(value: str) -> OpKind | None:
    """The op a request id's op part names (legacy spellings included), or None. Pure."""
    legacy = _LEGACY_OPS.get(value)
    if legacy is not None:
        return legacy
    try:
        return OpKind(value)
    except ValueError:
        return None


def new_session_id(token_hex: str | None = None) -> str:
    """A fresh session id; `token_hex` (12 hex digits) for tests."""
    return f"s-{token_hex if token_hex is not None else secrets.token_hex(6)}"


def model_id(session_id: str, model_seq_id: int) -> str:
    return f"{session_id}:train:{model_seq_id}"


def sampler_id(session_id: str, n: int) -> str:
    return f"{session_id}:sample:{n}"


def check_session_id(value: object, *, field: str = "session_id") -> str:
    if not isinstance(value, str) or not SESSION_RE.match(value):
        raise errors.NotFound(f"unknown {field} {value!r}", field=field)
    return value


def parse_model_id(value: object, *, field: str = "model_id") -> tuple[str, int]:
    """(session_id, model_seq_id); an id of another shape cannot exist here, so it is a 404."""
    m = MODEL_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise errors.NotFound(f"unknown {field} {value!r} (expected <session_id>:train:<n>)", field=field)
    return m.group(1), int(m.group(2))


def parse_sampler_id(value: object, *, field: str = "sampling_session_id") -> tuple[str, int]:
    m = SAMPLER_RE.match(value) if isinstance(value, str) else None
    if m is None:
        raise errors.NotFound(f"unknown {field} {value!r}", field=field)
    return m.group(1), int(m.group(2))


def job_name(model_id_: str) -> str:
    """The LoRAJob name of a training run: DNS-safe, lowercase."""
    return model_id_.replace(":", "-").lower()


def owner_key(tinker_id: str) -> str:
    """model_id or sampler_id -> the owner part of a request id (no '.' or ':')."""
    return tinker_id.replace(":", "-")


def id_for_owner(owner: str) -> tuple[str, str, str]:
    """Owner key -> (session_id, kind "train"|"sample", tinker id). Raises NotFound if malformed."""
    m = OWNER_RE.match(owner)
    if m is None:
        raise errors.NotFound(f"unknown request_id owner {owner!r}", field="request_id")
    session, kind, n = m.groups()
    return session, kind, f"{session}:{kind}:{n}"


@dataclass(frozen=True)
class FutureRef:
    """What a gateway request id encodes."""

    owner: str
    pod: str
    #: which call it stands for: it decides how retrieve_future turns the result into Tinker's
    op: OpKind
    runtime_request_id: str

    def encode(self) -> str:
        return f"{self.owner}.{self.pod}.{self.op}.{self.runtime_request_id}"

    @cached_property
    def _parsed(self) -> tuple[str, str, str]:
        return id_for_owner(self.owner)

    @property
    def session_id(self) -> str:
        return self._parsed[0]

    @property
    def kind(self) -> str:
        return self._parsed[1]

    @property
    def tinker_id(self) -> str:
        return self._parsed[2]


def parse_request_id(value: object) -> FutureRef:
    """Decode a gateway request id; anything malformed is an unknown future (404)."""
    if not isinstance(value, str) or len(value) > 512:
        raise errors.NotFound(f"unknown request_id {value!r}", field="request_id")
    parts = value.split(".", 3)
    op = op_of(parts[2]) if len(parts) == 4 else None
    if op is None or not POD_RE.match(parts[1]) or not parts[3]:
        raise errors.NotFound(f"unknown request_id {value!r}", field="request_id")
    ref = FutureRef(parts[0], parts[1], op, parts[3])
    ref.session_id  # noqa: B018 (parses the owner now, so a malformed one is a 404 here)
    return ref
