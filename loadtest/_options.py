"""The scenarios' options, typed; free of Locust so tests and the CLI can import it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

PROTOCOLS = ("json", "binary", "grpc")


@dataclass(frozen=True)
class LoadOptions:
    """The parsed options, typed, with defaults for runs that bypass Locust's parser (tests)."""

    models: tuple[str, ...] = ()
    rows: int = 1
    seq_len: int = 16
    hit_ratio: float = 0.5
    pool_size: int = 32
    protocol: str = "json"
    grpc_host: str = ""
    embed_model: str = "minilm_embed"
    min_tokens: int = 8
    max_tokens: int = 64
    model_repo: str = ""
    check_fraction: float = 0.05
    tolerance: float = 1e-3
    think_time_ms: float = 0.0

    @classmethod
    def from_parsed(cls, parsed: Any) -> LoadOptions:
        if parsed is None:
            return cls()
        values = {
            name: getattr(parsed, name) for name in cls.__dataclass_fields__ if name != "models"
        }
        models = tuple(m.strip() for m in str(getattr(parsed, "model", "")).split(",") if m.strip())
        options = cls(models=models, **values)
        if options.protocol not in PROTOCOLS:
            raise ValueError(f"--protocol must be one of {PROTOCOLS}, not {options.protocol!r}")
        if options.rows < 1 or not 0.0 <= options.hit_ratio <= 1.0:
            raise ValueError("--rows must be >= 1 and --hit-ratio within [0, 1]")
        return options


def grpc_target(host: str | None, grpc_host: str) -> str:
    """``--grpc-host`` if given, else the HTTP host's name on Triton's default gRPC port 8001."""
    if grpc_host:
        return grpc_host.removeprefix("grpc://")
    hostname = urlsplit(host or "http://127.0.0.1").hostname or "127.0.0.1"
    return f"{hostname}:8001"


def parse_users(spec: str) -> list[int]:
    """``"1,8,32"`` -> ``[1, 8, 32]``; every count must be positive."""
    users = [int(part) for part in spec.replace(" ", "").split(",") if part]
    if not users or min(users) < 1:
        raise ValueError(f"user steps must be positive integers, got {spec!r}")
    return users
