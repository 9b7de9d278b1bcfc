"""Bounds on open HTTP connections, per client address and in all, in front of aiohttp.

aiohttp has no such limits, so every accepted connection passes through ``Guarded``: while its
address (an IPv6 client's whole /64, which one host usually holds) and the server are under their
limits, the connection is handed to aiohttp's own protocol untouched; past one, the client gets a
503 and the connection is closed before aiohttp sees it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections import Counter
from collections.abc import Callable
from typing import Final

logger = logging.getLogger(__name__)


def _refusal(text: bytes) -> bytes:
    return (
        b"HTTP/1.1 503 Service Unavailable\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Retry-After: 1\r\n"
        b"Connection: close\r\n"
        b"Content-Length: " + str(len(text)).encode() + b"\r\n\r\n" + text
    )


PER_ADDRESS_REFUSAL: Final = _refusal(
    b"too many open connections from your address (--max-connections-per-ip)\n"
)
TOTAL_REFUSAL: Final = _refusal(
    b"the server has all the connections it takes (--max-connections)\n"
)


class ConnectionLimit:
    """Open connections per client address (``limit``) and in all (``total``); 0: no bound."""

    def __init__(self, limit: int, on_refused: Callable[[], None], total: int = 0) -> None:
        self.limit = limit
        self.total = total
        self._on_refused = on_refused
        self._open: Counter[str] = Counter()
        self._open_total = 0

    def admit(self, address: str) -> bytes | None:
        """None when the connection may go ahead (and is counted), else the 503 to answer."""
        group = address_group(address)
        refusal = None
        if self.total and self._open_total >= self.total:
            refusal = TOTAL_REFUSAL
        elif self.limit and self._open[group] >= self.limit:
            refusal = PER_ADDRESS_REFUSAL
        if refusal is not None:
            self._on_refused()
            return refusal
        self._open[group] += 1
        self._open_total += 1
        return None

    def release(self, address: str) -> None:
        group = address_group(address)
        self._open_total -= 1
        self._open[group] -= 1
        if self._open[group] <= 0:
            del self._open[group]

    def guard(self, make_protocol: Callable[[], asyncio.Protocol]) -> Callable[[], Guarded]:
        """A protocol factory for ``loop.create_server`` wrapping ``make_protocol``'s."""
        return lambda: Guarded(self, make_protocol)


class Guarded(asyncio.Protocol):
    """Admits a connection through ``ConnectionLimit`` and then delegates every call."""

    def __init__(
        self, limit: ConnectionLimit, make_protocol: Callable[[], asyncio.Protocol]
    ) -> None:
        self._limit = limit
        self._make_protocol = make_protocol
        self._inner: asyncio.Protocol | None = None
        self._address = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._address = client_address(transport)
        refusal = self._limit.admit(self._address)
        if refusal is not None:
            logger.debug("refused a connection over a connection limit")
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(refusal)
            transport.close()
            return
        self._inner = self._make_protocol()
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is None:
            return
        self._limit.release(self._address)
        inner, self._inner = self._inner, None
        inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


def client_address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "unknown"


def address_group(address: str) -> str:
    """What the per-address bound counts: an IPv4 address, or an IPv6 client's /64 (a host
    usually holds a whole /64, and could otherwise open 64 connections from each of its
    addresses); an IPv4-mapped IPv6 address counts as its IPv4 address."""
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)
