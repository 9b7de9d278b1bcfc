"""aiortc glue: one RTCPeerConnection per publisher, its RTP packets handed on as they arrive, and
an idempotent close. The peer reports to a ``PublisherEvents`` bound to its session."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from aiortc import RTCPeerConnection
from aiortc.rtp import RtpPacket

from media.aio import CloseOnce
from media.config import IceServer
from media.core.trickle import TrickleCandidate
from media.logs import session_logger
from media.rtc.compat import consent_expired, receive_rtp_directly, take_rtp_packets
from media.rtc.negotiation import (
    RemoteCandidates,
    answer_audio_offer,
    close_peer_connection,
    rtc_configuration,
    transport_failure,
)

logger = logging.getLogger(__name__)

OPUS_CLOCK_RATE: Final = 48000
CONSENT_EXPIRED: Final = "ICE consent expired: the peer stopped answering connectivity checks"


class PublisherEvents(Protocol):
    """What a publisher peer reports, to an object bound to its session."""

    def transport_connected(self) -> None: ...

    def transport_failed(self, detail: str) -> None: ...

    def internal_error(self, detail: str) -> None: ...

    def opus_received(self, packet: RtpPacket) -> None:
        """An Opus RTP packet arrived (in arrival order, on the event loop): the publisher's
        audio, undecoded (aiortc's decoder is bypassed)."""


@dataclass(frozen=True, slots=True)
class ReceiverReading:
    """aiortc's receiver stats at one moment; ``lost_since_last`` counts from the previous one."""

    packets: int
    octets: int
    lost_since_last: int
    jitter_s: float | None


class PublisherPeer:
    """Receives one publisher's audio. Owns its peer connection; ``close()`` ends it."""

    def __init__(
        self,
        session_id: str,
        events: PublisherEvents,
        ice_servers: Sequence[IceServer] = (),
        opus_payload_type: int | None = None,
    ) -> None:
        self.session_id = session_id
        self._opus_payload_type = opus_payload_type
        self._events = events
        self._log = session_logger(logger, session_id)
        self._pc = RTCPeerConnection(rtc_configuration(ice_servers))
        self._remote = RemoteCandidates(self._pc, session_id)
        self._failed = False
        self._direct = False
        self._lost_read = 0
        self.remote_ice: tuple[str, str | None] = ("", None)
        self._closed = False
        self._close_once = CloseOnce()
        self._pc.on("connectionstatechange", self._on_connection_state)

    async def negotiate(self, offer_sdp: str) -> str:
        """Apply the offer and return the answer: audio ``recvonly`` with Opus, other media off."""

        def take_packets(transceiver: Any) -> None:
            if not take_rtp_packets(transceiver.receiver, self._packet_received):
                self._log.error("this aiortc hides RTP packets: no audio can be heard")

        return await answer_audio_offer(
            self._pc, offer_sdp, "recvonly", self.session_id, self._remote, take_packets
        )

    async def add_candidates(self, candidates: Sequence[TrickleCandidate], end: bool) -> None:
        await self._remote.add(candidates, end)

    async def read_stats(self) -> ReceiverReading:
        """RTP packets, transport bytes, loss and jitter from aiortc's public receiver stats, read
        when asked (``/metrics``) rather than polled; also once closed."""
        packets = lost = 0
        jitter_s: float | None = None
        transports: dict[str, int] = {}
        for transceiver in self._pc.getTransceivers():
            for stats in (await transceiver.receiver.getStats()).values():
                if stats.type == "inbound-rtp":
                    packets += int(stats.packetsReceived)
                    lost += int(stats.packetsLost)
                    jitter_s = float(stats.jitter) / OPUS_CLOCK_RATE
                elif stats.type == "transport":  # bundled transceivers share one transport
                    transports[stats.id] = int(stats.bytesReceived)
        lost_since_last = max(0, lost - self._lost_read)
        self._lost_read = max(lost, self._lost_read)
        return ReceiverReading(packets, sum(transports.values()), lost_since_last, jitter_s)

    async def close(self) -> None:
        """Stop the peer connection. Safe to call more than once, concurrently."""
        await self._close_once.run(self._close)

    async def _close(self) -> None:
        self._closed = True
        await self._remote.close()
        await close_peer_connection(self._pc)
        self._log.debug("peer connection closed")

    def _packet_received(self, packet: RtpPacket) -> None:
        if self._closed or self._failed:
            return
        if self._opus_payload_type is not None and packet.payload_type != self._opus_payload_type:
            return
        try:
            self._events.opus_received(packet)
        except Exception:  # raised into aiortc's receive path, it would end the transport
            self._failed = True
            self._log.exception("handling an audio packet failed")
            self._events.internal_error("internal error handling the publisher's audio")

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        self._log.debug("connection %s", state)
        if self._closed:
            return
        if state == "connected":
            if not self._direct and not receive_rtp_directly(self._pc):
                self._log.debug("SRTP packets go through aioice's queue")
            self._direct = True
            self._events.transport_connected()
        elif state in ("failed", "closed") and consent_expired(self._pc):
            self._events.transport_failed(CONSENT_EXPIRED)
        elif state == "failed":
            self._events.transport_failed(transport_failure(self._pc))
