"""Real ``tritonserver`` processes for tests and benchmarks, from the ``nvidia-pytriton`` wheel.

The wheel bundles a Triton 2.51 binary with the python backend only (no ONNX Runtime backend;
see ``shared/notes/triton-on-cpu.md``). :func:`triton_tree` assembles a standalone server tree
into a git-ignored cache dir (``.tritonserver/`` or ``$INFERGATE_TRITON_HOME``);
:class:`TritonServer` starts, stops, kills and restarts one server on free ports.

Fixtures for other test modules (import them, or list this module in ``pytest_plugins``):
``triton_tree`` (session; skips with the reason when the binary is missing),
``triton_repos`` (session; an ONNX repository and its python-backend twin) and
``triton_servers`` (a factory; every server it starts is stopped at teardown).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.helpers import ROOT, WAIT_S, free_port, start_process

PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


class TritonRepos(NamedTuple):
    onnx: Path  # served by the embedded backend, and the reference for answers
    python: Path  # the same models as python-backend models, served by Triton


class TritonUnavailable(RuntimeError):
    """No usable tritonserver here; the message says why."""


def _site_packages() -> Path:
    return Path(sysconfig.get_paths()["purelib"])


@dataclass(frozen=True)
class TritonTree:
    """A standalone server tree: ``bin/tritonserver``, ``backends/python``, ``caches/local``."""

    root: Path
    libs: Path  # nvidia_pytriton.libs: the binary's shared libraries under hashed names

    @property
    def binary(self) -> Path:
        return self.root / "bin" / "tritonserver"

    def env(self) -> dict[str, str]:
        """Environment for the server and its python-backend stubs.

        The Python LIBDIR goes on LD_LIBRARY_PATH so the stub links this interpreter's
        libpython, not the system one; the venv's bin goes first on PATH so the stub's embedded
        Python finds numpy and onnxruntime.
        """
        env = dict(os.environ)
        libdir = sysconfig.get_config_var("LIBDIR") or ""
        paths = [str(self.libs), libdir, env.get("LD_LIBRARY_PATH", "")]
        env["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        env.setdefault("OMP_NUM_THREADS", "1")
        return env


def triton_home() -> Path:
    return Path(os.environ.get("INFERGATE_TRITON_HOME", ROOT / ".tritonserver"))


def assemble_triton(dest: Path | None = None) -> TritonTree:
    """Copy the wheel's server, python backend and stub into ``dest`` (once per wheel version)."""
    dest = dest or triton_home()
    try:
        version = metadata.version("nvidia-pytriton")
    except metadata.PackageNotFoundError as exc:
        raise TritonUnavailable(
            "nvidia-pytriton is not installed (pip install -e '.[triton]' / make setup)"
        ) from exc
    bundled = _site_packages() / "pytriton" / "tritonserver"
    libs = _site_packages() / "nvidia_pytriton.libs"
    stub = bundled / "python_backend_stubs" / PYTHON_VERSION / "triton_python_backend_stub"
    for needed in (bundled / "bin" / "tritonserver", libs, stub):
        if not needed.exists():
            raise TritonUnavailable(f"nvidia-pytriton {version} has no {needed}")
    tree = TritonTree(dest, libs)
    stamp = dest / ".assembled"
    if stamp.is_file() and stamp.read_text() == f"{version} {PYTHON_VERSION}":
        return tree
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    shutil.copytree(bundled / "bin", dest / "bin")
    shutil.copytree(bundled / "caches", dest / "caches")
    python = dest / "backends" / "python"
    python.mkdir(parents=True)
    for name in ("libtriton_python.so", "triton_python_backend_utils.py"):
        shutil.copy2(bundled / "backends" / "python" / name, python / name)
    shutil.copy2(stub, python / "triton_python_backend_stub")
    stamp.write_text(f"{version} {PYTHON_VERSION}")
    return tree


@dataclass
class TritonServer:
    """One ``tritonserver`` process; ports stay fixed across restarts so clients can reconnect."""

    tree: TritonTree
    repo: Path
    log_dir: Path
    http_port: int = field(default_factory=free_port)
    grpc_port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"tritonserver-{self.http_port}.log"

    def command(self) -> list[str]:
        return [
            str(self.tree.binary),
            f"--model-repository={self.repo}",
            f"--backend-directory={self.tree.root / 'backends'}",
            f"--cache-directory={self.tree.root / 'caches'}",
            "--http-address=127.0.0.1",
            f"--http-port={self.http_port}",
            "--grpc-address=127.0.0.1",
            f"--grpc-port={self.grpc_port}",
            "--metrics-address=127.0.0.1",
            f"--metrics-port={self.metrics_port}",
            "--allow-gpu-metrics=false",
            "--exit-on-error=false",
            "--log-verbose=0",
            *self.extra_args,
        ]

    def start(self, timeout_s: float = WAIT_S) -> TritonServer:
        """Spawn the server in its own process group and wait until it reports ready.

        tritonserver cannot bind port 0: a first start that finds a port taken meanwhile moves
        to fresh ones; later starts keep the ports their clients know.
        """
        if self.alive():
            return self
        try:
            self.process = start_process(
                self._spawn,
                lambda _: self.ready(),
                self.log_tail,
                f"tritonserver on {self.http_url} to be ready ({self.log_path})",
                new_ports=self._new_ports if self.starts == 0 else None,
                kill=_kill_group,
                timeout=timeout_s,
            )
        except RuntimeError as exc:
            raise TritonUnavailable(str(exc)) from exc
        self.starts += 1
        return self

    def __post_init__(self) -> None:
        if len({self.http_port, self.grpc_port, self.metrics_port}) < 3:
            self._new_ports()

    def _new_ports(self) -> None:
        """Three distinct free ports (two calls can return the same just-freed port)."""
        ports: set[int] = set()
        while len(ports) < 3:
            ports.add(free_port())
        self.http_port, self.grpc_port, self.metrics_port = sorted(ports)

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            return subprocess.Popen(
                self.command(),
                env=self.tree.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # the python-backend stubs die with the group on kill()
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self._url("/v2/health/ready"), timeout=2) as response:
                return bool(response.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM (Triton drains and unloads), SIGKILL after ``timeout_s``."""
        if not self.alive():
            return
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
        self._reap_group()

    def kill(self) -> None:
        """SIGKILL the server and its stubs at once: a crash, not a shutdown."""
        if self.process is None:
            return
        self._reap_group()
        self.process.wait(10)

    def restart(self, timeout_s: float = WAIT_S) -> TritonServer:
        self.stop()
        return self.start(timeout_s)

    def _reap_group(self) -> None:
        assert self.process is not None
        _kill_group(self.process, wait=False)

    def _url(self, path: str) -> str:
        return f"http://{self.http_url}{path}"

    def get_json(self, path: str) -> dict:
        with urllib.request.urlopen(self._url(path), timeout=10) as response:
            return dict(json.loads(response.read()))

    def inference_count(self, model: str) -> int:
        """Successful inferences Triton itself counted for ``model`` (all versions)."""
        stats = self.get_json(f"/v2/models/{model}/stats")
        return sum(
            int(entry["inference_stats"]["success"]["count"]) for entry in stats["model_stats"]
        )

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.is_file():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def _kill_group(process: subprocess.Popen[bytes], wait: bool = True) -> None:
    """SIGKILL a server started with ``start_new_session`` together with its children."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    if wait:
        process.wait(10)


# --- pytest fixtures -----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def triton_tree() -> TritonTree:
    """Skips when the binary is missing, unless ``INFERGATE_REQUIRE_TRITON=1`` (CI) says fail."""
    try:
        return assemble_triton()
    except TritonUnavailable as exc:
        if os.environ.get("INFERGATE_REQUIRE_TRITON") == "1":
            pytest.fail(f"INFERGATE_REQUIRE_TRITON=1 but no tritonserver: {exc}")
        pytest.skip(f"no tritonserver: {exc}")


@pytest.fixture(scope="session")
def triton_repos(tmp_path_factory: pytest.TempPathFactory) -> TritonRepos:
    """An ONNX repository and its python-backend twin (Triton here has no ORT backend)."""
    from tests.triton_models import build_triton_repos

    return build_triton_repos(tmp_path_factory.mktemp("triton-repo"))


@pytest.fixture(scope="module")
def triton_servers(
    triton_tree: TritonTree, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., TritonServer]]:
    """``start(repo, **kwargs)`` -> a ready server; all of them are stopped after the module."""
    started: list[TritonServer] = []
    logs = tmp_path_factory.mktemp("triton-logs")

    def start(repo: Path, **kwargs: object) -> TritonServer:
        server = TritonServer(triton_tree, repo, logs, **kwargs)  # type: ignore[arg-type]
        started.append(server)
        return server.start()  # a binary that is there but does not start is a failure

    yield start
    for server in started:
        server.stop()
