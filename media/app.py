"""Composition root: the session table, the HTTP app, the gRPC server and metrics; start, drain,
stop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import signal
import sys
import time
from collections.abc import Callable, Sequence

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler
from aiohttp.web_urldispatcher import AbstractResource
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from media.aio import cancel_and_wait
from media.audio.opus_decoder import libopus
from media.binding import (
    CannotListen,
    check_can_bind,
    grpc_cluster_credentials,
    grpc_server_credentials,
    host_port,
    http_tls_context,
    why_bind_failed,
)
from media.cli.main import main as cli_main
from media.cluster.fanout import ClusterService
from media.cluster.grpc_forward import ForwardingService, Upstreams
from media.cluster.http_forward import HttpForwarder
from media.cluster.node import ClusterNode
from media.cluster.routing import Router
from media.cluster.supervisor import supervise
from media.cluster.workers import WorkerSpec, process_role
from media.config import Config
from media.core.clock import Clock
from media.core.events import SessionEvent, SessionState, StateChanged
from media.core.load_governor import LoadGovernor
from media.core.rate_limiter import RateLimiter
from media.core.session import Session, Timeouts
from media.core.session_ids import Owner
from media.metrics import Metrics
from media.rpc.interceptors import BearerAuth, MalformedRequests, RpcMetrics
from media.rpc.service import SERVICE_NAME
from media.rtc import compat
from media.rtc.compat import (
    keep_consent_through_stalls,
    restrict_host_candidates,
)
from media.rtc.ice_plan import IcePlan
from media.server.auth import SessionTokens, secret_for
from media.server.session_table import SessionTable
from media.v1 import media_pb2_grpc
from media.web.connection_limit import ConnectionLimit
from media.web.error_responses import ClientProtocolErrors
from media.web.events import SessionEventsHandlers
from media.web.middleware import cors_on_prepare, make_middlewares
from media.web.probes import ProbeHandlers
from media.web.request_bodies import BODY_TIMEOUT
from media.web.sdk_files import add_sdk_routes
from media.web.whep import WhepHandlers
from media.web.whip import WhipHandlers

logger = logging.getLogger(__name__)

STATIC = pathlib.Path(__file__).parent / "static"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check_receive_path(lost: Sequence[compat.Hook]) -> None:
    """Refuse to start when publishers could not be heard: Hark decodes their audio with libopus
    (``OpusUnavailable``) from the packets ``compat.take_rtp_packets`` takes."""
    libopus()
    if any(hook.name == "packet sink" for hook in lost):
        raise RuntimeError("this aiortc keeps its RTP packets out of reach (see above)")


class HarkApp:
    """One Hark server: ``start()`` binds the ports, ``drain()`` then ``stop()`` wind it down."""

    def __init__(
        self, config: Config, router: Router | None = None, worker: WorkerSpec | None = None
    ) -> None:
        config = worker.config_for(config) if worker is not None else config
        self.config = config
        self.tokens = SessionTokens(secret_for(config.cluster_secret or config.token))
        self.clock = Clock()
        self.metrics = Metrics()
        self.metrics.max_sessions.set(config.max_sessions)
        self.sessions = SessionTable(
            self.clock,
            timeouts=Timeouts(config.ready_timeout, config.media_timeout, config.session_ttl),
            closed_retention=config.closed_retention,
            max_sessions=config.max_sessions,
            event_retention=config.event_retention,
            speech=config.speech_settings(),
            metrics=self.metrics,
            max_watchers=config.max_watchers,
            max_players=config.max_players_per_session,
            max_playback_queue_ms=int(config.max_playback_queue_s * 1000),
            governor=LoadGovernor(config.max_loop_lag_ms / 1000),
            owner=Owner(config.effective_node_id, worker.index if worker is not None else 0),
            tokens=self.tokens,
            reorder_frames=config.jitter_frames,
        )
        self.metrics.watch_sessions(lambda: (live.session for live in self.sessions.all()))
        self.metrics.watch_playback_queues(
            lambda: (live.voice.queue for live in self.sessions.all() if not live.closed)
        )
        self.http_port = 0
        self.grpc_port = 0
        self.metrics_port: int | None = None
        self._runners: list[web.AppRunner] = []
        self._listeners: list[asyncio.Server] = []
        self._connections = ConnectionLimit(
            config.max_connections_per_ip,
            self.metrics.http_connections_refused.inc,
            total=config.max_connections,
        )
        self._grpc: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._health_dirty = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._undo_host_restriction: Callable[[], None] | None = None
        drops = self.metrics.udp_mux_dropped
        self.ice_plan = IcePlan(config, lambda cause: drops.labels(cause).inc())
        self.metrics.udp_mux_entries.set_function(self.ice_plan.entries)
        self._protocol_errors = ClientProtocolErrors()
        self._started = False
        self._whip_posts: set[AbstractResource | None] = set()
        self.cluster = ClusterNode.join(config, self.sessions, self, self._health_dirty.set)
        nodes = self.cluster.router if self.cluster is not None else None
        self.role = process_role(worker, self.sessions, lambda: self.base_url, nodes)
        # Where session-scoped requests go; replaceable until start().
        self.router: Router = router or self.role.router
        self.upstreams = Upstreams(grpc_cluster_credentials(config))
        self.http_forwarder = HttpForwarder(self.router, self.tokens)  # rebuilt with the app

    @property
    def base_url(self) -> str:
        return self.config.base_url(self.http_port, secure=self.config.http_tls_cert is not None)

    @property
    def grpc_target(self) -> str:
        host = self.config.grpc_host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return f"[{host}]:{self.grpc_port}" if ":" in host else f"{host}:{self.grpc_port}"

    @property
    def grpc_address(self) -> str:
        """The gRPC address this process advertises as its sessions' owner."""
        return self.config.grpc_public_address or self.grpc_target

    @property
    def ready(self) -> bool:
        """Takes new sessions: not draining, below --max-sessions, not overloaded."""
        return (
            not self.sessions.draining
            and self.sessions.live_count() < self.config.max_sessions
            and not self.sessions.governor.overloaded
            and not (self.cluster is not None and self.cluster.detached)
        )

    # HTTP

    def build_http_app(self) -> web.Application:
        limiter = None
        if self.config.rate_limit > 0:
            limiter = RateLimiter(self.config.rate_limit, self.config.rate_burst)
        middlewares = make_middlewares(self.config.effective_cors_origins, self.metrics, limiter)
        forwarder = self.http_forwarder = HttpForwarder(self.router, self.tokens)
        placing = [self.cluster.whip_middleware(self.router, forwarder)] if self.cluster else []
        inner = [self._time_whip_post, *placing, forwarder.forward]
        app = web.Application(
            middlewares=[forwarder.trust_forwarded, *middlewares, *inner],
            client_max_size=1024 * 1024,
        )
        app[BODY_TIMEOUT] = self.config.http_body_timeout
        app.on_response_prepare.append(cors_on_prepare(self.config.effective_cors_origins))
        whip = WhipHandlers(
            self.sessions,
            server_token=self.config.token,
            ice_servers=self.config.ice_servers,
            base_url=lambda: self.base_url,
            max_offer_bytes=self.config.max_offer_bytes,
            max_m_lines=self.config.max_m_lines,
            absolute_location=self.cluster is not None,
        )
        whip.add_routes(app)
        self._whip_posts = {
            route.resource for route in app.router.routes() if route.method == "POST"
        }
        WhepHandlers(
            self.sessions,
            authorize=whip.authorize_session,
            ice_servers=self.config.ice_servers,
            media_timeout=self.config.player_timeout,
            connect_timeout=self.config.ready_timeout,
            max_offer_bytes=self.config.max_offer_bytes,
            max_m_lines=self.config.max_m_lines,
            location_base=whip.location_base,
        ).add_routes(app)
        SessionEventsHandlers(
            self.sessions,
            authorize=whip.authorize_session,
            base_url=lambda: self.base_url,
            heartbeat_interval=self.config.heartbeat_interval,
            wait_limit=self.config.ready_timeout,
        ).add_routes(app)
        app.router.add_get("/", self._demo_page)
        app.router.add_static("/static", STATIC, append_version=True)
        add_sdk_routes(app)
        cluster = self.cluster
        detached = (lambda: cluster.detached) if cluster is not None else None
        ProbeHandlers(self.sessions, self.config, detached).add_routes(app)
        if self.config.metrics_port is None:
            app.router.add_get("/metrics", self._metrics)
        return app

    async def _demo_page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC / "index.html")

    @web.middleware
    async def _time_whip_post(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method != "POST" or request.match_info.route.resource not in self._whip_posts:
            return await handler(request)
        started = time.perf_counter()
        response = await handler(request)
        if response.status == 201:
            self.metrics.whip_post_duration.observe(time.perf_counter() - started)
        return response

    async def _metrics(self, request: web.Request) -> web.Response:
        await self.sessions.read_receiver_stats()
        response = web.Response(
            body=await self.role.metrics(self.metrics.exposition(), request.headers)
        )
        response.content_type = "text/plain"
        response.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return response

    async def _serve_http(self, app: web.Application, port: int, what: str = "HTTP") -> int:
        """Serve ``app`` through aiohttp's protocol behind the per-address connection bound.

        aiohttp closes a connection that has not delivered a request's headers within its
        keep-alive timeout, counted from the connection's start or the previous response, which
        makes that timeout --http-header-timeout. What a handler leaves of a body is read and
        dropped for at most --http-body-timeout. Bodies are never decoded (see read_text_body).
        """
        runner = web.AppRunner(
            app,
            access_log=None,
            keepalive_timeout=self.config.http_header_timeout,
            lingering_time=self.config.http_body_timeout,
            auto_decompress=False,
        )
        await runner.setup()
        self._runners.append(runner)
        assert runner.server is not None
        tls = http_tls_context(self.config)
        host = self.config.http_host
        try:
            listener = await asyncio.get_running_loop().create_server(
                self._connections.guard(runner.server),
                host,
                port,
                ssl=tls,
                ssl_handshake_timeout=self.config.http_header_timeout if tls else None,
                reuse_address=True,
                reuse_port=self.role.shares_ports,
            )
        except OSError as exc:
            raise CannotListen(what, host_port(host, port), why_bind_failed(exc)) from exc
        self._listeners.append(listener)
        self._listeners += await self.role.listen_privately(runner.server, what)
        return int(listener.sockets[0].getsockname()[1])

    # gRPC

    async def _start_grpc(self) -> None:
        interceptors: list[grpc.aio.ServerInterceptor] = [RpcMetrics(self.metrics)]
        if self.config.token:
            interceptors.append(BearerAuth(self.config.token))
        interceptors.append(MalformedRequests())  # innermost: after auth, before decoding
        server = grpc.aio.server(interceptors=interceptors, options=self.role.grpc_options)
        service = ClusterService(
            self.sessions,
            base_url=lambda: self.base_url,
            heartbeat_interval=self.config.heartbeat_interval,
            grpc_address=lambda: self.grpc_address,
            router=self.router,
            channels=self.upstreams,
        )
        forwarding = ForwardingService(service, self.router, self.tokens, self.upstreams)
        servicer: media_pb2_grpc.MediaServiceServicer = forwarding
        if self.cluster is not None:
            servicer = self.cluster.placing_servicer(forwarding, self.router)
        media_pb2_grpc.add_MediaServiceServicer_to_server(servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection(
            [SERVICE_NAME, health_name, reflection.SERVICE_NAME], server
        )
        host, port = self.config.grpc_host, self.config.grpc_port
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        credentials = grpc_server_credentials(self.config)
        check_can_bind("gRPC", host, port, reuse_port=self.role.shares_ports)
        try:
            if credentials is None:
                self.grpc_port = server.add_insecure_port(address)
            else:
                self.grpc_port = server.add_secure_port(address, credentials)
        except RuntimeError as exc:  # grpc says only that binding failed, never why
            reason = "the address is in use, or not one of this machine's"
            raise CannotListen("gRPC", address, reason) from exc
        self.role.add_private_grpc_port(server)
        await server.start()
        self._grpc = server

    # health

    def _on_event(self, event: SessionEvent, session: Session) -> None:
        payload = event.payload
        if isinstance(payload, StateChanged) and payload.state in (
            SessionState.NEW,
            SessionState.CLOSED,
        ):
            self._health_dirty.set()

    def _on_loop_lag(self, lag_s: float) -> None:
        governor = self.sessions.governor
        now = self.clock.now()
        if governor.observe(now, lag_s):
            self._health_dirty.set()
            if governor.overloaded:
                logger.warning("%s", self.sessions.overload_detail())
            else:
                logger.warning("load back under --max-loop-lag-ms: taking new sessions again")
        self.metrics.overloaded.set(governor.overloaded)
        self.metrics.loop_lag_mean.set(governor.mean_lag(now))

    async def _report_health(self) -> None:
        serving: int | None = None
        while True:
            await self._health_dirty.wait()
            self._health_dirty.clear()
            status = SERVING if self.ready else NOT_SERVING
            if status != serving:
                serving = status
                for name in ("", SERVICE_NAME):
                    await self._health.set(name, status)

    # lifecycle

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        lost = await compat.check()
        check_receive_path(lost)
        if self.config.ice_addresses:
            self._undo_host_restriction = restrict_host_candidates(self.config.ice_addresses)
        if not keep_consent_through_stalls():
            logger.warning(
                "this aioice checks ICE consent its own way: event-loop stalls of 0.5 s can "
                "close live sessions (aioice logs 'Consent to send expired')"
            )
        await self.ice_plan.start({hook.name for hook in lost})
        logging.getLogger("aiohttp.server").addFilter(self._protocol_errors)
        self.sessions.observers.append(self._on_event)
        self.role.take_over()
        self.http_port = await self._serve_http(self.build_http_app(), self.config.http_port)
        if self.config.metrics_port is not None:
            metrics_app = web.Application()
            metrics_app.router.add_get("/metrics", self._metrics)
            self.metrics_port = await self._serve_http(
                metrics_app, self.config.metrics_port, "metrics"
            )
        await self._start_grpc()
        self._tasks = [
            asyncio.create_task(
                self.metrics.sample_loop_lag(self._on_loop_lag), name="hark-loop-lag"
            ),
            asyncio.create_task(self._report_health(), name="hark-health"),
        ]
        self._health_dirty.set()
        if self.cluster is not None:
            self.cluster.start()
        self._started = True
        if self.config.insecure_no_auth and self.config.token is None:
            logger.warning(
                "running WITHOUT authentication (--insecure-no-auth): anyone who can reach "
                "the HTTP and gRPC ports can publish, watch and control sessions"
            )
        logger.info(
            "hark %sserving: HTTP on %s:%d, gRPC on %s:%d%s, public URL %s",
            self.role.title,
            self.config.http_host,
            self.http_port,
            self.config.grpc_host,
            self.grpc_port,
            f", metrics on :{self.metrics_port}" if self.metrics_port is not None else "",
            self.base_url,
        )
        await self.role.serving()

    async def drain(self, timeout: float | None = None) -> None:
        """Refuse new sessions, report not ready, and wait for live sessions to end or time out."""
        timeout = self.config.drain_timeout if timeout is None else timeout
        self.sessions.drain()
        self._health_dirty.set()
        if self.cluster is not None:
            self.cluster.wake()  # DRAINING in Redis at once: no node places sessions here
        live = self.sessions.live_count()
        logger.info("draining: %d live sessions, waiting up to %g s", live, timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.sessions.wait_all_closed(), timeout)

    async def stop(self) -> None:
        """Close every session with SHUTDOWN (watchers are told), then stop the servers."""
        self.sessions.drain()
        for name in ("", SERVICE_NAME):
            await self._health.set(name, NOT_SERVING)
        await self.sessions.shutdown()
        await cancel_and_wait(*self._tasks)
        self._tasks = []
        if self.cluster is not None:
            await self.cluster.close()
        if self._grpc is not None:
            await self._grpc.stop(grace=2.0)
            self._grpc = None
        await self.upstreams.close()
        await self.http_forwarder.close()
        for listener in self._listeners:
            listener.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []
        for listener in self._listeners:
            await listener.wait_closed()
        self._listeners = []
        logging.getLogger("aiohttp.server").removeFilter(self._protocol_errors)
        if self._undo_host_restriction is not None:
            self._undo_host_restriction()
            self._undo_host_restriction = None
        self.ice_plan.stop()
        self.role.close()
        if self._started:
            logger.info("hark stopped")
            self._started = False


async def serve(config: Config, argv: Sequence[str] = ()) -> int:
    """``hark serve``: run until SIGINT or SIGTERM, drain, then close what is left; with
    ``--workers N`` (N > 1), supervise N workers (``hark serve`` with ``argv``) instead."""
    worker = WorkerSpec.from_env(config)
    if worker is None and config.effective_workers > 1:
        return await supervise(config, argv)
    app = HarkApp(config, worker=worker)
    signals = asyncio.Queue[int]()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, signals.put_nowait, sig)
    try:
        await app.start()
    except OSError as exc:
        print(f"hark serve: {exc}", file=sys.stderr)
        return 2
    first = await signals.get()
    logger.info("%s: draining; a second signal skips the wait", signal.Signals(first).name)
    drain = asyncio.create_task(app.drain())
    second = asyncio.create_task(signals.get())
    await asyncio.wait({drain, second}, return_when=asyncio.FIRST_COMPLETED)
    await cancel_and_wait(drain, second)
    logger.info("closing every remaining session with SHUTDOWN")
    await app.stop()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The ``hark`` command."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    return cli_main(arguments, lambda config: serve(config, arguments))
