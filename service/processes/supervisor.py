"""The process tree of ``--workers N``: this supervisor, the executors (``--executors``, one by
default), N front-end workers.

The supervisor reserves the ports (bound with SO_REUSEPORT but never listening, so port 0
resolves once and every worker binds the same port while the kernel spreads connections among
the listening ones), forks the executors and the workers, replaces a worker that dies within a
poll interval and restarts a dead executor. On SIGTERM it stops the workers first (each answers
its in-flight requests, which still need the executor), then the executors (which finish what
is queued). Children die with the supervisor (PR_SET_PDEATHSIG), so none outlives a SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from service.frontends.rest.connections import ConnectionTally
from service.frontends.serve import WorkerPlace, bind_http_socket, install_loop, serve
from service.observability import requestlog
from service.observability.logs import configure_logging
from service.processes.routing import Routes, socket_path
from service.settings import Settings

log = logging.getLogger("infergate")

POLL_S = 0.05
#: a child that dies this soon after its start is restarted only after this long (crash loops)
RESTART_BACKOFF_S = 1.0
_PR_SET_PDEATHSIG = 1


class ProcessTree:
    def __init__(
        self, settings: Settings, runtime_dir: Path, worker_count: int, routes: Routes
    ) -> None:
        self.settings = settings
        self.runtime_dir = runtime_dir
        self.routes = routes
        self.socket_paths = [socket_path(runtime_dir, index) for index in range(routes.count)]
        self.worker_count = worker_count
        self.executors: dict[int, int] = {}  # pid -> executor index
        self.workers: dict[int, int] = {}  # pid -> worker number
        self.started: dict[int, float] = {}  # pid -> monotonic start time
        self.stopping = False
        self.pid = os.getpid()
        self.connections = ConnectionTally(worker_count)

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._request_stop)
        for index in range(self.routes.count):
            self._start_executor(index)
        for number in range(1, self.worker_count + 1):
            self._start_worker(number)
        executors = ", ".join(
            f"executor pid {pid}" for pid, _ in sorted(self.executors.items(), key=lambda e: e[1])
        )
        log.info(
            "process layout: supervisor pid %d, %s (models, batchers, sessions; %s), "
            "%d front-end workers pids %s (HTTP + gRPC on shared ports), IPC %s",
            self.pid,
            executors,
            self.routes.describe(),
            self.worker_count,
            sorted(self.workers),
            " ".join(self.socket_paths),
        )
        while not self.stopping:
            self._reap()
            time.sleep(POLL_S)
        self._stop()

    def _request_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    # -- children -----------------------------------------------------------------------------
    def _fork(self, role: str, main: Callable[[], None]) -> int:
        pid = os.fork()
        if pid:
            self.started[pid] = time.monotonic()
            return pid
        code = 1
        try:
            _become_child(self.pid)
            configure_logging(self.settings, role)
            requestlog.configure(self.settings, role)  # after the fork: the exporter's thread
            install_loop()
            main()
            code = 0
        except BaseException:
            logging.getLogger("infergate").exception("%s failed", role)
        finally:
            requestlog.shutdown()  # export the spans still queued
            logging.shutdown()
            os._exit(code)

    def _start_worker(self, number: int) -> None:
        place = WorkerPlace(number - 1, self.worker_count, self.connections)
        pid = self._fork(f"worker-{number}", lambda: self._worker_main(place))
        self.workers[pid] = number

    def _start_executor(self, index: int) -> int:
        role = "executor" if self.routes.count == 1 else f"executor-{index + 1}"
        pid = self._fork(role, lambda: self._executor_main(index))
        self.executors[pid] = index
        return pid

    def _executor_main(self, index: int) -> None:
        from service.processes.executor import run_executor

        run_executor(self.settings, self.runtime_dir, index, self.routes)

    def _worker_main(self, place: WorkerPlace) -> None:
        from service.processes.worker import FrontEndPlane

        async def main() -> None:
            plane = FrontEndPlane(self.settings, self.socket_paths, self.routes)
            await serve(self.settings, plane, place)

        asyncio.run(main())

    def _reap(self) -> None:
        """Replace whatever child exited (a worker within a poll interval)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0 or self.stopping:
                return
            how = _describe(status)
            if time.monotonic() - self.started.pop(pid, 0.0) < RESTART_BACKOFF_S:
                time.sleep(RESTART_BACKOFF_S)  # crashing at start: do not spin
            if pid in self.executors:
                index = self.executors.pop(pid)
                successor = self._start_executor(index)
                role = "executor" if self.routes.count == 1 else f"executor-{index + 1}"
                log.error("%s (pid %d) %s; restarted as pid %d", role, pid, how, successor)
            elif pid in self.workers:
                number = self.workers.pop(pid)
                self._start_worker(number)
                replacement = next(p for p, n in self.workers.items() if n == number)
                log.error(
                    "worker-%d (pid %d) %s; replaced by pid %d", number, pid, how, replacement
                )

    def _stop(self) -> None:
        """Workers first (they answer what is in flight), then the executor."""
        log.info("stopping: workers finish their in-flight requests, then the executor")
        grace = self.settings.exit_timeout_s + 5
        _terminate(list(self.workers), grace)
        _terminate(list(self.executors), grace)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        log.info("stopped")


def _become_child(parent: int) -> None:
    """Die with the supervisor; take default signal handling (each role installs its own)."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os._exit(1)


def _terminate(pids: list[int], grace_s: float) -> None:
    for pid in pids:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    waiting = set(pids)
    while waiting and time.monotonic() < deadline:
        for pid in list(waiting):
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                waiting.discard(pid)
        time.sleep(POLL_S)
    for pid in waiting:
        log.error("pid %d did not stop within %gs; killing it", pid, grace_s)
        _signal(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with {os.WEXITSTATUS(status)}"


def reserve_port(host: str, port: int) -> socket.socket:
    """Bind (never listen on) the port every worker will share, resolving port 0 once. An
    exclusive bind comes first, so a port another server holds (even one sharing it with
    SO_REUSEPORT, such as another gateway) fails here as it would without workers."""
    probe = bind_http_socket(host, port)
    port = probe.getsockname()[1]
    probe.close()
    return bind_http_socket(host, port, reuse_port=True)


def supervise(settings: Settings) -> None:
    """Serve with ``settings.worker_count()`` front-end workers until SIGTERM / SIGINT."""
    import service.processes.worker  # noqa: F401 - loaded once here, so a replacement forks warm

    workers = settings.worker_count()
    reservations = [reserve_port(settings.host, settings.http_port)]
    http_port = reservations[0].getsockname()[1]
    if settings.grpc_port:
        reservations.append(reserve_port(settings.host, settings.grpc_port))
    shared = settings.model_copy(update={"http_port": http_port})
    runtime_dir = Path(tempfile.mkdtemp(prefix="infergate-"))
    log.info(
        "HTTP listening on %s:%d (models from %s)", settings.host, http_port, settings.model_repo
    )
    if settings.grpc_port:
        log.info("gRPC listening on %s:%d", settings.host, settings.grpc_port)
    try:
        ProcessTree(shared, runtime_dir, workers, Routes(shared)).run()
    finally:
        for reservation in reservations:
            reservation.close()
