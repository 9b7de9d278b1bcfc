"""aiortc glue: one RTCPeerConnection per publisher, the task reading its audio, and an idempotent
close. The peer reports to a ``PublisherEvents`` bound to its session."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from aiortc import RTCPeerConnection, RTCRtpReceiver
from av import AudioFrame

from media.aio import CloseOnce, cancel_and_wait
from media.config import IceServer
from media.core.trickle import TrickleCandidate
from media.logs import session_logger
from media.rtc.compat import consent_expired, set_jitter_frames, tap_opus_packets
from media.rtc.negotiation import (
    RemoteCandidates,
    answer_audio_offer,
    close_peer_connection,
    rtc_configuration,
    transport_failure,
)
from media.rtc.track_reader import AudioConsumer

logger = logging.getLogger(__name__)

OPUS_CLOCK_RATE: Final = 48000
CONSENT_EXPIRED: Final = "ICE consent expired: the peer stopped answering connectivity checks"


class PublisherEvents(Protocol):
    """What a publisher peer reports, to an object bound to its session."""

    def transport_connected(self) -> None: ...

    def transport_failed(self, detail: str) -> None: ...

    def internal_error(self, detail: str) -> None: ...

    def audio_decoded(self, frame: AudioFrame) -> None:
        """A frame of the publisher's audio was decoded (this is also how media arrival shows)."""

    def opus_received(self, payload: bytes, timestamp: int) -> None:
        """An Opus packet arrived (only once ``forward_opus()`` was called)."""


@dataclass(frozen=True, slots=True)
class ReceiverReading:
    """aiortc's receiver stats at one moment; ``lost_since_last`` counts from the previous one."""

    packets: int
    octets: int
    lost_since_last: int
    jitter_s: float | None


class PublisherPeer:
    """Receives one publisher's audio. Owns its peer connection and tasks; ``close()`` ends both."""

    def __init__(
        self,
        session_id: str,
        events: PublisherEvents,
        ice_servers: Sequence[IceServer] = (),
        jitter_frames: int = 1,
        opus_payload_type: int | None = None,
    ) -> None:
        self.session_id = session_id
        self._opus_payload_type = opus_payload_type
        self._jitter_frames = jitter_frames
        self._events = events
        self._log = session_logger(logger, session_id)
        self._pc = RTCPeerConnection(rtc_configuration(ice_servers))
        self._remote = RemoteCandidates(self._pc, session_id)
        self._tasks: set[asyncio.Task[None]] = set()
        self._receiver: RTCRtpReceiver | None = None
        self._forwarding = False
        self._tapped = False
        self._lost_read = 0
        self.remote_ice: tuple[str, str | None] = ("", None)
        self._closed = False
        self._close_once = CloseOnce()
        self._pc.on("connectionstatechange", self._on_connection_state)
        self._pc.on("track", self._on_track)

    async def negotiate(self, offer_sdp: str) -> str:
        """Apply the offer and return the answer: audio ``recvonly`` with Opus, other media off."""

        def keep_receiver(transceiver: Any) -> None:
            self._receiver = transceiver.receiver

        answer = await answer_audio_offer(
            self._pc, offer_sdp, "recvonly", self.session_id, self._remote, keep_receiver
        )
        if self._forwarding:
            self._tap()
        return answer

    async def add_candidates(self, candidates: Sequence[TrickleCandidate], end: bool) -> None:
        await self._remote.add(candidates, end)

    def forward_opus(self) -> None:
        """From now on, hand every Opus packet received to ``opus_received`` (idempotent).

        Only called once something uses the packets: reading them costs a call per packet.
        """
        self._forwarding = True
        if self._receiver is not None:
            self._tap()

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
        """Stop the tasks and the peer connection. Safe to call more than once, concurrently."""
        await self._close_once.run(self._close)

    async def _close(self) -> None:
        self._closed = True
        await cancel_and_wait(*self._tasks)
        await self._remote.close()
        await close_peer_connection(self._pc)
        self._log.debug("peer connection closed")

    def _tap(self) -> None:
        if self._tapped or self._opus_payload_type is None or self._receiver is None:
            return
        self._tapped = True
        if not tap_opus_packets(
            self._receiver, self._opus_payload_type, self._events.opus_received
        ):
            self._log.warning(
                "this aiortc hides RTP packets; source=publisher players hear nothing"
            )

    def _start(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            self._log.error("%s failed", task.get_name(), exc_info=exc)
            self._events.internal_error(f"internal error in {task.get_name()}")

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        self._log.debug("connection %s", state)
        if self._closed:
            return
        if state == "connected":
            self._events.transport_connected()
        elif state in ("failed", "closed") and consent_expired(self._pc):
            self._events.transport_failed(CONSENT_EXPIRED)
        elif state == "failed":
            self._events.transport_failed(transport_failure(self._pc))

    def _on_track(self, track: Any) -> None:
        if (
            track.kind != "audio"
            or self._closed
            or any(t.get_name().startswith("hark-audio") for t in self._tasks)
        ):
            return
        consumer = AudioConsumer(self.session_id, track, self._events.audio_decoded)
        self._start(consumer.run(), f"hark-audio-{self.session_id}")
        receiver = next(t.receiver for t in self._pc.getTransceivers() if t.receiver.track is track)
        if not set_jitter_frames(receiver, self._jitter_frames):
            self._log.debug("aiortc's jitter buffer left as it is")
