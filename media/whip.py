"""WHIP (RFC 9725) HTTP handlers: publish, trickle, delete. Errors become 4xx in ``media.http``."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence

from aiohttp import web

from media.config import IceServer
from media.errors import (
    IceRestartUnsupported,
    PublisherExists,
    SessionConflict,
    StaleEtag,
    Unauthorized,
)
from media.http import bearer_token, preflight, read_text_body, require_content_type
from media.peer import PublisherPeer
from media.registry import Entry, Registry, new_session_id, tokens_match
from media.sdp import (
    OfferSummary,
    TrickleFragment,
    check_offer,
    is_ice_restart,
    parse_trickle_fragment,
)
from media.session import CloseReason, Origin, SessionState

logger = logging.getLogger(__name__)

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"


def new_etag() -> str:
    return f'"{secrets.token_hex(12)}"'


async def read_trickle(
    request: web.Request, *, etag: str, resource: str, max_bytes: int
) -> TrickleFragment:
    """The trickle-ice-sdpfrag body of a PATCH whose ``If-Match`` (if any) names ``etag``."""
    require_content_type(request, TRICKLE)
    if_match = request.headers.get("If-Match")
    if if_match is not None and if_match.strip() not in ("*", etag):
        raise StaleEtag(
            f"If-Match {if_match} does not name the current ICE session of {resource} ({etag})"
        )
    body = await read_text_body(request, "trickle fragment", max_bytes)
    return parse_trickle_fragment(body)


def check_not_restart(
    fragment: TrickleFragment, remote_ice: tuple[str, str | None], instead: str
) -> None:
    ufrag, pwd = remote_ice
    if is_ice_restart(fragment, ufrag, pwd):
        raise IceRestartUnsupported(
            f"ICE restart is not supported (aiortc cannot restart ICE); {instead}"
        )


class WhipHandlers:
    def __init__(
        self,
        registry: Registry,
        *,
        server_token: str | None,
        ice_servers: Sequence[IceServer],
        base_url: Callable[[], str],
        jitter_frames: int = 1,
        max_offer_bytes: int = 65536,
        max_m_lines: int = 4,
    ) -> None:
        self._jitter_frames = jitter_frames
        self._max_offer_bytes = max_offer_bytes
        self._max_m_lines = max_m_lines
        self._registry = registry
        self._token = server_token
        self._ice_servers = tuple(ice_servers)
        self._base_url = base_url

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("POST", "/whip", self.publish)
        app.router.add_route("GET", "/whip", self.get_endpoint)
        app.router.add_route("OPTIONS", "/whip", self.options)
        app.router.add_route("POST", "/whip/{id}", self.publish_precreated)
        app.router.add_route("PATCH", "/whip/{id}", self.trickle)
        app.router.add_route("DELETE", "/whip/{id}", self.delete)
        app.router.add_route("GET", "/whip/{id}", self.get_resource)
        app.router.add_route("OPTIONS", "/whip/{id}", self.options)

    # authorisation

    def authorize_server(self, request: web.Request) -> None:
        if self._token is None:
            return
        given = bearer_token(request)
        if given is None:
            raise Unauthorized("missing bearer token: send Authorization: Bearer <token>")
        if not tokens_match(given, self._token):
            raise Unauthorized("wrong bearer token")

    def authorize_session(
        self, request: web.Request, entry: Entry, *, query_token: bool = False
    ) -> None:
        """The server token or the session's own token; none needed when neither exists.

        ``query_token`` also takes ``?token=``, for EventSource, which cannot set headers.
        """
        given = bearer_token(request)
        if given is None and query_token:
            given = request.query.get("token") or None
        if self._token is None and entry.token is None:
            return
        if tokens_match(given, self._token) or tokens_match(given, entry.token):
            return
        if given is None:
            raise Unauthorized("missing bearer token: send Authorization: Bearer <token>")
        raise Unauthorized(f"wrong bearer token for session {entry.session.id!r}")

    # handlers

    async def publish(self, request: web.Request) -> web.Response:
        self.authorize_server(request)
        self._registry.check_capacity()
        offer = await self._read_offer(request)
        peer, answer = await self._negotiate(new_session_id(), offer)
        try:
            entry = self._registry.create(Origin.WHIP, session_id=peer.session_id)
            self._registry.attach_publisher(entry, peer, new_etag())
        except BaseException:
            await peer.close()
            raise
        return self._created(entry, answer)

    async def publish_precreated(self, request: web.Request) -> web.Response:
        entry = self._registry.lookup_open(request.match_info["id"])
        self.authorize_session(request, entry)
        self._check_no_publisher(entry)
        offer = await self._read_offer(request)
        peer, answer = await self._negotiate(entry.session.id, offer)
        try:
            self._check_no_publisher(entry)
            self._registry.attach_publisher(entry, peer, new_etag())
        except BaseException:
            await peer.close()
            raise
        return self._created(entry, answer)

    async def trickle(self, request: web.Request) -> web.Response:
        entry = self._registry.lookup_open(request.match_info["id"])
        self.authorize_session(request, entry)
        peer = entry.media
        fragment = await read_trickle(
            request,
            etag=entry.etag,
            resource=f"session {entry.session.id!r}",
            max_bytes=self._max_offer_bytes,
        )
        if not isinstance(peer, PublisherPeer):
            raise SessionConflict(
                f"session {entry.session.id!r} has no publisher to trickle to "
                f"({entry.session.state.name})"
            )
        check_not_restart(
            fragment, peer.remote_ice, "DELETE this session and publish again with POST /whip"
        )
        await peer.add_candidates(fragment.candidates, fragment.end_of_candidates)
        return web.Response(status=204)

    async def delete(self, request: web.Request) -> web.Response:
        entry = self._registry.lookup_open(request.match_info["id"])
        self.authorize_session(request, entry)
        self._registry.close(entry.session.id, CloseReason.CLIENT_DELETE, "publisher sent DELETE")
        return web.Response(status=200)

    async def get_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def get_resource(self, request: web.Request) -> web.Response:
        self._registry.lookup_open(request.match_info["id"])
        return web.Response(status=204)

    async def options(self, request: web.Request) -> web.Response:
        response = preflight(accept_post=SDP)
        if "id" in request.match_info:
            response.headers["Accept-Patch"] = TRICKLE
        for server in self._ice_servers:
            response.headers.add("Link", server.link_header())
        return response

    # helpers

    async def _read_offer(self, request: web.Request) -> tuple[str, OfferSummary]:
        require_content_type(request, SDP)
        offer = await read_text_body(request, "SDP offer", self._max_offer_bytes)
        summary = check_offer(
            offer,
            direction="publish",
            max_bytes=self._max_offer_bytes,
            max_media=self._max_m_lines,
        )
        return offer, summary

    async def _negotiate(
        self, session_id: str, offer: tuple[str, OfferSummary]
    ) -> tuple[PublisherPeer, str]:
        sdp, summary = offer
        peer = PublisherPeer(
            session_id,
            self._registry,
            self._ice_servers,
            self._jitter_frames,
            opus_payload_type=summary.opus_payload_type,
        )
        peer.remote_ice = (summary.ice_ufrag or "", summary.ice_pwd)
        try:
            answer = await peer.negotiate(sdp)
        except BaseException:
            await peer.close()
            raise
        return peer, answer

    def _check_no_publisher(self, entry: Entry) -> None:
        if entry.session.state is not SessionState.NEW:
            raise PublisherExists(
                f"session {entry.session.id!r} already has a publisher "
                f"({entry.session.state.name}); DELETE it first or create a new session"
            )

    def _created(self, entry: Entry, answer: str) -> web.Response:
        response = web.Response(status=201, text=answer, content_type=SDP)
        response.headers["Location"] = f"/whip/{entry.session.id}"
        response.headers["ETag"] = entry.etag
        for server in self._ice_servers:
            response.headers.add("Link", server.link_header())
        logger.info("session %s: publisher accepted", entry.session.id)
        return response
