"""How a HarkError becomes an HTTP answer: its status, a plain-text body saying what is wrong,
and the headers that go with it; and how aiohttp's own answers to malformed requests are logged."""

from __future__ import annotations

import logging
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from media.errors import (
    BodyTimeout,
    CapacityExceeded,
    Draining,
    HarkError,
    IceRestartUnsupported,
    InvalidRequest,
    OfferTooLarge,
    PlayerNotFound,
    RateLimited,
    RevisionOutOfRange,
    SessionClosed,
    SessionConflict,
    SessionNotFound,
    SessionOver,
    StaleEtag,
    Unauthorized,
    UnsupportedContentEncoding,
    UnsupportedContentType,
    UnsupportedOffer,
)

_STATUS: Final[list[tuple[type[HarkError], int]]] = [
    (Unauthorized, 401),
    (SessionNotFound, 404),
    (PlayerNotFound, 404),
    (SessionClosed, 404),
    (SessionConflict, 409),
    (StaleEtag, 412),
    (RateLimited, 429),
    (BodyTimeout, 408),
    (OfferTooLarge, 413),
    (UnsupportedContentType, 415),
    (UnsupportedOffer, 422),
    (IceRestartUnsupported, 422),
    (InvalidRequest, 400),
    (RevisionOutOfRange, 400),
    (CapacityExceeded, 503),
    (Draining, 503),
]


class ClientProtocolErrors(logging.Filter):
    """aiohttp answers a malformed HTTP request with 400 but logs it at ERROR with a traceback
    and the parser's message, which quotes the offending header or request line (a token, say);
    attached to ``aiohttp.server``, this logs it as the client mistake it is, in one line that
    names only the status and the kind of mistake, never the request's content."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, HttpProcessingError):
            record.msg, record.args = (
                "malformed HTTP request answered %s (%s)",
                (error.code, type(error).__name__),
            )
            level = min(record.levelno, logging.INFO)
            record.levelno, record.levelname = level, logging.getLevelName(level)
            record.exc_info = record.exc_text = None
        return True


def status_for(exc: HarkError) -> int:
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 400


def error_response(exc: HarkError) -> web.Response:
    status = status_for(exc)
    # A message may quote client input that is not valid Unicode (surrogate-escaped bytes).
    text = f"{exc}\n".encode(errors="backslashreplace")
    response = web.Response(status=status, body=text, content_type="text/plain", charset="utf-8")
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="hark"'
    if isinstance(exc, UnsupportedContentEncoding):
        response.headers["Accept-Encoding"] = "identity"
    if isinstance(exc, BodyTimeout):
        response.force_close()
    if isinstance(exc, CapacityExceeded | RateLimited | SessionOver):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    elif isinstance(exc, Draining):
        response.headers["Retry-After"] = "5"
    return response


LOGGED_REASON_CHARS: Final = 200


def loggable(exc: HarkError) -> str:
    """What a log line may say about a client mistake: a 415's message quotes the request's
    Content-Type, and no header value ever reaches a log."""
    if isinstance(exc, UnsupportedContentType):
        return type(exc).__name__
    text = str(exc)
    return text if len(text) <= LOGGED_REASON_CHARS else text[: LOGGED_REASON_CHARS - 1] + "…"
