"""A real Redis for the cluster tests (Debian's redis-server on a free loopback port, nothing
persisted) and Hark nodes joined to it (``hark serve`` processes)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pathlib
import shutil
import signal
import socket
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.support import HarkProcess

REDIS_SERVER = "/usr/bin/redis-server"
SECRET = "cluster-tests-shared-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """redis-server on 127.0.0.1:``port`` with no persistence; ``stop`` and ``start`` again
    give the same address and an empty database, like a Redis that restarted."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> Redis:
        return Redis.from_url(self.url, decode_responses=True)

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            REDIS_SERVER,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.folder),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        async with self.client() as redis, asyncio.timeout(10):
            while True:
                with contextlib.suppress(RedisError, OSError):
                    if await redis.ping():
                        return
                assert self.proc.returncode is None, "redis-server exited at start"
                await asyncio.sleep(0.05)  # polling until it listens

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await self.proc.wait()
        self.proc = None


@contextlib.asynccontextmanager
async def running_redis(folder: pathlib.Path) -> AsyncIterator[RedisServer]:
    if not os.path.exists(REDIS_SERVER) and shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing (Debian package redis-server)")
        pytest.skip("redis-server is missing (Debian package redis-server)")
    server = RedisServer(folder)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


class HarkNode(HarkProcess):
    """A ``hark serve`` process joined to ``redis`` as node ``node_id``, media on loopback;
    its stderr is read all along, so a chatty node never blocks on a full pipe."""

    def __init__(self, redis: RedisServer, node_id: str, *args: str) -> None:
        super().__init__(
            "--redis-url", redis.url,
            "--node-id", node_id,
            "--cluster-secret", SECRET,
            "--ice-address", "127.0.0.1",
            "--max-loop-lag-ms", "0",
            *args,
        )  # fmt: skip
        self.node_id = node_id
        self._reader: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    async def __aenter__(self) -> HarkNode:
        await super().__aenter__()
        self._reader = asyncio.create_task(self._read_log())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await super().__aexit__(*exc)
        if self._reader is not None:
            await self._reader
            self._reader = None

    async def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            self.log.append(line.decode())

    def kill(self) -> None:
        """kill -9: no goodbye to anyone."""
        assert self.proc is not None
        self.proc.kill()
