"""A real Kubernetes control plane for tests: etcd and kube-apiserver on loopback, as envtest runs them.

The binaries come from scripts/k8s-binaries.sh (its cache directory, or $LORAPLANE_K8S_BIN). The
control plane generates its own certificate authority, the API server's serving certificate, an
admin client certificate (group system:masters) and the service-account signing key, with the
openssl command line. Authorization is RBAC, so a client that authenticates as a ServiceAccount
(`service_account_kubeconfig`) can do exactly what its Roles allow. Nothing schedules or runs pods:
tests create Pod objects and set their status themselves (see kubelet.py).
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
BINARIES = ("kube-apiserver", "etcd", "kubectl", "helm")
BIN_ENV = "LORAPLANE_K8S_BIN"


def find_binaries() -> tuple[Path | None, str]:
    """The directory holding the four binaries, or None and the reason they cannot be used."""
    if os.environ.get(BIN_ENV):
        where = Path(os.environ[BIN_ENV])
        how = f"${BIN_ENV}"
    else:
        script = ROOT / "scripts" / "k8s-binaries.sh"
        out = subprocess.run(["bash", str(script), "--dir"], capture_output=True, text=True, check=True)
        where = Path(out.stdout.strip())
        how = "scripts/k8s-binaries.sh --dir"
    missing = [b for b in BINARIES if not os.access(where / b, os.X_OK)]
    if missing:
        return None, (f"Kubernetes binaries {', '.join(missing)} not found in {where} ({how}); "
                      "build them with `bash scripts/k8s-binaries.sh` (needs Go 1.26)")
    return where, ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(pki: Path) -> None:
    """CA, serving certificate for 127.0.0.1, admin client certificate, service-account key."""
    pki.mkdir(parents=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=loraplane-test-ca", cwd=pki)
    for name, subject, ext in (
        ("server", "/CN=kube-apiserver", "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                                         "extendedKeyUsage=serverAuth"),
        ("admin", "/O=system:masters/CN=admin", "extendedKeyUsage=clientAuth"),
    ):
        (pki / f"{name}.ext").write_text(ext + "\n")
        _openssl("req", "-new", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject, cwd=pki)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=pki)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)


def write_kubeconfig(path: Path, server: str, ca: Path, user: dict[str, Any], namespace: str = "default") -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "user", "user": user}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user", "namespace": namespace}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


class ControlPlane:
    """etcd + kube-apiserver in a work directory; a context manager that stops both on exit."""

    def __init__(self, bin_dir: Path, work: Path) -> None:
        self.bin_dir = bin_dir
        self.work = work
        self.pki = work / "pki"
        self._procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.port = 0
        self.admin_kubeconfig = work / "admin.kubeconfig"
        self.http: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.work / f"{name}.log", "wb")
        proc = subprocess.Popen([str(self.bin_dir / name), *args], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        log.close()
        self._procs.append((name, proc))

    def log_tail(self, name: str, lines: int = 30) -> str:
        text = (self.work / f"{name}.log").read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def start(self, timeout: float = 90.0) -> ControlPlane:
        make_pki(self.pki)
        client, peer = free_port(), free_port()
        etcd_url = f"http://127.0.0.1:{client}"
        self._spawn("etcd", [
            "--name=test", f"--data-dir={self.work / 'etcd'}",
            f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls=http://127.0.0.1:{peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
            f"--initial-cluster=test=http://127.0.0.1:{peer}", "--unsafe-no-fsync=true", "--log-level=warn",
        ])
        self.port = free_port()
        p = self.pki
        self._spawn("kube-apiserver", [
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none",
            f"--secure-port={self.port}", f"--cert-dir={self.work / 'certs'}",
            f"--tls-cert-file={p / 'server.crt'}", f"--tls-private-key-file={p / 'server.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.key'}", f"--service-account-signing-key-file={p / 'sa.key'}",
            "--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount", "--allow-privileged=true",
        ])
        write_kubeconfig(self.admin_kubeconfig, self.url, p / "ca.crt",
                         {"client-certificate": str(p / "admin.crt"), "client-key": str(p / "admin.key")})
        tls = ssl.create_default_context(cafile=str(p / "ca.crt"))
        tls.load_cert_chain(str(p / "admin.crt"), str(p / "admin.key"))
        self.http = httpx.Client(base_url=self.url, verify=tls, timeout=10.0)
        self._wait_ready(timeout)
        return self

    def _wait_ready(self, timeout: float) -> None:
        assert self.http is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self._procs:
                if proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"{name} exited ({proc.returncode}):\n{self.log_tail(name)}")
            try:
                if self.http.get("/readyz").status_code == 200:
                    # The bootstrap RBAC roles exist once /readyz says so; the default namespace too.
                    if self.http.get("/api/v1/namespaces/default").status_code == 200:
                        return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        tail = self.log_tail("kube-apiserver")
        self.stop()
        raise RuntimeError(f"kube-apiserver not ready within {timeout}s:\n{tail}")

    def stop(self) -> None:
        if self.http is not None:
            self.http.close()
            self.http = None
        for _, proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- clients -------------------------------------------------------------------------------------

    def _env(self, kubeconfig: Path | None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            KUBECONFIG=str(kubeconfig or self.admin_kubeconfig),
            KUBECACHEDIR=str(self.work / "kubectl-cache"),
            HELM_CACHE_HOME=str(self.work / "helm" / "cache"),
            HELM_CONFIG_HOME=str(self.work / "helm" / "config"),
            HELM_DATA_HOME=str(self.work / "helm" / "data"),
        )
        return env

    def run(self, tool: str, *args: str, kubeconfig: Path | None = None, check: bool = True,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """kubectl or helm with the admin's (or `kubeconfig`'s) credentials; raises with its output on failure."""
        assert tool in ("kubectl", "helm"), tool
        done = subprocess.run([str(self.bin_dir / tool), *args], env=self._env(kubeconfig), cwd=ROOT,
                              capture_output=True, text=True, input=input, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"{tool} {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
        return done

    def kubectl(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("kubectl", *args, **kw)

    def helm(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return self.run("helm", *args, **kw)

    def api(self) -> httpx.Client:
        assert self.http is not None, "control plane not started"
        return self.http

    def wait_served(self, path: str, timeout: float = 30.0) -> None:
        """Wait until GET `path` answers 200: a CRD is Established a moment before its storage serves
        (until then 429 "storage is (re)initializing", which clients retry)."""
        deadline = time.monotonic() + timeout
        while self.api().get(path).status_code != 200:
            assert time.monotonic() < deadline, f"{path} not served within {timeout}s"
            time.sleep(0.1)

    def create_namespace(self, name: str) -> str:
        r = self.api().post("/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace",
                                                        "metadata": {"name": name}})
        assert r.status_code == 201, r.text
        return name

    def service_account_kubeconfig(self, namespace: str, name: str, path: Path) -> Path:
        """A kubeconfig that authenticates as ServiceAccount `namespace/name` with a bound token."""
        r = self.api().post(f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                            json={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                  "spec": {"expirationSeconds": 7200}})
        assert r.status_code == 201, r.text
        return write_kubeconfig(path, self.url, self.pki / "ca.crt", {"token": r.json()["status"]["token"]},
                                namespace)


def copy_logs(plane: ControlPlane, dest: Path) -> None:
    """Keep the component logs (for a failed run's artifacts)."""
    for name in ("etcd", "kube-apiserver"):
        src = plane.work / f"{name}.log"
        if src.exists():
            shutil.copy(src, dest / f"{name}.log")
