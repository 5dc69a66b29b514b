"""Schemathesis over the gateway's complete ``/openapi.json`` (infer included): no request a
client can make, valid or not, may get a 5xx, and every error is in the v2 shape. Each
operation gets a fixed, derandomized number of generated cases, so the run is bounded and
repeatable."""

from __future__ import annotations

from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import start_gateway

#: real model names as well as random ones, so cases reach the models and not only 404s
MODELS = ["digits_mlp", "minilm_embed", "cancer_gbt", "no_such_model"]
EXAMPLES_PER_OPERATION = 50


def test_no_request_gets_a_server_error(example_repo: Path) -> None:
    server = start_gateway(example_repo)
    failures: list[str] = []
    try:
        schema = schemathesis.openapi.from_url(f"{server.base_url}/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert any(op.path.endswith("/infer") for op in operations), "infer is not documented"
        for operation in operations:

            @given(case=operation.as_strategy(), model=st.sampled_from(MODELS))
            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def call(case: schemathesis.Case, model: str) -> None:
                for name in ("model", "model_name"):
                    if case.path_parameters and name in case.path_parameters:
                        case.path_parameters[name] = model
                response = case.call(base_url=server.base_url, timeout=60)
                status_only = case.path.endswith("/ready")  # Triton's: the status is the answer
                if response.status_code >= 500 or (
                    response.status_code >= 400 and not status_only and "error" not in response.text
                ):
                    failures.append(
                        f"{case.method} {case.formatted_path} -> {response.status_code} "
                        f"{response.text[:300]}"
                    )

            call()
        assert server.alive()
    finally:
        server.stop()
    assert not failures, "\n".join(failures[:20])
