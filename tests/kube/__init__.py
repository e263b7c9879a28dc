"""Tests of the Kubernetes API emulator that the operator and gateway tests run against."""
