"""WHIP (RFC 9725) HTTP handlers: publish, trickle, delete.

Errors become 4xx in ``media.web.error_responses``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from aiohttp import web
from aiortc.rtp import RtpPacket

from media.config import IceServer
from media.core.events import CloseReason, SessionState
from media.core.sdp import OfferSummary
from media.core.session import Origin
from media.errors import PublisherExists, SessionConflict, Unauthorized
from media.logs import session_logger
from media.rtc.publisher import PublisherEvents, PublisherPeer
from media.server.auth import tokens_match
from media.server.live_session import LiveSession
from media.server.session_table import SessionTable
from media.web.request_bodies import bearer_token
from media.web.signaling import (
    answer_response,
    check_not_restart,
    new_etag,
    options_response,
    read_offer,
    read_trickle,
)

logger = logging.getLogger(__name__)


class WhipHandlers:
    def __init__(
        self,
        sessions: SessionTable,
        *,
        server_token: str | None,
        ice_servers: Sequence[IceServer],
        base_url: Callable[[], str],
        max_offer_bytes: int = 65536,
        max_m_lines: int = 4,
        absolute_location: bool = False,
    ) -> None:
        self._absolute_location = absolute_location
        self._max_offer_bytes = max_offer_bytes
        self._max_m_lines = max_m_lines
        self._sessions = sessions
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

    def location_base(self) -> str:
        """What a ``Location`` starts with: in a cluster the public URL, so that it names the
        owner whichever node proxied the request; otherwise nothing (a relative URL)."""
        return self._base_url() if self._absolute_location else ""

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
        self, request: web.Request, live: LiveSession, *, query_token: bool = False
    ) -> None:
        """The server token or the session's own token; none needed when neither exists.

        ``query_token`` also takes ``?token=``, for EventSource, which cannot set headers.
        """
        given = bearer_token(request)
        if given is None and query_token:
            given = request.query.get("token") or None
        if self._token is None and live.token is None:
            return
        if tokens_match(given, self._token) or tokens_match(given, live.token):
            return
        if given is None:
            raise Unauthorized("missing bearer token: send Authorization: Bearer <token>")
        raise Unauthorized(f"wrong bearer token for session {live.id!r}")

    # handlers

    async def publish(self, request: web.Request) -> web.Response:
        self.authorize_server(request)
        self._sessions.check_capacity()
        offer = await self._read_offer(request)
        with self._sessions.reserve():
            bound = _SessionToBe()
            peer, answer = await self._negotiate(self._sessions.new_id(), offer, bound)
            try:
                live = self._sessions.create(Origin.WHIP, session_id=peer.session_id, reserved=True)
                bound.live = live
                live.attach_publisher(peer, new_etag())
            except BaseException:
                await peer.close()
                raise
        return self._created(live, answer)

    async def publish_precreated(self, request: web.Request) -> web.Response:
        live = self._sessions.get_open(request.match_info["id"])
        self.authorize_session(request, live)
        self._check_no_publisher(live)
        offer = await self._read_offer(request)
        peer, answer = await self._negotiate(live.id, offer, live)
        try:
            self._check_no_publisher(live)
            live.attach_publisher(peer, new_etag())
        except BaseException:
            await peer.close()
            raise
        return self._created(live, answer)

    async def trickle(self, request: web.Request) -> web.Response:
        live = self._sessions.get_open(request.match_info["id"])
        self.authorize_session(request, live)
        peer = live.publisher
        fragment = await read_trickle(
            request,
            etag=live.etag,
            resource=f"session {live.id!r}",
            max_bytes=self._max_offer_bytes,
        )
        if not isinstance(peer, PublisherPeer):
            raise SessionConflict(
                f"session {live.id!r} has no publisher to trickle to ({live.session.state.name})"
            )
        check_not_restart(
            fragment, peer.remote_ice, "DELETE this session and publish again with POST /whip"
        )
        await peer.add_candidates(fragment.candidates, fragment.end_of_candidates)
        return web.Response(status=204)

    async def delete(self, request: web.Request) -> web.Response:
        live = self._sessions.get_open(request.match_info["id"])
        self.authorize_session(request, live)
        live.close(CloseReason.CLIENT_DELETE, "publisher sent DELETE")
        return web.Response(status=200)

    async def get_endpoint(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def get_resource(self, request: web.Request) -> web.Response:
        self._sessions.get_open(request.match_info["id"])
        return web.Response(status=204)

    async def options(self, request: web.Request) -> web.Response:
        return options_response(self._ice_servers, resource="id" in request.match_info)

    # helpers

    async def _read_offer(self, request: web.Request) -> tuple[str, OfferSummary]:
        return await read_offer(
            request, "publish", max_bytes=self._max_offer_bytes, max_m_lines=self._max_m_lines
        )

    async def _negotiate(
        self, session_id: str, offer: tuple[str, OfferSummary], events: PublisherEvents
    ) -> tuple[PublisherPeer, str]:
        sdp, summary = offer
        peer = PublisherPeer(
            session_id,
            events,
            self._ice_servers,
            opus_payload_type=summary.opus_payload_type,
        )
        peer.remote_ice = (summary.ice_ufrag or "", summary.ice_pwd)
        try:
            answer = await peer.negotiate(sdp)
        except BaseException:
            await peer.close()
            raise
        return peer, answer

    def _check_no_publisher(self, live: LiveSession) -> None:
        if live.session.state is not SessionState.NEW:
            raise PublisherExists(
                f"session {live.id!r} already has a publisher "
                f"({live.session.state.name}); DELETE it first or create a new session"
            )

    def _created(self, live: LiveSession, answer: str) -> web.Response:
        session_logger(logger, live.id).info("publisher accepted")
        location = f"{self.location_base()}/whip/{live.id}"
        return answer_response(answer, location, live.etag, self._ice_servers)


class _SessionToBe:
    """The reports of a publisher negotiated before its session exists (``POST /whip`` creates
    the session only once the offer is answered); they reach the LiveSession once ``live`` is set,
    and none can come before the answer is sent."""

    def __init__(self) -> None:
        self.live: LiveSession | None = None

    def transport_connected(self) -> None:
        if self.live is not None:
            self.live.transport_connected()

    def transport_failed(self, detail: str) -> None:
        if self.live is not None:
            self.live.transport_failed(detail)

    def internal_error(self, detail: str) -> None:
        if self.live is not None:
            self.live.internal_error(detail)

    def opus_received(self, packet: RtpPacket) -> None:
        if self.live is not None:
            self.live.opus_received(packet)
