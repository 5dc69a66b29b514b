"""``--backend triton`` with tracing: the gateway forwards its batch's ``traceparent`` to a real
Triton that traces in OpenTelemetry mode, so Triton's spans join the caller's trace under the
gateway's compute span (over gRPC metadata and HTTP headers alike). Both export to one real
OTLP receiver: the gateway over gRPC, Triton over OTLP/HTTP (JSON).
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.helpers import Gateway, start_gateway, wait_until
from tests.otlp_receiver import ReceivedSpan, Receiver, otlp  # noqa: F401  (fixture)
from tests.triton_models import FEATURES, MODEL
from tests.triton_server import (  # noqa: F401  (fixtures)
    TritonRepos,
    TritonServer,
    triton_repos,
    triton_servers,
    triton_tree,
)

pytestmark = [pytest.mark.triton, pytest.mark.slow]

REST_SPAN = "POST /v2/models/{model}/infer"


@pytest.fixture(scope="module")
def traced_triton(
    triton_servers: Callable[..., TritonServer],  # noqa: F811
    triton_repos: TritonRepos,  # noqa: F811
    otlp: Receiver,  # noqa: F811
) -> TritonServer:
    settings = [
        "mode=opentelemetry",
        "rate=1",
        "level=TIMESTAMPS",
        f"opentelemetry,url={otlp.http_endpoint}/v1/traces",
        "opentelemetry,resource=service.name=triton-under-test",
        "opentelemetry,bsp_schedule_delay=20",
    ]
    args = [part for setting in settings for part in ("--trace-config", setting)]
    return triton_servers(triton_repos.python, extra_args=args)


@pytest.fixture(scope="module", params=["grpc", "http"])
def through_triton(
    request: pytest.FixtureRequest,
    traced_triton: TritonServer,
    triton_repos: TritonRepos,  # noqa: F811
    otlp: Receiver,  # noqa: F811
) -> Iterator[Gateway]:
    protocol = request.param
    url = traced_triton.grpc_url if protocol == "grpc" else traced_triton.http_url
    gateway = start_gateway(
        triton_repos.onnx,  # ignored by the triton backend; the models come from Triton
        "--backend",
        "triton",
        "--triton-url",
        url,
        "--otlp-endpoint",
        otlp.grpc_endpoint,
        env={"INFERGATE_TRITON_PROTOCOL": protocol, "OTEL_BSP_SCHEDULE_DELAY": "20"},
    )
    yield gateway
    gateway.stop()


def test_tritons_spans_join_the_trace_under_the_batchs_compute_span(
    through_triton: Gateway,
    otlp: Receiver,  # noqa: F811
) -> None:
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    tensor = {"name": "x", "shape": [1, FEATURES], "datatype": "FP32", "data": [0.5] * FEATURES}
    response = httpx.post(
        f"{through_triton.base_url}/v2/models/{MODEL}/infer",
        json={"inputs": [tensor]},
        headers={"traceparent": f"00-{trace_id}-{caller}-01"},
    )
    assert response.status_code == 200, response.text

    def exported() -> dict[str, list[ReceivedSpan]] | None:
        by_origin: dict[str, list[ReceivedSpan]] = {}
        for span in otlp.trace(trace_id):
            origin = "triton" if span.resource["service.name"] == "triton-under-test" else "gateway"
            by_origin.setdefault(f"{origin} {span.name}", []).append(span)
        wanted = {"triton InferRequest", f"gateway {REST_SPAN}"}
        return by_origin if wanted <= set(by_origin) else None

    spans = wait_until(exported, what="the gateway's and Triton's spans of the trace")
    (server,) = spans[f"gateway {REST_SPAN}"]
    (compute,) = spans["gateway compute"]
    (received,) = spans["triton InferRequest"]
    assert (server.parent_id, compute.parent_id) == (caller, server.span_id)
    assert received.parent_id == compute.span_id  # Triton continued the batch's context
