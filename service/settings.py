"""One configuration story: every option is a field here, read from flags or ``INFERGATE_*``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Gateway settings; each model's ``config.pbtxt`` stays the truth for shapes and batching."""

    model_config = SettingsConfigDict(env_prefix="INFERGATE_", extra="ignore")

    # --- serving -----------------------------------------------------------------------------
    model_repo: Path = Path("model_repo")
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = Field(8001, description="0 disables the gRPC front end")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_json: bool = False

    # --- backends ----------------------------------------------------------------------------
    backend: Literal["onnxruntime", "triton"] = "onnxruntime"
    triton_url: Annotated[list[str], NoDecode] = Field(default_factory=list)
    triton_protocol: Literal["grpc", "http"] = "grpc"
    triton_health_interval_s: float = 1.0
    triton_timeout_s: float = Field(30.0, description="per-batch timeout for a Triton call")
    triton_startup_wait_s: float = Field(
        30.0, description="how long startup waits for the first healthy Triton replica"
    )
    execution_providers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "ONNX Runtime providers in order, overriding config.pbtxt; empty = each model's "
            "instance_group and gpu_execution_accelerator decide (KIND_CPU or none = CPU)"
        ),
    )
    intra_op_threads: int = Field(0, description="ONNX Runtime intra-op threads; 0 = ORT default")
    inter_op_threads: int = 1
    gpu_memory_budget_bytes: int = Field(
        0,
        description="per GPU: bytes the loaded models' instances may reserve (sum of their "
        "infergate.gpu_mem_limit_bytes); a model that would not fit is UNAVAILABLE; 0 = no budget",
    )
    trt_engine_cache_dir: Path | None = Field(
        None,
        description="TensorRT EP engine cache root (<dir>/<model>/<version>), kept outside the "
        "polled model repository; None = ~/.cache/infergate/tensorrt (XDG_CACHE_HOME)",
    )

    # --- model repository --------------------------------------------------------------------
    model_control_mode: Literal["none", "poll", "explicit"] = "none"
    startup_models: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["*"],
        description="explicit mode: models loaded at startup ('*' = all), like --load-model",
    )
    repository_poll_s: float = 15.0

    # --- batching and admission --------------------------------------------------------------
    batching: bool = True
    max_queue_size: int = Field(
        2048, description="requests waiting per model when config.pbtxt sets no queue policy"
    )
    default_timeout_ms: float = Field(
        0, description="queue timeout when neither config nor request sets one; 0 = none"
    )
    max_request_bytes: int = 64 * 1024 * 1024
    max_tensor_elements: int = Field(
        1 << 26, description="upper bound on elements of any one input tensor"
    )
    grpc_max_message_bytes: int = 64 * 1024 * 1024
    retry_after_s: int = 1

    # --- cache -------------------------------------------------------------------------------
    redis_url: str | None = None
    cache_enabled: bool | None = Field(
        None, description="None = follow each model's response_cache; True/False force it"
    )
    cache_ttl_s: float = 3600.0
    cache_max_entry_bytes: int = 4 * 1024 * 1024
    cache_local_bytes: int = 128 * 1024 * 1024
    cache_local_tier: bool = Field(
        False, description="with Redis: also keep hits in the in-process LRU in front of it"
    )
    cache_namespace: str = "infergate"
    cache_redis_timeout_ms: float = 50.0
    cache_breaker_reset_s: float = 2.0

    @field_validator("triton_url", "execution_providers", "startup_models", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        """Accept ``a,b`` or ``a b`` from the environment as well as a real list."""
        if isinstance(value, str):
            return [part for part in value.replace(",", " ").split() if part]
        return value
