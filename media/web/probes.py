"""Operator endpoints: ``/healthz`` (the process answers), ``/readyz`` (it takes new sessions)."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from media.config import Config
from media.server.session_table import OVERLOAD_RETRY_AFTER_S, SessionTable


class ProbeHandlers:
    """``detached``: whether this node lost the cluster's directory (Redis) for ``--node-ttl``."""

    def __init__(
        self, sessions: SessionTable, config: Config, detached: Callable[[], bool] | None = None
    ) -> None:
        self._sessions = sessions
        self._max_sessions = config.max_sessions
        self._node_ttl = config.node_ttl
        self._detached = detached

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        if self._sessions.draining:
            return web.Response(status=503, text="draining\n", headers={"Retry-After": "5"})
        if self._detached is not None and self._detached():
            text = f"no Redis for over {self._node_ttl:g} s: out of the cluster\n"
            return web.Response(status=503, text=text, headers={"Retry-After": "5"})
        live = self._sessions.live_count()
        if live >= self._max_sessions:
            text = f"at capacity: {live} live sessions (--max-sessions {self._max_sessions})\n"
            return web.Response(status=503, text=text, headers={"Retry-After": "2"})
        if self._sessions.governor.overloaded:
            text = self._sessions.overload_detail() + "\n"
            retry_after = str(OVERLOAD_RETRY_AFTER_S)
            return web.Response(status=503, text=text, headers={"Retry-After": retry_after})
        return web.Response(text="ready\n")
