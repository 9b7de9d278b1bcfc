"""The private aiortc and aioice names on a publisher's receive path; part of ``compat.py``, whose
``HOOKS`` check these too (at start-up and in ``tests/integration/test_aiortc_contract.py``).

Hark decodes the publishers' audio itself, so it takes their RTP packets where aiortc would put
them into its jitter buffer, and hands SRTP packets from aioice straight to aiortc's RTP handling.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from typing import Any, Final

import aioice.ice
import aiortc.clock
import pylibsrtp
from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtp import RtpPacket, is_rtcp

logger = logging.getLogger(__name__)

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
