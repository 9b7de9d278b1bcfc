"""This process as a node of a Redis cluster (``--redis-url``): its directory (membership, load
and session ids in Redis), its router, and where its new sessions go."""

from __future__ import annotations

import logging
import time
import urllib.parse
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp.typedefs import Middleware

from media.cluster.directory import (
    DRAINING,
    SERVING,
    CpuMeter,
    NodeDirectory,
    NodeRecord,
    member_name,
)
from media.cluster.grpc_forward import ForwardingService
from media.cluster.http_forward import HttpForwarder
from media.cluster.node_router import NodeRouter
from media.cluster.placing import PlacingService, WhipPlacement
from media.cluster.routing import Router
from media.config import Config, is_loopback
from media.core.events import SessionEvent
from media.core.placement import NodeLoad
from media.core.session import Session
from media.server.session_table import SessionTable

logger = logging.getLogger(__name__)


def _is_loopback_address(address: str) -> bool:
    host = urllib.parse.urlsplit(address if "://" in address else f"//{address}").hostname
    return host is not None and is_loopback(host)


class Addresses(Protocol):
    """Where this node's surfaces are reached, known once its ports are bound."""

    @property
    def base_url(self) -> str: ...

    @property
    def grpc_target(self) -> str: ...


class ClusterNode:
    """Built by the composition root when ``--redis-url`` is set; ``start`` once the ports are
    bound (the record names them), ``close`` at stop.

    ``router`` is this node's ``NodeRouter``; the process's router (the one the placement
    middleware and servicer are given) may wrap it, as the workers' router does.
    """

    @classmethod
    def join(
        cls,
        config: Config,
        sessions: SessionTable,
        addresses: Addresses,
        on_change: Callable[[], None],
    ) -> ClusterNode | None:
        """The node, when ``--redis-url`` makes this process one; ``on_change``: the node
        became unable (or able again) to take new sessions."""
        if config.redis_url is None:
            return None
        return cls(config, config.redis_url, sessions, addresses, on_change)

    def __init__(
        self,
        config: Config,
        redis_url: str,
        sessions: SessionTable,
        addresses: Addresses,
        on_change: Callable[[], None],
    ) -> None:
        self._config = config
        self._sessions = sessions
        self._addresses = addresses
        self._cpu = CpuMeter()
        self._started = time.time()
        owner = sessions.owner
        self.directory = NodeDirectory(
            redis_url,
            member_name(owner.node, owner.worker, config.effective_workers),
            ttl=config.node_ttl,
            retention=config.closed_retention,
            describe=self.record,
            session_ids=lambda: [live.id for live in sessions.all()],
            on_change=on_change,
        )
        self.router = NodeRouter(self.directory, sessions.owner, self.local_load)

    @property
    def detached(self) -> bool:
        """Redis out of reach for --node-ttl: the cluster no longer knows this node."""
        return self.directory.detached

    def record(self) -> NodeRecord:
        """This node's record as of now (what ``hark:node:{id}`` holds)."""
        sessions, governor = self._sessions, self._sessions.governor
        return NodeRecord(
            id=sessions.owner.node,
            public_url=self._addresses.base_url,
            grpc_address=self._config.grpc_public_address or self._addresses.grpc_target,
            state=DRAINING if sessions.draining else SERVING,
            sessions=sessions.live_count(),
            capacity=self._config.max_sessions,
            cpu=self._cpu.read(),
            loop_lag_ms=round(governor.mean_lag(sessions.clock.now()) * 1000, 1),
            overloaded=governor.overloaded,
            workers=self._config.effective_workers,
            updated=round(time.time(), 3),
            started=self._started,
            worker=sessions.owner.worker,
        )

    def local_load(self) -> NodeLoad:
        sessions = self._sessions
        return NodeLoad(
            sessions.owner.node,
            serving=not sessions.draining and not self.detached,
            sessions=sessions.live_count(),
            capacity=self._config.max_sessions,
            overloaded=not sessions.governor.may_admit(sessions.clock.now()),
        )

    def whip_middleware(self, router: Router, forwarder: HttpForwarder) -> Middleware:
        """Places ``POST /whip`` with ``router`` (proxied by ``forwarder``)."""
        whip = WhipPlacement(
            router,
            forwarder,
            server_token=self._config.token,
            redirect=self._config.whip_redirect,
            detached=lambda: self.detached,
            listed=self.directory.listed,
            ttl=self._config.node_ttl,
        )
        return whip.middleware

    def placing_servicer(self, service: ForwardingService, router: Router) -> Any:
        """``service`` with ``CreateSession`` placed by ``router`` (forwarded by ``service``)."""
        return PlacingService(
            service,
            router,
            detached=lambda: self.detached,
            listed=self.directory.listed,
            ttl=self._config.node_ttl,
        )

    def start(self) -> None:
        self._warn_of_local_addresses()
        self._sessions.observers.append(self._on_event)
        self.directory.start()

    def _warn_of_local_addresses(self) -> None:
        """Other nodes dial what this node advertises: a loopback address only works when
        every node runs on this host."""
        record = self.record()
        for flag, value, advertised in (
            ("--public-url", self._config.public_url, record.public_url),
            ("--grpc-public-address", self._config.grpc_public_address, record.grpc_address),
        ):
            if value is None and _is_loopback_address(advertised):
                logger.warning(
                    "node %s advertises %s to the cluster; set %s where other hosts reach it",
                    record.id,
                    advertised,
                    flag,
                )

    def wake(self) -> None:
        """Write this node's record now (it started draining)."""
        self.directory.wake()

    async def close(self) -> None:
        await self.directory.close()

    def _on_event(self, event: SessionEvent, session: Session) -> None:
        if event.revision == 1:  # a new session: its id goes to Redis now, not at the next beat
            self.directory.wake()
