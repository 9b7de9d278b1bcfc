"""Hark's error tree.

The core raises these; only the edges (``whip``, ``whep``, ``grpc_service``) translate them into
HTTP status codes and gRPC status codes. Every message is written for the person who made the
call: it names what was wrong and, where it helps, what would be right.
"""

from __future__ import annotations


class HarkError(Exception):
    """Base class of every error Hark raises on purpose."""


class InvalidRequest(HarkError):
    """The request itself is malformed (HTTP 400, gRPC INVALID_ARGUMENT)."""


class InvalidOffer(InvalidRequest):
    """The SDP offer cannot be parsed (HTTP 400)."""


class UnsupportedOffer(HarkError):
    """The SDP offer parses but cannot be served: no audio, no Opus, wrong direction (HTTP 422)."""


class OfferTooLarge(HarkError):
    """The request body is over the size limit (HTTP 413)."""


class InvalidTrickle(InvalidRequest):
    """A trickle-ice-sdpfrag body cannot be parsed (HTTP 400)."""


class IceRestartUnsupported(HarkError):
    """The client asked for an ICE restart, which aiortc cannot do (HTTP 422)."""


class StaleEtag(HarkError):
    """``If-Match`` names an ICE session that is not the current one (HTTP 412)."""


class Unauthorized(HarkError):
    """Missing or wrong bearer token (HTTP 401, gRPC UNAUTHENTICATED)."""


class SessionNotFound(HarkError):
    """No such session, or it was closed longer ago than the retention period."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} not found")
        self.session_id = session_id


class PlayerNotFound(HarkError):
    """No such WHEP player in the session (HTTP 404)."""

    def __init__(self, session_id: str, player_id: str) -> None:
        super().__init__(f"session {session_id!r} has no WHEP player {player_id[:40]!r}")


class SessionConflict(HarkError):
    """The session cannot take this call in its current state (HTTP 409, FAILED_PRECONDITION)."""


class PublisherExists(SessionConflict):
    """The session already has a publisher (HTTP 409)."""


class NotReady(SessionConflict):
    """The call needs a READY session; the message names the state it is in."""

    def __init__(self, session_id: str, state: str) -> None:
        super().__init__(f"session {session_id!r} is {state}, not READY")
        self.session_id = session_id
        self.state = state


class SessionClosed(SessionConflict):
    """The session is CLOSED; the message names the close reason."""

    def __init__(self, session_id: str, reason: str, detail: str = "") -> None:
        text = f"session {session_id!r} is CLOSED ({reason})"
        super().__init__(f"{text}: {detail}" if detail else text)
        self.session_id = session_id
        self.reason = reason
        self.detail = detail


class PlaybackExists(HarkError):
    """A playback of that id is already queued or playing (gRPC ALREADY_EXISTS)."""


class SessionOver(SessionConflict):
    """A WHEP player asked for a CLOSED session (HTTP 409 with Retry-After): unlike a WHIP
    publisher, a player may be early for the session that replaces it, so it is told to retry."""

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RevisionOutOfRange(HarkError):
    """``since_revision`` is ahead of the session's latest revision (gRPC OUT_OF_RANGE)."""


class CapacityExceeded(HarkError):
    """A server limit is reached (HTTP 503 with Retry-After, gRPC RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Draining(HarkError):
    """The server is shutting down and takes no new sessions (HTTP 503, gRPC UNAVAILABLE)."""


class SubscriberTooSlow(HarkError):
    """A subscriber fell too far behind and should reconnect (RESOURCE_EXHAUSTED)."""


class UnsupportedContentType(HarkError):
    """The request's Content-Type is not the one the resource takes (HTTP 415)."""


class RateLimited(HarkError):
    """Too many requests from one client (HTTP 429 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class UnsupportedContentEncoding(UnsupportedContentType):
    """The body has a ``Content-Encoding`` Hark does not take: it takes bodies uncompressed
    (HTTP 415 with ``Accept-Encoding: identity``)."""


class BodyTimeout(HarkError):
    """The request body did not arrive in full within ``--http-body-timeout`` (HTTP 408)."""
