"""One UDP socket per address family for every peer connection of the process (``--udp-port``).

Incoming datagrams are told apart (RFC 7983 by their first byte, RFC 8489 for STUN):

- a STUN request goes to the connection whose local ICE username fragment opens its ``USERNAME``
  (``local-ufrag:remote-ufrag``), and its source address is then bound to that connection;
- a STUN response goes to the connection waiting for its transaction id;
- anything else (STUN indications, DTLS, SRTP, SRTCP) goes by its source address.

Once a connection sends data on its chosen pair, it keeps that remote address only. A datagram
that matches nothing, or that would reach a connection from an address not its own, is dropped and
counted by cause: never delivered to another connection. Entries leave the tables when their
connection unregisters, so churn does not grow them.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

logger = logging.getLogger(__name__)

Address = tuple[str, int]

STUN_MAGIC: Final = b"\x21\x12\xa4\x42"
STUN_HEADER_BYTES: Final = 20
STUN_USERNAME: Final = 0x0006
STUN_MESSAGE_INTEGRITY: Final = 0x0008
HMAC_SHA1_BYTES: Final = 20
STUN_REQUEST: Final = 0
STUN_INDICATION: Final = 1
MAX_ADDRESSES_PER_CONNECTION: Final = 16
RECEIVE_BUFFER_BYTES: Final = 4 * 1024 * 1024
READ_BATCH: Final = 64  # datagrams read per wake-up: one socket carries every session's packets
MAX_DATAGRAM_BYTES: Final = 65536

DROP_CAUSES: Final = (
    "unknown_ufrag",  # a STUN request for no connection of this process
    "unknown_transaction",  # a STUN response nobody waits for
    "unknown_address",  # media or DTLS from an address bound to no connection
    "wrong_address",  # a STUN request for a connection that chose another remote address
    "address_in_use",  # a STUN request from an address bound to another connection
    "bad_integrity",  # a STUN request from a new address without the connection's password
    "too_many_addresses",  # a connection already has MAX_ADDRESSES_PER_CONNECTION addresses
    "send_buffer_full",  # outgoing: the socket's send buffer was full
)


class Endpoint(Protocol):
    """One ICE component of one peer connection, as the demultiplexer sees it."""

    @property
    def ufrag(self) -> str: ...

    @property
    def remote_ufrag(self) -> str | None: ...

    @property
    def family(self) -> int:
        """4 or 6: which of the shared sockets serves it."""

    @property
    def password(self) -> bytes:
        """The local ICE password: the key of its checks' MESSAGE-INTEGRITY."""

    def received(self, data: bytes, addr: Address, stun: bool) -> None: ...


def stun_class(data: bytes) -> int | None:
    """The STUN class (0 request, 1 indication, 2 success, 3 error) or None if not STUN."""
    if len(data) < STUN_HEADER_BYTES or data[0] > 3 or data[4:8] != STUN_MAGIC:
        return None
    kind = (data[0] << 8) | data[1]
    return ((kind >> 7) & 2) | ((kind >> 4) & 1)


def _stun_attribute(data: bytes, wanted: int) -> tuple[int, bytes] | None:
    """The offset and value of the first attribute of type ``wanted``, or None."""
    end = min(len(data), STUN_HEADER_BYTES + struct.unpack_from("!H", data, 2)[0])
    offset = STUN_HEADER_BYTES
    while offset + 4 <= end:
        kind, length = struct.unpack_from("!HH", data, offset)
        value = data[offset + 4 : offset + 4 + length]
        if kind == wanted:
            return (offset, value) if len(value) == length else None
        offset += 4 + length + (-length % 4)
    return None


def stun_username(data: bytes) -> str | None:
    """The USERNAME attribute of a STUN message, or None."""
    found = _stun_attribute(data, STUN_USERNAME)
    return found[1].decode("utf-8", "replace") if found else None


def stun_integrity_ok(data: bytes, key: bytes) -> bool:
    """Whether the message's MESSAGE-INTEGRITY is the HMAC-SHA1 of what precedes it under ``key``
    (RFC 8489 section 14.5: the header's length then counts up to the end of that attribute)."""
    found = _stun_attribute(data, STUN_MESSAGE_INTEGRITY)
    if found is None or len(found[1]) != HMAC_SHA1_BYTES:
        return False
    offset, digest = found
    covered = bytearray(data[:offset])
    struct.pack_into("!H", covered, 2, offset + 4 + HMAC_SHA1_BYTES - STUN_HEADER_BYTES)
    return hmac.compare_digest(hmac.digest(key, bytes(covered), "sha1"), digest)


class UdpMux:
    """The shared sockets of ``port`` and the tables that route what they receive."""

    def __init__(
        self,
        port: int,
        addresses: Sequence[str] = (),
        on_drop: Callable[[str], None] = lambda cause: None,
    ) -> None:
        self.port = port
        self._addresses = list(addresses)
        self._on_drop = on_drop
        self._sockets: dict[int, socket.socket] = {}
        self._bound: dict[int, str] = {}
        self._by_ufrag: dict[tuple[str, int], list[Endpoint]] = {}
        self._by_address: dict[Address, Endpoint] = {}
        self._by_transaction: dict[bytes, Endpoint] = {}
        self._addresses_of: dict[Endpoint, set[Address]] = {}
        self._chosen: dict[Endpoint, Address] = {}

    async def open(self) -> None:
        """Bind one socket per address family (OSError naming the address if one asked for by
        --ice-address, or the IPv4 one, cannot be bound; without IPv6, only a warning)."""
        for family in (4, 6):
            wanted = [a for a in self._addresses if ipaddress.ip_address(a).version == family]
            if self._addresses and not wanted:
                continue
            host = wanted[0] if len(wanted) == 1 else ("0.0.0.0" if family == 4 else "::")
            try:
                await self._bind(family, host)
            except OSError as exc:
                if wanted or family == 4:
                    raise
                logger.warning("%s: no IPv6 host candidates", exc)

    async def _bind(self, family: int, host: str) -> None:
        sock = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
        try:
            if family == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER_BYTES)
            sock.setblocking(False)
            sock.bind((host, self.port))
        except OSError as exc:
            sock.close()
            where = f"[{host}]:{self.port}" if family == 6 else f"{host}:{self.port}"
            raise OSError(
                f"cannot listen for media (--udp-port) on {where}: {exc.strerror or exc}"
            ) from exc
        # Read directly rather than through a datagram transport, which reads one datagram per
        # wake-up of the loop: with every session on one socket, that is a poll per packet.
        asyncio.get_running_loop().add_reader(sock.fileno(), self._read, sock)
        self._sockets[family] = sock
        self._bound[family] = host

    def close(self) -> None:
        loop = asyncio.get_running_loop()
        for sock in self._sockets.values():
            loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()

    def _read(self, sock: socket.socket) -> None:
        for _ in range(READ_BATCH):
            try:
                data, addr = sock.recvfrom(MAX_DATAGRAM_BYTES)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error for an earlier send: nothing to read
                logger.debug("UDP error on the shared socket: %s", exc)
                continue
            self.route(data, (addr[0], addr[1]))

    def serves(self, address: str) -> bool:
        """Whether a host candidate on ``address`` can be served by a shared socket."""
        family = ipaddress.ip_address(address).version
        bound = self._bound.get(family)
        return bound is not None and bound in (address, "0.0.0.0", "::")

    def sockets(self) -> int:
        return len(self._sockets)

    def entries(self) -> int:
        """Entries in the routing tables (zero once every connection is closed)."""
        return (
            sum(len(v) for v in self._by_ufrag.values())
            + len(self._by_address)
            + len(self._by_transaction)
            + len(self._addresses_of)
            + len(self._chosen)
        )

    # what connections do

    def register(self, endpoint: Endpoint) -> None:
        self._by_ufrag.setdefault((endpoint.ufrag, endpoint.family), []).append(endpoint)
        self._addresses_of[endpoint] = set()

    def unregister(self, endpoint: Endpoint) -> None:
        key = (endpoint.ufrag, endpoint.family)
        same = self._by_ufrag.get(key, [])
        if endpoint in same:
            same.remove(endpoint)
        if not same:
            self._by_ufrag.pop(key, None)
        for addr in self._addresses_of.pop(endpoint, set()):
            if self._by_address.get(addr) is endpoint:
                del self._by_address[addr]
        self._chosen.pop(endpoint, None)
        for transaction in [t for t, e in self._by_transaction.items() if e is endpoint]:
            del self._by_transaction[transaction]

    def expect(self, transaction_id: bytes, endpoint: Endpoint) -> None:
        self._by_transaction[transaction_id] = endpoint

    def forget(self, transaction_id: bytes) -> None:
        self._by_transaction.pop(transaction_id, None)

    def choose(self, endpoint: Endpoint, addr: Address) -> None:
        """``endpoint`` sends data to ``addr``: from now on, only ``addr`` reaches it."""
        if self._chosen.get(endpoint) == addr or endpoint not in self._addresses_of:
            return
        self._chosen[endpoint] = addr
        bound = self._addresses_of[endpoint]
        for other in bound - {addr}:
            if self._by_address.get(other) is endpoint:
                del self._by_address[other]
        bound.intersection_update({addr})
        if addr not in self._by_address:
            self._bind_address(endpoint, addr)

    def sendto(self, data: bytes, addr: Address) -> None:
        sock = self._sockets.get(6 if ":" in addr[0] else 4)
        if sock is None:
            return
        try:
            sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            self._on_drop("send_buffer_full")  # UDP: a full send buffer loses the datagram
        except OSError as exc:
            logger.debug("UDP send to %s failed: %s", addr, exc)

    # what the sockets receive

    def route(self, data: bytes, addr: Address) -> None:
        kind = stun_class(data)
        if kind is None or kind == STUN_INDICATION:
            endpoint = self._by_address.get(addr)
            if endpoint is None:
                self._on_drop("unknown_address")
            else:
                endpoint.received(data, addr, kind is not None)
        elif kind == STUN_REQUEST:
            self._route_request(data, addr)
        else:
            waiting = self._by_transaction.get(data[8:20])
            if waiting is None:
                self._on_drop("unknown_transaction")
            else:
                waiting.received(data, addr, True)

    def _route_request(self, data: bytes, addr: Address) -> None:
        endpoint = self._request_target(data, 6 if ":" in addr[0] else 4)
        if endpoint is None:
            self._on_drop("unknown_ufrag")
            return
        owner = self._by_address.get(addr)
        chosen = self._chosen.get(endpoint)
        if owner is not None and owner is not endpoint:
            self._on_drop("address_in_use")
        elif chosen is not None and chosen != addr:
            self._on_drop("wrong_address")
        elif owner is None and len(self._addresses_of[endpoint]) >= MAX_ADDRESSES_PER_CONNECTION:
            self._on_drop("too_many_addresses")
        elif owner is None and not stun_integrity_ok(data, endpoint.password):
            self._on_drop("bad_integrity")  # knowing the ufrag does not bind an address
        else:
            if owner is None:
                self._bind_address(endpoint, addr)
            endpoint.received(data, addr, True)

    def _request_target(self, data: bytes, family: int) -> Endpoint | None:
        username = stun_username(data)
        if username is None:
            return None
        local, _, remote = username.partition(":")
        same = self._by_ufrag.get((local, family))
        if not same:
            return None
        if len(same) == 1:
            return same[0]
        matching = [e for e in same if e.remote_ufrag == remote]
        return matching[0] if len(matching) == 1 else None

    def _bind_address(self, endpoint: Endpoint, addr: Address) -> None:
        self._by_address[addr] = endpoint
        self._addresses_of[endpoint].add(addr)


class SharedSocketView(asyncio.DatagramTransport):
    """What a muxed protocol holds as its transport: sends through the shared socket; closing
    it closes nothing shared."""

    def __init__(self, mux: UdpMux, sockname: Address) -> None:
        super().__init__({"sockname": sockname})
        self._mux = mux

    def sendto(self, data: Any, addr: Any = None) -> None:
        self._mux.sendto(bytes(data), addr)

    def close(self) -> None:
        return None
