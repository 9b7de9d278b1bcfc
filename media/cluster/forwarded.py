"""How a forwarded request says so: the metadata (gRPC) and headers (HTTP) every member uses.

A member forwarding a request adds the original client's address and a signature over it made with
the cluster secret (``SessionTokens.sign``). The receiving member never forwards such a request
again (whatever its signature: a forged one is answered locally, never relayed), and trusts the
client address only when the signature checks, so a plain client cannot pose as another address.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from media.server.auth import SessionTokens

FORWARDED: Final = "x-hark-forwarded"
CLIENT_ADDRESS: Final = "x-hark-client-address"
SCOPE: Final = "x-hark-scope"
FORWARDED_HEADER: Final = "X-Hark-Forwarded"
CLIENT_ADDRESS_HEADER: Final = "X-Hark-Client-Address"

MAX_ADDRESS: Final = 128


def signature(tokens: SessionTokens, client_address: str) -> str:
    """What ``FORWARDED`` carries for a request forwarded on behalf of ``client_address``."""
    return tokens.sign("client-address", client_address)


def forwarded_pairs(tokens: SessionTokens, client_address: str) -> list[tuple[str, str]]:
    """The (lower-case) metadata pairs a forwarded gRPC call carries."""
    address = client_address[:MAX_ADDRESS]
    return [(FORWARDED, signature(tokens, address)), (CLIENT_ADDRESS, address)]


def is_forwarded(metadata: Iterable[tuple[str, str | bytes]]) -> bool:
    """Whether a call says it was forwarded by a member: it is then never forwarded again."""
    return any(key.lower() == FORWARDED for key, _ in metadata)


def trusted_client_address(
    tokens: SessionTokens, signature_given: str | None, client_address: str | None
) -> str | None:
    """The original client's address when the forwarding member's signature checks, else None."""
    if signature_given is None or client_address is None or len(client_address) > MAX_ADDRESS:
        return None
    if not tokens.signed(signature_given, "client-address", client_address):
        return None
    return client_address


def client_address_from_metadata(
    tokens: SessionTokens, metadata: Iterable[tuple[str, str | bytes]]
) -> str | None:
    """``trusted_client_address`` for a gRPC call's invocation metadata."""
    pairs: Mapping[str, str | bytes] = {key.lower(): value for key, value in metadata}
    given, address = pairs.get(FORWARDED), pairs.get(CLIENT_ADDRESS)
    return trusted_client_address(
        tokens,
        given if isinstance(given, str) else None,
        address if isinstance(address, str) else None,
    )
