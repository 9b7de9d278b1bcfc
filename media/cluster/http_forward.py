"""The session URLs at any member: ``/whip/{id}…``, ``/whep/{id}…``, the SSE mirror and
``/listening`` for a session another process owns are proxied to it.

Two aiohttp middlewares. ``trust_forwarded`` (outermost) gives a request forwarded by a member the
original client's address, when the member's signature checks, so rate limits and logs see that
client; a plain client's ``X-Hark-Client-Address`` is ignored. ``forward`` (innermost) proxies a
request for a session routed ``Elsewhere``: both bodies streamed, headers kept except hop-by-hop
ones, the status and ``Location``/``ETag``/``Link`` passed back unchanged (CORS headers are this
node's own). A lost owner's session is 404 naming ``NODE_LOST``, but its SSE mirror answers 200
with the CLOSED(NODE_LOST) event, since EventSource gives up on any other answer. A relayed SSE
stream outlives its owner connection, like a forwarded ``WatchSession``: re-routed and resumed
from the last event relayed, and closed with NODE_LOST once the owner is lost. A request a
member forwarded here goes at most to the sibling worker its id names
(``forwarded.may_forward``). Anything else goes to this process's handlers, which answer 404 for
a session they do not hold. ``proxy`` is the one proxy of the cluster: placement relays a
``POST /whip`` with it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Final

import aiohttp
from aiohttp import web
from aiohttp.typedefs import Handler
from multidict import CIMultiDict

from media.cluster.forwarded import (
    CLIENT_ADDRESS_HEADER,
    FORWARDED_HEADER,
    MAX_ADDRESS,
    may_forward,
    signature,
    trusted_client_address,
)
from media.cluster.grpc_forward import (
    WATCH_RETRY_FIRST_S,
    WATCH_RETRY_MAX_S,
    lost_error,
    lost_event,
)
from media.cluster.routing import Elsewhere, Lost, Route, Router
from media.logs import SessionLogger, session_logger
from media.server.auth import SessionTokens
from media.v1 import media_pb2 as pb
from media.web.events import requested_revision, sse_message

logger = logging.getLogger(__name__)

HOP_BY_HOP: Final = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
NOT_RELAYED: Final = HOP_BY_HOP | {FORWARDED_HEADER.lower(), CLIENT_ADDRESS_HEADER.lower()}
SKIP_AUTO_HEADERS: Final = ("Content-Type", "Accept-Encoding", "User-Agent")
CONNECT_TIMEOUT_S: Final = 5.0
UNREACHABLE_RETRY_AFTER_S: Final = 1
EVENTS_RESOURCE: Final = "/whip/{id}/events"


class HttpForwarder:
    """Owns one aiohttp client per owner socket (TCP, or a sibling's Unix socket)."""

    def __init__(self, router: Router, tokens: SessionTokens) -> None:
        self._router = router
        self._tokens = tokens
        self._clients: dict[str | None, aiohttp.ClientSession] = {}

    @property
    def clients(self) -> int:
        """How many upstream clients are open (one per owner socket ever proxied to)."""
        return len(self._clients)

    @web.middleware
    async def trust_forwarded(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        address = trusted_client_address(
            self._tokens,
            request.headers.get(FORWARDED_HEADER),
            request.headers.get(CLIENT_ADDRESS_HEADER),
        )
        if address is not None:
            request = request.clone(remote=address)
        return await handler(request)

    @web.middleware
    async def forward(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        session_id = request.match_info.get("id")
        if session_id is None or request.method == "OPTIONS" or len(session_id) > 128:
            return await handler(request)
        route = self._router.route(session_id)
        if isinstance(route, Lost) and _is_event_stream(request):
            return lost_events(request, session_id, route)
        if isinstance(route, Lost):
            raise lost_error(session_id, route)  # 404 naming NODE_LOST
        forwarded = FORWARDED_HEADER in request.headers
        if not isinstance(route, Elsewhere) or not may_forward(route, forwarded):
            return await handler(request)
        if _is_event_stream(request):
            return await _RelayedEvents(self, self._router, request, session_id).relay(route)
        return await self.proxy(request, route, _unreachable(session_id), session_id)

    async def open_upstream(
        self, request: web.Request, route: Elsewhere, headers: CIMultiDict[str] | None = None
    ) -> aiohttp.ClientResponse:
        """``request`` made at ``route``'s owner (with ``headers`` replacing some of its own)."""
        upstream_headers = self._upstream_headers(request)
        upstream_headers.update(headers or {})
        return await self._client(route.http_socket).request(
            request.method,
            route.http_base.rstrip("/") + request.raw_path,
            headers=upstream_headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False,
        )

    async def proxy(
        self, request: web.Request, route: Elsewhere, unreachable: str, session_id: str = ""
    ) -> web.StreamResponse:
        """``request`` relayed to ``route``'s owner and its answer streamed back; 503 saying
        ``unreachable`` (with ``Retry-After``) when the owner cannot be reached."""
        log: logging.Logger | SessionLogger = (
            session_logger(logger, session_id) if session_id else logger
        )
        try:
            upstream = await self.open_upstream(request, route)
        except (aiohttp.ClientError, OSError) as exc:
            # The exception's text may quote the URL, whose query can hold a token: not logged.
            log.warning(
                "cannot reach %s to forward %s: %s", route.owner, request.method, type(exc).__name__
            )
            return unreachable_response(unreachable)
        try:
            response = await answer_like(request, upstream)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientError) as exc:
            # The client or the owner went away mid-stream: the other side sees its peer go.
            upstream.close()
            log.debug("forwarding to %s ended: %s", route.owner, type(exc).__name__)
            return response
        except BaseException:
            upstream.close()  # the owner sees its client go: a streamed watch ends there too
            raise
        upstream.release()
        return response

    def _upstream_headers(self, request: web.Request) -> CIMultiDict[str]:
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if name.lower() not in NOT_RELAYED
        )
        address = (request.remote or "")[:MAX_ADDRESS]
        headers[FORWARDED_HEADER] = signature(self._tokens, address)
        headers[CLIENT_ADDRESS_HEADER] = address
        return headers

    def _client(self, unix_socket: str | None) -> aiohttp.ClientSession:
        if unix_socket not in self._clients:
            # No pool limit: each proxied SSE stream holds a connection for its lifetime, and
            # the owner's own limits (--max-connections, --max-watchers) are the ones that count.
            connector = (
                aiohttp.UnixConnector(path=unix_socket, limit=0)
                if unix_socket is not None
                else aiohttp.TCPConnector(limit=0)
            )
            self._clients[unix_socket] = aiohttp.ClientSession(
                connector=connector,
                auto_decompress=False,
                skip_auto_headers=SKIP_AUTO_HEADERS,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
            )
        return self._clients[unix_socket]

    async def close(self) -> None:
        clients, self._clients = self._clients, {}
        for client in clients.values():
            await client.close()


def _passed_back(name: str) -> bool:
    lowered = name.lower()
    return lowered not in HOP_BY_HOP and not lowered.startswith("access-control-")


def unreachable_response(unreachable: str) -> web.Response:
    return web.Response(
        status=503,
        text=f"{unreachable}; retry\n",
        headers={"Retry-After": str(UNREACHABLE_RETRY_AFTER_S)},
    )


def _unreachable(session_id: str) -> str:
    return f"the node holding session {session_id} cannot be reached"


async def answer_like(request: web.Request, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """The client's response, prepared with the owner's status and end-to-end headers."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
    for name, value in upstream.headers.items():
        if _passed_back(name):
            response.headers.add(name, value)
    await response.prepare(request)
    return response


def _is_event_stream(request: web.Request) -> bool:
    resource = request.match_info.route.resource
    return (
        request.method == "GET" and resource is not None and resource.canonical == EVENTS_RESOURCE
    )


def lost_events(request: web.Request, session_id: str, lost: Lost) -> web.Response:
    """The SSE mirror of a lost owner's session: its CLOSED(NODE_LOST) event, then the end."""
    message = lost_event(
        session_id, lost, requested_revision(request), pb.SESSION_STATE_UNSPECIFIED
    )
    return web.Response(
        body=sse_message(message),
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"},
    )


class _RelayedEvents:
    """One client's SSE mirror relayed from the owner whole event by whole event, so that a
    connection breaking mid-event relays none of it. When the owner cannot be reached, the client's
    stream stays open: re-routed, reconnected with ``Last-Event-ID`` the last event relayed (none
    lost or repeated), and ended with CLOSED(NODE_LOST) once the owner is found lost."""

    def __init__(
        self, forwarder: HttpForwarder, router: Router, request: web.Request, session_id: str
    ) -> None:
        self._forwarder = forwarder
        self._router = router
        self._request = request
        self._session_id = session_id
        self._revision = requested_revision(request)
        self._resume: CIMultiDict[str] = CIMultiDict()
        self._state: int = pb.SESSION_STATE_UNSPECIFIED
        self._response: web.StreamResponse | None = None
        self._log = session_logger(logger, session_id)

    async def relay(self, route: Elsewhere) -> web.StreamResponse:
        delay = WATCH_RETRY_FIRST_S
        current: Route = route
        while isinstance(current, Elsewhere):
            try:
                upstream = await self._forwarder.open_upstream(self._request, current, self._resume)
            except (aiohttp.ClientError, OSError) as exc:
                if self._response is None:
                    self._log.warning(
                        "cannot reach %s for events: %s", current.owner, type(exc).__name__
                    )
                    return unreachable_response(_unreachable(self._session_id))
                upstream = None
            if upstream is not None:
                relayed_before = self._revision
                try:
                    if await self._relay_from(upstream):
                        return await self._end()
                except ConnectionResetError:
                    return await self._end()  # the client went away
                finally:
                    upstream.close()
                if self._revision != relayed_before:
                    delay = WATCH_RETRY_FIRST_S
                self._log.debug("events relay from %s broke: reconnecting", current.owner)
            if self._client_gone():
                return await self._end()
            await asyncio.sleep(delay)
            delay = min(WATCH_RETRY_MAX_S, delay * 2)
            current = self._router.route(self._session_id)
        if isinstance(current, Lost):
            message = lost_event(self._session_id, current, self._revision, self._state)
            with contextlib.suppress(ConnectionResetError):  # the client went away meanwhile
                await self._write(sse_message(message))
        return await self._end()

    async def _relay_from(self, upstream: aiohttp.ClientResponse) -> bool:
        """Relays ``upstream``; True when the stream is over, False when it broke."""
        try:
            if self._response is None:
                self._response = await answer_like(self._request, upstream)
                if upstream.status != 200:
                    async for chunk in upstream.content.iter_any():
                        await self._response.write(chunk)
                    return True
            elif upstream.status != 200:
                return True  # the owner refuses now: the client reconnects and hears why
            block: list[bytes] = []
            while line := await upstream.content.readline():
                block.append(line)
                if line in (b"\n", b"\r\n"):
                    await self._write(b"".join(block))
                    self._note(block)
                    block = []
        except aiohttp.ClientError:
            return self._response is None or upstream.status != 200
        return True

    def _note(self, block: list[bytes]) -> None:
        for line in block:
            field, _, value = line.decode(errors="replace").rstrip("\r\n").partition(":")
            value = value.removeprefix(" ")
            if field == "id" and value.isdigit():
                self._revision = int(value)
                self._resume["Last-Event-ID"] = value
            elif field == "data":
                self._state = _state_of(value, self._state)

    async def _write(self, data: bytes) -> None:
        if self._response is not None:
            await self._response.write(data)

    def _client_gone(self) -> bool:
        transport = self._request.transport
        return transport is None or transport.is_closing()

    async def _end(self) -> web.StreamResponse:
        if self._response is None:  # the client went away before the owner answered
            return unreachable_response(_unreachable(self._session_id))
        with contextlib.suppress(ConnectionResetError):
            await self._response.write_eof()
        return self._response


def _state_of(data: str, known: int) -> int:
    """The session state an SSE event's JSON states, else ``known``."""
    try:
        event = json.loads(data)
        name = event.get("snapshot", {}).get("session", {}).get("state") or event.get(
            "stateChanged", {}
        ).get("state")
        return pb.SessionState.Value(name) if isinstance(name, str) else known
    except (ValueError, AttributeError):
        return known
