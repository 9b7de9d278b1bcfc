"""Reading what a client sent: its bearer token, its Content-Type, and its body as text, whole
however it is split on the wire, within a size limit and the body timeout."""

from __future__ import annotations

import asyncio
from typing import Final

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from media.errors import (
    BodyTimeout,
    InvalidRequest,
    OfferTooLarge,
    UnsupportedContentEncoding,
    UnsupportedContentType,
)

MAX_BODY_BYTES: Final = 64 * 1024
DEFAULT_BODY_TIMEOUT: Final = 10.0
BODY_TIMEOUT: Final = web.AppKey("hark_http_body_timeout", float)
IDENTITY: Final = frozenset({"", "identity"})


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
    except TimeoutError as exc:
        raise BodyTimeout(
            f"{what} was not received in full within {timeout:g} s (--http-body-timeout)"
        ) from exc
    except ConnectionResetError as exc:
        raise InvalidRequest(f"the client went away before its {what} was complete") from exc
    except (HttpProcessingError, web.RequestPayloadError) as exc:
        raise InvalidRequest(f"{what} could not be read: {type(exc).__name__}") from exc
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
