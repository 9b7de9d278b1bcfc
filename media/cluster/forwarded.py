"""How a forwarded request says so: the metadata (gRPC) and headers (HTTP) every member uses.

A member forwarding a request adds the original client's address and a signature over it made with
the cluster secret (``SessionTokens.sign``). The receiving member trusts the client address only
when the signature checks, so a plain client cannot pose as another address. It forwards such a
request at most once more, to the sibling worker the session id names (``may_forward``): another
node reached at its public port lands on any of its workers. Never to another node, so nothing
goes round in circles, whatever the signature.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final

from media.cluster.routing import Elsewhere
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


def may_forward(route: Elsewhere, forwarded: bool) -> bool:
    """Whether a request for a session ``route`` names is relayed there: always when a client
    sent it here; when a member did (``forwarded``), only to a sibling worker's Unix socket."""
    return not forwarded or route.http_socket is not None


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
