"""Weights exports through the SDK and the cookbook's own downloader, loaded with PEFT.

`tinker_cookbook.weights.download` (0.6.1, unmodified) fetches `external_weights` paths directly
and `weights` paths through a temporary age-encrypted export; either way the folder must load in
`PeftModel.from_pretrained` with the logits the server computes.
"""

from __future__ import annotations

import os
import urllib.parse
from pathlib import Path

import httpx
import pyrage
import pytest
import tinker
import torch

from tests.acceptance.conftest import KEYS, Server
from tests.acceptance.helpers import ce_batch, train

weights = pytest.importorskip("tinker_cookbook.weights")
peft = pytest.importorskip("peft")


@pytest.fixture(scope="module")
def trained(server: Server):  # type: ignore[no-untyped-def]
    service = tinker.ServiceClient(base_url=server.url, api_key=KEYS["alice"])
    client = service.create_lora_training_client(base_model=server.model, rank=4, seed=31).result()
    train(client, 3, lr=5e-2)
    yield service, client
    service.close("success").result()


@pytest.fixture
def alice_env(server: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TINKER_API_KEY", KEYS["alice"])


def _assert_same_logprobs(server: Server, client: tinker.TrainingClient, adapter_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(server.model, dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    data = ce_batch()
    served = client.forward(data, "cross_entropy").result().loss_fn_outputs
    for datum, out in zip(data, served, strict=True):
        tokens = torch.tensor([datum.model_input.to_ints()])
        with torch.no_grad():
            logits = model(tokens).logits[0]
        targets = torch.tensor(datum.loss_fn_inputs["target_tokens"].tolist())
        local = torch.log_softmax(logits, -1).gather(1, targets[:, None])[:, 0]
        torch.testing.assert_close(local, torch.tensor(out["logprobs"].tolist()), rtol=1e-4, atol=1e-4)


def test_external_weights_download_loads_in_peft_with_identical_logprobs(
        trained, server: Server, alice_env: None, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, client = trained
    path = client.save_weights_external("plain").result().path
    assert path == f"tinker://{client.model_id}/external_weights/plain"
    out = weights.download(tinker_path=path, output_dir=str(tmp_path / "plain"), base_url=server.url)
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
    _assert_same_logprobs(server, client, Path(out))


def test_training_checkpoint_download_goes_through_an_encrypted_export(
        trained, server: Server, alice_env: None, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, client = trained
    path = client.save_state("for-download").result().path
    out = weights.download(tinker_path=path, output_dir=str(tmp_path / "state"), base_url=server.url)
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
    _assert_same_logprobs(server, client, Path(out))
    # The temporary export was deleted again.
    rest = tinker.RestClient(base_url=server.url, api_key=KEYS["alice"])
    runs = [c.tinker_path for r in rest.list_training_runs().result().training_runs
            for c in rest.list_checkpoints(r.training_run_id).result().checkpoints]
    assert not [p for p in runs if p.endswith("/external_weights/download")]


def test_encrypted_export_to_age_and_ssh_recipients(trained, server: Server) -> None:  # type: ignore[no-untyped-def]
    service, client = trained
    native = pyrage.x25519.Identity.generate()
    path = client.save_weights_external(
        "sealed", age_encryption_recipients=[str(native.to_public()), _SSH_PUBLIC]).result().path
    rest = tinker.RestClient(base_url=server.url, api_key=KEYS["alice"])
    urls = rest.get_external_weights_urls(path).result().urls
    assert sorted(urls) == ["adapter_config.json.age", "adapter_model.safetensors.age"]
    blob = httpx.get(urls["adapter_config.json.age"]).content
    assert b"lora" not in blob
    assert b'"r": 4' in pyrage.decrypt(blob, [native])
    ssh_identity = pyrage.ssh.Identity.from_buffer(_SSH_PRIVATE.encode())
    assert b'"r": 4' in pyrage.decrypt(blob, [ssh_identity])


def test_bad_recipient_is_refused_at_submit(trained) -> None:  # type: ignore[no-untyped-def]
    _, client = trained
    with pytest.raises(tinker.BadRequestError, match=r"age_encryption_recipients\[0\]"):
        client.save_weights_external("bad", age_encryption_recipients=["age1notakey"]).result()


def test_signed_urls_admit_only_their_tenant_and_only_signed(trained, server: Server) -> None:  # type: ignore[no-untyped-def]
    service, client = trained
    path = client.save_weights_external("guarded").result().path
    url = tinker.RestClient(base_url=server.url, api_key=KEYS["alice"]).get_external_weights_urls(path).result().urls["adapter_config.json"]
    assert httpx.get(url).status_code == 200
    parts = urllib.parse.urlsplit(url)
    query = dict(urllib.parse.parse_qsl(parts.query))
    unsigned = urllib.parse.urlunsplit(parts._replace(query=""))
    assert httpx.get(unsigned).status_code == 403
    as_bob = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode({**query, "tenant": "bob"})))
    assert httpx.get(as_bob).status_code == 403
    longer = urllib.parse.urlunsplit(parts._replace(
        query=urllib.parse.urlencode({**query, "expires": str(int(query["expires"]) + 3600)})))
    assert httpx.get(longer).status_code == 403
    other_file = url.replace("adapter_config.json?", "checkpoint.json?")
    assert httpx.get(other_file).status_code == 403
    bob = tinker.RestClient(base_url=server.url, api_key=KEYS["bob"])
    with pytest.raises(tinker.NotFoundError):
        bob.get_external_weights_urls(path).result()


# A throwaway ed25519 key made for this test only.
_SSH_PRIVATE = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDqKk36VIsCTHiRlP9+MpUwNIeAu1IOK2+zvymlNYa3jgAAAJjCynXkwsp1
5AAAAAtzc2gtZWQyNTUxOQAAACDqKk36VIsCTHiRlP9+MpUwNIeAu1IOK2+zvymlNYa3jg
AAAEBJe3NNpZDlKFfCKIBq9e3AU038nPtSU9VXdFYfwdShwuoqTfpUiwJMeJGU/34ylTA0
h4C7Ug4rb7O/KaU1hreOAAAADmxvcmFwbGFuZS10ZXN0AQIDBAUGBw==
-----END OPENSSH PRIVATE KEY-----
"""
_SSH_PUBLIC = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOoqTfpUiwJMeJGU/34ylTA0h4C7Ug4rb7O/KaU1hreO loraplane-test"
