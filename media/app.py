"""Composition root: the registry, the HTTP app and the gRPC server; start, drain and stop."""

from __future__ import annotations

import logging
import socket

import grpc
from aiohttp import web
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from media.clock import Clock
from media.config import Config
from media.grpc_service import SERVICE_NAME, BearerAuth, MediaService
from media.http import make_middlewares
from media.registry import Registry
from media.session import Timeouts
from media.v1 import media_pb2_grpc
from media.whip import WhipHandlers

logger = logging.getLogger(__name__)


class HarkApp:
    """One Hark server: ``start()`` binds both ports, ``stop()`` closes every session."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.clock = Clock()
        self.registry = Registry(
            self.clock,
            timeouts=Timeouts(config.ready_timeout, config.media_timeout, config.session_ttl),
            closed_retention=config.closed_retention,
            max_sessions=config.max_sessions,
            event_retention=config.event_retention,
            speech=config.speech_settings(),
        )
        self.http_port = 0
        self.grpc_port = 0
        self._runner: web.AppRunner | None = None
        self._grpc: grpc.aio.Server | None = None
        self._health = HealthServicer()
        self._started = False

    @property
    def base_url(self) -> str:
        return self.config.base_url(self.http_port)

    @property
    def grpc_target(self) -> str:
        host = self.config.grpc_host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return f"[{host}]:{self.grpc_port}" if ":" in host else f"{host}:{self.grpc_port}"

    def build_http_app(self) -> web.Application:
        app = web.Application(
            middlewares=make_middlewares("*"),
            client_max_size=1024 * 1024,
        )
        whip = WhipHandlers(
            self.registry,
            server_token=self.config.token,
            ice_servers=self.config.ice_servers,
            base_url=lambda: self.base_url,
            jitter_frames=self.config.jitter_frames,
        )
        whip.add_routes(app)
        return app

    async def start(self) -> None:
        self.registry.start()
        await self._start_http()
        await self._start_grpc()
        self._started = True
        logger.info(
            "hark serving: HTTP on %s:%d, gRPC on %s:%d, public URL %s",
            self.config.http_host,
            self.http_port,
            self.config.grpc_host,
            self.grpc_port,
            self.base_url,
        )

    async def _start_http(self) -> None:
        self._runner = web.AppRunner(self.build_http_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.http_host, self.config.http_port)
        await site.start()
        server = site._server
        assert server is not None
        sockets: list[socket.socket] = list(server.sockets)  # type: ignore[attr-defined]
        self.http_port = int(sockets[0].getsockname()[1])

    async def _start_grpc(self) -> None:
        interceptors = [BearerAuth(self.config.token)] if self.config.token else []
        server = grpc.aio.server(
            interceptors=interceptors,
            options=[("grpc.so_reuseport", 0)],
        )
        service = MediaService(
            self.registry,
            base_url=lambda: self.base_url,
            heartbeat_interval=self.config.heartbeat_interval,
        )
        media_pb2_grpc.add_MediaServiceServicer_to_server(service, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            [
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        address = f"{self.config.grpc_host}:{self.config.grpc_port}"
        if ":" in self.config.grpc_host:
            address = f"[{self.config.grpc_host}]:{self.config.grpc_port}"
        self.grpc_port = server.add_insecure_port(address)
        await server.start()
        self._grpc = server
        for service_name in ("", SERVICE_NAME):
            await self._health.set(service_name, health_pb2.HealthCheckResponse.SERVING)

    async def stop(self) -> None:
        """Close every session with SHUTDOWN (watchers are told), then stop both servers."""
        for service_name in ("", SERVICE_NAME):
            await self._health.set(service_name, health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.registry.shutdown()
        if self._grpc is not None:
            await self._grpc.stop(grace=2.0)
            self._grpc = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._started:
            logger.info("hark stopped")
            self._started = False
