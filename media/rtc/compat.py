"""Every use of a private aiortc or aioice name, or of behaviour they do not document, in one place.

aiortc and aioice have no API for what these hooks do. Each one is checked against the installed
versions at start-up (``check()``: a WARNING names what is lost when a hook cannot apply) and by a
contract test in ``tests/integration/test_aiortc_contract.py``, so an upgrade that moves one fails
loudly instead of changing behaviour silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import ipaddress
import logging
import random
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import aioice.ice
import aioice.stun
import aiortc.clock
import pylibsrtp
from aioice import Candidate
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import RtpPacket, is_rtcp

from media.aio import cancel_and_wait
from media.rtc.host_candidates import HARK_GATHERING, announce, host_candidate
from media.rtc.udp_mux import Address, SharedSocketView, UdpMux

logger = logging.getLogger(__name__)

ORPHAN_WATCH_POLLS: Final = 5

# the publishers' receive path: Hark decodes their audio itself, so it takes their RTP packets
# where aiortc would put them into its jitter buffer, and hands SRTP packets from aioice straight
# to aiortc's RTP handling

JITTER_BUFFER: Final = "_RTCRtpReceiver__jitter_buffer"
_NO_FRAME: Final = (False, None)  # aiortc's (pli_flag, encoded_frame): no PLI, nothing to decode
_RTP_FIRST_BYTES: Final = range(128, 192)  # RTP and RTCP (RFC 7983); never STUN, DTLS or TURN


class _PacketSink:
    """Stands where aiortc keeps a receiver's jitter buffer: hands each packet on, keeps none."""

    def __init__(self, on_packet: Callable[[RtpPacket], None]) -> None:
        self._on_packet = on_packet

    def add(self, packet: RtpPacket) -> tuple[bool, None]:
        self._on_packet(packet)
        return _NO_FRAME


def take_rtp_packets(receiver: RTCRtpReceiver, on_packet: Callable[[RtpPacket], None]) -> bool:
    """Hand each RTP packet ``receiver`` accepts to ``on_packet`` (in arrival order) instead of
    to aiortc's jitter buffer, whose frames go to a decoder thread per track (a thread hop per
    frame, PyAV decoding to 48 kHz stereo). Hark decodes the packets itself: the thread idles,
    ``getStats()`` and RTCP receiver reports go on. False when the buffer is elsewhere."""
    buffer = getattr(receiver, JITTER_BUFFER, None)
    if buffer is None or not callable(getattr(buffer, "add", None)):
        return False
    setattr(receiver, JITTER_BUFFER, _PacketSink(on_packet))
    return True


def receive_rtp_directly(pc: RTCPeerConnection) -> bool:
    """Hand each SRTP packet ``pc``'s ICE connection receives straight to aiortc's RTP handling,
    as aiortc's DTLS task would, without the queue and the task switch between them.

    aioice first parses every datagram as STUN (RTP fails), then queues it for that task, which
    wakes once per packet. Here a datagram whose first byte says RTP or RTCP skips the STUN parse,
    and once DTLS is up an SRTP packet skips the queue; RTCP, DTLS, and whatever arrives while
    the queue is not empty still go through it, in order. False when these moved.
    """
    dtls: Any = pc.getTransceivers()[0].receiver.transport
    connection: Any = getattr(dtls.transport, "_connection", None)
    queue = getattr(connection, "_queue", None)
    if not isinstance(queue, asyncio.Queue) or not _hands_srtp_through_a_queue(pc):
        return False
    queued = connection.data_received

    def data_received(data: bytes, component: int) -> None:
        srtp = dtls._rx_srtp
        rtp = srtp and data and data[0] in _RTP_FIRST_BYTES and not is_rtcp(data)
        if not rtp or queue.qsize():
            queued(data, component)
        elif not _handle_srtp(dtls, srtp, data):
            connection.data_received = queued

    connection.data_received = data_received
    for protocol in connection._protocols:
        if type(protocol) is aioice.ice.StunProtocol:
            protocol.datagram_received = _rtp_skips_stun_parsing(protocol, connection)  # type: ignore[method-assign,assignment]
    return True


def _handle_srtp(dtls: Any, srtp: pylibsrtp.Session, data: bytes) -> bool:
    """What aiortc's DTLS transport does with an SRTP packet; False (said once, at WARNING) if
    that had to wait or failed: the connection then goes back to aioice's queue."""
    dtls._RTCDtlsTransport__rx_bytes += len(data)
    dtls._RTCDtlsTransport__rx_packets += 1
    arrival_time_ms = aiortc.clock.current_ms()
    try:
        data = srtp.unprotect(data)
    except pylibsrtp.Error:
        return True  # aiortc drops it too
    handling = dtls._handle_rtp_data(data, arrival_time_ms)
    try:
        handling.send(None)
    except StopIteration:
        return True
    except Exception:  # raised into aioice's datagram callback, it would close the socket
        logger.exception("handling an RTP packet failed: audio goes through aioice's queue again")
        return False
    handling.close()
    logger.warning("aiortc's RTP handling waits now: audio goes through aioice's queue again")
    return False


def _rtp_skips_stun_parsing(protocol: Any, connection: Any) -> Callable[[bytes, Any], None]:
    parse = protocol.datagram_received
    component = protocol.local_candidate.component

    def datagram_received(data: bytes, addr: Any) -> None:
        if data and data[0] in _RTP_FIRST_BYTES:
            connection.data_received(data, component)
        else:
            parse(data, addr)

    return datagram_received


def _feeds_packets_to_a_jitter_buffer(pc: RTCPeerConnection) -> bool:
    receiver = pc.getTransceivers()[0].receiver
    buffer = getattr(receiver, JITTER_BUFFER, None)
    handler = getattr(RTCRtpReceiver, "_handle_rtp_packet", None)
    if buffer is None or not callable(getattr(buffer, "add", None)) or handler is None:
        return False
    source = inspect.getsource(handler)
    return "= self.__jitter_buffer.add(packet)" in source and "pli_flag, encoded_frame" in source


def _hands_srtp_through_a_queue(pc: RTCPeerConnection) -> bool:
    receiver: Any = pc.getTransceivers()[0].receiver
    dtls = receiver.transport
    connection = getattr(dtls.transport, "_connection", None)
    dtls_source = inspect.getsource(RTCDtlsTransport._recv_next)
    return (
        isinstance(getattr(connection, "_queue", None), asyncio.Queue)
        and isinstance(getattr(connection, "_protocols", None), list)
        and "self._queue.put_nowait((data, component))"
        in inspect.getsource(aioice.ice.Connection.data_received)
        and "self.receiver.data_received(data, self.local_candidate.component)"
        in inspect.getsource(aioice.ice.StunProtocol.datagram_received)
        and "data = self._rx_srtp.unprotect(data)" in dtls_source
        and "await self._handle_rtp_data(data, arrival_time_ms=arrival_time_ms)" in dtls_source
        and "self.__rx_bytes += len(data)" in dtls_source
        and "self.__rx_packets += 1" in dtls_source
        and hasattr(dtls, "_rx_srtp")
        and isinstance(getattr(dtls, "_RTCDtlsTransport__rx_bytes", None), int)
        and receiver._RTCRtpReceiver__remote_bitrate_estimator is None  # audio: nothing awaited
        and receiver._RTCRtpReceiver__nack_generator is None
    )


def set_jitter_frames(receiver: RTCRtpReceiver, frames: int) -> bool:
    """Hold ``frames`` audio frames in aiortc's jitter buffer before decoding (aiortc: 4).

    aiortc has no API for it; the tests' and benchmarks' WHEP listeners use it. Returns False
    when this aiortc version keeps the buffer elsewhere (then its default stays).
    """
    buffer = getattr(receiver, JITTER_BUFFER, None)
    if buffer is None or not isinstance(getattr(buffer, "_prefetch", None), int):
        return False
    buffer._prefetch = frames
    return True


def tap_opus_packets(
    receiver: RTCRtpReceiver, payload_type: int, on_packet: Callable[[bytes, int], None]
) -> bool:
    """Call ``on_packet(payload, rtp_timestamp)`` for every Opus packet ``receiver`` gets.

    aiortc hands only decoded frames to the application; the tests and benchmarks see the packets
    a WHEP player receives through this private method (Hark's publishers: ``take_rtp_packets``).
    Returns False when this aiortc version has no such method (then nothing is forwarded).
    """
    original = getattr(receiver, "_handle_rtp_packet", None)
    if original is None or not asyncio.iscoroutinefunction(original):
        return False

    async def tapped(packet: Any, arrival_time_ms: int) -> None:
        if packet.payload_type == payload_type and packet.payload:
            on_packet(packet.payload, packet.timestamp)
        await original(packet, arrival_time_ms)

    receiver._handle_rtp_packet = tapped  # type: ignore[method-assign]
    return True


def ice_connections(pc: RTCPeerConnection) -> list[Any]:
    """The aioice connections under a peer connection (empty if aiortc hides them elsewhere)."""
    found = []
    for transceiver in pc.getTransceivers():
        ice = getattr(transceiver.receiver.transport, "transport", None)
        connection = getattr(ice, "_connection", None)
        if connection is not None and connection not in found:
            found.append(connection)
    return found


async def stop_orphaned_consent_checks(connections: Sequence[Any]) -> None:
    """Cancel consent checks that aioice 0.13 starts after a close that raced ICE completion.

    ``Connection.connect()`` starts the RFC 7675 consent task when it resumes after the check
    list completed; if ``close()`` ran in between, nothing ever cancels that task, and it keeps
    sending STUN on closed sockets for ~30 s. ``connect()`` polls every 20 ms, so watching for
    a little longer than that and cancelling what appears ends it.
    """
    for _ in range(ORPHAN_WATCH_POLLS):
        await asyncio.sleep(0.02)
        for connection in connections:
            task = getattr(connection, "_query_consent_task", None)
            if getattr(connection, "_closing", False) and isinstance(task, asyncio.Task):
                await cancel_and_wait(task)


async def _start_nothing(*args: Any) -> None:
    return None


def start_nothing_once_closing(pc: RTCPeerConnection) -> None:
    """Make ``pc``'s transceivers start nothing from now on (call it before ``pc.close()``).

    aiortc starts a transceiver's sender and receiver (their RTCP tasks) from a connect task of
    its own once DTLS is up. When ``close()`` lands while that task waits on the handshake, the
    transceivers are stopped first and started after, and their RTCP tasks run forever.
    """
    for transceiver in pc.getTransceivers():
        transceiver.receiver.receive = _start_nothing  # type: ignore[method-assign,assignment]
        transceiver.sender.send = _start_nothing  # type: ignore[method-assign,assignment]


def restrict_host_candidates(addresses: Sequence[str]) -> Callable[[], None]:
    """Offer only ``addresses`` as ICE host candidates, for every peer connection in the process,
    until the returned callable is called.

    aioice offers every interface but loopback and has no setting for it; a multi-homed host, or
    a test that must stay on 127.0.0.1, needs to choose.
    """
    chosen = list(addresses)
    original = aioice.ice.get_host_addresses

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    def undo() -> None:
        if aioice.ice.get_host_addresses is host_addresses:
            aioice.ice.get_host_addresses = original

    aioice.ice.get_host_addresses = host_addresses
    return undo


class MuxedStunProtocol(aioice.ice.StunProtocol):
    """An aioice host protocol whose socket is the process's shared one (``--udp-port``): it
    sends through the ``UdpMux`` and receives what the mux routes to it."""

    def __init__(
        self, connection: aioice.ice.Connection, mux: UdpMux, component: int, bound: str
    ) -> None:
        super().__init__(connection)
        self._mux = mux
        self._chosen: Address | None = None
        self.connection_made(SharedSocketView(mux, (bound, mux.port)))
        self.local_candidate = host_candidate(component, bound, mux.port)
        self._family = ipaddress.ip_address(bound).version
        mux.register(self)

    @property
    def ufrag(self) -> str:
        return self.receiver.local_username

    @property
    def remote_ufrag(self) -> str | None:
        return self.receiver.remote_username

    @property
    def family(self) -> int:
        return self._family

    @property
    def password(self) -> bytes:
        return self.receiver.local_password.encode()

    def received(self, data: bytes, addr: Address, stun: bool) -> None:
        if stun:
            self.datagram_received(data, addr)
        else:  # what aioice does with a datagram that does not parse as STUN, without the parse
            self.receiver.data_received(data, self.local_candidate.component)

    async def request(
        self,
        request: Any,
        addr: tuple[str, int],
        integrity_key: bytes | None = None,
        retransmissions: int | None = None,
    ) -> Any:
        self._mux.expect(request.transaction_id, self)
        try:
            return await super().request(request, addr, integrity_key, retransmissions)
        finally:
            self._mux.forget(request.transaction_id)

    async def send_data(self, data: bytes, addr: tuple[str, int]) -> None:
        if self._chosen != addr:  # aioice sends data on its nominated pair only
            self._chosen = addr
            self._mux.choose(self, addr)
        self._mux.sendto(data, addr)

    def send_stun(self, message: Any, addr: tuple[str, int]) -> None:
        self._mux.sendto(bytes(message), addr)

    async def close(self) -> None:
        self._mux.unregister(self)
        self.connection_lost(None)


def _shared_host_candidates(
    connection: aioice.ice.Connection, mux: UdpMux, component: int, addresses: Sequence[str]
) -> tuple[list[MuxedStunProtocol], list[Candidate]]:
    """One protocol per address family (what arrives on a family's socket for this connection
    goes to it, whichever local address it was sent to), and a host candidate per address."""
    protocols: dict[int, MuxedStunProtocol] = {}
    candidates = []
    for rank, address in enumerate(a for a in addresses if mux.serves(a)):
        family = ipaddress.ip_address(address).version
        if family not in protocols:
            protocols[family] = MuxedStunProtocol(connection, mux, component, address)
            candidates.append(protocols[family].local_candidate)
        else:
            candidates.append(host_candidate(component, address, mux.port, rank))
    return list(protocols.values()), candidates


def install_ice_plan(mux: UdpMux | None, public_addresses: Sequence[str]) -> Callable[[], None]:
    """Make Hark's ICE gathering (see ``hark_gathering``) use ``mux`` for its host candidates
    (instead of a socket per connection and address) and announce ``public_addresses`` in them
    (instead of the bound address), until the returned callable is called.

    aioice creates a socket per host candidate in ``Connection.get_component_candidates`` and
    has no setting for the port or the announced address. Server-reflexive candidates are not
    gathered on the shared socket; relayed (TURN) ones still are, on their own socket.
    """
    original = aioice.ice.Connection.get_component_candidates
    public = list(public_addresses)

    async def get_component_candidates(
        self: aioice.ice.Connection, component: int, addresses: list[str], timeout: int = 5
    ) -> list[Candidate]:
        if not HARK_GATHERING.get():
            return await original(self, component, addresses, timeout)
        if mux is None:
            candidates = await original(self, component, addresses, timeout)
        else:
            protocols, hosts = _shared_host_candidates(self, mux, component, addresses)
            self._protocols += protocols
            candidates = hosts + await original(self, component, [], timeout)
        return announce(candidates, public)

    def undo() -> None:
        if aioice.ice.Connection.get_component_candidates is get_component_candidates:
            aioice.ice.Connection.get_component_candidates = original  # type: ignore[method-assign]

    aioice.ice.Connection.get_component_candidates = get_component_candidates  # type: ignore[method-assign]
    return undo


@dataclass(frozen=True, slots=True)
class Hook:
    """One reliance on aiortc/aioice internals: what it needs, and what is lost without it."""

    name: str
    lost: str
    applies: Callable[[RTCPeerConnection], bool]


def _has_ice_connection(pc: RTCPeerConnection) -> bool:
    return len(ice_connections(pc)) == 1


def _has_consent_task(pc: RTCPeerConnection) -> bool:
    connections = ice_connections(pc)
    return bool(connections) and all(
        hasattr(c, "_query_consent_task") and isinstance(getattr(c, "_closing", None), bool)
        for c in connections
    )


def _starts_transceivers_by_send_and_receive(pc: RTCPeerConnection) -> bool:
    connect = getattr(RTCPeerConnection, "_RTCPeerConnection__connect", None)
    if connect is None:
        return False
    source = inspect.getsource(connect)
    return "transceiver.sender.send(" in source and "transceiver.receiver.receive(" in source


def _has_host_addresses(pc: RTCPeerConnection) -> bool:
    found = getattr(aioice.ice, "get_host_addresses", None)
    return callable(found) and list(inspect.signature(found).parameters) == [
        "use_ipv4",
        "use_ipv6",
    ]


def _gathers_host_candidates_per_component(pc: RTCPeerConnection) -> bool:
    found = getattr(aioice.ice.Connection, "get_component_candidates", None)
    if found is None or list(inspect.signature(found).parameters) != [
        "self",
        "component",
        "addresses",
        "timeout",
    ]:
        return False
    source = inspect.getsource(found)
    return "StunProtocol(self)" in source and "self._protocols +=" in source


def _shares_a_socket(pc: RTCPeerConnection) -> bool:
    protocol = aioice.ice.StunProtocol
    methods = ("request", "send_data", "send_stun", "close", "datagram_received")
    connections = ice_connections(pc)
    return (
        _gathers_host_candidates_per_component(pc)
        and all(callable(getattr(protocol, name, None)) for name in methods)
        and bool(connections)
        and all(
            isinstance(getattr(c, "_protocols", None), list)
            and callable(getattr(c, "data_received", None))
            and isinstance(c.local_username, str)
            and isinstance(c.local_password, str)
            for c in connections
        )
    )


def _sends_packets_as_they_are(pc: RTCPeerConnection) -> bool:
    send = getattr(RTCRtpSender, "_next_encoded_frame", None)
    return send is not None and "self.__encoder.pack(data)" in inspect.getsource(send)


HOOKS: Final = (
    Hook(
        "packet sink",
        "aiortc's jitter buffer is not where Hark expects: Hark cannot take the publishers' "
        "RTP packets (it refuses to start)",
        _feeds_packets_to_a_jitter_buffer,
    ),
    Hook(
        "direct SRTP",
        "aiortc or aioice receive SRTP another way: every audio packet goes through aioice's "
        "queue and a task switch (more CPU per session)",
        _hands_srtp_through_a_queue,
    ),
    Hook(
        "ICE connections",
        "aiortc's ICE connection is not where Hark expects: consent checks that outlive a "
        "closed peer connection are not stopped",
        _has_ice_connection,
    ),
    Hook(
        "orphaned consent checks",
        "aioice's consent task is not where Hark expects: consent checks that outlive a closed "
        "peer connection are not stopped",
        _has_consent_task,
    ),
    Hook(
        "transceiver start",
        "aiortc starts transceivers another way: a close that races DTLS may leave RTCP tasks "
        "running",
        _starts_transceivers_by_send_and_receive,
    ),
    Hook(
        "host addresses",
        "aioice's host address lookup is not where Hark expects: --ice-address has no effect",
        _has_host_addresses,
    ),
    Hook(
        "public address",
        "aioice gathers host candidates another way: --ice-public-address has no effect",
        _gathers_host_candidates_per_component,
    ),
    Hook(
        "shared UDP port",
        "aioice's host sockets are not where Hark expects: --udp-port cannot share one socket "
        "(Hark refuses to start with it)",
        _shares_a_socket,
    ),
    Hook(
        "packets sent as they are",
        "aiortc's sender no longer passes Opus packets through: every WHEP player re-encodes",
        _sends_packets_as_they_are,
    ),
)


async def check(hooks: Sequence[Hook] = HOOKS) -> list[Hook]:
    """Check ``hooks`` against the installed aiortc and aioice; log a WARNING naming what is lost
    for each one that cannot apply, and return those."""
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio", direction="recvonly")
        failed = [hook for hook in hooks if not _applies(hook, pc)]
    finally:
        await pc.close()
    for hook in failed:
        logger.warning("%s", hook.lost)
    return failed


def _applies(hook: Hook, pc: RTCPeerConnection) -> bool:
    try:
        return hook.applies(pc)
    except Exception:  # an upgrade may change what is there in any way: that is the finding
        logger.debug("checking the %s hook failed", hook.name, exc_info=True)
        return False


CONSENT_INTERVAL_S: Final = 5.0
CONSENT_EXPIRY_S: Final = 30.0
CONSENT_RETRANSMISSIONS: Final = 3
_consent_expired: weakref.WeakSet[Any] = weakref.WeakSet()


def keep_consent_through_stalls(
    interval_s: float = CONSENT_INTERVAL_S, expiry_s: float = CONSENT_EXPIRY_S
) -> bool:
    """Make every aioice connection check ICE consent (RFC 7675) so that a busy loop keeps it.

    aioice sends one check every ~5 s with no retransmission, counts an answer later than 0.5 s
    as a failure and closes after 6 failures in a row: half-second stalls of the event loop on
    either side end connections whose peer still answers. RFC 7675 lets consent expire only 30 s
    after the last authenticated answer and lets checks be retransmitted; this does that: checks
    every ``interval_s`` (randomised ±20 %), each retransmitted, expiry ``expiry_s`` in wall time.
    Returns False when aioice changed what this relies on (then its own checks stay).
    """
    connection_class = aioice.ice.Connection
    needed = ("query_consent", "build_request", "close")
    if not all(callable(getattr(connection_class, name, None)) for name in needed):
        return False

    async def query_consent(connection: Any) -> None:
        await _refresh_consent(connection, interval_s, expiry_s)

    connection_class.query_consent = query_consent  # type: ignore[method-assign,assignment]
    return True


def consent_expired(pc: RTCPeerConnection) -> bool:
    """Whether an ICE connection of ``pc`` was closed because the peer's consent expired."""
    return any(connection in _consent_expired for connection in ice_connections(pc))


async def _refresh_consent(connection: Any, interval_s: float, expiry_s: float) -> None:
    loop = asyncio.get_running_loop()
    answered = loop.time()
    while True:
        expires = answered + expiry_s
        pause = interval_s * random.uniform(0.8, 1.2)
        await asyncio.sleep(max(0.0, min(pause, expires - loop.time())))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(expires):
                if await _consent_checks_answered(connection):
                    answered = loop.time()
                    continue
        if loop.time() >= expires:
            logger.info("ICE consent expired: no answer to consent checks for %.0f s", expiry_s)
            _consent_expired.add(connection)
            connection._query_consent_task = None  # close() must not cancel this very task
            await connection.close()
            return


async def _consent_checks_answered(connection: Any) -> bool:
    key = connection.remote_password.encode("utf8")
    for pair in list(connection._nominated.values()):
        request = connection.build_request(pair, nominate=False)
        try:
            await pair.protocol.request(
                request,
                pair.remote_addr,
                integrity_key=key,
                retransmissions=CONSENT_RETRANSMISSIONS,
            )
        except aioice.stun.TransactionError:
            return False
    return True
