"""Every metric the Grafana dashboard, the alert rules and the HPA adapter query is one a running
gateway exports. Only Triton's GPU telemetry (``nv_gpu_*``) is exempt: the gateway has no GPU.

A real ``infergate serve`` (subprocess, free ports) with a real ``redis-server`` serves a small
ONNX model made here; after real inferences, ``/metrics`` is scraped and parsed with
prometheus-client's parser, the way Prometheus would read it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.deploy.deploy_support import (
    DEPLOY,
    grouping_labels,
    metric_names,
    monitoring_exprs,
    triton_only,
)

EXPRS = monitoring_exprs()
MODEL = "deploy_probe"
TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)
SAMPLE_LINE = re.compile(
    r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})?\s+(?P<value>\S+)(?:\s+\d+)?$"
)
LABEL_PAIR = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "summary": ("", "_sum", "_count")}


def test_expressions_name_metrics() -> None:
    """The extraction is not vacuous: the rules and panels name gateway metrics, not labels."""
    names = set().union(*(metric_names(e) for e in EXPRS.values()))
    assert "infergate_queue_depth" in names and "nv_inference_request_success" in names
    assert metric_names('rate(x{job="infergate_fake"}[1m]) / nv_a_b') == {"nv_a_b"}
    assert grouping_labels("sum by (model, le) (rate(a[1m]))") == {"model"}


def _write_model(repo: Path) -> None:
    """y = 2x + 1 over [batch, 4] float32, dynamic batching and the response cache on."""
    import onnx
    from google.protobuf import text_format
    from onnx import TensorProto, helper
    from tritonclient.grpc import model_config_pb2 as mc

    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["t"]),
            helper.make_node("Add", ["t", "one"], ["y"]),
        ],
        MODEL,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    (repo / MODEL / "1").mkdir(parents=True)
    onnx.save(model, str(repo / MODEL / "1" / "model.onnx"))
    config = mc.ModelConfig(name=MODEL, platform="onnxruntime_onnx", max_batch_size=8)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[4])
    config.output.add(name="y", data_type=mc.TYPE_FP32, dims=[4])
    config.dynamic_batching.max_queue_delay_microseconds = 100
    config.response_cache.enable = True
    (repo / MODEL / "config.pbtxt").write_text(text_format.MessageToString(config))


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """``/metrics`` text of a gateway that has served inferences, and its HTTP port."""
    try:
        import service.frontends.serve  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"service.frontends.serve not importable yet: {exc}")
    import httpx
    import tritonclient.http as httpclient

    from tests.helpers import start_gateway
    from tests.redis_server import RedisServer

    repo = tmp_path_factory.mktemp("deploy-repo")
    _write_model(repo)
    with RedisServer() as redis:
        gateway = start_gateway(repo, "--redis-url", redis.url)
        try:
            client = httpclient.InferenceServerClient(gateway.http_url)
            x = np.arange(8, dtype=np.float32).reshape(2, 4)
            for _ in range(2):  # the second identical request is answerable from the cache
                tensor = httpclient.InferInput("x", list(x.shape), "FP32")
                tensor.set_data_from_numpy(x, binary_data=True)
                result = client.infer(MODEL, [tensor])
                np.testing.assert_allclose(result.as_numpy("y"), 2 * x + 1)
            bad = httpclient.InferInput("x", [1, 3], "FP32")  # wrong shape: a 400, counted
            bad.set_data_from_numpy(np.zeros((1, 3), np.float32))
            with pytest.raises(Exception, match="(?i)shape|dim"):
                client.infer(MODEL, [bad])
            client.close()
            text = httpx.get(f"{gateway.base_url}/metrics", timeout=10).text
            yield text, gateway.http_port
        finally:
            gateway.stop()


def _samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """Series exactly as Prometheus stores them. (prometheus-client's parser renames counter
    samples to ``*_total``, which Triton-style counters do not have, so it is not used here.)"""
    samples = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE_LINE.match(line)
        assert match, f"unparseable exposition line: {line!r}"
        labels = dict(LABEL_PAIR.findall(match["labels"] or ""))
        samples.append((match["name"], labels, float(match["value"])))
    return samples


def _exported(text: str) -> set[str]:
    """Series names a PromQL query can select: every sample, plus the names of declared
    families that have no sample yet (a labelled counter before its first increment)."""
    names = {name for name, _, _ in _samples(text)}
    for name, kind in TYPE_LINE.findall(text):
        names |= {name + suffix for suffix in SUFFIXES.get(kind, ("",))}
    return names


def test_metrics_exposition_is_well_formed(scraped: tuple[str, int]) -> None:
    """Prometheus refuses a whole scrape with a family declared twice."""
    text, _ = scraped
    declared = [name for name, _ in TYPE_LINE.findall(text)]
    duplicates = sorted({name for name in declared if declared.count(name) > 1})
    assert duplicates == []
    from prometheus_client.parser import text_string_to_metric_families

    assert list(text_string_to_metric_families(text))  # parses as the text format
    assert _samples(text)


def test_monitoring_queries_use_exported_metrics(scraped: tuple[str, int]) -> None:
    text, _ = scraped
    exported = _exported(text)
    missing = {
        f"{where}: {name}"
        for where, expr in EXPRS.items()
        for name in metric_names(expr)
        if not triton_only(name) and name not in exported
    }
    assert sorted(missing) == []


def test_grouping_labels_exist_on_the_series(scraped: tuple[str, int]) -> None:
    """``sum by (model, reason)`` needs those labels on the gateway's samples."""
    text, _ = scraped
    labels: dict[str, set[str]] = {}
    for name, sample_labels, _ in _samples(text):
        labels.setdefault(name, set()).update(sample_labels)
    problems = []
    for where, expr in EXPRS.items():
        for name in metric_names(expr):
            if triton_only(name) or name not in labels:
                continue  # no sample yet (e.g. no rejection of that kind): nothing to compare
            missing = grouping_labels(expr) - labels[name]
            if missing:
                problems.append(f"{where}: {name} lacks {sorted(missing)}")
    assert problems == []


def test_metrics_count_the_inferences(scraped: tuple[str, int]) -> None:
    """The per-model series carry Triton's labels and reflect the requests just sent."""
    text, _ = scraped
    values = {
        (name, labels.get("model"), labels.get("version")): value
        for name, labels, value in _samples(text)
    }
    assert values[("nv_inference_request_success", MODEL, "1")] >= 2
    assert values[("nv_inference_count", MODEL, "1")] >= 2  # the 2 rows computed at least once
    looked_up = sum(
        values.get((f"nv_cache_num_{kind}_per_model", MODEL, "1"), 0) for kind in ("hits", "misses")
    )
    assert looked_up >= 2  # response_cache is on: both requests consulted the cache
    assert values[("infergate_request_latency_seconds_count", MODEL, None)] >= 2


def test_container_healthcheck_passes_against_the_gateway(scraped: tuple[str, int]) -> None:
    _, port = scraped
    env = {**os.environ, "INFERGATE_HTTP_PORT": str(port)}
    probe = subprocess.run([sys.executable, str(DEPLOY / "healthcheck.py")], env=env)
    assert probe.returncode == 0
