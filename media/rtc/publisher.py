"""aiortc glue: one RTCPeerConnection per publisher, the tasks it needs, and an idempotent close."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, Protocol

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp
from av import AudioFrame

from media.audio.pcm import AudioConsumer
from media.config import IceServer
from media.core.sdp import TrickleCandidate, is_mdns_candidate, stack_offer
from media.errors import HarkError, InvalidOffer, InvalidTrickle, UnsupportedOffer
from media.rtc.compat import (
    consent_expired,
    ice_connections,
    set_jitter_frames,
    start_nothing_once_closing,
    stop_orphaned_consent_checks,
    tap_opus_packets,
)

logger = logging.getLogger(__name__)

MEDIA_POLL_INTERVAL_S: Final = 0.5
STATS_EVERY_POLLS: Final = 2
OPUS_CLOCK_RATE: Final = 48000
CONSENT_EXPIRED: Final = "ICE consent expired: the peer stopped answering connectivity checks"


class PeerEvents(Protocol):
    """What a peer reports, by session id."""

    def transport_connected(self, session_id: str) -> None: ...

    def transport_failed(self, session_id: str, detail: str) -> None: ...

    def internal_error(self, session_id: str, detail: str) -> None: ...

    def media_received(self, session_id: str) -> None: ...

    def rtp_stats(self, session_id: str, lost: int, jitter_s: float) -> None: ...

    def audio_decoded(self, session_id: str, frame: AudioFrame) -> None: ...

    def opus_received(self, session_id: str, payload: bytes, timestamp: int) -> None: ...


def _ice_candidate(trickled: TrickleCandidate) -> Any:
    try:
        candidate = candidate_from_sdp(trickled.candidate.removeprefix("candidate:"))
    except (ValueError, IndexError) as exc:
        raise InvalidTrickle(f"unusable candidate {trickled.candidate!r}: {exc}") from exc
    candidate.sdpMid = trickled.mid
    candidate.sdpMLineIndex = trickled.mline_index
    return candidate


class RemoteCandidates:
    """Adds a peer's candidates to ``pc``; mDNS ones are resolved concurrently in owned tasks.

    aioice resolves an mDNS name inside ``addIceCandidate`` and gives up after a second, so
    awaiting them would hold an answer or a trickle PATCH that long per name. Once an mDNS name
    was seen, end-of-candidates is not passed on: one that does not resolve from here must not
    end ICE while the peer can still reach Hark (peer-reflexive candidates); the connect timeout
    ends a connection that never forms. ``close()`` cancels and awaits what is still resolving.
    """

    def __init__(self, pc: RTCPeerConnection, name: str) -> None:
        self._pc = pc
        self._name = name
        self._resolving: set[asyncio.Task[None]] = set()
        self._saw_mdns = False

    async def add(self, candidates: Sequence[TrickleCandidate], end: bool) -> None:
        parsed = [(c, _ice_candidate(c)) for c in candidates]
        for trickled, candidate in parsed:
            if is_mdns_candidate(trickled.candidate):
                self._saw_mdns = True
                self._resolve_later(candidate)
            else:
                await self._pc.addIceCandidate(candidate)
        if end and not self._saw_mdns:
            await self._pc.addIceCandidate(None)

    def resolve_later(self, candidates: Sequence[TrickleCandidate]) -> None:
        for trickled in candidates:
            self._saw_mdns = True
            self._resolve_later(_ice_candidate(trickled))

    def _resolve_later(self, candidate: Any) -> None:
        task = asyncio.get_running_loop().create_task(
            self._pc.addIceCandidate(candidate), name=f"hark-mdns-{self._name}"
        )
        self._resolving.add(task)
        task.add_done_callback(self._resolved)

    def _resolved(self, task: asyncio.Task[None]) -> None:
        self._resolving.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug(
                "%s: an mDNS candidate was not added", self._name, exc_info=task.exception()
            )

    async def close(self) -> None:
        for task in list(self._resolving):
            task.cancel()
        for task in list(self._resolving):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def answer_audio_offer(
    pc: RTCPeerConnection,
    offer_sdp: str,
    direction: str,
    session_id: str,
    remote: RemoteCandidates,
    prepare: Callable[[Any], None] | None = None,
) -> str:
    """Apply the offer and return the answer: its first audio m-line ``direction`` with Opus only
    (``prepare`` gets that transceiver first), every other m-line inactive. The offer's mDNS
    candidates go to ``remote`` to resolve after the answer."""
    try:
        offer = stack_offer(offer_sdp)
        await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
        audio = None
        for transceiver in pc.getTransceivers():
            if transceiver.kind == "audio" and audio is None:
                transceiver.direction = direction
                audio = transceiver
            else:
                transceiver.direction = "inactive"
        if audio is None:
            raise UnsupportedOffer("offer has no audio m-line")
        if prepare is not None:
            prepare(audio)
        await pc.setLocalDescription(await pc.createAnswer())
    except HarkError:
        raise
    except Exception as exc:
        # aiortc reports what it cannot use in an offer with assorted exception types, whose
        # text means nothing to a client; check_offer is where offers get precise reasons.
        logger.info("session %s: offer rejected by aiortc: %s", session_id, type(exc).__name__)
        logger.debug("session %s: aiortc's exception", session_id, exc_info=True)
        raise InvalidOffer(
            "SDP offer could not be applied: it passed Hark's checks but the WebRTC stack "
            "refused it"
        ) from exc
    remote.resolve_later(offer.mdns_candidates)
    return str(pc.localDescription.sdp)


async def close_peer_connection(pc: RTCPeerConnection) -> None:
    """Close ``pc`` and whatever aiortc and aioice leave running after it.

    See ``start_nothing_once_closing`` and ``stop_orphaned_consent_checks``.
    """
    start_nothing_once_closing(pc)
    connections = ice_connections(pc)
    await pc.close()
    await stop_orphaned_consent_checks(connections)


def rtc_configuration(ice_servers: Sequence[IceServer]) -> RTCConfiguration:
    return RTCConfiguration(
        iceServers=[RTCIceServer(s.url, s.username, s.credential) for s in ice_servers]
    )


def transport_failure(pc: RTCPeerConnection) -> str:
    """Which layer of a failed connection gave up, in words for ``close_detail``."""
    if pc.iceConnectionState == "failed":
        return "ICE failed: no candidate pair reached the peer"
    if any(t.receiver.transport.state == "failed" for t in pc.getTransceivers()):
        return "DTLS failed: the handshake with the peer did not complete"
    return "the connection failed"


class PublisherPeer:
    """Receives one publisher's audio. Owns its peer connection and tasks; ``close()`` ends both."""

    def __init__(
        self,
        session_id: str,
        events: PeerEvents,
        ice_servers: Sequence[IceServer] = (),
        jitter_frames: int = 1,
        opus_payload_type: int | None = None,
    ) -> None:
        self.session_id = session_id
        self._opus_payload_type = opus_payload_type
        self._jitter_frames = jitter_frames
        self._events = events
        self._pc = RTCPeerConnection(rtc_configuration(ice_servers))
        self._remote = RemoteCandidates(self._pc, session_id)
        self._tasks: set[asyncio.Task[None]] = set()
        self.remote_ice: tuple[str, str | None] = ("", None)
        self._closed = False
        self._close_done: asyncio.Future[None] | None = None
        self._pc.on("connectionstatechange", self._on_connection_state)
        self._pc.on("track", self._on_track)

    async def negotiate(self, offer_sdp: str) -> str:
        """Apply the offer and return the answer: audio ``recvonly`` with Opus, other media off."""
        return await answer_audio_offer(
            self._pc, offer_sdp, "recvonly", self.session_id, self._remote
        )

    async def add_candidates(self, candidates: Sequence[TrickleCandidate], end: bool) -> None:
        await self._remote.add(candidates, end)

    async def received(self) -> tuple[int, int]:
        """RTP packets and transport bytes received so far (aiortc's stats; also once closed)."""
        packets = 0
        transports: dict[str, int] = {}
        for transceiver in self._pc.getTransceivers():
            for stats in (await transceiver.receiver.getStats()).values():
                if stats.type == "inbound-rtp":
                    packets += int(stats.packetsReceived)
                elif stats.type == "transport":  # bundled transceivers share one transport
                    transports[stats.id] = int(stats.bytesReceived)
        return packets, sum(transports.values())

    async def close(self) -> None:
        """Stop the tasks and the peer connection. Safe to call more than once, concurrently."""
        if self._close_done is not None:
            await asyncio.shield(self._close_done)
            return
        self._close_done = asyncio.get_running_loop().create_future()
        self._closed = True
        try:
            for task in self._tasks:
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._remote.close()
            await close_peer_connection(self._pc)
            logger.debug("session %s: peer connection closed", self.session_id)
        finally:
            self._close_done.set_result(None)

    def _start(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            exc = task.exception()
            logger.error("session %s: %s failed", self.session_id, task.get_name(), exc_info=exc)
            self._events.internal_error(self.session_id, f"internal error in {task.get_name()}")

    def _on_connection_state(self) -> None:
        state = self._pc.connectionState
        logger.debug("session %s: connection %s", self.session_id, state)
        if self._closed:
            return
        if state == "connected":
            self._events.transport_connected(self.session_id)
        elif state in ("failed", "closed") and consent_expired(self._pc):
            self._events.transport_failed(self.session_id, CONSENT_EXPIRED)
        elif state == "failed":
            self._events.transport_failed(self.session_id, transport_failure(self._pc))

    def _on_track(self, track: Any) -> None:
        if (
            track.kind != "audio"
            or self._closed
            or any(t.get_name().startswith("hark-audio") for t in self._tasks)
        ):
            return
        consumer = AudioConsumer(
            self.session_id, track, lambda frame: self._events.audio_decoded(self.session_id, frame)
        )
        self._start(consumer.run(), f"hark-audio-{self.session_id}")
        receiver = next(t.receiver for t in self._pc.getTransceivers() if t.receiver.track is track)
        if not set_jitter_frames(receiver, self._jitter_frames):
            logger.debug("session %s: aiortc's jitter buffer left as it is", self.session_id)
        if self._opus_payload_type is not None and not tap_opus_packets(
            receiver, self._opus_payload_type, self._forward
        ):
            logger.warning(
                "session %s: this aiortc hides RTP packets; source=publisher players hear nothing",
                self.session_id,
            )
        self._start(self._watch_packets(receiver), f"hark-rtp-watch-{self.session_id}")

    def _forward(self, payload: bytes, timestamp: int) -> None:
        self._events.opus_received(self.session_id, payload, timestamp)

    async def _watch_packets(self, receiver: RTCRtpReceiver) -> None:
        """Reports RTP arrival: aiortc itself notices a vanished peer only after ~30 s."""
        last_seen = None
        lost_before = 0
        polls = 0
        while True:
            await asyncio.sleep(MEDIA_POLL_INTERVAL_S)
            sources = receiver.getSynchronizationSources()
            if sources:
                latest = max(s.timestamp for s in sources)
                if latest != last_seen:
                    last_seen = latest
                    self._events.media_received(self.session_id)
            polls += 1
            if polls % STATS_EVERY_POLLS == 0:
                for stats in (await receiver.getStats()).values():
                    if getattr(stats, "type", None) == "inbound-rtp":
                        lost = int(stats.packetsLost)
                        jitter_s = float(stats.jitter) / OPUS_CLOCK_RATE
                        self._events.rtp_stats(self.session_id, lost - lost_before, jitter_s)
                        lost_before = lost
