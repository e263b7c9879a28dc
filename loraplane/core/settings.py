"""One typed settings object for every component, read from `LORAPLANE_*` environment variables.

Nested sections use `__`: `LORAPLANE_RUNTIME__MAX_RESIDENT_ADAPTERS=16`. Command-line flags of
`loraplane <command>` override these. Each component reads only its own section plus `store`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class StoreSettings(BaseModel):
    #: fsspec URL of the artifact store (checkpoints, datasets). Default: a folder in the user's data dir.
    url: str | None = None


class RuntimeSettings(BaseModel):
    #: Name clients use as `base_model` (e.g. "Qwen/Qwen3-0.6B").
    base_model: str | None = None
    #: Local directory (or id already in the local HF cache) of the base model. Never downloaded.
    model_path: str | None = None
    #: "auto" (cuda if present), "cpu", "cuda", "cuda:1".
    device: str = "auto"
    #: "auto" (bf16 on GPU, fp32 on CPU), "float32", "bfloat16", "float16".
    dtype: str = "auto"
    #: Adapters kept on the device at once; idle ones beyond this are offloaded.
    max_resident_adapters: int = Field(16, ge=1)
    #: Training adapters a runtime accepts in all (resident + offloaded); its advertised capacity.
    #: Sampler snapshots are not counted.
    max_adapters: int = Field(64, ge=1)
    #: Sampler snapshots (save_weights_and_get_sampling_client) kept per training adapter; taking
    #: one more drops the oldest, which then answers 404 (save with a path to keep one).
    max_snapshots: int = Field(4, ge=1)
    #: Where offloaded adapters go: "host" (CPU memory) or a directory path (disk).
    offload_to: str = "host"
    #: Seconds an op waits for a missing earlier seq_id before the gap is skipped.
    seq_gap_timeout_s: float = Field(30.0, gt=0)
    #: Largest number of tokens gathered into one batched forward/backward: one turn of the model
    #: thread, which holds at most one pass (`max_pass_tokens`), so the smaller of the two binds.
    max_batch_tokens: int = Field(16384, ge=1)
    #: Padded tokens of one forward pass: a batch (or one forward_backward) over more runs as several
    #: passes, split between adapters. Unset: one pass on CUDA, 1024 tokens on CPU (where larger
    #: passes spill the caches and run slower than the smaller ones they replace).
    max_pass_tokens: int | None = Field(None, ge=1)
    #: Largest LoRA rank an adapter may have here (a larger one is refused, naming this setting):
    #: an adapter's memory grows with its rank.
    max_lora_rank: int = Field(512, ge=1)
    #: Share training passes between tenants by weight (deficit round robin on tokens); off, the
    #: passes rotate over adapters, so a tenant's share grows with its number of adapters.
    fair_share: bool = True
    #: Tenant -> weight in the fair share (others 1), e.g. LORAPLANE_RUNTIME__TENANT_WEIGHTS='{"alice": 3}'.
    tenant_weights: dict[str, float] = Field(default_factory=dict)
    #: Tokens of forward/backward work one tenant may have queued on this runtime (429 beyond).
    max_queued_tokens_per_tenant: int = Field(262144, ge=1)
    #: Tokens of forward/backward work all tenants together may have queued (429 beyond).
    max_queued_tokens: int = Field(1048576, ge=1)
    #: Largest number of input tokens in one forward_backward request (413 beyond): one request
    #: runs as one pass, so this bounds how long it holds the model and how much memory it takes.
    max_request_tokens: int = Field(65536, ge=1)
    #: torch CPU threads (0 = torch's default).
    threads: int = Field(0, ge=0)
    #: Bytes the sampling KV cache may reach (all running sample requests together). A request
    #: that does not fit waits; one larger than the whole budget is refused with a 400.
    kv_cache_bytes: int = Field(2 * 1024**3, ge=1)
    #: Sequences decoded at once in the continuous batch (the sum of running requests' num_samples).
    max_decode_rows: int = Field(256, ge=1)
    #: Sample requests waiting to join the batch; beyond it a submit gets 503 (retry later).
    max_queued_samples: int = Field(1024, ge=1)
    #: Sample requests of one tenant waiting to join the batch; beyond it that tenant gets 429 (retry
    #: later), before its requests can fill the runtime's whole queue and refuse everyone else's.
    max_queued_samples_per_tenant: int = Field(256, ge=1)
    #: Padded prompt tokens per prefill pass; a longer prompt is prefilled over several steps.
    prefill_chunk_tokens: int = Field(512, ge=1)
    host: str = "0.0.0.0"
    port: int = 8001


class TenantQuota(BaseModel):
    """What one tenant may hold; a tenant's line of the keys file can override each field."""

    model_config = ConfigDict(extra="forbid")

    #: Training clients (LoRAJobs not yet finished) at once; None = no limit.
    max_training_clients: int | None = Field(None, ge=0)
    #: Largest LoRA rank of a training client.
    max_lora_rank: int | None = Field(None, ge=1)
    #: Sampling clients of open sessions at once.
    max_sampling_clients: int | None = Field(None, ge=0)
    #: Bytes of checkpoints kept in the store; a save past it is refused.
    max_storage_bytes: int | None = Field(None, ge=0)


def _json_object(value: Any) -> Any:
    """A table given as one JSON text (an environment variable) -> its object."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as exc:
        raise ValueError(f'not JSON ({exc.msg} at character {exc.pos}); expected {{"tenant": {{"max_lora_rank": 64}}}}') from None


#: Tenant -> the quotas it has other than the defaults: '{"alice": {"max_training_clients": 16}}'.
#: Gateway and operator read the same table (the chart sets both from `tenants.quotas`).
TenantQuotas = Annotated[dict[str, TenantQuota], BeforeValidator(_json_object)]


class GatewaySettings(BaseModel):
    host: str = "0.0.0.0"
    port: int = 8000
    #: File of `tenant=key` or `tenant=sha256:<hex>` lines.
    api_keys_file: str | None = None
    #: Inline `tenant=key` pairs, comma-separated (development only).
    api_keys: str | None = None
    #: Largest accepted forward_backward body (protobuf, after zstd), bytes.
    max_request_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    #: Largest accepted JSON body, bytes (parsing JSON costs many times its size in memory).
    max_json_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    #: Seconds a client has to send a request's headers; slower connections are closed.
    header_timeout_s: float = Field(10.0, gt=0)
    #: Seconds a client has to send a request's body once its headers are in (408 after).
    body_timeout_s: float = Field(60.0, gt=0)
    #: Requests per second each tenant may make, sustained (retrieve_future is not counted).
    rate_per_s: float = Field(200.0, gt=0)
    #: Requests a tenant may make at once before the rate applies (429 with Retry-After after).
    rate_burst: int = Field(1000, ge=1)
    #: Requests of one tenant the gateway works on at once (retrieve_future not counted); more wait
    #: their turn, so that however many connections one tenant opens, others are not slowed by it.
    tenant_concurrency: int = Field(8, ge=1)
    #: Most seconds a request refused by a runtime's queue limits (429) keeps its tenant's turn
    #: (it keeps it for the Retry-After the runtime gave): a client that retries at once instead
    #: of after Retry-After is slowed, not served faster.
    refusal_hold_s: float = Field(0.5, ge=0, le=5)
    #: Tokens of one sampling prompt.
    max_prompt_tokens: int = Field(32768, ge=1)
    #: num_samples x max_tokens of one sample request.
    max_sample_tokens: int = Field(65536, ge=1)
    #: Bearer token that /metrics requires; unset, /metrics is not served by the gateway.
    metrics_token: str | None = None
    #: Serve the OpenAPI description at /openapi.json (behind the API key). Off in production.
    openapi: bool = False
    #: Quotas of tenants that set none of their own (LORAPLANE_GATEWAY__TENANT_DEFAULTS__MAX_LORA_RANK=64).
    tenant_defaults: TenantQuota = Field(default_factory=TenantQuota)
    #: Tenants' own quotas over the defaults; a keys-file line's settings win over both.
    tenant_quotas: TenantQuotas = Field(default_factory=dict)
    #: How long retrieve_future holds a request before answering try_again.
    long_poll_s: float = Field(30.0, gt=0, le=40)
    #: Seconds a new training client's job may take to start running (no runtime of its base model
    #: with room, a pod still being scheduled); past it the job is deleted and create_model fails.
    job_start_timeout_s: float = Field(300.0, gt=0)
    #: Namespace of LoRAJobs in Kubernetes mode.
    namespace: str = "default"
    #: Seconds without a heartbeat before a session expires (the SDK beats every 10 s); 0 = never.
    session_expiry_s: float = Field(180.0, ge=0)
    #: tinker SDK releases the gateway admits (a PEP 440 range); others get a 426 naming it.
    sdk_versions: str = ">=0.38.0,<0.39"
    #: Key that signs export download URLs (same on every replica); unset = one kept in the store.
    url_signing_key: str | None = None


class OperatorSettings(BaseModel):
    #: Namespace to watch ("" = all namespaces).
    namespace: str = ""
    #: Label selector of runtime pods.
    runtime_selector: str = "loraplane.dev/component=runtime"
    #: Port of the runtime's internal API on its pod.
    runtime_port: int = 8001
    #: Seconds between progress writes to status for a running declarative job.
    progress_interval_s: float = Field(5.0, gt=0)
    #: Seconds between health polls of runtime pods.
    health_interval_s: float = Field(5.0, gt=0)
    #: Port of Kopf's liveness endpoint, `/healthz` (the chart's livenessProbe).
    liveness_port: int = Field(8080, ge=1, le=65535)
    #: Port of the operator's own Prometheus `/metrics` endpoint (0 = off); the gateway's and the
    #: runtimes' /metrics are served on their API ports.
    metrics_port: int = Field(9090, ge=0, le=65535)
    #: The gateway's tenant quotas, for LoRAJobs applied directly: their rank and training-client
    #: limits are checked before they are placed (LORAPLANE_OPERATOR__TENANT_DEFAULTS__MAX_LORA_RANK=64).
    tenant_defaults: TenantQuota = Field(default_factory=TenantQuota)
    tenant_quotas: TenantQuotas = Field(default_factory=dict)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LORAPLANE_", env_nested_delimiter="__", extra="ignore")

    store: StoreSettings = Field(default_factory=StoreSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    operator: OperatorSettings = Field(default_factory=OperatorSettings)
    #: "debug", "info", "warning".
    log_level: str = "info"
    #: "text" or "json" (one JSON object per line).
    log_format: str = "text"
