"""LoRAJobs for Tinker training runs: what the gateway asks the control plane for.

Callers: `gateway.Gateway.create_model` and `.create_from_state`. Pure functions: they build
objects and decide; the gateway does the I/O.
"""

from __future__ import annotations

from typing import Any

from loraplane.api import ids
from loraplane.core.models.v1alpha1 import LoRAJob, LoRAJobSpec, ResumeFrom, SessionRef
from loraplane.core.models.v1alpha1.lorajob import SESSION_LABEL, TENANT_LABEL, ObjectMeta
from loraplane.core.params import LoraConfig

#: Optimizers the runtime implements (create_model.optimizer_config.type).
OPTIMIZERS = ("adamw",)


def build_job(
    *,
    tenant: str,
    session_id: str,
    model_seq_id: int,
    base_model: str,
    lora: LoraConfig,
    resume_from: ResumeFrom | None = None,
) -> LoRAJob:
    """The interactive LoRAJob of one Tinker training run. Pure; called by the gateway.

    Its name is the model id made DNS-safe, so a retried create_model (same session and
    model_seq_id) asks for the same job and the control plane answers it idempotently.
    """
    model_id = ids.model_id(session_id, model_seq_id)
    return LoRAJob(
        metadata=ObjectMeta(
            name=ids.job_name(model_id),
            labels={TENANT_LABEL: tenant, SESSION_LABEL: session_id},
        ),
        spec=LoRAJobSpec(
            base_model=base_model,
            tenant=tenant,
            mode="interactive",
            lora=lora,
            session=SessionRef(session_id=session_id, model_seq_id=model_seq_id, model_id=model_id),
            resume_from=resume_from,
        ),
    )


def lora_of(config: Any) -> LoraConfig:
    """The `LoraConfig` of a request's lora_config or of a run record's `lora`. Pure.

    Only the model's own fields are kept: a request model admits unknown ones, and a record
    written by an older release may hold fields this one no longer has.
    """
    values = config.model_dump() if hasattr(config, "model_dump") else dict(config or {})
    # an unset value (an older record's `"alpha": null`) takes today's default
    return LoraConfig.model_validate({k: v for k, v in values.items() if k in LoraConfig.model_fields and v is not None})


def info_for(job: LoRAJob, *, tokenizer_id: str | None, arch: str | None) -> dict[str, Any]:
    """The get_info answer of a training run. Pure."""
    session = job.spec.session
    model_id = session.model_id if session else job.metadata.name
    model_data: dict[str, Any] = {"model_name": job.spec.base_model}
    if arch:
        model_data["arch"] = arch
    if tokenizer_id:
        model_data["tokenizer_id"] = tokenizer_id
    return {
        "model_id": model_id,
        "model_data": model_data,
        "is_lora": True,
        "lora_rank": job.spec.lora.rank,
        "model_name": job.spec.base_model,
        "optimizer_config": {"type": "adamw"},
        "type": "get_info",
    }
