"""One configuration story: every option is a field here, read from flags or ``INFERGATE_*``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import ByteSize, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.host import usable_cores


class Settings(BaseSettings):
    """Gateway settings; each model's ``config.pbtxt`` stays the truth for shapes and batching."""

    model_config = SettingsConfigDict(env_prefix="INFERGATE_", extra="ignore")

    # --- serving -----------------------------------------------------------------------------
    model_repo: Path = Field(
        default=Path("model_repo"), description="Triton model repository to serve"
    )
    host: str = Field(default="127.0.0.1", description="bind address of the REST and gRPC servers")
    http_port: int = Field(default=8000, description="REST (KServe v2) port")
    grpc_port: int = Field(default=8001, description="0 disables the gRPC front end")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="least severe log level written"
    )
    log_json: bool = Field(
        default=False, description="one JSON object per log line instead of text"
    )
    workers: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto",
        description="front-end processes sharing the ports over one executor process; 'auto' = "
        "one per usable core (CPU quota included) but one left to the executor, at most 8, "
        "and a single process below 3 cores; 1 = everything in one process",
    )
    executors: Annotated[int, Field(ge=1)] | Literal["auto"] = Field(
        default="auto",
        description="with --workers N > 1: executor processes, each owning its models, "
        "batchers and one CUDA context; 'auto' = one per GPU the models' instance groups name "
        "and one for the CPU models; more than that share the CPU models",
    )
    server_name: str = Field(
        default="infergate",
        description="name in GET /v2 (server metadata); 'triton' for a drop-in deployment",
    )

    # --- backends ----------------------------------------------------------------------------
    backend: Literal["onnxruntime", "triton"] = Field(
        default="onnxruntime", description="embedded ONNX Runtime, or remote Triton replicas"
    )
    triton_url: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="HOST:PORT of each Triton replica (backend triton)"
    )
    triton_protocol: Literal["grpc", "http"] = Field(
        default="grpc", description="protocol the gateway speaks to Triton"
    )
    triton_health_interval_s: float = Field(
        default=1.0, description="seconds between health checks of each Triton replica"
    )
    triton_timeout_s: float = Field(default=30.0, description="per-batch timeout for a Triton call")
    triton_startup_wait_s: float = Field(
        default=30.0, description="how long startup waits for the first healthy Triton replica"
    )
    execution_providers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "ONNX Runtime providers in order, overriding config.pbtxt; empty = each model's "
            "instance_group and gpu_execution_accelerator decide (KIND_CPU or none = CPU)"
        ),
    )
    intra_op_threads: int = Field(
        default=0, description="ONNX Runtime intra-op threads; 0 = ORT default"
    )
    inter_op_threads: int = Field(default=1, description="ONNX Runtime inter-op threads")
    gpu_memory_budget_bytes: int = Field(
        default=0,
        description="per GPU: bytes the loaded models' instances may reserve (sum of their "
        "infergate.gpu_mem_limit_bytes); a model that would not fit is UNAVAILABLE (on_demand: "
        "idle models on that GPU are evicted first); 0 = no budget",
    )
    trt_engine_cache_dir: Path | None = Field(
        default=None,
        description="TensorRT EP engine cache root (<dir>/<model>/<version>), kept outside the "
        "polled model repository; None = ~/.cache/infergate/tensorrt (XDG_CACHE_HOME)",
    )

    # --- model repository --------------------------------------------------------------------
    model_control_mode: Literal["none", "poll", "explicit", "on_demand"] = Field(
        default="none",
        description="Triton's model control: load all once, poll the repository, or API; "
        "on_demand: list every model, load one on its first request (and poll for new ones)",
    )
    startup_models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="explicit mode: models loaded at startup ('*' = all); on_demand: models "
        "loaded at startup besides the pinned ones ('*' = none)",
    )
    repository_poll_s: float = Field(
        default=15.0, description="poll and on_demand modes: seconds between repository scans"
    )
    model_memory_budget: ByteSize = Field(
        default=ByteSize(0),
        description="host memory the loaded models may hold, as measured (RSS growth across "
        "each load), e.g. 2GiB, 512MiB or bytes; on_demand evicts the least recently used "
        "idle models to stay within it, other modes refuse the load; 0 = no budget",
    )
    model_load_timeout_s: float = Field(
        default=60.0,
        description="on_demand: how long a request waits for its model to load (then 503 + "
        "Retry-After; the load goes on)",
    )

    # --- batching and admission --------------------------------------------------------------
    batching: bool = Field(
        default=True, description="dynamic batching where config.pbtxt enables it; off = one by one"
    )
    max_queue_size: int = Field(
        default=2048,
        description="requests waiting per model when config.pbtxt sets no queue policy",
    )
    default_timeout_ms: float = Field(
        default=0, description="queue timeout when neither config nor request sets one; 0 = none"
    )
    max_request_bytes: int = Field(
        default=64 * 1024 * 1024, description="largest REST request body accepted (413 above)"
    )
    max_tensor_elements: int = Field(
        default=1 << 26, description="upper bound on elements of any one input tensor"
    )
    max_items_per_request: int = Field(
        default=2048,
        description="texts or token arrays one text or /v1/embeddings request may carry",
    )
    max_tokens_per_request: int = Field(
        default=300_000,
        description="tokens (after truncation) one text or /v1/embeddings request may carry",
    )
    grpc_max_message_bytes: int = Field(
        default=64 * 1024 * 1024, description="largest gRPC message received or sent"
    )
    max_json_bytes: int = Field(
        default=16 * 1024 * 1024,
        description="largest JSON request header (413 above: send big tensors as binary data)",
    )
    http_read_timeout_s: float = Field(
        default=10.0,
        description="a request's headers and body must arrive within this (408 and close after)",
    )
    max_connections: int = Field(
        default=4096,
        description="HTTP connections (and gRPC calls in flight) served; beyond: fast 503",
    )
    exit_timeout_s: int = Field(
        default=30,
        description="on SIGTERM, how long in-flight requests may take before the process exits",
    )
    retry_after_s: int = Field(
        default=1, description="Retry-After seconds sent with a 503 when queues are full"
    )
    max_queue_wait_ms: float = Field(
        default=5000.0,
        description="shed (503 + Retry-After) a request whose predicted queue wait exceeds its "
        "timeout, else the config's queue policy timeout, else this; 0 = never shed",
    )

    # --- security ----------------------------------------------------------------------------
    api_keys_file: Path | None = Field(
        default=None,
        description="JSON file of hashed API keys (made with 'infergate keys create'); "
        "unset = no keys needed",
    )
    api_keys_reload_s: float = Field(
        default=1.0, description="seconds between checks of the key file for changes"
    )
    auth_open_apis: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["health", "metrics"],
        description="API groups served without a key (health, metadata, inference, "
        "model-config, model-repository, statistics, metrics, ...)",
    )
    http_restricted_api: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Triton's GROUP[,GROUP]:HEADER=VALUE: REST groups that need that header",
    )
    grpc_restricted_protocol: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Triton's GROUP[,GROUP]:HEADER=VALUE: gRPC groups that need that metadata",
    )
    anonymous_requests_per_s: float = Field(
        default=0.0,
        description="infer requests/s without keys (shared through Redis when set); 0 = any",
    )
    anonymous_rows_per_s: float = Field(
        default=0.0, description="infer rows/s allowed without keys; 0 = any"
    )
    rate_limit_burst_s: float = Field(
        default=1.0, description="token bucket size, in seconds of a key's rate"
    )
    rate_limit_fail_open: bool = Field(
        default=True,
        description="when Redis is unreachable: limit with in-process buckets (open) or refuse "
        "rate-limited keys with 503 (closed)",
    )
    rate_limit_redis_timeout_ms: float = Field(
        default=100.0, description="Redis call timeout of the shared rate limiter"
    )
    audit_max_lines_per_s: int = Field(
        default=20, description="audit log lines (admin actions, auth failures) per second"
    )
    tls_cert_file: Path | None = Field(
        default=None, description="PEM certificate chain: serve HTTPS and gRPC over TLS"
    )
    tls_key_file: Path | None = Field(default=None, description="PEM private key of the cert")
    tls_client_ca_file: Path | None = Field(
        default=None, description="PEM CA bundle: require client certificates it signed (mTLS)"
    )

    # --- cache -------------------------------------------------------------------------------
    redis_url: str | None = Field(
        default=None, description="Redis for the shared result cache, e.g. redis://redis:6379/0"
    )
    cache_enabled: bool | None = Field(
        default=None,
        description="force the result cache on or off; unset = each model's response_cache",
    )
    cache_ttl_s: float = Field(default=3600.0, description="seconds a cached result lives")
    cache_max_entry_bytes: int = Field(
        default=4 * 1024 * 1024, description="larger results are not cached"
    )
    cache_local_bytes: int = Field(
        default=128 * 1024 * 1024, description="size of the in-process LRU cache"
    )
    cache_local_tier: bool = Field(
        default=False, description="with Redis: also keep hits in the in-process LRU in front of it"
    )
    cache_namespace: str = Field(default="infergate", description="prefix of every Redis key")
    cache_redis_timeout_ms: float = Field(
        default=50.0, description="Redis call timeout; slower calls count as misses"
    )
    cache_breaker_reset_s: float = Field(
        default=2.0, description="after Redis fails, seconds before it is tried again"
    )

    # --- observability -----------------------------------------------------------------------
    otlp_endpoint: str | None = Field(
        default=None,
        description="OpenTelemetry collector that receives traces, e.g. http://collector:4317 "
        "(http:// = plaintext, https:// = TLS); unset = OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or "
        "OTEL_EXPORTER_OTLP_ENDPOINT, and without those no tracing",
    )
    otlp_protocol: Literal["grpc", "http/protobuf"] | None = Field(
        default=None,
        description="OTLP transport; unset = OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or "
        "OTEL_EXPORTER_OTLP_PROTOCOL, else grpc",
    )
    trace_rate: float = Field(
        default=1.0,
        ge=0.0,
        le=1.0,
        description="fraction of requests traced when tracing is on; parent-based: a request "
        "whose traceparent is sampled is traced, one whose traceparent is not is not",
    )
    request_log: bool = Field(
        default=False,
        description="one JSON line per inference request on stdout (time, trace id, key id, "
        "model, version, status, rows, queue and compute µs, cache); never the tensors",
    )
    request_log_rate: float = Field(
        default=1.0, ge=0.0, le=1.0, description="fraction of inference requests the log writes"
    )

    @field_validator(
        "triton_url",
        "execution_providers",
        "startup_models",
        "auth_open_apis",
        "http_restricted_api",
        "grpc_restricted_protocol",
        mode="before",
    )
    @classmethod
    def _split_list(cls, value: object) -> object:
        """Accept ``a,b`` or ``a b`` from the environment as well as a real list."""
        if isinstance(value, str):
            return [part for part in value.replace(",", " ").split() if part]
        return value

    def worker_count(self) -> int:
        """``workers`` as a number. ``auto``: a front end per usable core but one, which the
        executor's batches and sessions need, at most 8; below 3 cores one process, because
        there the extra processes and the hop between them cost more than they bring
        (bench/workers_bench.py on 2 cores: REST 0.75-0.92x, gRPC 0.93-1.22x of one process)."""
        if self.workers != "auto":
            return self.workers
        cores = usable_cores()
        return min(cores - 1, 8) if cores >= 3 else 1
