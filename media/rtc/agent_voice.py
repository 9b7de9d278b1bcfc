"""A session's agent voice: the playback queue, one Opus encoder, and the 20 ms playout clock.

Every 20 ms of wall time the playout task takes the next frame from the session's
:class:`~media.core.playback_queue.PlaybackQueue`, encodes it once, and gives the same packet to
every WHEP player of the session. Between playbacks the players get a pre-encoded silence packet,
so the track stays alive without encoding anything. The task runs only while there is a player or
a playback, and belongs to the :class:`AgentVoice`, whose ``close()`` ends it.
"""

from __future__ import annotations

import asyncio
import fractions
import functools
import logging
from collections.abc import Callable
from typing import Final

import av
from av import AudioFrame

from media.aio import cancel_and_wait
from media.core.events import InterruptReason, PlaybackEvent
from media.core.playback_queue import (
    FRAME_BYTES,
    FRAME_MS,
    FRAME_SAMPLES,
    RATE,
    Playback,
    PlaybackMode,
    PlaybackQueue,
    PlaybackResult,
)
from media.logs import session_logger
from media.metrics import Metrics
from media.rtc.tracks import PacketTrack, opus_packet

logger = logging.getLogger(__name__)

TICK_S: Final = FRAME_MS / 1000
LATE_RESYNC_S: Final = 0.1  # further behind than this (a blocked loop), skip ahead, don't burst
TAIL_FRAMES: Final = 3  # encoded silence after a playback, so the encoder's last sound fades out
OPUS_BITRATE: Final = 32000


def _encoder() -> av.AudioCodecContext:
    codec = av.CodecContext.create("libopus", "w")
    assert isinstance(codec, av.AudioCodecContext)
    codec.sample_rate = RATE
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = OPUS_BITRATE
    codec.time_base = fractions.Fraction(1, RATE)
    codec.options = {"application": "voip"}
    return codec


class OpusEncoder:
    """20 ms frames of 48 kHz mono PCM → Opus payloads."""

    def __init__(self) -> None:
        self._codec = _encoder()
        self._pts = 0
        # A fresh encoder's first packet starts with its look-ahead, which a decoder that is
        # already playing (the silence packets) does not skip; a frame of silence absorbs it.
        self.encode(bytes(FRAME_BYTES))

    def encode(self, pcm: bytes) -> bytes:
        frame = AudioFrame(format="s16", layout="mono", samples=FRAME_SAMPLES)
        frame.planes[0].update(pcm)
        frame.sample_rate = RATE
        frame.pts = self._pts
        self._pts += FRAME_SAMPLES
        return b"".join(bytes(p) for p in self._codec.encode(frame))


@functools.cache
def silence_payload() -> bytes:
    """One 20 ms Opus frame of digital silence (encoded once per process)."""
    encoder = OpusEncoder()
    payload = b""
    for _ in range(3):
        payload = encoder.encode(bytes(FRAME_BYTES)) or payload
    return payload


class AgentVoice:
    """One session's agent audio and the players that hear it."""

    def __init__(
        self,
        session_id: str,
        on_events: Callable[[list[PlaybackEvent]], None],
        metrics: Metrics,
        max_queue_ms: int = 60_000,
    ) -> None:
        self.session_id = session_id
        self._log = session_logger(logger, session_id)
        self.queue = PlaybackQueue()
        self.max_queue_ms = max_queue_ms
        self._on_events = on_events
        self._metrics = metrics
        self._players: set[PacketTrack] = set()
        self._encoder: OpusEncoder | None = None
        self._tail = 0
        self._pts = 0
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._closed = False

    def add_player(self, track: PacketTrack) -> None:
        self._players.add(track)
        self._ensure_running()

    def remove_player(self, track: PacketTrack) -> None:
        self._players.discard(track)

    # playbacks

    def begin(self, mode: PlaybackMode, interrupt_on_speech: bool, playback_id: str) -> Playback:
        playback, events = self.queue.begin(
            mode, interrupt_on_speech=interrupt_on_speech, playback_id=playback_id
        )
        self._emit(events)
        self._ensure_running()
        return playback

    def feed(self, playback: Playback, pcm: bytes) -> None:
        self.queue.feed(playback, pcm)

    def end_input(self, playback: Playback) -> None:
        self._emit(self.queue.end_input(playback))

    async def wait_for_room(self, playback: Playback) -> None:
        """Return once ``playback``'s backlog is under ``max_queue_ms`` (or it ended)."""
        while self.queue.backlog_ms(playback) > self.max_queue_ms and playback.result is None:
            await self._wait_changed()

    async def wait_result(self, playback: Playback) -> PlaybackResult:
        while playback.result is None:
            await self._wait_changed()
        return playback.result

    def interrupt(self, reason: InterruptReason) -> list[str]:
        """Cut what is queued or playing; the ids of the playbacks cut."""
        events = self.queue.interrupt(reason)
        self._emit(events)
        return [e.playback_id for e in events]

    def fail(self, playback: Playback) -> None:
        """Drop ``playback``, whose caller sent a bad message (CALL_FAILED)."""
        self._emit(self.queue.interrupt(InterruptReason.CALL_FAILED, only=playback))

    def shut(self) -> None:
        """Interrupt everything (SESSION_CLOSED) and stop the players' tracks; take nothing more."""
        if not self._closed:
            self._closed = True
            self._emit(self.queue.close())
            for track in self._players:
                track.stop()
            self._players.clear()

    async def close(self) -> None:
        """``shut()``, then end the playout task."""
        self.shut()
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)

    # playout

    def _ensure_running(self) -> None:
        if self._closed or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(
            self._playout(), name=f"hark-playout-{self.session_id}"
        )
        self._task.add_done_callback(self._playout_ended)

    def _playout_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._log.error("playout failed", exc_info=task.exception())
            self._emit(self.queue.interrupt(InterruptReason.SESSION_CLOSED))

    async def _playout(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while self.queue.active or self._players or self._tail:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            elif -delay > LATE_RESYNC_S:
                # the loop was blocked: skip the missed ticks, so the players' RTP clock stays
                # on wall time and their jitter buffers see a gap, not a delay that never ends
                self._pts += int(-delay / TICK_S) * FRAME_SAMPLES
                due = loop.time()
            self._tick()
            due += TICK_S

    def _tick(self) -> None:
        pcm, events = self.queue.tick(len(self._players))
        self._emit(events)
        if pcm is not None:
            self._tail = TAIL_FRAMES
            self._metrics.playback_frames.inc()
        elif self._tail:
            self._tail -= 1
            pcm = bytes(FRAME_BYTES)
        if self._players:
            payload = self._encode(pcm)
            packet = opus_packet(payload, self._pts)
            lost = sum(track.push(packet) for track in self._players)
            if lost:
                self._metrics.player_packets_dropped.inc(lost)
        elif pcm is None:
            self._encoder = None
        self._pts += FRAME_SAMPLES
        if pcm is not None:
            self._wake()  # room in the queue for the callers waiting on it

    def _encode(self, pcm: bytes | None) -> bytes:
        if pcm is None:
            return silence_payload()
        if self._encoder is None:
            self._encoder = OpusEncoder()
        return self._encoder.encode(pcm)

    def _emit(self, events: list[PlaybackEvent]) -> None:
        if events:
            if self.queue.fading:
                for track in self._players:
                    track.flush()  # packets of the cut audio a lagging sender still holds
            self._on_events(events)
            self._wake()

    def _wake(self) -> None:
        self._changed.set()

    async def _wait_changed(self) -> None:
        self._changed.clear()
        await self._changed.wait()
