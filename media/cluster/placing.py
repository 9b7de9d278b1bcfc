"""New sessions placed on another node: a WHIP POST proxied to it (or redirected with 307), a
CreateSession forwarded to it, and ``POST /whip/{id}`` taken to the node holding that session.

The node that receives the request asks the router where the session goes; a request that was
already placed (it carries ``X-Hark-Forwarded`` / ``x-hark-forwarded``) is always served where
it arrives, so two nodes with stale views of each other never pass a request back and forth.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final

import aiohttp
import grpc
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from media.cluster.routing import Elsewhere, Route, Router
from media.errors import CapacityExceeded, Unauthorized
from media.rpc.error_status import unary
from media.server.auth import SessionTokens, tokens_match
from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc
from media.web.request_bodies import bearer_token, read_text_body, require_content_type

logger = logging.getLogger(__name__)

FORWARDED_HEADER: Final = "X-Hark-Forwarded"
CLIENT_ADDRESS_HEADER: Final = "X-Hark-Client-Address"
FORWARDED_METADATA: Final = "x-hark-forwarded"
CLIENT_ADDRESS_METADATA: Final = "x-hark-client-address"
PROXY_TIMEOUT_S: Final = 30.0
UNREACHABLE_RETRY_AFTER_S: Final = 1
DETACHED_RETRY_AFTER_S: Final = 5
_NOT_PASSED_BACK: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-encoding",
        "date",
        "server",
    }
)


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
    the owner's endpoint; ``POST /whip/{id}`` of another node's session likewise."""

    def __init__(
        self,
        router: Router,
        *,
        tokens: SessionTokens,
        server_token: str | None,
        redirect: bool,
        detached: Callable[[], bool],
        listed: Callable[[str], Awaitable[None]],
        ttl: float,
        max_offer_bytes: int,
    ) -> None:
        self._listed = listed
        self._router = router
        self._tokens = tokens
        self._server_token = server_token
        self._redirect = redirect
        self._detached = detached
        self._ttl = ttl
        self._max_offer_bytes = max_offer_bytes
        self._http: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource
        path = resource.canonical if resource is not None else ""
        if request.method != "POST" or path not in ("/whip", "/whip/{id}"):
            return await handler(request)
        if FORWARDED_HEADER not in request.headers:
            target = self._target(request, path)
            if isinstance(target, Elsewhere):
                url = target.http_base + request.path
                if self._redirect:
                    raise web.HTTPTemporaryRedirect(url)
                return await self._proxy(request, url, target)
        response = await handler(request)
        if path == "/whip" and response.status == 201:  # a new session, created here
            await self._listed(response.headers["Location"].rsplit("/", 1)[-1])
        return response

    def _target(self, request: web.Request, path: str) -> Route:
        if path == "/whip/{id}":
            return self._router.route(request.match_info["id"])
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

    async def _proxy(self, request: web.Request, url: str, owner: Elsewhere) -> web.Response:
        require_content_type(request, "application/sdp")
        offer = await read_text_body(request, "SDP offer", self._max_offer_bytes)
        client = request.remote or "unknown"
        headers = {
            "Content-Type": "application/sdp",
            FORWARDED_HEADER: self._tokens.sign(client),
            CLIENT_ADDRESS_HEADER: client,
        }
        if "Authorization" in request.headers:
            headers["Authorization"] = request.headers["Authorization"]
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=PROXY_TIMEOUT_S), auto_decompress=False
            )
        try:
            async with self._http.post(
                url, data=offer.encode(), headers=headers, allow_redirects=False
            ) as upstream:
                body = await upstream.read()
                passed = _passed_back(upstream.headers, owner.http_base)
                return web.Response(status=upstream.status, body=body, headers=passed)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.warning("placing a session on node %s failed: %r", owner.owner.node, exc)
            raise CapacityExceeded(
                f"node {owner.owner.node}, chosen for this session, did not answer; try again",
                retry_after_s=UNREACHABLE_RETRY_AFTER_S,
            ) from exc


def _passed_back(upstream: Any, base: str) -> CIMultiDict[str]:
    """The owner's response headers for the client: ``Location``, ``ETag``, ``Link``s and the
    rest, without hop-by-hop ones and without CORS headers (this node adds its own)."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in upstream.items():
        lowered = name.lower()
        if lowered in _NOT_PASSED_BACK or lowered.startswith("access-control-"):
            continue
        if lowered == "location" and value.startswith("/"):
            value = base + value
        headers.add(name, value)
    return headers


class GrpcChannels:
    """One channel per other node's gRPC address, kept for reuse and closed at stop."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, target: str) -> media_pb2_grpc.MediaServiceAsyncStub:
        channel = self._channels.get(target)
        if channel is None:
            channel = self._channels[target] = grpc.aio.insecure_channel(target)
        return media_pb2_grpc.MediaServiceStub(channel)

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()


class PlacingService:
    """Wraps the MediaService servicer: a ``CreateSession`` placed on another node is forwarded
    to it (its answer, or its status with the details, passed back unchanged); every other
    method is the wrapped servicer's."""

    def __init__(
        self,
        inner: Any,
        router: Router,
        *,
        tokens: SessionTokens,
        channels: GrpcChannels,
        detached: Callable[[], bool],
        listed: Callable[[str], Awaitable[None]],
        ttl: float,
    ) -> None:
        self._listed = listed
        self._inner = inner
        self._router = router
        self._tokens = tokens
        self._channels = channels
        self._detached = detached
        self._ttl = ttl

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    @unary
    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Session:
        metadata = dict(context.invocation_metadata() or ())
        if FORWARDED_METADATA in metadata:
            return await self._create_here(request, context)
        refuse_when_detached(self._detached, self._ttl)
        target = self._router.place()
        if not isinstance(target, Elsewhere):
            return await self._create_here(request, context)
        client = context.peer()
        outgoing: tuple[tuple[str, str | bytes], ...] = (
            (FORWARDED_METADATA, self._tokens.sign(client)),
            (CLIENT_ADDRESS_METADATA, client),
        )
        if "authorization" in metadata:
            outgoing += (("authorization", metadata["authorization"]),)
        remaining = context.time_remaining()
        try:
            answer: pb.Session = await self._channels.stub(target.grpc_target).CreateSession(
                request, metadata=outgoing, timeout=remaining or PROXY_TIMEOUT_S
            )
        except grpc.aio.AioRpcError as exc:
            trailers = tuple(exc.trailing_metadata() or ())  # grpc.aio wants a tuple here
            await context.abort(exc.code(), exc.details() or "", trailers)
            raise AssertionError("abort returned") from exc
        return answer

    async def _create_here(
        self, request: pb.CreateSessionRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.Session:
        answer: pb.Session = await self._inner.CreateSession(request, context)
        await self._listed(answer.id)
        return answer
