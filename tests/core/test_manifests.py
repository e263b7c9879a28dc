"""Hand-written LoRAJob manifests: what `loraplane jobs apply` answers about their mistakes."""

from __future__ import annotations

import pytest

from loraplane.core import errors, manifests


def manifest(**spec: object) -> dict[str, object]:
    return {"apiVersion": "loraplane.dev/v1alpha1", "kind": "LoRAJob", "metadata": {"name": "t1"},
            "spec": {"baseModel": "tiny", "tenant": "alice", "mode": "training", "lora": {"rank": 8},
                     "training": {"dataset": "file:///d.jsonl", "steps": 2}, **spec}}


def test_a_manifest_with_several_mistakes_is_told_of_all_of_them_at_once() -> None:
    bad = manifest(training={"dataset": "file:///d.jsonl", "steps": 2, "batchSzie": 4})
    del bad["spec"]["tenant"]  # type: ignore[attr-defined]
    with pytest.raises(errors.InvalidInput) as refused:
        manifests.validated(bad, namespace="default")
    assert str(refused.value) == ("spec.tenant: Field required; "
                                  "spec.training.batchSzie: Extra inputs are not permitted")
    assert refused.value.field == "spec.tenant"


def test_a_manifest_with_one_mistake_names_that_field() -> None:
    with pytest.raises(errors.InvalidInput, match=r"^spec\.lora\.rank: .*greater than or equal to 1$"):
        manifests.validated(manifest(lora={"rank": 0}), namespace="default")


def test_a_valid_manifest_becomes_a_job_in_the_namespace() -> None:
    job = manifests.validated(manifest(), namespace="team-a")
    assert (job.metadata.name, job.metadata.namespace, job.spec.tenant) == ("t1", "team-a", "alice")
