"""Framework-free core: the LoRAJob model, decisions, errors and settings shared by every component."""
