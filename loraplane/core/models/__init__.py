"""Versioned models of loraplane's Kubernetes resources (one folder per API version)."""
