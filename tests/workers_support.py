"""``hark serve --workers N`` as a real process tree, for the tests: its ports, its run
directory, each worker's pid and private gRPC socket, and its log read as it comes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import re
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
from prometheus_client.parser import text_string_to_metric_families

from media.core.session_ids import owner_of
from media.v1 import media_pb2_grpc
from tests.support import Publisher, publish

NODE = "hark-test"
SERVING = re.compile(
    r"hark serving with (\d+) workers: HTTP on [\d.]+:(\d+), gRPC on [\d.]+:(\d+)"
    r"(?:, metrics on :(\d+))?, public URL .* run dir (\S+)"
)
WORKER_SERVING = re.compile(r"worker (\d+) serving \(pid (\d+)\)")


class HarkWorkers:
    """``hark serve --workers N``, read until every worker serves; killed, workers included,
    if a test leaves it running."""

    def __init__(self, *args: str, workers: int = 2, node: str = NODE) -> None:
        self.args = args
        self.count = workers
        self.node = node
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self.http_port = self.grpc_port = 0
        self.metrics_port: int | None = None
        self.run_dir = pathlib.Path()
        self.pids: dict[int, int] = {}
        self._new_line = asyncio.Condition()
        self._reader: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def metrics_url(self) -> str:
        port = self.http_port if self.metrics_port is None else self.metrics_port
        return f"http://127.0.0.1:{port}/metrics"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def private_grpc(self, worker: int) -> str:
        return f"unix:{self.run_dir / f'w{worker}.grpc.sock'}"

    async def __aenter__(self) -> HarkWorkers:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "media", "serve", "--http-port", "0", "--grpc-port", "0"),
            *("--workers", str(self.count), "--node-id", self.node, "--max-loop-lag-ms", "0"),
            *self.args,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._reader = asyncio.create_task(self._read())
        serving = await self.wait_for_log(SERVING, timeout=60)
        self.http_port, self.grpc_port = int(serving[2]), int(serving[3])
        self.metrics_port = int(serving[4]) if serving[4] else None
        self.run_dir = pathlib.Path(serving[5])
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := (await self.proc.stderr.readline()).decode():
            async with self._new_line:
                self.log.append(line)
                if match := WORKER_SERVING.search(line):
                    self.pids[int(match[1])] = int(match[2])
                self._new_line.notify_all()
        async with self._new_line:
            self._new_line.notify_all()

    async def wait_for_log(
        self, pattern: re.Pattern[str], *, after: int = 0, timeout: float = 30
    ) -> re.Match[str]:
        """The first log line from line ``after`` on that matches ``pattern``."""
        seen = after
        async with asyncio.timeout(timeout), self._new_line:
            while True:
                for line in self.log[seen:]:
                    if match := pattern.search(line):
                        return match
                seen = len(self.log)
                assert self._reader is not None
                if self._reader.done():
                    raise AssertionError(f"no {pattern.pattern!r} before exit:\n{self.text}")
                await self._new_line.wait()

    @property
    def text(self) -> str:
        return "".join(self.log)

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None and self._reader is not None
        async with asyncio.timeout(timeout):
            await self._reader
            return await self.proc.wait()

    async def __aexit__(self, *exc: object) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            for _ in range(2):  # the second signal skips the drain
                self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await self.wait(timeout=30)
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        for pid in self.pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


@contextlib.asynccontextmanager
async def private_stub(hark: HarkWorkers, worker: int) -> AsyncIterator[Any]:
    """A gRPC stub for one worker, through its private Unix socket."""
    async with grpc.aio.insecure_channel(hark.private_grpc(worker)) as channel:
        yield media_pb2_grpc.MediaServiceStub(channel)


def worker_of(session_id: str, node: str = NODE) -> int:
    owner = owner_of(session_id)
    assert owner is not None and owner.node == node, session_id
    return owner.worker


async def publish_on_every_worker(hark: HarkWorkers, at_most: int = 16) -> list[Publisher]:
    """Publish through the public port until each worker holds a session (the kernel spreads
    connections over the workers; ``at_most`` publishers all landing on one is 2**-15 likely)."""
    publishers: list[Publisher] = []
    while {worker_of(p.session_id, hark.node) for p in publishers} != set(range(hark.count)):
        assert len(publishers) < at_most, "every publisher landed on the same worker"
        publishers.append(await publish(hark.base_url))
    return publishers


async def scrape_text(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        assert response.status == 200
        return await response.text()


async def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = await scrape_text(url)
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
