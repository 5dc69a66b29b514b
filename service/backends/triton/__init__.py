"""Remote Triton servers as a backend: a pool of replicas with health checks and fail-over."""
