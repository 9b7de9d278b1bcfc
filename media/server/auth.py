"""Session ids and bearer tokens: generated unguessable, compared in constant time."""

from __future__ import annotations

import hmac
import secrets


def new_session_id() -> str:
    """144 random bits, URL-safe."""
    return secrets.token_urlsafe(18)


def new_session_token() -> str:
    """A token valid for one session's WHIP calls: 192 random bits, URL-safe."""
    return secrets.token_urlsafe(24)


def tokens_match(given: str | None, expected: str | None) -> bool:
    """Whether ``given`` is ``expected``, without leaking how much of it matched."""
    if given is None or expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())
