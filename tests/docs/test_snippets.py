"""Every code block of README.md, docs/ and the chart's NOTES works as written.

Python and SDK blocks run against `loraplane serve` on loopback with the tiny model, started by
the README's own serve command. Shell blocks for a cluster are checked against what they name: the
chart rendered for release `loraplane` in namespace `loraplane` (as docs/install.md installs it),
the CRD's names and schema, files of the repository. Shell lines that run on one machine (the key
file recipe, the NOTES' key extraction) run for real. A new block, or a command no check knows,
fails `test_every_snippet_has_a_check` until a check is written for it.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import pytest
import yaml

from loraplane.api.auth import load_keys
from loraplane.core import artifacts
from tests.acceptance.conftest import Server, start_server
from tests.docs.snippets import REPO, Snippet, all_snippets, commands, heredoc, notes_command_lines

RELEASE = NAMESPACE = "loraplane"
CHART = REPO / "helm" / "loraplane"
CRD = yaml.safe_load((REPO / "crds" / "lorajob.yaml").read_text())
README_KEY = ("alice", "tml-alice-secret-key")


def snippet(source: str, first_line_start: str) -> Snippet:
    found = [s for s in all_snippets() if s.source == source and s.first_line.startswith(first_line_start)]
    assert len(found) == 1, f"{source}: expected one block starting {first_line_start!r}, found {len(found)}"
    return found[0]


#: (document, how the block's first line starts) -> the test that checks it
CHECKED: dict[tuple[str, str], str] = {
    ("README.md", "bash scripts/demo.sh"): "test_readme_demo_and_setup_scripts_exist_and_parse",
    ("README.md", "bash scripts/setup.sh"): "test_readme_demo_and_setup_scripts_exist_and_parse",
    ("README.md", "server ready at"): "test_readme_demo_output_is_what_the_demo_prints",
    ("README.md", ".venv/bin/loraplane serve"): "readme_server (fixture)",
    ("README.md", "import tinker"): "test_readme_sdk_and_export_snippets_run_against_serve",
    ("README.md", "from peft import PeftModel"): "test_readme_sdk_and_export_snippets_run_against_serve",
    ("README.md", "export LORAPLANE_URL="): "test_readme_jobs_commands_run_against_serve",
    ("README.md", "helm install loraplane"): "test_cluster_commands_name_what_the_chart_and_crd_have",
    ("README.md", ".venv/bin/python bench/multilora.py"): "test_readme_benchmark_command_names_a_script",
    ("docs/architecture.md", "tinker SDK"): "test_architecture_diagram_names_real_packages",
    ("docs/install.md", "docker build"): "test_image_build_arguments_exist",
    ("docs/install.md", 'KEY="tml-'): "test_install_key_recipe_makes_a_file_the_gateway_accepts",
    ("docs/install.md", "image:"): "test_install_values_render_and_fit_the_schema",
    ("docs/install.md", "kubectl -n loraplane create secret generic loraplane-s3"):
        "test_cluster_commands_name_what_the_chart_and_crd_have",
    ("docs/install.md", "store:"): "test_install_values_render_and_fit_the_schema",
    ("docs/install.md", "kubectl label namespace"): "test_cluster_commands_name_what_the_chart_and_crd_have",
    ("docs/install.md", "kubectl -n loraplane port-forward"): "test_install_sdk_heredoc_runs_against_serve",
    ("docs/install.md", "kubectl -n loraplane exec deploy/loraplane-operator"):
        "test_cluster_commands_name_what_the_chart_and_crd_have",
    ("docs/install.md", "# edit spec.baseModel"): "test_cluster_commands_name_what_the_chart_and_crd_have",
    ("docs/install.md", "helm uninstall"): "test_cluster_commands_name_what_the_chart_and_crd_have",
    ("docs/limits.md", "alice=tml-alice-key max_training_clients"): "test_limits_keys_file_example_loads_with_its_quotas",
    ("docs/limits.md", "tenants:"): "test_limits_chart_quotas_reach_gateway_and_operator",
    ("docs/losses.md", "loss = -sum_t m_t"): "test_losses_objective_names_the_config_keys_of_the_loss",
}


def test_every_snippet_has_a_check() -> None:
    found = {(s.source, key_start) for s in all_snippets() for (src, key_start) in CHECKED
             if s.source == src and s.first_line.startswith(key_start)}
    unchecked = [str(s) for s in all_snippets()
                 if not any(s.source == src and s.first_line.startswith(k) for (src, k) in CHECKED)]
    assert not unchecked, f"code blocks no test checks (add one to CHECKED): {unchecked}"
    assert found == set(CHECKED), f"checks whose block is gone: {set(CHECKED) - found}"


# -- rendering and schema --------------------------------------------------------------------------

def render(values: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """(manifests, NOTES.txt) of the chart for release and namespace `loraplane`."""
    out = helm.Chart.load(CHART).render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = [d for path, text in sorted(out.items()) if not path.endswith("NOTES.txt")
            for d in yaml.safe_load_all(text) if d]
    notes = next(text for path, text in out.items() if path.endswith("NOTES.txt"))
    return docs, notes


def install_values() -> dict[str, Any]:
    """docs/install.md's values file (section 5)."""
    return yaml.safe_load(snippet("docs/install.md", "image:").text)


@pytest.fixture(scope="module")
def installed() -> list[dict[str, Any]]:
    return render(install_values())[0]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert found, f"the chart renders no {kind} {name!r} for release {RELEASE!r}: {[d['metadata']['name'] for d in docs if d['kind'] == kind]}"
    return found[0]


def test_install_values_render_and_fit_the_schema() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = install_values()
    jsonschema.validate(values, schema)
    docs, _ = render(values)
    assert find(docs, "PersistentVolumeClaim", "loraplane-store")["spec"]["storageClassName"] == "nfs-client"
    s3 = {**values, **yaml.safe_load(snippet("docs/install.md", "store:").text)}
    jsonschema.validate(s3, schema)
    gateway = find(render(s3)[0], "Deployment", "loraplane-gateway")["spec"]["template"]["spec"]["containers"][0]
    assert {"secretRef": {"name": "loraplane-s3"}} in gateway.get("envFrom", [])


# -- cluster commands -------------------------------------------------------------------------------

def _flag(args: list[str], name: str) -> str | None:
    return args[args.index(name) + 1] if name in args else None


def check_cluster_command(args: list[str], docs: list[dict[str, Any]]) -> None:
    """What a helm or kubectl command names exists: release, chart, namespace, objects, CRD names, files."""
    crd_names = CRD["spec"]["names"]
    lorajob_names = {crd_names["plural"], crd_names["singular"], *crd_names.get("shortNames", [])}
    ns = _flag(args, "-n")
    assert ns in (None, NAMESPACE), f"{args}: namespace {ns!r}, the docs install into {NAMESPACE!r}"
    rest = [a for i, a in enumerate(args[1:], 1) if a != "-n" and args[i - 1] != "-n"]
    if args[0] == "helm":
        verb, release = rest[0], rest[1]
        assert release == RELEASE
        if verb == "install":
            assert (REPO / rest[2]).resolve() == CHART
            assert _flag(args, "-f") == "my-values.yaml"  # the file of docs/install.md section 5
        else:
            assert verb == "uninstall", args
        return
    assert args[0] == "kubectl", f"no check knows {args}"
    verb = rest[0]
    if verb in ("get", "describe"):
        kind = rest[1]
        assert kind == "pods" or kind in lorajob_names, f"{args}: {kind!r} is not a LoRAJob name {lorajob_names}"
        if len(rest) > 2 and not rest[2].startswith("-"):
            example = yaml.safe_load((REPO / "examples" / "lorajob-training.yaml").read_text())
            assert rest[2] == example["metadata"]["name"]
    elif verb == "apply":
        target = REPO / _flag(args, "-f")  # type: ignore[operator]
        files = sorted(target.glob("*.yaml")) if target.is_dir() else [target]
        jobs = [body for f in files for body in yaml.safe_load_all(f.read_text())
                if isinstance(body, dict) and body.get("kind") == crd_names["kind"]]
        assert jobs, f"{args}: no {crd_names['kind']} in {target}"
        schema = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for body in jobs:
            jsonschema.Draft4Validator(schema).validate(body)
    elif verb == "port-forward":
        service = find(docs, "Service", rest[1].removeprefix("svc/"))
        remote = int(rest[2].split(":")[1])
        assert remote in [p["port"] for p in service["spec"]["ports"]]
    elif verb in ("exec", "rollout"):
        target = next(a for a in rest if a.startswith("deploy/"))
        deployment = find(docs, "Deployment", target.removeprefix("deploy/"))
        mounts = [m["mountPath"] for c in deployment["spec"]["template"]["spec"]["containers"]
                  for m in c.get("volumeMounts", [])]
        for path in re.findall(r"/var/lib/loraplane/store[\w/.-]*", " ".join(rest)):
            assert any(path.startswith(m) for m in mounts), f"{path} is not under a mount of {target}: {mounts}"
    elif verb == "create" and rest[1] == "secret":
        name = rest[3]
        if name == "loraplane-api-keys":
            values = install_values()
            assert values["apiKeys"]["existingSecret"] == name
            default_key = yaml.safe_load((CHART / "values.yaml").read_text())["apiKeys"]["secretKey"]
            assert f"--from-file={default_key}=api-keys" in rest
        else:
            s3 = yaml.safe_load(snippet("docs/install.md", "store:").text)
            assert s3["store"]["s3"]["credentialsSecret"] == name
            assert {a.split("=")[0] for a in rest if a.startswith("--from-literal")} == {
                "--from-literal=AWS_ACCESS_KEY_ID".split("=")[0]}
    elif verb == "delete" and rest[1] == "crd":
        assert rest[2] == f"{crd_names['plural']}.{CRD['spec']['group']}"
    elif verb in ("create", "label"):
        assert rest[1] == "namespace" and rest[2] == NAMESPACE, args
    else:
        raise AssertionError(f"no check knows {args}")


def test_cluster_commands_name_what_the_chart_and_crd_have(installed: list[dict[str, Any]]) -> None:
    checked = 0
    for s in all_snippets():
        if s.lang != "sh":
            continue
        for args in commands(s.text):
            if args[0] in ("helm", "kubectl"):
                check_cluster_command(args, installed)
                checked += 1
    assert checked >= 15


def test_inline_cluster_commands_name_what_the_chart_and_crd_have(installed: list[dict[str, Any]]) -> None:
    """`kubectl ...` written inline in the prose, with no <placeholder>, is checked like a block."""
    checked = 0
    for doc in ("README.md", "docs/install.md"):
        for span in re.findall(r"`((?:kubectl|helm) [^`]+)`", (REPO / doc).read_text()):
            args = commands(" ".join(span.split()))
            if "<" in span or len(args[0]) < 3:
                continue
            check_cluster_command(args[0], installed)
            checked += 1
    assert checked >= 3


def test_dataset_copy_lands_where_the_example_job_reads_it() -> None:
    copy = commands(snippet("docs/install.md", "kubectl -n loraplane exec deploy/loraplane-operator").text)[1]
    target = re.search(r"cat > (\S+)", " ".join(copy)).group(1)  # type: ignore[union-attr]
    example = yaml.safe_load((REPO / "examples" / "lorajob-training.yaml").read_text())
    assert example["spec"]["training"]["dataset"] == f"file://{target}"
    mount = yaml.safe_load((CHART / "values.yaml").read_text())["store"]["pvc"]["mountPath"]
    assert target.startswith(mount + "/")


def test_resume_example_starts_from_the_training_examples_final_state() -> None:
    training = yaml.safe_load((REPO / "examples" / "lorajob-training.yaml").read_text())
    resume = yaml.safe_load((REPO / "examples" / "lorajob-resume.yaml").read_text())
    name, output = training["metadata"]["name"], training["spec"]["training"]["outputName"]
    assert resume["spec"]["resumeFrom"]["path"] == f"tinker://{NAMESPACE}.{name}/weights/{output}"
    assert resume["spec"]["tenant"] == training["spec"]["tenant"]


# -- files the README names -------------------------------------------------------------------------

def test_readme_demo_and_setup_scripts_exist_and_parse() -> None:
    for block in ("bash scripts/demo.sh", "bash scripts/setup.sh"):
        for args in commands(snippet("README.md", block).text):
            if args[0] == "bash":
                subprocess.run(["bash", "-n", str(REPO / args[1])], check=True)
    assert '.venv/bin/loraplane demo "$@"' in (REPO / "scripts" / "demo.sh").read_text()
    out = subprocess.run([sys.executable, "-m", "loraplane", "demo", "--help"], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert "--steps" in out.stdout


def test_readme_demo_output_is_what_the_demo_prints(monkeypatch: pytest.MonkeyPatch) -> None:
    from loraplane.singlenode import demo

    lines = snippet("README.md", "server ready at").text.splitlines()
    patterns = [
        rf"server ready at http://127\.0\.0\.1:\d+; training {re.escape(demo.MODEL_NAME)} with LoRA rank 8",
        r"before training: What is the capital of Zorbia\? -> '.*'",
        r"fine-tuning: 100%\|.*\| 8/8 \[.*step, loss=[\d.]+\]",
        r"loss per token: ([\d.]+ ){7}[\d.]+",
        r"after training:  What is the capital of Zorbia\? -> 'The capital of Zorbia is Quellmont\.'",
        r"checkpoint saved: tinker://\S+/weights/demo-final",
        r"done in \d+ s",
    ]
    for line, pattern in zip(lines, patterns, strict=False):
        assert re.fullmatch(pattern, line), f"{line!r} is not what the demo prints ({pattern})"
    assert demo.FACTS[4][0] == "What is the capital of Zorbia?"
    checkpoint = lines[5].removeprefix("checkpoint saved: ")
    monkeypatch.setattr(demo, "loraplane_command", lambda: "/path/to/loraplane/.venv/bin/loraplane")
    expected = demo.next_steps(model_dir=Path("/root/.cache/loraplane/smollm2-135m-instruct"),
                               store="file:///root/.local/share/loraplane/store", checkpoint=checkpoint,
                               log_path=Path("/root/.cache/loraplane/demo-server.log"))
    assert lines[len(patterns):] == expected
    assert demo.default_cache_dir({"HOME": "/root"}) == Path("/root/.cache/loraplane/smollm2-135m-instruct")
    assert artifacts.default_store_url({"HOME": "/root"}) == "file:///root/.local/share/loraplane/store"


def test_readme_benchmark_command_names_a_script() -> None:
    args = commands(snippet("README.md", ".venv/bin/python bench/multilora.py").text)[0]
    subprocess.run([sys.executable, "-m", "py_compile", str(REPO / args[1])], check=True)


def test_architecture_diagram_names_real_packages() -> None:
    text = snippet("docs/architecture.md", "tinker SDK").text
    for package in re.findall(r"loraplane/\w+", text):
        assert (REPO / package / "__init__.py").exists(), package


def test_image_build_arguments_exist() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    prose = (REPO / "docs" / "install.md").read_text().split("## 3.")[0]
    for arg in set(re.findall(r"`([A-Z_]+)`", prose)) - {"HF_HUB_OFFLINE"}:
        assert re.search(rf"^ARG {arg}\b", dockerfile, re.M), f"install.md names build argument {arg}"
    for args in commands(snippet("docs/install.md", "docker build").text):
        assert args[:2] in (["docker", "build"], ["docker", "push"])


def test_install_key_recipe_makes_a_file_the_gateway_accepts(tmp_path: Path) -> None:
    text = snippet("docs/install.md", 'KEY="tml-').text
    local = "\n".join(ln for ln in text.splitlines() if not ln.startswith("kubectl"))
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", local], cwd=tmp_path, capture_output=True,
                         text=True, check=True)
    key = re.search(r"alice: (tml-\w+)", out.stdout).group(1)  # type: ignore[union-attr]
    table = load_keys(files=[str(tmp_path / "api-keys")])
    assert table.tenant_for(key) == "alice" and key not in (tmp_path / "api-keys").read_text()


# -- running against serve --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def readme_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The README's serve command, with the tiny model as Qwen/Qwen3-0.6B on a free port."""
    args = commands(snippet("README.md", ".venv/bin/loraplane serve").text)[0]
    assert args[:2] == [".venv/bin/loraplane", "serve"]
    assert _flag(args, "--api-key") == "=".join(README_KEY)
    store = tmp_path_factory.mktemp("readme-store")
    model = _flag(args, "--model")
    assert model == "Qwen/Qwen3-0.6B=/models/Qwen3-0.6B"
    server = start_server(tiny_model_dir, f"file://{store}", name="Qwen/Qwen3-0.6B",
                          keys={README_KEY[0]: README_KEY[1]})
    yield server
    server.stop()


def run_python(code: str, *, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TINKER_TELEMETRY": "0", **(env or {})}
    # a deprecated call the snippet itself makes (the SDK's start "DEPRECATED") fails it
    warnings = ["-W", "error::FutureWarning:__main__", "-W", "error::DeprecationWarning:__main__",
                "-W", "error:DEPRECATED"]
    # The SDK's clients live on a daemon thread whose HTTP client may abort the process (SIGABRT,
    # nothing on stderr) when the interpreter finalizes while a background call (a heartbeat) is in
    # flight. The snippet has done all it does by then, so it ends without finalizing.
    ending = "\nimport os as _os, sys as _sys\n_sys.stdout.flush(); _sys.stderr.flush(); _os._exit(0)\n"
    out = subprocess.run([sys.executable, *warnings, "-c", code + ending],
                         capture_output=True, text=True, env=full_env, cwd=cwd, timeout=240)
    assert out.returncode == 0, f"snippet failed:\n{code}\n--- stderr:\n{out.stderr[-3000:]}"
    assert "DEPRECATED" not in out.stderr, out.stderr
    return out.stdout


def test_readme_sdk_and_export_snippets_run_against_serve(readme_server: Server, tiny_model_dir: Path,
                                                         tmp_path: Path) -> None:
    sdk = snippet("README.md", "import tinker").text.replace("http://127.0.0.1:8000", readme_server.url)
    printed = run_python(sdk)
    assert "Qwen/Qwen3-0.6B" in printed  # the server's capabilities
    path = re.search(r"(tinker://\S+/weights/my-adapter)", printed).group(1)  # type: ignore[union-attr]

    export = snippet("README.md", "from peft import PeftModel").text
    store = readme_server.store.removeprefix("file://")
    for old, new in {'"/home/me/.local/share/loraplane/store"': repr(store),
                     '"tinker://RUN_ID/weights/my-adapter"': repr(path),
                     '"/models/Qwen3-0.6B"': repr(str(tiny_model_dir)),
                     '"/models/Qwen3-0.6B-my-adapter"': repr(str(tmp_path / "merged"))}.items():
        assert old in export, f"the export snippet no longer has {old}"
        export = export.replace(old, new)
    run_python(export)
    assert (tmp_path / "merged" / "config.json").exists()


def test_readme_jobs_commands_run_against_serve(readme_server: Server) -> None:
    lines = [line.split("#")[0].strip() for line in snippet("README.md", "export LORAPLANE_URL=").text.splitlines()]
    export, *calls = [line for line in lines if line]
    env = dict(word.split("=", 1) for word in export.removeprefix("export ").split())
    assert env == {"LORAPLANE_URL": "http://127.0.0.1:8000", "LORAPLANE_API_KEY": README_KEY[1]}
    env = {**os.environ, **env, "LORAPLANE_URL": readme_server.url}
    printed = []
    for call in calls:
        args = call.split()
        assert args[:2] == [".venv/bin/loraplane", "jobs"], call
        if args[2] == "describe":  # the job runs first: an interactive job on the README's model
            deadline = time.monotonic() + 60
            while "Running" not in subprocess.run([sys.executable, "-m", "loraplane", "jobs", "get", args[3]],
                                                   capture_output=True, text=True, env=env).stdout:
                assert time.monotonic() < deadline, "the example job did not run"
                time.sleep(0.1)
        done = subprocess.run([sys.executable, "-m", "loraplane", *args[1:]], capture_output=True, text=True,
                              env=env, cwd=REPO, timeout=60)
        assert done.returncode == 0, f"{call}: {done.stderr}"
        printed.append(done.stdout)
    assert printed[0].strip() == "lorajob.loraplane.dev/alice-chat-1 created"
    assert printed[1].split()[:9] == ["NAME", "PHASE", "BASE", "MODEL", "RUNTIME", "STEP", "LOSS", "TENANT", "AGE"]
    assert "Conditions:" in printed[2] and "Events:" in printed[2]
    assert printed[3].strip() == 'lorajob.loraplane.dev "alice-chat-1" deleted'


def test_install_sdk_heredoc_runs_against_serve(readme_server: Server, installed: list[dict[str, Any]]) -> None:
    text = snippet("docs/install.md", "kubectl -n loraplane port-forward").text
    exports = dict(a[1].split("=", 1) for a in commands(text) if a[0] == "export")
    assert exports["TINKER_BASE_URL"] == "http://127.0.0.1:8000"  # where the port-forward listens
    printed = run_python(heredoc(text, "PY"), env={"TINKER_BASE_URL": readme_server.url,
                                                   "TINKER_API_KEY": README_KEY[1]})
    assert "Qwen/Qwen3-0.6B" in printed and ":train:" in printed


def test_notes_commands_work_as_printed(readme_server: Server) -> None:
    """The default install's NOTES: port-forward to the gateway, the generated key, the SDK line."""
    docs, notes = render({"runtimes": [{"name": "q", "baseModel": "Qwen/Qwen3-0.6B",
                                        "model": {"image": {"path": "/models/q"}}}]})
    lines = notes_command_lines(notes)
    forward = next(ln for ln in lines if "port-forward" in ln)
    check_cluster_command(commands(forward)[0], docs)
    key_line = next(ln for ln in lines if ln.startswith("export TINKER_API_KEY=$("))
    secret_name = re.search(r"get secret (\S+)", key_line).group(1)  # type: ignore[union-attr]
    jsonpath = re.search(r"jsonpath='\{\.data\.([\w.-]+)\}'", key_line).group(1)  # type: ignore[union-attr]
    secret, field = find(docs, "Secret", secret_name), jsonpath.replace("\\.", ".")
    # the API server stores stringData base64-encoded under data, which the jsonpath reads
    encoded = base64.b64encode(secret["stringData"][field].encode()).decode()
    pipeline = key_line.split("|", 1)[1].rstrip(")")
    key = subprocess.run(["bash", "-c", pipeline], input=encoded, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert key.startswith("tml-") and f"default={key}" in base64.b64decode(encoded).decode()
    sdk_line = next(ln for ln in lines if ln.startswith("python -c"))
    code = commands(sdk_line)[0][2]
    printed = run_python(code, env={"TINKER_BASE_URL": readme_server.url, "TINKER_API_KEY": README_KEY[1]})
    assert "Qwen/Qwen3-0.6B" in printed


def test_limits_chart_quotas_reach_gateway_and_operator() -> None:
    """docs/limits.md's chart values render into the same quota settings for gateway and operator."""
    docs, _ = render(yaml.safe_load(snippet("docs/limits.md", "tenants:").text))
    for component in ("gateway", "operator"):
        (container,) = find(docs, "Deployment", f"loraplane-{component}")["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        prefix = f"LORAPLANE_{component.upper()}__"
        assert env[prefix + "TENANT_DEFAULTS__MAX_TRAINING_CLIENTS"] == "8"
        assert env[prefix + "TENANT_DEFAULTS__MAX_LORA_RANK"] == "64"
        assert json.loads(env[prefix + "TENANT_QUOTAS"]) == {"alice": {"max_training_clients": 32}}


def test_limits_keys_file_example_loads_with_its_quotas(tmp_path: Path) -> None:
    """docs/limits.md's keys-file lines load as written, each quota where the table says."""
    from loraplane.api import auth
    from loraplane.core import quotas
    from loraplane.core.settings import TenantQuota

    keys = tmp_path / "keys"
    keys.write_text(snippet("docs/limits.md", "alice=tml-alice-key").text.replace("sha256:9f2c...", "sha256:" + "9f" * 32))
    keys.chmod(0o600)
    table = auth.load_keys(files=[str(keys)])
    alice = quotas.QuotaTable(TenantQuota(), table.overrides).for_tenant("alice")
    assert (alice.max_training_clients, alice.max_lora_rank, alice.max_sampling_clients) == (4, 64, 8)
    assert alice.max_storage_bytes == 10_000_000_000
    assert table.tenant_for("tml-alice-key") == "alice"


def test_losses_objective_names_the_config_keys_of_the_loss() -> None:
    """docs/losses.md's formula of stable_reinforce uses the config keys the loss reads."""
    from loraplane.runtime import losses

    formula = snippet("docs/losses.md", "loss = -sum_t m_t").text
    for key in losses.CONFIG_DEFAULTS["stable_reinforce"]:
        assert key in formula, key
