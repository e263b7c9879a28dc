"""`loraplane.dev/v1alpha1`."""

from loraplane.core.models.v1alpha1.lorajob import (  # noqa: F401
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Checkpoint,
    Condition,
    LoRAJob,
    LoRAJobSpec,
    LoRAJobStatus,
    Phase,
    Progress,
    ResumeFrom,
    RuntimeRef,
    SessionRef,
    TrainingSpec,
)
