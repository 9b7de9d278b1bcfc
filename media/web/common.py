"""What the WHIP and WHEP handlers share: error translation, CORS, bearer tokens, SDP bodies."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from media.core.rate_limiter import RateLimiter
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
from media.metrics import Metrics

logger = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 64 * 1024
DEFAULT_BODY_TIMEOUT: Final = 10.0
BODY_TIMEOUT: Final = web.AppKey("hark_http_body_timeout", float)
IDENTITY: Final = frozenset({"", "identity"})
EXPOSED_HEADERS: Final = (
    "Location, ETag, Link, Accept-Post, Accept-Patch, Retry-After, WWW-Authenticate"
)
ALLOWED_HEADERS: Final = "Authorization, Content-Type, If-Match, Last-Event-ID"
ALLOWED_METHODS: Final = "GET, POST, PATCH, DELETE, OPTIONS"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

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


def route_of(request: web.Request) -> str:
    """The matched route's pattern (``/whip/{id}``), never the path with a session id in it."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


MUTATING: Final = frozenset({"POST", "PATCH", "DELETE"})


def make_middlewares(
    cors_origins: Sequence[str],
    metrics: Metrics,
    limiter: RateLimiter | None,
) -> list[Callable[..., Awaitable[web.StreamResponse]]]:
    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            metrics.http_requests.labels(route_of(request), request.method, str(status)).inc()

    @web.middleware
    async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        origin = request.headers.get("Origin")
        if "*" in cors_origins:
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin is not None and origin in cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if isinstance(response, web.HTTPException):
            raise response
        return response

    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            if limiter is not None and request.method in MUTATING:
                client = request.remote or "unknown"
                wait = limiter.check(client, time.monotonic())
                if wait:
                    metrics.rate_limited.labels(route_of(request)).inc()
                    raise RateLimited(
                        f"too many requests from {client}: at most {limiter.rate:g} per second "
                        f"(bursts of {limiter.burst})",
                        limiter.retry_after(wait),
                    )
            return await handler(request)
        except HarkError as exc:
            logger.info(
                "%s %s -> %d: %s", request.method, route_of(request), status_for(exc), loggable(exc)
            )
            return error_response(exc)

    return [count, cors, errors]


def cors_on_prepare(
    cors_origins: Sequence[str],
) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """CORS headers for streamed responses (SSE), whose headers leave at ``prepare()``, before
    the ``cors`` middleware could add them: register on ``app.on_response_prepare``."""

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        if "Access-Control-Allow-Origin" in response.headers:
            return
        origin = request.headers.get("Origin")
        if "*" in cors_origins:
            response.headers["Access-Control-Allow-Origin"] = "*"
        elif origin is not None and origin in cors_origins:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Vary"] = "Origin"
        response.headers.setdefault("Access-Control-Expose-Headers", EXPOSED_HEADERS)

    return add_headers


def preflight(accept_post: str | None = None) -> web.Response:
    response = web.Response(status=204)
    response.headers["Access-Control-Allow-Methods"] = ALLOWED_METHODS
    response.headers["Access-Control-Allow-Headers"] = ALLOWED_HEADERS
    response.headers["Access-Control-Max-Age"] = "86400"
    if accept_post:
        response.headers["Accept-Post"] = accept_post
    return response


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def require_content_type(request: web.Request, expected: str) -> None:
    if request.content_type != expected:
        given = (request.headers.get("Content-Type") or "none")[:100]
        raise UnsupportedContentType(f"Content-Type must be {expected}, got {given}")


def loggable(exc: HarkError) -> str:
    """What a log line may say about a client mistake: a 415's message quotes the request's
    Content-Type, and no header value ever reaches a log."""
    if isinstance(exc, UnsupportedContentType):
        return type(exc).__name__
    return str(exc)


def refuse_content_coding(request: web.Request, what: str) -> None:
    """Bodies are taken uncompressed: an SDP offer is a few KiB, and decoding would let a small
    request expand past the size limit. aiohttp is told not to decode (``auto_decompress``)."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding not in IDENTITY:
        raise UnsupportedContentEncoding(
            f"{what} must be sent without Content-Encoding (Hark takes identity only)"
        )


async def read_text_body(request: web.Request, what: str, limit: int = MAX_BODY_BYTES) -> str:
    """The whole body as UTF-8 text, however many TCP segments it arrives in: refused over
    ``limit`` bytes (413) and when it is not complete within ``--http-body-timeout`` (408)."""
    refuse_content_coding(request, what)
    if request.content_length is not None and request.content_length > limit:
        raise OfferTooLarge(f"{what} is {request.content_length} bytes; the limit is {limit}")
    timeout = request.config_dict.get(BODY_TIMEOUT, DEFAULT_BODY_TIMEOUT)
    try:
        async with asyncio.timeout(timeout):
            body = await _read_at_most(request, limit + 1)
    except TimeoutError:
        raise BodyTimeout(
            f"{what} was not received in full within {timeout:g} s (--http-body-timeout)"
        ) from None
    except ConnectionResetError:
        raise InvalidRequest(f"the client went away before its {what} was complete") from None
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        raise InvalidRequest(f"{what} could not be read: {type(exc).__name__}") from None
    if len(body) > limit:
        raise OfferTooLarge(f"{what} is over the limit of {limit} bytes")
    if not body.strip():
        raise InvalidRequest(f"{what} is empty")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"{what} is not UTF-8 text (byte {exc.start})") from exc


async def _read_at_most(request: web.Request, size: int) -> bytes:
    """Up to ``size`` bytes of the body: reads until its end, not just what has arrived."""
    chunks: list[bytes] = []
    received = 0
    while received < size:
        chunk = await request.content.read(size - received)
        if not chunk:
            break
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)
