"""The runtime: one base model, many LoRA adapters, one executor thread that owns the model."""
