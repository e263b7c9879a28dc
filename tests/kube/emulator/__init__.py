"""An in-process emulator of the Kubernetes API server, for loraplane's operator and gateway tests.

Start one with ``KubeEmulator().start()`` (or the ``kube_emulator`` fixture) and point a
client at it with the kubeconfig from ``write_kubeconfig()`` (the ``kubeconfig_path``
fixture). Unmodified Kopf and kubernetes_asyncio work against it.

What it emulates, as the real API server does it:

- discovery (legacy, not aggregated): ``/version``, ``/api``, ``/api/v1``, ``/apis``,
  ``/apis/{group}``, ``/apis/{group}/{version}`` with ``<plural>/status`` entries;
- built-in resources (namespaces, pods, services, secrets, configmaps, events,
  serviceaccounts, leases, events.k8s.io events, CRDs) and any CRD's resources, served
  as soon as the CRD is created;
- CRUD at the real paths with uid, a global resourceVersion, generation, creationTimestamp,
  generateName, optimistic concurrency, the real status codes and ``Status`` error bodies;
- merge patch, JSON patch (a failed ``test`` is a 422), strategic merge patch as merge patch;
- the status subresource kept apart from the main resource;
- finalizers, deletionTimestamp, garbage collection by ownerReferences (Background, Foreground
  and Orphan propagation), namespace deletion;
- label and field selectors on list, watch and deletecollection;
- watch with resume, bookmarks, timeouts, ``sendInitialEvents``, bounded history and 410 Gone;
- CRD schema pruning, defaulting and validation, including a subset of CEL rules;
- fault injection (dropped watches, 410s, conflict storms, error codes, latency) and request
  counting, from Python (:class:`KubeEmulator`) or over HTTP (:mod:`.control`).

What it does not: dry runs (refused with 400), authorization (any request with the right
token is allowed), admission webhooks, server-side apply, version conversion between CRD versions (objects are shared
and only ``apiVersion`` changes), scale subresources, ``kubectl``-style table output,
protobuf, aggregated discovery, pod lifecycles (no kubelet, no scheduler, pods are
deleted at once without a grace period), and consistent paginated snapshots (``continue``
pages read the current state).
"""

from .emulator import KubeEmulator

__all__ = ["KubeEmulator"]
