"""New sessions placed on another node: a WHIP POST proxied to it (or redirected with 307), a
CreateSession forwarded to it, and ``POST /whip/{id}`` redirected to the node holding that session.

The node that receives the request asks the router where the session goes; a request that was
already placed (it carries ``X-Hark-Forwarded`` / ``x-hark-forwarded``) is always created where
it arrives, so two nodes with stale views of each other never pass a request back and forth. The
relaying itself is the forwarders': ``HttpForwarder.proxy`` and ``ForwardingService.relay_unary``
(one proxy, one channel cache, one forwarded-marker convention for the whole cluster).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Final

import grpc
from aiohttp import web
from aiohttp.typedefs import Handler

from media.cluster.forwarded import FORWARDED_HEADER, is_forwarded
from media.cluster.grpc_forward import ForwardingService
from media.cluster.http_forward import HttpForwarder
from media.cluster.routing import Elsewhere, Here, Router
from media.errors import CapacityExceeded, Unauthorized
from media.rpc.error_status import unary
from media.server.auth import tokens_match
from media.v1 import media_pb2 as pb
from media.web.request_bodies import bearer_token

DETACHED_RETRY_AFTER_S: Final = 5


def refuse_when_detached(detached: Callable[[], bool], ttl: float) -> None:
    if detached():
        raise CapacityExceeded(
            f"not taking new sessions: Redis (the cluster's directory) has been unreachable "
            f"for over {ttl:g} s (--node-ttl)",
            retry_after_s=DETACHED_RETRY_AFTER_S,
        )


class WhipPlacement:
    """An aiohttp middleware: ``POST /whip`` placed on another node is proxied to it (one 201
    whose ``Location`` is on the owner's public URL) or, with ``redirect``, answered 307 to
    the owner's endpoint; with ``redirect``, ``POST /whip/{id}`` of another node's session is
    answered 307 too (without it, the forwarder proxies it like any session URL)."""

    def __init__(
        self,
        router: Router,
        forwarder: HttpForwarder,
        *,
        server_token: str | None,
        redirect: bool,
        detached: Callable[[], bool],
        listed: Callable[[str], Awaitable[None]],
        ttl: float,
    ) -> None:
        self._router = router
        self._forwarder = forwarder
        self._server_token = server_token
        self._redirect = redirect
        self._detached = detached
        self._listed = listed
        self._ttl = ttl

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else ""
        if request.method != "POST" or path not in ("/whip", "/whip/{id}"):
            return await handler(request)
        placed_already = FORWARDED_HEADER in request.headers
        if path == "/whip/{id}" and self._redirect and not placed_already:
            route = self._router.route(request.match_info["id"])
            if isinstance(route, Elsewhere) and route.http_socket is None:
                raise web.HTTPTemporaryRedirect(route.http_base + request.path)
        if path != "/whip":
            return await handler(request)
        target = Here() if placed_already else self._place(request)
        if isinstance(target, Elsewhere):
            if self._redirect:
                raise web.HTTPTemporaryRedirect(target.http_base + request.path)
            unreachable = f"node {target.owner.node}, chosen for this session, did not answer"
            return await self._forwarder.proxy(request, target, unreachable)
        response = await handler(request)
        if response.status == 201:  # a new session, created here
            await self._listed(response.headers["Location"].rsplit("/", 1)[-1])
        return response

    def _place(self, request: web.Request) -> Here | Elsewhere:
        self._authorize(request)
        refuse_when_detached(self._detached, self._ttl)
        return self._router.place()

    def _authorize(self, request: web.Request) -> None:
        if self._server_token is None:
            return
        given = bearer_token(request)
        if given is None:
            raise Unauthorized("missing bearer token: send Authorization: Bearer <token>")
        if not tokens_match(given, self._server_token):
            raise Unauthorized("wrong bearer token")


class PlacingService:
    """Wraps the forwarding servicer: a ``CreateSession`` placed on another node is relayed to
    it (its answer, or its status with the details, passed back unchanged); every other method
    is the wrapped servicer's."""

    def __init__(
        self,
        inner: ForwardingService,
        router: Router,
        *,
        detached: Callable[[], bool],
        listed: Callable[[str], Awaitable[None]],
        ttl: float,
    ) -> None:
        self._inner = inner
        self._router = router
        self._detached = detached
        self._listed = listed
        self._ttl = ttl

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @unary
    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Session:
        if not is_forwarded(context.invocation_metadata() or ()):
            refuse_when_detached(self._detached, self._ttl)
            target = self._router.place()
            if isinstance(target, Elsewhere):
                placed: pb.Session = await self._inner.relay_unary(
                    "CreateSession", target, request, context
                )
                return placed
        answer: pb.Session = await self._inner.CreateSession(request, context)
        await self._listed(answer.id)
        return answer
