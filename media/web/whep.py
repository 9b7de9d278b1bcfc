"""WHEP (draft-ietf-wish-whep) HTTP handlers: players of a session's agent audio, or of the
publisher's own audio (``?source=publisher``). Errors become 4xx in
``media.web.error_responses``."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence

from aiohttp import web

from media.config import IceServer
from media.errors import (
    InvalidRequest,
    PlayerNotFound,
    SessionClosed,
    SessionOver,
)
from media.rtc.player import PlayerPeer, Source
from media.server.live_session import LiveSession
from media.server.session_table import SessionTable
from media.web.signaling import (
    answer_response,
    check_not_restart,
    new_etag,
    options_response,
    read_offer,
    read_trickle,
)

logger = logging.getLogger(__name__)

Authorize = Callable[[web.Request, LiveSession], None]


class WhepHandlers:
    def __init__(
        self,
        sessions: SessionTable,
        *,
        authorize: Authorize,
        ice_servers: Sequence[IceServer],
        media_timeout: float,
        connect_timeout: float,
        max_offer_bytes: int = 65536,
        max_m_lines: int = 4,
        location_base: Callable[[], str] = lambda: "",
    ) -> None:
        self._location_base = location_base
        self._sessions = sessions
        self._authorize = authorize
        self._ice_servers = tuple(ice_servers)
        self._media_timeout = media_timeout
        self._connect_timeout = connect_timeout
        self._max_offer_bytes = max_offer_bytes
        self._max_m_lines = max_m_lines

    def add_routes(self, app: web.Application) -> None:
        app.router.add_route("POST", "/whep/{id}", self.play)
        app.router.add_route("GET", "/whep/{id}", self.get_endpoint)
        app.router.add_route("OPTIONS", "/whep/{id}", self.options)
        app.router.add_route("PATCH", "/whep/{id}/{player}", self.trickle)
        app.router.add_route("DELETE", "/whep/{id}/{player}", self.delete)
        app.router.add_route("GET", "/whep/{id}/{player}", self.get_player)
        app.router.add_route("OPTIONS", "/whep/{id}/{player}", self.options)

    async def play(self, request: web.Request) -> web.Response:
        live = self._open_session(request)
        self._authorize(request, live)
        source = _source(request)
        offer, summary = await read_offer(
            request, "play", max_bytes=self._max_offer_bytes, max_m_lines=self._max_m_lines
        )
        live.check_player_room()
        player_id = secrets.token_urlsafe(9)
        player = PlayerPeer(
            live.id,
            player_id,
            source,
            live.player_events(player_id),
            ice_servers=self._ice_servers,
            media_timeout=self._media_timeout,
            connect_timeout=self._connect_timeout,
        )
        player.remote_ice = (summary.ice_ufrag or "", summary.ice_pwd)
        player.etag = new_etag()
        try:
            answer = await player.negotiate(offer)
            self._open_session(request).add_player(player)
        except BaseException:
            await player.close()
            raise
        location = f"{self._location_base()}/whep/{live.id}/{player.id}"
        return answer_response(answer, location, player.etag, self._ice_servers)

    async def trickle(self, request: web.Request) -> web.Response:
        _, player = self._player(request)
        fragment = await read_trickle(
            request,
            etag=player.etag,
            resource=f"player {player.id!r}",
            max_bytes=self._max_offer_bytes,
        )
        check_not_restart(fragment, player.remote_ice, "DELETE this player and open a new one")
        await player.add_candidates(fragment.candidates, fragment.end_of_candidates)
        return web.Response(status=204)

    async def delete(self, request: web.Request) -> web.Response:
        live, player = self._player(request)
        live.remove_player(player.id, "DELETE")
        return web.Response(status=200)

    async def get_endpoint(self, request: web.Request) -> web.Response:
        self._open_session(request)
        return web.Response(status=204)

    async def get_player(self, request: web.Request) -> web.Response:
        self._player(request)
        return web.Response(status=204)

    async def options(self, request: web.Request) -> web.Response:
        return options_response(self._ice_servers, resource="player" in request.match_info)

    def _open_session(self, request: web.Request) -> LiveSession:
        try:
            return self._sessions.get_open(request.match_info["id"])
        except SessionClosed as exc:
            raise SessionOver(f"{exc}; a player can only join a live session") from exc

    def _player(self, request: web.Request) -> tuple[LiveSession, PlayerPeer]:
        """The player a request names, once its session's token is checked."""
        live = self._sessions.get(request.match_info["id"])
        self._authorize(request, live)
        player = live.players.get(request.match_info["player"])
        if player is None:
            raise PlayerNotFound(live.id, request.match_info["player"])
        return live, player


def _source(request: web.Request) -> Source:
    value = request.query.get("source", Source.AGENT.value)
    try:
        return Source(value)
    except ValueError as exc:
        raise InvalidRequest(
            f"source must be {Source.AGENT.value!r} (the agent's audio, the default) or "
            f"{Source.PUBLISHER.value!r} (the publisher's own audio), got {value[:40]!r}"
        ) from exc
