"""Several real Hark servers in this process, each routing to the others by node name.

The router is test wiring (what C's worker router and D's Redis directory provide in production):
an id naming another member is ``Elsewhere`` at that member's real gRPC and HTTP addresses, a node
in ``lost`` is ``Lost``, any other node ``Unknown``. ``Relay`` stands between two members when a
test needs to break their connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from media.app import HarkApp
from media.cluster.routing import Elsewhere, Here, Lost, Route, Unknown
from media.core.session_ids import Owner, owner_of
from tests.support import server_config

CLUSTER_SECRET = "in-process cluster secret, shared by every member"


@dataclasses.dataclass
class Members:
    apps: dict[str, HarkApp] = dataclasses.field(default_factory=dict)
    lost: set[str] = dataclasses.field(default_factory=set)
    grpc_targets: dict[str, str] = dataclasses.field(default_factory=dict)
    http_bases: dict[str, str] = dataclasses.field(default_factory=dict)

    def __getitem__(self, node: str) -> HarkApp:
        return self.apps[node]


class MembersRouter:
    def __init__(self, here: Owner, members: Members) -> None:
        self.here = here
        self.members = members

    def route(self, session_id: str) -> Route:
        owner = owner_of(session_id)
        if owner is None:
            return Unknown()
        if owner == self.here:
            return Here()
        if owner.node in self.members.lost:
            return Lost(owner)
        app = self.members.apps.get(owner.node)
        if app is None or owner.worker != 0:
            return Unknown()
        target = self.members.grpc_targets.get(owner.node, app.grpc_target)
        return Elsewhere(owner, target, self.members.http_bases.get(owner.node, app.base_url))

    def others(self, scope: str) -> list[Elsewhere]:
        return []

    def place(self) -> Here | Elsewhere:
        return Here()

    def lost(self) -> dict[str, Owner]:
        return {}


@contextlib.asynccontextmanager
async def in_process_cluster(
    *nodes: str, configs: dict[str, dict[str, Any]] | None = None, **overrides: Any
) -> AsyncIterator[Members]:
    """Members named ``nodes``, configured with ``overrides`` and their own ``configs[node]``."""
    members = Members()
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes:
            own = (configs or {}).get(node, {})
            settings = {"cluster_secret": CLUSTER_SECRET, **overrides, **own}
            app = HarkApp(server_config(node_id=node, **settings))
            app.router = MembersRouter(Owner(node), members)
            await app.start()
            stack.push_async_callback(app.stop)
            members.apps[node] = app
        yield members


class Relay:
    """A TCP relay to ``target`` on a loopback port; ``break_all`` resets what goes through it."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.Transport] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    @property
    def address(self) -> str:
        assert self._server is not None
        return f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._connected, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self.break_all()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def break_all(self) -> None:
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            writer.transport.abort()
            return
        for transport in (writer.transport, up_writer.transport):
            assert isinstance(transport, asyncio.Transport)
            self._transports.add(transport)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(_pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        sink.transport.abort()
