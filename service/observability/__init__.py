"""What the gateway tells operators: Prometheus metrics, Triton's statistics, GPU gauges and
logs."""
