"""``hark serve --workers N``: the parent process. It holds the public ports, starts N workers
(``python -m media serve ...``, told their index and the run directory through the environment),
restarts a worker that dies, and on SIGTERM or SIGINT drains every worker, then exits.

The parent binds each public port first (with ``SO_REUSEPORT``, never listening), so that port 0
becomes one free port every worker shares, and no other program takes it while a worker restarts.
Workers run in their own process group: a terminal's Ctrl-C reaches the parent only, which passes
it on once. A worker's stdin is a pipe from the parent; when the parent dies, the worker drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pathlib
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence

from media.aio import cancel_and_wait
from media.binding import CannotListen, host_port, why_bind_failed
from media.cluster.workers import INDEX_ENV, RUN_DIR_ENV
from media.config import Config
from media.server.auth import new_secret

logger = logging.getLogger(__name__)

SECRET_ENV = "HARK_CLUSTER_SECRET"
STEADY_AFTER_S = 10.0
"""A worker that ran this long before dying is restarted at once; one dying sooner is restarted
after a delay that doubles each time (up to MAX_RESTART_DELAY_S), so a crash loop does not spin."""
MAX_RESTART_DELAY_S = 5.0


class WorkerFailed(Exception):
    """A worker exited before it was serving."""


class _WorkerProcess:
    """One worker slot: the process now filling it, and how often it died young."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.process: asyncio.subprocess.Process | None = None
        self.started = 0.0
        self.quick_deaths = 0

    def restart_delay(self) -> float:
        if time.monotonic() - self.started >= STEADY_AFTER_S:
            self.quick_deaths = 0
            return 0.0
        self.quick_deaths += 1
        return min(MAX_RESTART_DELAY_S, 0.25 * float(2**self.quick_deaths))

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)


class Supervisor:
    def __init__(self, config: Config, argv: Sequence[str], run_dir: pathlib.Path) -> None:
        self.config = config
        self.count = config.effective_workers
        self.run_dir = run_dir
        self._argv = list(argv)
        self._env = dict(os.environ)
        if config.cluster_secret is None and config.token is None:
            # Every worker must check the session tokens its siblings mint.
            self._env[SECRET_ENV] = new_secret().hex()
        self._workers = [_WorkerProcess(k) for k in range(self.count)]
        self._stopping = asyncio.Event()

    async def start(self, ports: Sequence[str]) -> None:
        """Start every worker and wait until each is serving; ``WorkerFailed`` otherwise."""
        self._argv += [*ports, "--workers", str(self.count)]
        try:
            async with asyncio.TaskGroup() as starting:
                for worker in self._workers:
                    starting.create_task(self._start(worker))
        except* WorkerFailed as failed:
            raise failed.exceptions[0] from None

    async def _start(self, worker: _WorkerProcess) -> None:
        env = {**self._env, INDEX_ENV: str(worker.index), RUN_DIR_ENV: str(self.run_dir)}
        worker.started = time.monotonic()
        worker.process = process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "media",
            *self._argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        if self._stopping.is_set():
            worker.signal(signal.SIGTERM)
        assert process.stdout is not None
        while (line := await process.stdout.readline()) and line.strip() != b"serving":
            pass  # not ours: the worker's own output goes to stderr
        if not line:
            code = await process.wait()
            raise WorkerFailed(f"worker {worker.index} exited ({describe_exit(code)}) at start")
        logger.info("worker %d serving (pid %d)", worker.index, process.pid)

    async def supervise(self) -> bool:
        """Restart each worker that dies until ``stop``, then wait for every one to exit;
        whether each exited cleanly."""
        codes = await asyncio.gather(*(self._keep_running(worker) for worker in self._workers))
        return all(code == 0 for code in codes)

    async def _keep_running(self, worker: _WorkerProcess) -> int:
        while True:
            assert worker.process is not None
            code = await worker.process.wait()
            if self._stopping.is_set():
                return code
            delay = worker.restart_delay()
            logger.warning(
                "worker %d exited (%s); restarting it%s; its sessions are lost (NODE_LOST)",
                worker.index,
                describe_exit(code),
                f" in {delay:g} s" if delay else "",
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return 0
            try:
                await self._start(worker)
            except WorkerFailed as exc:
                logger.error("%s", exc)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Pass ``sig`` to every worker: the first drains them, a second skips the wait."""
        self._stopping.set()
        for worker in self._workers:
            worker.signal(sig)

    async def kill(self) -> None:
        """Kill every worker (one failed to start) and wait for them to exit."""
        self.stop(signal.SIGKILL)
        for worker in self._workers:
            if worker.process is not None:
                await worker.process.wait()


def describe_exit(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


def reserve_port(what: str, host: str, port: int) -> socket.socket:
    """Bind ``host:port`` with SO_REUSEPORT without listening: workers then bind it too."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    reservation = socket.socket(family, kind, proto)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    reservation.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        reservation.bind(address)
    except OSError as exc:
        reservation.close()
        raise CannotListen(what, host_port(host, port), why_bind_failed(exc)) from exc
    return reservation


async def supervise(config: Config, argv: Sequence[str]) -> int:
    """Run ``config.effective_workers`` workers until SIGINT or SIGTERM; the exit status."""
    count = config.effective_workers
    if config.udp_port is not None and config.udp_port + count - 1 > 65535:
        last = config.udp_port + count - 1
        print(
            f"hark serve: --udp-port with --workers {count} takes UDP ports up to {last}: "
            "over 65535",
            file=sys.stderr,
        )
        return 2
    with contextlib.ExitStack() as held:
        try:
            http = held.enter_context(reserve_port("HTTP", config.http_host, config.http_port))
            grpc = held.enter_context(reserve_port("gRPC", config.grpc_host, config.grpc_port))
            ports = ["--http-port", str(http.getsockname()[1])]
            ports += ["--grpc-port", str(grpc.getsockname()[1])]
            if config.metrics_port is not None:
                host, port = config.http_host, config.metrics_port
                metrics = held.enter_context(reserve_port("metrics", host, port))
                ports += ["--metrics-port", str(metrics.getsockname()[1])]
        except OSError as exc:
            print(f"hark serve: {exc}", file=sys.stderr)
            return 2
        run_dir = pathlib.Path(tempfile.mkdtemp(prefix="hark-"))
        held.callback(shutil.rmtree, run_dir, ignore_errors=True)
        supervisor = Supervisor(config, argv, run_dir)
        return await _run(supervisor, ports, config)
    return 2  # unreachable: ExitStack does not swallow exceptions


async def _run(supervisor: Supervisor, ports: list[str], config: Config) -> int:
    signals = asyncio.Queue[int]()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    try:
        await supervisor.start(ports)
    except WorkerFailed as exc:
        print(f"hark serve: {exc}", file=sys.stderr)
        await supervisor.kill()
        return 2
    http_port, grpc_port = int(ports[1]), int(ports[3])
    logger.info(
        "hark serving with %d workers: HTTP on %s:%d, gRPC on %s:%d%s, public URL %s, run dir %s",
        supervisor.count,
        config.http_host,
        http_port,
        config.grpc_host,
        grpc_port,
        f", metrics on :{ports[5]}" if len(ports) > 4 else "",
        config.base_url(http_port, secure=config.http_tls_cert is not None),
        supervisor.run_dir,
    )
    supervising = asyncio.create_task(supervisor.supervise(), name="hark-supervise")
    try:
        first = await signals.get()
        logger.info("%s: draining every worker", signal.Signals(first).name)
        supervisor.stop()
        while not supervising.done():
            second = asyncio.create_task(signals.get())
            await asyncio.wait({supervising, second}, return_when=asyncio.FIRST_COMPLETED)
            if second.done():
                supervisor.stop(second.result())
            await cancel_and_wait(second)
        clean = supervising.result()
    finally:
        await cancel_and_wait(supervising)
    logger.info("hark stopped")
    return 0 if clean else 1
