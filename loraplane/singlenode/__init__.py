"""Single-node mode: gateway, one runtime per model and an embedded control plane in one process."""
