"""Hark: a WebRTC media plugin service for voice agents.

The public API: ``HarkClient`` (the Python SDK), ``Config`` (the server's settings) and the error
tree (``HarkError`` and its subclasses). ``HarkClient`` and ``Config`` load on first use, so that
``import media`` (and every ``media.*`` module) stays free of grpc, PyAV and aiortc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from media.errors import (
    BodyTimeout,
    CapacityExceeded,
    Draining,
    HarkError,
    IceRestartUnsupported,
    InvalidOffer,
    InvalidRequest,
    InvalidTrickle,
    MalformedRequest,
    NotReady,
    OfferTooLarge,
    PlaybackExists,
    PlayerNotFound,
    PublisherExists,
    RateLimited,
    ReadyDeadlineExceeded,
    RevisionOutOfRange,
    SessionClosed,
    SessionConflict,
    SessionNotFound,
    SessionOver,
    StaleEtag,
    SubscriberTooSlow,
    Unauthorized,
    UnsupportedContentEncoding,
    UnsupportedContentType,
    UnsupportedOffer,
)

if TYPE_CHECKING:
    from media.client.hark_client import HarkClient
    from media.config import Config

__version__ = "0.1.0"

_LOADED_ON_USE = {"HarkClient": "media.client.hark_client", "Config": "media.config"}

__all__ = [
    "BodyTimeout",
    "CapacityExceeded",
    "Config",
    "Draining",
    "HarkClient",
    "HarkError",
    "IceRestartUnsupported",
    "InvalidOffer",
    "InvalidRequest",
    "InvalidTrickle",
    "MalformedRequest",
    "NotReady",
    "OfferTooLarge",
    "PlaybackExists",
    "PlayerNotFound",
    "PublisherExists",
    "RateLimited",
    "ReadyDeadlineExceeded",
    "RevisionOutOfRange",
    "SessionClosed",
    "SessionConflict",
    "SessionNotFound",
    "SessionOver",
    "StaleEtag",
    "SubscriberTooSlow",
    "Unauthorized",
    "UnsupportedContentEncoding",
    "UnsupportedContentType",
    "UnsupportedOffer",
    "__version__",
]


def __getattr__(name: str) -> Any:
    module = _LOADED_ON_USE.get(name)
    if module is None:
        raise AttributeError(f"module 'media' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
