"""Kubernetes manifests, checked without a cluster.

Each source file and each kustomize render (``kubectl kustomize``, no server needed) validates
against the strict (no unknown fields) Kubernetes JSON schemas that ``kubernetes-validate`` ships;
then the references between objects are followed: selectors, ports, claims, config maps, scale
targets and custom metrics, and the gateway's settings.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from tests.deploy.deploy_support import (
    ADAPTER_VALUES,
    K8S,
    OVERLAYS,
    REPO,
    k8s_resource_files,
    kustomize,
    load_compose,
    pod_templates,
    selects,
    settings_env_names,
)

kubernetes_validate = pytest.importorskip(
    "kubernetes_validate", reason="dev extra kubernetes-validate not installed"
)

# Oldest and newest minor versions the manifests must be valid for.
K8S_VERSIONS = ("1.30.0", "1.35.0")
CRD_KINDS = {"PodMonitor", "ServiceMonitor", "PrometheusRule"}


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _validate(doc: dict, version: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} at {where}: {exc.message}")


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request: pytest.FixtureRequest) -> tuple[str, list[dict]]:
    return request.param, kustomize(request.param)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", list(k8s_resource_files()), ids=lambda p: str(p.relative_to(K8S)))
def test_source_manifest_is_schema_valid(path: Path, version: str) -> None:
    for doc in _docs(path):
        if doc["kind"] in CRD_KINDS:
            continue  # no schema without the operator's CRD; wiring checked below
        _validate(doc, version)


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_render_is_schema_valid(rendered: tuple[str, list[dict]], version: str) -> None:
    _, docs = rendered
    for doc in docs:
        _validate(doc, version)


def test_strict_schema_has_teeth() -> None:
    """A misspelt field fails the strict schema, so the checks above can fail."""
    (doc,) = _docs(K8S / "base" / "gateway-pdb.yaml")
    doc["spec"]["maxUnavailble"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def _by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def test_references_resolve(rendered: tuple[str, list[dict]]) -> None:
    overlay, docs = rendered
    pods = pod_templates(docs)
    assert {"gateway", "redis"} <= set(pods)
    names = {(doc["kind"], doc["metadata"]["name"]) for doc in docs}
    for name, workload in _by_kind(docs, "Deployment").items():
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selects(selector, workload["spec"]["template"]["metadata"]["labels"]), name
        for volume in workload["spec"]["template"]["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert ("PersistentVolumeClaim", claim) in names, f"{name}: no PVC {claim}"
        for container in workload["spec"]["template"]["spec"]["containers"]:
            for source in container.get("envFrom", []):
                ref = source["configMapRef"]["name"]
                assert ("ConfigMap", ref) in names, f"{name}: no ConfigMap {ref}"
            port_names = {p["name"] for p in container.get("ports", [])}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                spec = container.get(probe, {})
                port = (spec.get("httpGet") or spec.get("tcpSocket") or {}).get("port")
                if isinstance(port, str):
                    assert port in port_names, f"{name}: {probe} port {port}"
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), f"{name}/{container['name']}: requests"

    for name, service in _by_kind(docs, "Service").items():
        matched = [
            w
            for w, t in pods.items()
            if selects(service["spec"]["selector"], t["metadata"]["labels"])
        ]
        assert len(matched) == 1, f"Service {name} selects {matched}"
        container_ports = {
            p["name"] for c in pods[matched[0]]["spec"]["containers"] for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in container_ports, f"Service {name}: {port['targetPort']}"

    for name, pdb in _by_kind(docs, "PodDisruptionBudget").items():
        labels = [t["metadata"]["labels"] for t in pods.values()]
        assert any(selects(pdb["spec"]["selector"]["matchLabels"], lab) for lab in labels), name
    assert set(_by_kind(docs, "PodDisruptionBudget")) >= {"gateway"}

    hpas = _by_kind(docs, "HorizontalPodAutoscaler")
    assert "gateway" in hpas, overlay
    for name, hpa in hpas.items():
        target = hpa["spec"]["scaleTargetRef"]
        assert (target["kind"], target["name"]) in names, f"HPA {name}"


def test_autoscaling_metrics_are_served_by_the_adapter(rendered: tuple[str, list[dict]]) -> None:
    _, docs = rendered
    adapter = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    served = {rule["name"]["as"] for rule in adapter}
    gateway_hpa = _by_kind(docs, "HorizontalPodAutoscaler")["gateway"]
    kinds = {metric["type"] for metric in gateway_hpa["spec"]["metrics"]}
    assert kinds == {"Resource", "Pods"}, "CPU and a custom (queue depth) metric"
    for hpa in _by_kind(docs, "HorizontalPodAutoscaler").values():
        for metric in hpa["spec"]["metrics"]:
            if metric["type"] == "Pods":
                assert metric["pods"]["metric"]["name"] in served


def test_gateway_settings_and_backend_wiring(
    rendered: tuple[str, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.settings import Settings

    overlay, docs = rendered
    (config,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("gateway-config")
    ]
    env = config["data"]
    assert set(env) - settings_env_names() == set()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    services = _by_kind(docs, "Service")

    redis = urlparse(settings.redis_url or "")
    assert redis.hostname in services and redis.port in {
        p["port"] for p in services[redis.hostname]["spec"]["ports"]
    }

    gpu_requests = [
        c["resources"]["limits"].get("nvidia.com/gpu")
        for t in pod_templates(docs).values()
        for c in t["spec"]["containers"]
        if "nvidia.com/gpu" in c.get("resources", {}).get("limits", {})
    ]
    if overlay == "cpu":
        assert settings.backend == "onnxruntime"
        assert gpu_requests == [] and "triton" not in pod_templates(docs)
        return
    assert settings.backend == "triton" and settings.triton_url
    assert gpu_requests == [1]
    for url in settings.triton_url:
        host, port = url.rsplit(":", 1)
        service = services[host.split(".")[0]]
        assert service["spec"].get("clusterIP") == "None", "headless: one address per Triton pod"
        assert int(port) in {p["port"] for p in service["spec"]["ports"] if p["name"] == "grpc"}
    triton = pod_templates(docs)["triton"]["spec"]["containers"][0]
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    compose_triton = load_compose(REPO / "docker-compose.yml")["services"]["triton"]
    assert triton["image"] == compose_triton["image"], "one Triton release everywhere"
    assert "--model-control-mode=poll" in triton["args"]


def test_podmonitors_select_the_scraped_pods() -> None:
    monitors = _docs(K8S / "monitoring" / "podmonitors.yaml")
    gpu = kustomize("gpu")
    pods = pod_templates(gpu)
    for monitor in monitors:
        assert (
            monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["kind"] == "PodMonitor"
        )
        assert monitor["metadata"]["namespace"] in _by_kind(gpu, "Namespace")
        (target,) = [
            t
            for t in pods.values()
            if selects(monitor["spec"]["selector"]["matchLabels"], t["metadata"]["labels"])
        ]
        ports = {p["name"] for c in target["spec"]["containers"] for p in c.get("ports", [])}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports and endpoint["path"] == "/metrics"


def test_gateway_workers_follow_the_cpu_limit_the_hpa_measures_against(
    rendered: tuple[str, list[dict]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--workers auto reads the CPU limit (the cgroup quota), and the request (the HPA's 100 %)
    equals that limit; the limit is large enough for front-end workers besides the executor."""
    from service.settings import Settings

    _, docs = rendered
    gateway = pod_templates(docs)["gateway"]["spec"]["containers"][0]
    (workers,) = [e for e in gateway["env"] if e["name"] == "INFERGATE_WORKERS"]
    assert workers["value"] == "auto"
    resources = gateway["resources"]
    assert resources["limits"]["cpu"] == resources["requests"]["cpu"]
    cores = int(resources["limits"]["cpu"])
    monkeypatch.setattr("service.settings.usable_cores", lambda: cores)
    assert Settings(workers="auto").worker_count() >= 2
