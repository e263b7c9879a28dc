"""The control plane shared by the Kubernetes operator and `loraplane serve`.

One reconcile loop per LoRAJob (`loop.JobLoop`) over two small interfaces (`store.JobStore`, where
jobs and their status and Events live; `pool.RuntimePool`, the runtimes and their health), and the
pure decisions of `loraplane.core.phases` and `loraplane.core.scheduling`. The operator adapts
Kopf and the Kubernetes API to them, single-node mode an SQLite file in its data directory.
"""
