"""Which connections the HTTP connection bounds count together, and when they refuse."""

from __future__ import annotations

from media.web.connection_limit import (
    PER_ADDRESS_REFUSAL,
    TOTAL_REFUSAL,
    ConnectionLimit,
    address_group,
)


def test_an_ipv6_client_counts_as_its_whole_64_and_a_mapped_ipv4_as_its_ipv4() -> None:
    assert address_group("2001:db8:1:2::1") == address_group("2001:db8:1:2:ffff::9")
    assert address_group("2001:db8:1:2::1") != address_group("2001:db8:1:3::1")
    assert address_group("::ffff:192.0.2.7") == address_group("192.0.2.7") == "192.0.2.7"
    assert address_group("fe80::1%eth0") == address_group("fe80::2")
    assert address_group("unknown") == "unknown"


def test_addresses_of_one_64_share_the_per_address_bound() -> None:
    refusals: list[None] = []
    limit = ConnectionLimit(2, lambda: refusals.append(None))
    assert limit.admit("2001:db8::1") is None
    assert limit.admit("2001:db8::2") is None
    assert limit.admit("2001:db8::3") == PER_ADDRESS_REFUSAL
    assert limit.admit("2001:db8:0:1::1") is None  # another /64
    limit.release("2001:db8::1")
    assert limit.admit("2001:db8::3") is None
    assert len(refusals) == 1


def test_the_total_bound_holds_across_addresses() -> None:
    refusals: list[None] = []
    limit = ConnectionLimit(0, lambda: refusals.append(None), total=2)
    assert limit.admit("192.0.2.1") is None
    assert limit.admit("192.0.2.2") is None
    assert limit.admit("192.0.2.3") == TOTAL_REFUSAL
    limit.release("192.0.2.1")
    assert limit.admit("192.0.2.3") is None
    assert len(refusals) == 1
