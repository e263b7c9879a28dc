"""Fixtures of the emulator tests: a running emulator and a kubeconfig pointing at it."""

from tests.kube.emulator.fixtures import kube_emulator, kubeconfig_path

__all__ = ["kube_emulator", "kubeconfig_path"]
