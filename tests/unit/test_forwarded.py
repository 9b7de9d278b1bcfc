"""The forwarded-request marker: a member's signature vouches for one client address only."""

from __future__ import annotations

from media.cluster.forwarded import (
    CLIENT_ADDRESS,
    FORWARDED,
    client_address_from_metadata,
    forwarded_pairs,
    is_forwarded,
    may_forward,
    trusted_client_address,
)
from media.cluster.grpc_forward import peer_address
from media.cluster.routing import Elsewhere
from media.core.session_ids import Owner
from media.server.auth import SessionTokens, secret_from_text

MEMBER = SessionTokens(secret_from_text("the cluster secret, shared"))
STRANGER = SessionTokens(secret_from_text("some other secret entirely"))


def test_a_members_signature_vouches_for_the_address_it_signed_and_no_other() -> None:
    pairs = forwarded_pairs(MEMBER, "203.0.113.7")
    assert is_forwarded(pairs) and dict(pairs)[CLIENT_ADDRESS] == "203.0.113.7"
    assert client_address_from_metadata(MEMBER, pairs) == "203.0.113.7"
    signature = dict(pairs)[FORWARDED]
    assert trusted_client_address(MEMBER, signature, "198.51.100.1") is None
    assert trusted_client_address(STRANGER, signature, "203.0.113.7") is None
    assert trusted_client_address(MEMBER, None, "203.0.113.7") is None
    assert trusted_client_address(MEMBER, "forged", "203.0.113.7") is None
    assert not is_forwarded([("authorization", "Bearer x")])


def test_grpc_peers_become_addresses() -> None:
    assert peer_address("ipv4:192.0.2.1:50123") == "192.0.2.1"
    assert peer_address("ipv6:[2001:db8::1]:50123") == "2001:db8::1"
    assert peer_address("unix:/run/hark/w1.grpc.sock") == "unix:/run/hark/w1.grpc.sock"


def test_a_forwarded_request_goes_on_only_to_a_sibling_worker() -> None:
    other_node = Elsewhere(Owner("beta", 1), "beta.internal:50051", "http://beta.internal:8080")
    sibling = Elsewhere(
        Owner("alpha", 1), "unix:/run/hark/w1.grpc.sock", "http://alpha:8080", "/run/w1.http.sock"
    )
    assert may_forward(other_node, forwarded=False) and may_forward(sibling, forwarded=False)
    assert may_forward(sibling, forwarded=True)
    assert not may_forward(other_node, forwarded=True)
