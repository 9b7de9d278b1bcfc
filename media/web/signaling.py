"""The HTTP exchange WHIP and WHEP share: reading an SDP offer, answering it (201 with Location,
ETag and ICE-server Links), trickle PATCH bodies, and preflight answers."""

from __future__ import annotations

import secrets
from collections.abc import Sequence

from aiohttp import web

from media.config import IceServer
from media.core.sdp import Direction, OfferSummary, check_offer
from media.core.trickle import TrickleFragment, is_ice_restart, parse_trickle_fragment
from media.errors import IceRestartUnsupported, StaleEtag
from media.web.middleware import preflight
from media.web.request_bodies import read_text_body, require_content_type

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"


def new_etag() -> str:
    return f'"{secrets.token_hex(12)}"'


async def read_offer(
    request: web.Request, direction: Direction, *, max_bytes: int, max_m_lines: int
) -> tuple[str, OfferSummary]:
    """The SDP offer a POST carries, checked for what ``direction`` needs."""
    require_content_type(request, SDP)
    offer = await read_text_body(request, "SDP offer", max_bytes)
    summary = check_offer(offer, direction=direction, max_bytes=max_bytes, max_media=max_m_lines)
    return offer, summary


def answer_response(
    answer: str, location: str, etag: str, ice_servers: Sequence[IceServer]
) -> web.Response:
    response = web.Response(status=201, text=answer, content_type=SDP)
    response.headers["Location"] = location
    response.headers["ETag"] = etag
    for server in ice_servers:
        response.headers.add("Link", server.link_header())
    return response


def options_response(ice_servers: Sequence[IceServer], *, resource: bool) -> web.Response:
    """Preflight for an endpoint (takes offers) or a resource (also takes trickle PATCHes).

    Anyone may send OPTIONS (a CORS preflight carries no credentials), so it names only ICE
    servers without credentials; TURN credentials travel in the authenticated 201 alone.
    """
    response = preflight(accept_post=SDP)
    if resource:
        response.headers["Accept-Patch"] = TRICKLE
    for server in ice_servers:
        if server.username is None and server.credential is None:
            response.headers.add("Link", server.link_header())
    return response


async def read_trickle(
    request: web.Request, *, etag: str, resource: str, max_bytes: int
) -> TrickleFragment:
    """The trickle-ice-sdpfrag body of a PATCH whose ``If-Match`` (if any) names ``etag``."""
    require_content_type(request, TRICKLE)
    if_match = request.headers.get("If-Match")
    if if_match is not None and if_match.strip() not in ("*", etag):
        raise StaleEtag(f"If-Match does not name the current ICE session of {resource} ({etag})")
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
