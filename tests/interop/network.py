"""This host's addresses for ICE when the peer is another process's WebRTC stack."""

from __future__ import annotations

import ifaddr
import pytest


def lan_addresses() -> tuple[str, ...]:
    """This host's IPv4 addresses but loopback.

    The loopback-only candidates the other tests use do not reach libnice or Chromium, which
    leave loopback out of their own candidates; a check from a LAN address to 127.0.0.1 is
    dropped, so Hark must also offer an address their candidates can reach.
    """
    found = tuple(
        ip.ip
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str) and not ip.ip.startswith("127.")
    )
    if not found:
        pytest.skip("this host has no network interface but loopback, which the peer leaves out")
    return found
