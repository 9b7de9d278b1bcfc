"""Hark's error tree.

The core raises these; only the edges (``media.web``, ``media.rpc``) translate them into
HTTP status codes and gRPC status codes. Every message is written for the person who made the
call: it names what was wrong and, where it helps, what would be right.

Each class has a stable ``REASON`` (gRPC errors carry it in a ``google.rpc.ErrorInfo`` of domain
``ERROR_DOMAIN``, with ``error_metadata()``), and ``from_error_info`` rebuilds the same exception
from it on the client side; ``by_reason`` finds the class. Messages are never parsed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar, Final

ERROR_DOMAIN: Final = "hark.media.v1"


class HarkError(Exception):
    """Base class of every error Hark raises on purpose."""

    REASON: ClassVar[str] = "HARK_ERROR"

    def error_metadata(self) -> dict[str, str]:
        """What a client needs to rebuild this error (``ErrorInfo.metadata``)."""
        return {}

    @classmethod
    def from_error_info(cls, message: str, metadata: Mapping[str, str]) -> HarkError:
        """The error a server described with ``message`` and ``error_metadata()``."""
        return cls(message)


def by_reason(reason: str) -> type[HarkError] | None:
    """The error class whose own ``reason`` is ``reason``."""
    pending: list[type[HarkError]] = [HarkError]
    while pending:
        kind = pending.pop()
        if kind.__dict__.get("REASON") == reason:
            return kind
        pending.extend(kind.__subclasses__())
    return None


class InvalidRequest(HarkError):
    """The request itself is malformed (HTTP 400, gRPC INVALID_ARGUMENT); ``field`` names the
    request field at fault when there is one."""

    REASON = "INVALID_ARGUMENT"

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field

    def error_metadata(self) -> dict[str, str]:
        return {"field": self.field} if self.field else {}

    @classmethod
    def from_error_info(cls, message: str, metadata: Mapping[str, str]) -> HarkError:
        return cls(message, metadata.get("field", ""))


class MalformedRequest(InvalidRequest):
    """The request bytes do not decode as the method's message (gRPC INVALID_ARGUMENT)."""

    REASON = "MALFORMED_REQUEST"

    def __init__(self, method: str) -> None:
        super().__init__(f"the request to {method} is not a valid protobuf message for it")
        self.method = method

    def error_metadata(self) -> dict[str, str]:
        return {"method": self.method}

    @classmethod
    def from_error_info(cls, message: str, metadata: Mapping[str, str]) -> HarkError:
        return cls(metadata.get("method", ""))


class InvalidOffer(InvalidRequest):
    """The SDP offer cannot be parsed (HTTP 400)."""

    REASON = "INVALID_OFFER"


class UnsupportedOffer(HarkError):
    """The SDP offer parses but cannot be served: no audio, no Opus, wrong direction (HTTP 422)."""

    REASON = "UNSUPPORTED_OFFER"


class OfferTooLarge(HarkError):
    """The request body is over the size limit (HTTP 413)."""

    REASON = "BODY_TOO_LARGE"


class InvalidTrickle(InvalidRequest):
    """A trickle-ice-sdpfrag body cannot be parsed (HTTP 400)."""

    REASON = "INVALID_TRICKLE"


class IceRestartUnsupported(HarkError):
    """The client asked for an ICE restart, which aiortc cannot do (HTTP 422)."""

    REASON = "ICE_RESTART_UNSUPPORTED"


class StaleEtag(HarkError):
    """``If-Match`` names an ICE session that is not the current one (HTTP 412)."""

    REASON = "STALE_ETAG"


class Unauthorized(HarkError):
    """Missing or wrong bearer token (HTTP 401, gRPC UNAUTHENTICATED)."""

    REASON = "UNAUTHENTICATED"


class SessionNotFound(HarkError):
    """No such session, or it was closed longer ago than the retention period."""

    def __init__(self, session_id: str) -> None:
        super().__init__(f"session {session_id!r} not found")
        self.session_id = session_id

    REASON = "SESSION_NOT_FOUND"

    def error_metadata(self) -> dict[str, str]:
        return {"session_id": self.session_id}

    @classmethod
    def from_error_info(cls, message: str, metadata: Mapping[str, str]) -> HarkError:
        return cls(metadata.get("session_id", ""))


class PlayerNotFound(HarkError):
    """No such WHEP player in the session (HTTP 404)."""

    def __init__(self, session_id: str, player_id: str) -> None:
        super().__init__(f"session {session_id!r} has no WHEP player {player_id[:40]!r}")
        self.session_id = session_id
        self.player_id = player_id

    REASON = "PLAYER_NOT_FOUND"

    def error_metadata(self) -> dict[str, str]:
        return {"session_id": self.session_id, "player_id": self.player_id[:40]}

    @classmethod
    def from_error_info(cls, message: str, metadata: Mapping[str, str]) -> HarkError:
        return cls(metadata.get("session_id", ""), metadata.get("player_id", ""))


class SessionConflict(HarkError):
    """The session cannot take this call in its current state (HTTP 409, FAILED_PRECONDITION)."""

    REASON = "SESSION_CONFLICT"


class PublisherExists(SessionConflict):
    """The session already has a publisher (HTTP 409)."""

    REASON = "PUBLISHER_EXISTS"


class NotReady(SessionConflict):
    """The call needs a READY session; the message names the state it is in."""

    def __init__(self, session_id: str, state: str) -> None:
        super().__init__(f"session {session_id!r} is {state}, not READY")
        self.session_id = session_id
        self.state = state

    REASON = "SESSION_NOT_READY"

    def error_metadata(self) -> dict[str, str]:
        return {"session_id": self.session_id, "state": self.state}

    @classmethod
    def from_error_info(cls, message: str, metadata: Mapping[str, str]) -> HarkError:
        return cls(metadata.get("session_id", ""), metadata.get("state", ""))


class ReadyDeadlineExceeded(NotReady):
    """``StartListening(wait_for_ready)`` reached the call's deadline before READY (gRPC
    DEADLINE_EXCEEDED); the Python SDK raises ``TimeoutError`` for it."""

    REASON = "READY_DEADLINE_EXCEEDED"

    def __init__(self, session_id: str, state: str) -> None:
        super().__init__(session_id, state)
        self.args = (f"session {session_id!r} is still {state}, not READY, at the call's deadline",)


class SessionClosed(SessionConflict):
    """The session is CLOSED; the message names the close reason."""

    def __init__(self, session_id: str, reason: str, detail: str = "") -> None:
        text = f"session {session_id!r} is CLOSED ({reason})"
        super().__init__(f"{text}: {detail}" if detail else text)
        self.session_id = session_id
        self.reason = reason
        self.detail = detail

    REASON = "SESSION_CLOSED"

    def error_metadata(self) -> dict[str, str]:
        return {
            "session_id": self.session_id,
            "close_reason": self.reason,
            "detail": self.detail[:256],
        }

    @classmethod
    def from_error_info(cls, message: str, metadata: Mapping[str, str]) -> HarkError:
        return cls(
            metadata.get("session_id", ""),
            metadata.get("close_reason", ""),
            metadata.get("detail", ""),
        )


class PlaybackExists(HarkError):
    """A playback of that id is already queued or playing (gRPC ALREADY_EXISTS)."""

    REASON = "PLAYBACK_EXISTS"


class SessionOver(SessionConflict):
    """A WHEP player asked for a CLOSED session (HTTP 409 with Retry-After): unlike a WHIP
    publisher, a player may be early for the session that replaces it, so it is told to retry."""

    def __init__(self, message: str, retry_after_s: int = 5) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    REASON = "SESSION_OVER"

    def error_metadata(self) -> dict[str, str]:
        return {"retry_after_s": str(self.retry_after_s)}

    @classmethod
    def from_error_info(cls, message: str, metadata: Mapping[str, str]) -> HarkError:
        return cls(message, _retry_after(metadata))


class RevisionOutOfRange(HarkError):
    """``since_revision`` is ahead of the session's latest revision (gRPC OUT_OF_RANGE)."""

    REASON = "REVISION_OUT_OF_RANGE"


class CapacityExceeded(HarkError):
    """A server limit is reached (HTTP 503 with Retry-After, gRPC RESOURCE_EXHAUSTED)."""

    def __init__(self, message: str, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    REASON = "CAPACITY_EXCEEDED"

    def error_metadata(self) -> dict[str, str]:
        return {"retry_after_s": str(self.retry_after_s)}

    @classmethod
    def from_error_info(cls, message: str, metadata: Mapping[str, str]) -> HarkError:
        return cls(message, _retry_after(metadata))


class Draining(HarkError):
    """The server is shutting down and takes no new sessions (HTTP 503, gRPC UNAVAILABLE)."""

    REASON = "DRAINING"


class SubscriberTooSlow(HarkError):
    """A subscriber fell too far behind and should reconnect (RESOURCE_EXHAUSTED)."""

    REASON = "SUBSCRIBER_TOO_SLOW"


class UnsupportedContentType(HarkError):
    """The request's Content-Type is not the one the resource takes (HTTP 415)."""

    REASON = "UNSUPPORTED_CONTENT_TYPE"


class RateLimited(HarkError):
    """Too many requests from one client (HTTP 429 with Retry-After)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    REASON = "RATE_LIMITED"

    def error_metadata(self) -> dict[str, str]:
        return {"retry_after_s": str(self.retry_after_s)}

    @classmethod
    def from_error_info(cls, message: str, metadata: Mapping[str, str]) -> HarkError:
        return cls(message, _retry_after(metadata))


def _retry_after(metadata: Mapping[str, str]) -> int:
    value = metadata.get("retry_after_s", "")
    return int(value) if value.isascii() and value.isdigit() and len(value) < 6 else 1


class UnsupportedContentEncoding(UnsupportedContentType):
    """The body has a ``Content-Encoding`` Hark does not take: it takes bodies uncompressed
    (HTTP 415 with ``Accept-Encoding: identity``)."""

    REASON = "UNSUPPORTED_CONTENT_ENCODING"


class BodyTimeout(HarkError):
    """The request body did not arrive in full within ``--http-body-timeout`` (HTTP 408)."""

    REASON = "BODY_TIMEOUT"
