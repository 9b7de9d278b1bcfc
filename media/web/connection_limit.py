"""A bound on open HTTP connections per client address, in front of aiohttp's protocol.

aiohttp has no per-address limit, so every accepted connection passes through ``Guarded``: while
its address holds fewer than the limit, the connection is handed to aiohttp's own protocol
untouched; past it, the client gets a 503 and the connection is closed before aiohttp sees it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Final

logger = logging.getLogger(__name__)

REFUSAL_TEXT: Final = b"too many open connections from your address (--max-connections-per-ip)\n"
REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Retry-After: 1\r\n"
    b"Connection: close\r\n"
    b"Content-Length: " + str(len(REFUSAL_TEXT)).encode() + b"\r\n\r\n" + REFUSAL_TEXT
)


class ConnectionLimit:
    """Open connections per client address; ``limit`` 0 means no bound."""

    def __init__(self, limit: int, on_refused: Callable[[], None]) -> None:
        self.limit = limit
        self._on_refused = on_refused
        self._open: Counter[str] = Counter()

    def admit(self, address: str) -> bool:
        if self.limit and self._open[address] >= self.limit:
            self._on_refused()
            return False
        self._open[address] += 1
        return True

    def release(self, address: str) -> None:
        self._open[address] -= 1
        if self._open[address] <= 0:
            del self._open[address]

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
        if not self._limit.admit(self._address):
            logger.debug("refused a connection over --max-connections-per-ip")
            assert isinstance(transport, asyncio.WriteTransport)
            transport.write(REFUSAL)
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
