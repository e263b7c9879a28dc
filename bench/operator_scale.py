"""How the operator copes with a burst: N LoRAJobs created at once against a real kube-apiserver.

    python bench/operator_scale.py --jobs 500 --runtimes 4

The real operator (through Kopf) runs in a thread against etcd + kube-apiserver on loopback
(tests/k8s/controlplane.py; binaries from scripts/k8s-binaries.sh), reached through the counting
proxy of tests/k8s/proxy.py with a cluster-admin token, and fake runtimes that answer the runtime API at once (tests/operator/fake_runtime.py), so the numbers
are the control plane's own: time until every job is Running, create -> Running latency (p50,
p99, max, from the moment the create returned to the first poll that saw Running, 100 ms
resolution), and Kubernetes API requests per job by verb (the proxy counts them).
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loraplane.core.models.v1alpha1.lorajob import API_VERSION, KIND  # noqa: E402
from loraplane.core.settings import OperatorSettings  # noqa: E402
from tests.k8s.cluster import Cluster  # noqa: E402
from tests.k8s.controlplane import ControlPlane, find_binaries  # noqa: E402
from tests.k8s.proxy import FaultProxy  # noqa: E402
from tests.operator.fake_runtime import FakeRuntime  # noqa: E402
from tests.operator.harness import lorajob, operator, runtime_pod  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--runtimes", type=int, default=4)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args(argv)

    bin_dir, reason = find_binaries()
    if bin_dir is None:
        print(f"operator_scale: {reason}", file=sys.stderr)
        return 2
    slots = -(-args.jobs // args.runtimes) + 1
    fakes = [FakeRuntime("tiny", max_adapters=slots).start() for _ in range(args.runtimes)]
    tmp = Path(tempfile.mkdtemp(prefix="loraplane-bench-"))
    plane = ControlPlane(bin_dir, tmp / "k8s").start()
    pki = plane.pki
    proxy = FaultProxy(plane.url, pki / "ca.crt", pki / "server.crt", pki / "server.key").start()
    plane.kubectl("apply", "-f", str(ROOT / "crds" / "lorajob.yaml"))
    plane.kubectl("wait", "--for=condition=Established", "crd/lorajobs.loraplane.dev")
    plane.wait_served("/apis/loraplane.dev/v1alpha1/lorajobs")
    plane.kubectl("create", "serviceaccount", "bench", "-n", "default")
    plane.kubectl("create", "clusterrolebinding", "bench", "--clusterrole=cluster-admin",
                  "--serviceaccount=default:bench")
    kubeconfig = plane.service_account_kubeconfig("default", "bench", tmp / "kubeconfig.yaml")
    kubeconfig.write_text(kubeconfig.read_text().replace(plane.url, proxy.url))
    cluster = Cluster(plane, proxy)
    settings = OperatorSettings(namespace="default", progress_interval_s=1.0, health_interval_s=1.0)
    try:
        for i, fake in enumerate(fakes):
            cluster.add_pod(runtime_pod(f"rt-{i}", fake.url))
        with operator(kubeconfig, f"file://{tmp}/store", settings):
            time.sleep(1.5)  # the pool's first /readyz poll
            proxy.faults.reset()  # zero the request counters: count only what the burst costs
            names = [f"job-{i:04d}" for i in range(args.jobs)]
            created: dict[str, float] = {}
            start = time.monotonic()
            for name in names:
                cluster.api.create(lorajob(name))
                created[name] = time.monotonic()
            create_s = time.monotonic() - start
            running: dict[str, float] = {}
            while len(running) < len(names) and time.monotonic() - start < args.timeout:
                now = time.monotonic()
                for obj in cluster.api.list(API_VERSION, KIND):
                    name = obj["metadata"]["name"]
                    if name not in running and (obj.get("status") or {}).get("phase") == "Running":
                        running[name] = now
                time.sleep(0.1)
            total_s = time.monotonic() - start
            counts = proxy.request_counts()
    finally:
        cluster.close()
        proxy.close()
        plane.stop()
        for fake in fakes:
            fake.stop()

    latencies = [running[n] - created[n] for n in running]
    by_verb: collections.Counter[str] = collections.Counter()
    for (verb, _path), count in counts.items():
        by_verb[verb] += count
    placed = collections.Counter(sum(1 for _ in f.adapters) for f in fakes)
    rows = [
        ("jobs created", f"{args.jobs} in {create_s:.2f} s"),
        ("jobs Running", f"{len(running)} / {args.jobs}"),
        ("time to all Running", f"{total_s:.2f} s" if len(running) == args.jobs else f"timed out ({total_s:.0f} s)"),
        ("create -> Running p50", f"{percentile(latencies, 0.50):.3f} s" if latencies else "-"),
        ("create -> Running p99", f"{percentile(latencies, 0.99):.3f} s" if latencies else "-"),
        ("create -> Running max", f"{max(latencies):.3f} s" if latencies else "-"),
        ("mean latency", f"{statistics.mean(latencies):.3f} s" if latencies else "-"),
        ("API requests per job", f"{sum(by_verb.values()) / args.jobs:.2f}"),
    ]
    rows += [(f"  {verb} per job", f"{count / args.jobs:.2f}") for verb, count in sorted(by_verb.items())]
    rows.append(("adapters per runtime", ", ".join(str(len(f.adapters)) for f in fakes)))
    del placed
    width = max(len(k) for k, _ in rows)
    print(f"operator scale: {args.jobs} jobs, {args.runtimes} fake runtimes")
    for key, value in rows:
        print(f"{key.ljust(width)}  {value}")
    return 0 if len(running) == args.jobs else 1


if __name__ == "__main__":
    raise SystemExit(main())
