"""One node, every core: a parent process that runs N worker processes on one gRPC port.

A grpc.aio node runs on one event loop, so one process uses one core. With
COORDINATOR_WORKERS above 1, ``python -m coordinator serve`` becomes a supervisor that starts
N full node processes (``serve --worker K``), each with its own loop, dispatcher, streams and
Redis connections and its own node id ``<NODE_ID>-w<K>``. They share the gRPC port (and the
health port) with SO_REUSEPORT, so the kernel spreads connections over them; this is the
pattern gRPC's Python examples recommend for CPU-bound servers.

Separate nodes must still not share a port (server.py binds without SO_REUSEPORT): before it
starts any worker, the parent binds each port without SO_REUSEPORT, which fails if anything
holds it, then keeps it with a SO_REUSEPORT socket that never listens. That socket lets the
workers in and keeps everything else out (a plain bind conflicts with it, and another parent's
check is a plain bind), also while a worker is being restarted.

Each worker serves metrics on COORDINATOR_METRICS_PORT + K: every process has its own
counters, and one port shared by all would answer each scrape from a random worker.

The parent restarts a worker that dies (with backoff; its agents' streams reconnect through
the SDK to the workers still serving), drains every worker on SIGTERM or SIGINT and exits 0,
and exits with a worker's code when one fails before it serves (bad configuration, an
unusable port), rather than restarting it in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence

from coordinator.config import Settings

log = logging.getLogger(__name__)

READY = b"ready\n"
"""What a worker writes on its ready pipe once it serves."""
RESTART_DELAY_MIN_S = 0.5
RESTART_DELAY_MAX_S = 30.0
HEALTHY_RUN_S = 60.0
"""A worker that served this long before dying is restarted after the shortest delay again."""
STOP_MARGIN_S = 10.0
"""Past the shutdown grace: time a worker gets to close Redis and exit before SIGKILL."""
START_TIMEOUT_S = 60.0


def worker_settings(settings: Settings, index: int) -> Settings:
    """The settings of worker ``index``: its own node id and metrics port, a shared gRPC
    port (and health port) with SO_REUSEPORT."""
    metrics_port = settings.metrics_port + index if settings.metrics_port else 0
    return dataclasses.replace(
        settings,
        node_id=f"{settings.node_id}-w{index}",
        metrics_port=metrics_port,
        workers=1,
        share_port=True,
    )


def _addresses(host: str, port: int) -> list[tuple[int, tuple[str, int]]]:
    """The (family, sockaddr) pairs the node's host names, as gRPC resolves them to bind."""
    found = socket.getaddrinfo(
        host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    unique: list[tuple[int, tuple[str, int]]] = []
    for family, _, _, _, sockaddr in found:
        pair = (family, (str(sockaddr[0]), int(sockaddr[1])))
        if pair not in unique:
            unique.append(pair)
    return unique


def _bind(family: int, host: str, port: int, reuse_port: bool) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As gRPC binds: SO_REUSEADDR always, dual-stack for IPv6.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


class PortHold:
    """Holds ``host:port`` for the workers: OSError when another process uses it."""

    def __init__(self, host: str, port: int) -> None:
        self.port = port
        self._sockets: list[socket.socket] = []
        try:
            for family, (address, _) in _addresses(host, port):
                # A plain bind, as a separate node makes: it fails on a port in any use.
                probe = _bind(family, address, self.port, reuse_port=False)
                self.port = probe.getsockname()[1]  # port 0: the first address chooses
                probe.close()
                self._sockets.append(_bind(family, address, self.port, reuse_port=True))
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        """Let the port go (after the workers have stopped)."""
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()


@dataclasses.dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None


class WorkerStartError(Exception):
    """A worker exited before it served; ``code`` is its exit status."""

    def __init__(self, index: int, code: int) -> None:
        super().__init__(f"worker {index} exited with code {code} before it served")
        self.code = code


class Supervisor:
    """Starts, watches, restarts and stops the worker processes of one node."""

    def __init__(self, settings: Settings, command: Sequence[str], env: dict[str, str]) -> None:
        """``command`` runs one worker when ``--worker K --ready-fd FD`` is appended;
        ``env`` is its environment (the parent's resolved ports and node id)."""
        self._settings = settings
        self._command = list(command)
        self._env = env
        self._workers = [_Worker(index) for index in range(settings.workers)]
        self._stopping = asyncio.Event()

    async def run(self) -> int:
        """Serve until SIGTERM or SIGINT, then drain every worker; the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        try:
            await asyncio.gather(*(self._start(worker) for worker in self._workers))
        except WorkerStartError as exc:
            if self._stopping.is_set():  # Ctrl-C while starting: the workers got it too
                await self._stop_all()
                return 0
            log.error("%s; stopping the node", exc)
            await self._stop_all()
            return exc.code or 1
        log.info(
            "node %s serving with %d workers on %s",
            self._settings.node_id,
            len(self._workers),
            self._settings.address,
        )
        watchers = [asyncio.create_task(self._watch(worker)) for worker in self._workers]
        await self._stopping.wait()
        log.info("signal received: draining %d workers", len(self._workers))
        for watcher in watchers:
            watcher.cancel()
        codes = await self._stop_all()
        return 0 if all(code == 0 for code in codes) else 1

    async def _start(self, worker: _Worker) -> None:
        """Start the worker and wait until it serves; WorkerStartError if it exits first."""
        read_fd, write_fd = _pipe()
        argv = [
            *self._command,
            *("--worker", str(worker.index), "--ready-fd", str(write_fd)),
            *("--supervisor-pid", str(os.getpid())),
        ]
        try:
            worker.process = await asyncio.create_subprocess_exec(
                *argv, env=self._env, pass_fds=(write_fd,)
            )
        finally:
            _close(write_fd)
        reader = asyncio.StreamReader()
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", 0)
        )
        try:
            line = await asyncio.wait_for(reader.readline(), START_TIMEOUT_S)
        except TimeoutError:
            log.error("worker %d did not serve within %.0f s", worker.index, START_TIMEOUT_S)
            worker.process.kill()
            line = b""
        finally:
            transport.close()
        if line != READY:  # EOF: the worker exited (or closed the pipe) before serving
            code = await worker.process.wait()
            raise WorkerStartError(worker.index, code)

    async def _watch(self, worker: _Worker) -> None:
        """Restart the worker whenever it dies, after a delay that grows while it keeps
        dying soon after starting."""
        delay_s = RESTART_DELAY_MIN_S
        loop = asyncio.get_running_loop()
        while True:
            assert worker.process is not None
            started = loop.time()
            code = await worker.process.wait()
            if self._stopping.is_set():
                return
            if loop.time() - started >= HEALTHY_RUN_S:
                delay_s = RESTART_DELAY_MIN_S
            log.warning(
                "worker %d (pid %d) exited with code %d; restarting in %.1f s",
                worker.index,
                worker.process.pid,
                code,
                delay_s,
            )
            await asyncio.sleep(delay_s)
            delay_s = min(delay_s * 2, RESTART_DELAY_MAX_S)
            with contextlib.suppress(WorkerStartError, TimeoutError):
                # The other workers serve meanwhile; one that cannot start now (Redis down)
                # is tried again after a longer delay.
                await self._start(worker)

    async def _stop_all(self) -> list[int]:
        """SIGTERM to every worker (each drains as a single node does), SIGKILL to one that
        has not exited after the grace period and a margin; the exit statuses of those that
        were running (one that died earlier was logged already)."""
        running = [
            w.process
            for w in self._workers
            if w.process is not None and w.process.returncode is None
        ]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        timeout_s = self._settings.shutdown_grace_s + STOP_MARGIN_S
        codes = []
        for process in running:
            try:
                codes.append(await asyncio.wait_for(process.wait(), timeout_s))
            except TimeoutError:
                log.error(
                    "worker pid %d did not stop in %.0f s: killing it", process.pid, timeout_s
                )
                process.kill()
                codes.append(await process.wait())
        return codes


def _pipe() -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    os.set_inheritable(write_fd, True)
    return read_fd, write_fd


def _close(fd: int) -> None:
    with contextlib.suppress(OSError):
        os.close(fd)


def report_ready(ready_fd: int) -> None:
    """In a worker: tell the parent it serves (it then starts supervising the worker)."""
    with contextlib.suppress(OSError):
        os.write(ready_fd, READY)
        os.close(ready_fd)


async def supervise(settings: Settings, command: Sequence[str], env: dict[str, str]) -> int:
    """Hold the node's ports, run its workers until SIGTERM or SIGINT; the exit status.

    OSError, before any worker starts, when the gRPC or health port is in use. ``env`` gets
    the resolved ports (port 0 chooses one for all workers) and the node id."""
    hold = PortHold(settings.host, settings.port)
    health_hold = None
    try:
        if settings.health_port is not None:
            health_hold = PortHold(settings.host, settings.health_port)
        env = {**env, "NODE_ID": settings.node_id, "COORDINATOR_PORT": str(hold.port)}
        if health_hold is not None:
            env["COORDINATOR_HEALTH_PORT"] = str(health_hold.port)
        resolved = dataclasses.replace(settings, port=hold.port)
        return await Supervisor(resolved, command, env).run()
    finally:
        hold.close()
        if health_hold is not None:
            health_hold.close()


def die_with_parent(supervisor_pid: int | None) -> None:
    """Linux: SIGTERM this worker when its parent dies, so a killed supervisor leaves no
    orphan serving on the port (it drains as on any SIGTERM). A supervisor that died before
    this ran (the worker was still importing) sends nothing: the worker then sees another
    parent and exits at once."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    if supervisor_pid is not None and os.getppid() != supervisor_pid:
        raise SystemExit(f"worker: its supervisor (pid {supervisor_pid}) is gone; exiting")
