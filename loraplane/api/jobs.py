"""LoRAJobs for Tinker training runs: what the gateway asks the control plane for.

Callers: `gateway.Gateway.create_model` and `.create_from_state`. Pure functions: they build
objects and decide; the gateway does the I/O.
"""

from __future__ import annotations

from typing import Any

from loraplane.api import ids
from loraplane.core.models.v1alpha1 import LoRAConfig, LoRAJob, LoRAJobSpec, ResumeFrom, SessionRef
from loraplane.core.models.v1alpha1.lorajob import SESSION_LABEL, TENANT_LABEL, ObjectMeta

#: Optimizers the runtime implements (create_model.optimizer_config.type).
OPTIMIZERS = ("adamw",)


def build_job(
    *,
    tenant: str,
    session_id: str,
    model_seq_id: int,
    base_model: str,
    lora: LoRAConfig,
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


def lora_from_tinker(config: dict[str, Any]) -> LoRAConfig:
    """Tinker's lora_config -> LoRAConfig (alpha left to the runtime's default). Pure."""
    return LoRAConfig(
        rank=config.get("rank", 32),
        seed=config.get("seed"),
        train_attn=config.get("train_attn", True),
        train_mlp=config.get("train_mlp", True),
        train_unembed=config.get("train_unembed", True),
    )


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
