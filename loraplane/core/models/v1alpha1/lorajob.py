"""The LoRAJob resource: one adapter's job on one runtime pod.

The same model serves the Kubernetes operator (as the CRD's schema, see `crds/lorajob.yaml`),
the gateway (which creates interactive jobs for Tinker sessions) and single-node mode (which keeps
the same objects in process). Field names are camelCase on the wire, snake_case in Python.

Status is written by the operator (or the embedded control plane) alone.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from loraplane.core.params import LoraConfig, TrainingSpec

GROUP = "loraplane.dev"
VERSION = "v1alpha1"
KIND = "LoRAJob"
PLURAL = "lorajobs"
SHORT_NAME = "lj"
API_VERSION = f"{GROUP}/{VERSION}"

#: Labels the gateway and operator put on jobs and pods.
TENANT_LABEL = f"{GROUP}/tenant"
SESSION_LABEL = f"{GROUP}/session"
BASE_MODEL_LABEL = f"{GROUP}/base-model"
RUNTIME_POD_LABEL = f"{GROUP}/component"  # value "runtime" on runtime pods

#: Finalizer the operator puts on jobs so that their adapters are unloaded before they go.
FINALIZER = f"{GROUP}/adapter"

def _immutable(field: str) -> dict[str, Any]:
    """A CEL transition rule for the CRD: the field cannot change once the job exists."""
    return {"x-kubernetes-validations": [{"rule": "self == oldSelf", "message": f"{field} is immutable"}]}


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def dump(self) -> dict[str, Any]:
        """The wire form: camelCase keys, unset optional fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Phase(StrEnum):
    PENDING = "Pending"  # accepted, not yet placed on a runtime
    SCHEDULED = "Scheduled"  # placed, being dispatched (adapter created or restored)
    RUNNING = "Running"  # adapter live on its runtime
    SUSPENDED = "Suspended"  # spec.suspend: offloaded, slot freed
    SUCCEEDED = "Succeeded"  # declarative training finished (interactive jobs end by deletion)
    FAILED = "Failed"  # backoffLimit exhausted or a permanent error


TERMINAL_PHASES = frozenset({Phase.SUCCEEDED, Phase.FAILED})


class SessionRef(_Model):
    """The Tinker identity of an interactive job."""

    session_id: str = Field(description="Tinker session id.")
    model_seq_id: int = Field(0, ge=0, description="Per-session model counter; model_id is `<session>:train:<seq>`.")
    model_id: str = Field(description="Tinker model id (= training run id).")


class ResumeFrom(_Model):
    """A saved training state to start from instead of a fresh adapter."""

    path: str = Field(description="A `tinker://<run>/weights/<name>` path or an artifact-store URL.")
    optimizer: bool = Field(True, description="Restore the optimizer state too.")


class LoRAJobSpec(_Model):
    """What the job should be. The base model and LoRA config never change."""

    model_config = ConfigDict(  # merged with _Model's
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self.mode != 'training' || has(self.training)", "message": "mode training needs training"},
            ]
        },
    )

    base_model: str = Field(
        min_length=1,
        max_length=256,
        description="Name of the base model (as runtimes advertise it).",
        json_schema_extra=_immutable("baseModel"),
    )
    tenant: str = Field(
        min_length=1,
        max_length=63,
        description="Owner; also the label loraplane.dev/tenant.",
        json_schema_extra=_immutable("tenant"),
    )
    mode: Literal["interactive", "training"] = Field(
        "interactive", description="A Tinker session or a declarative run.", json_schema_extra=_immutable("mode")
    )
    lora: LoraConfig = Field(
        default_factory=LoraConfig, description="The adapter's shape; immutable.", json_schema_extra=_immutable("lora")
    )
    session: SessionRef | None = Field(None, description="Tinker identity (interactive jobs).")
    training: TrainingSpec | None = Field(None, description="The run (training jobs).")
    resume_from: ResumeFrom | None = Field(None, description="Start from this checkpoint instead of a fresh adapter.")
    suspend: bool = Field(False, description="Offload the adapter and free its runtime slot.")
    ttl_seconds_after_finished: int | None = Field(None, ge=0, description="Delete the job this long after it ends.")
    idle_timeout_seconds: int | None = Field(None, ge=0, description="Suspend an interactive job idle this long.")
    backoff_limit: int = Field(3, ge=0, le=100, description="Dispatch/restore retries before Failed.")

    @model_validator(mode="after")
    def _training_has_run(self) -> LoRAJobSpec:
        if self.mode == "training" and self.training is None:
            raise ValueError("spec.training is required when mode is 'training'")
        return self


class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str
    message: str = ""
    last_transition_time: str
    observed_generation: int | None = None


class RuntimeRef(_Model):
    pod: str = Field(description="Runtime pod name (single-node: the in-process runtime's name).")
    address: str = Field(description="Base URL of the runtime's internal API, e.g. http://10.0.0.5:8001.")


class Progress(_Model):
    step: int = 0
    total_steps: int | None = None
    loss: float | None = None
    tokens: int = 0


class Checkpoint(_Model):
    path: str = Field(description="tinker:// path or store URL of the saved state.")
    step: int = 0
    time: str | None = None


class LoRAJobStatus(_Model):
    model_config = ConfigDict(extra="ignore")  # the operator may add fields; older readers ignore them

    phase: Phase = Phase.PENDING
    conditions: list[Condition] = Field(default_factory=list)
    runtime: RuntimeRef | None = None
    observed_generation: int | None = None
    progress: Progress = Field(default_factory=Progress)
    latest_checkpoint: Checkpoint | None = None
    attempts: int = Field(0, description="Dispatches and restores used (failed ones and lost runtimes).")
    next_attempt_time: str | None = Field(None, description="Not retried before this time (backoff).")
    start_time: str | None = None
    completion_time: str | None = None
    message: str | None = None


class ObjectMeta(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    uid: str | None = None
    resourceVersion: str | None = None
    generation: int | None = None
    creationTimestamp: str | None = None
    deletionTimestamp: str | None = None
    finalizers: list[str] = Field(default_factory=list)


class LoRAJob(BaseModel):
    model_config = ConfigDict(extra="ignore")

    apiVersion: str = API_VERSION
    kind: str = KIND
    metadata: ObjectMeta
    spec: LoRAJobSpec
    status: LoRAJobStatus = Field(default_factory=LoRAJobStatus)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> LoRAJob:
        """Parse a Kubernetes object (dict); raises pydantic.ValidationError on a bad spec."""
        return cls.model_validate(dict(body))

    def to_body(self) -> dict[str, Any]:
        return {
            "apiVersion": self.apiVersion,
            "kind": self.kind,
            "metadata": self.metadata.model_dump(exclude_none=True),
            "spec": self.spec.dump(),
            "status": self.status.dump(),
        }
