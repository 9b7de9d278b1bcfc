"""The middlewares every HTTP request goes through (count, CORS, rate limit and error
translation), CORS for streamed responses, and the answer to a CORS preflight."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

from aiohttp import web

from media.core.rate_limiter import RateLimiter
from media.errors import HarkError, RateLimited
from media.metrics import Metrics
from media.web.error_responses import error_response, loggable, status_for

logger = logging.getLogger(__name__)

EXPOSED_HEADERS: Final = (
    "Location, ETag, Link, Accept-Post, Accept-Patch, Retry-After, WWW-Authenticate"
)
ALLOWED_HEADERS: Final = "Authorization, Content-Type, If-Match, Last-Event-ID"
ALLOWED_METHODS: Final = "GET, POST, PATCH, DELETE, OPTIONS"
# Each refused request is logged at INFO, up to a budget: a flood of bad requests cannot flood the
# log (what is over it is counted in hark_http_client_errors_unlogged_total).
CLIENT_MISTAKES_LOGGED_PER_S: Final = 5.0
CLIENT_MISTAKES_LOG_BURST: Final = 50

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def route_of(request: web.Request) -> str:
    """The matched route's pattern (``/whip/{id}``), never the path with a session id in it."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


MUTATING: Final = frozenset({"POST", "PATCH", "DELETE"})


def _allow_origin(
    request: web.Request, response: web.StreamResponse, cors_origins: Sequence[str]
) -> None:
    origin = request.headers.get("Origin")
    if "*" in cors_origins:
        response.headers["Access-Control-Allow-Origin"] = "*"
    elif origin is not None and origin in cors_origins:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"


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
        _allow_origin(request, response, cors_origins)
        response.headers["Access-Control-Expose-Headers"] = EXPOSED_HEADERS
        if isinstance(response, web.HTTPException):
            raise response
        return response

    log_budget = RateLimiter(CLIENT_MISTAKES_LOGGED_PER_S, CLIENT_MISTAKES_LOG_BURST)

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
            if log_budget.check("client mistakes", time.monotonic()) == 0:
                logger.info(
                    "%s %s -> %d: %s",
                    request.method,
                    route_of(request),
                    status_for(exc),
                    loggable(exc),
                )
            else:
                metrics.client_errors_unlogged.inc()
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
        _allow_origin(request, response, cors_origins)
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
