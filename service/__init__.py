"""infergate: Triton-compatible inference gateway (KServe v2 REST + gRPC)."""

__version__ = "0.1.0"
