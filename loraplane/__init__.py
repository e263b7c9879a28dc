"""loraplane: multi-tenant LoRA fine-tuning on shared base models, spoken to through the Tinker API.

Layers (imports point one way, see docs/architecture.md):
    core      framework-free models, decisions, errors, settings
    runtime   the GPU process: one base model, many adapters, one executor (imports core only)
    api       the FastAPI gateway that speaks Tinker's protocol (imports core only)
    operator  the Kopf operator that owns LoRAJob status (imports core only)
    singlenode  wiring of gateway + runtime + an embedded control plane in one process
"""

__version__ = "0.1.0"
