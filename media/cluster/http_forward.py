"""The session URLs at any member: ``/whip/{id}…``, ``/whep/{id}…``, the SSE mirror and
``/listening`` for a session another process owns are proxied to it.

Two aiohttp middlewares. ``trust_forwarded`` (outermost) gives a request forwarded by a member the
original client's address, when the member's signature checks, so rate limits and logs see that
client; a plain client's ``X-Hark-Client-Address`` is ignored. ``forward`` (innermost) proxies a
request for a session routed ``Elsewhere``: both bodies streamed, headers kept except hop-by-hop
ones, the status and ``Location``/``ETag``/``Link`` passed back unchanged (CORS headers are this
node's own). A lost owner's session is 404 naming ``NODE_LOST``. A request a member forwarded here
goes at most to the sibling worker its id names (``forwarded.may_forward``). Anything else goes to
this process's handlers, which answer 404 for a session they do not hold. ``proxy`` is the one
proxy of the cluster: placement relays a ``POST /whip`` with it too.
"""

from __future__ import annotations

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
from media.cluster.grpc_forward import lost_error
from media.cluster.routing import Elsewhere, Lost, Router
from media.logs import SessionLogger, session_logger
from media.server.auth import SessionTokens

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
        if isinstance(route, Lost):
            raise lost_error(session_id, route)  # 404 naming NODE_LOST
        forwarded = FORWARDED_HEADER in request.headers
        if not isinstance(route, Elsewhere) or not may_forward(route, forwarded):
            return await handler(request)
        return await self.proxy(
            request, route, f"the node holding session {session_id} cannot be reached", session_id
        )

    async def proxy(
        self, request: web.Request, route: Elsewhere, unreachable: str, session_id: str = ""
    ) -> web.StreamResponse:
        """``request`` relayed to ``route``'s owner and its answer streamed back; 503 saying
        ``unreachable`` (with ``Retry-After``) when the owner cannot be reached."""
        client = self._client(route.http_socket)
        url = route.http_base.rstrip("/") + request.raw_path
        log: logging.Logger | SessionLogger = (
            session_logger(logger, session_id) if session_id else logger
        )
        try:
            upstream = await client.request(
                request.method,
                url,
                headers=self._upstream_headers(request),
                data=request.content if request.body_exists else None,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, OSError) as exc:
            # The exception's text may quote the URL, whose query can hold a token: not logged.
            log.warning(
                "cannot reach %s to forward %s: %s", route.owner, request.method, type(exc).__name__
            )
            return web.Response(
                status=503,
                text=f"{unreachable}; retry\n",
                headers={"Retry-After": str(UNREACHABLE_RETRY_AFTER_S)},
            )
        try:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for name, value in upstream.headers.items():
                if _passed_back(name):
                    response.headers.add(name, value)
            await response.prepare(request)
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
