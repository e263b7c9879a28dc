"""The gateway: FastAPI app that speaks the Tinker SDK's HTTP protocol (see docs/architecture.md)."""
