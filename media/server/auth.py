"""Session ids' bearer tokens: minted from a secret every node shares, compared in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


def new_secret() -> bytes:
    """A per-process secret, for a server that shares it with nobody."""
    return secrets.token_bytes(32)


def secret_from_text(text: str) -> bytes:
    """The signing key for ``--cluster-secret`` (or, without one, ``--token``)."""
    return hashlib.sha256(b"hark cluster secret\0" + text.encode()).digest()


def secret_for(shared: str | None) -> bytes:
    """The key of ``--cluster-secret`` (else ``--token``), or a fresh one only this process has."""
    return secret_from_text(shared) if shared is not None else new_secret()


class SessionTokens:
    """Per-session tokens any node holding the secret can check without asking the minting node."""

    def __init__(self, secret: bytes) -> None:
        self._secret = secret

    def mint(self, session_id: str) -> str:
        """The token valid for ``session_id``'s WHIP calls: 192 bits, URL-safe."""
        digest = hmac.new(self._secret, b"session\0" + session_id.encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()[:24]).decode()

    def verify(self, session_id: str, given: str | None) -> bool:
        return tokens_match(given, self.mint(session_id))

    def sign(self, *parts: str) -> str:
        """A signature over ``parts`` (forwarded requests prove they come from a member)."""
        digest = hmac.new(self._secret, "\0".join(("forward", *parts)).encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()[:18]).decode()

    def signed(self, signature: str | None, *parts: str) -> bool:
        return tokens_match(signature, self.sign(*parts))


def tokens_match(given: str | None, expected: str | None) -> bool:
    """Whether ``given`` is ``expected``, without leaking how much of it matched."""
    if given is None or expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())
