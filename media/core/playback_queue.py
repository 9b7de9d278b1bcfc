"""The agent-voice queue: PCM in, one 20 ms frame per tick out, playback events. Pure, no asyncio.

The playout task calls :meth:`PlaybackQueue.tick` every 20 ms of wall time; what it returns is the
frame every player hears next (``None``: nothing to play, send silence). Playbacks are played one
after another in the order they began; REPLACE, StopPlayback, barge-in and the session closing cut
them. A playback whose caller has not finished sending waits at the head of the queue (its gaps
play as silence and are not counted as played). Audio cut while it plays fades out over
``FADE_MS`` in the next frame instead of stopping mid-waveform, which players would hear as a click.
"""

from __future__ import annotations

import array
import enum
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from media.core.events import (
    InterruptReason,
    PlaybackEvent,
    PlaybackFinished,
    PlaybackInterrupted,
    PlaybackStarted,
)
from media.errors import CapacityExceeded, InvalidRequest, PlaybackExists

RATE: Final = 48000
FRAME_MS: Final = 20
FRAME_SAMPLES: Final = RATE * FRAME_MS // 1000
FRAME_BYTES: Final = FRAME_SAMPLES * 2
MAX_PLAYBACK_ID: Final = 64
MAX_PLAYBACKS: Final = 32  # queued or playing per session
FADE_MS: Final = 10


class PlaybackMode(enum.IntEnum):
    ENQUEUE = 1
    REPLACE = 2


@dataclass(frozen=True, slots=True)
class PlaybackResult:
    playback_id: str
    played_ms: int
    interrupted: InterruptReason | None = None


@dataclass(eq=False)
class Playback:
    id: str
    interrupt_on_speech: bool
    pcm: bytearray = field(default_factory=bytearray)
    input_done: bool = False
    started: bool = False
    played_samples: int = 0
    result: PlaybackResult | None = None

    @property
    def played_ms(self) -> int:
        return self.played_samples * 1000 // RATE


def fade_out(pcm: bytes) -> bytes:
    """The first ``FADE_MS`` of ``pcm`` ramped down to silence, padded to a whole frame."""
    samples = array.array("h", pcm[: RATE * FADE_MS // 1000 * 2])
    if sys.byteorder == "big":
        samples.byteswap()
    count = len(samples)
    for i in range(count):
        samples[i] = samples[i] * (count - i) // count
    if sys.byteorder == "big":
        samples.byteswap()
    return samples.tobytes() + bytes(FRAME_BYTES - 2 * count)


def check_playback_id(playback_id: str) -> None:
    if len(playback_id) > MAX_PLAYBACK_ID or not playback_id.isprintable():
        raise InvalidRequest(
            f"playback_id must be up to {MAX_PLAYBACK_ID} printable characters, "
            f"got {playback_id[:80]!r}"
        )


class PlaybackQueue:
    """One session's agent audio: 48 kHz 16-bit mono PCM, played 20 ms per :meth:`tick`."""

    def __init__(self) -> None:
        self._queue: deque[Playback] = deque()
        self._fade: bytes | None = None
        self._next_id = 0
        self.closed = False

    @property
    def active(self) -> bool:
        """Something is queued or playing."""
        return bool(self._queue)

    @property
    def queued_ms(self) -> int:
        """Audio received and not played yet, over every queued playback."""
        return sum(len(p.pcm) for p in self._queue) // 2 * 1000 // RATE

    @property
    def fading(self) -> bool:
        """What was playing has been cut, and the next frame fades it out."""
        return self._fade is not None

    def backlog_ms(self, playback: Playback) -> int:
        """The queued audio that holds back ``playback``'s caller.

        For the playback at the head, its own audio only: audio queued behind it must never hold
        back its caller, who has to finish for anything behind it to play. For the others,
        everything queued, so a session holds at most about twice the limit.
        """
        if self._queue and self._queue[0] is playback:
            return len(playback.pcm) // 2 * 1000 // RATE
        return self.queued_ms

    def ids(self) -> list[str]:
        return [p.id for p in self._queue]

    def begin(
        self,
        mode: PlaybackMode,
        *,
        interrupt_on_speech: bool = True,
        playback_id: str = "",
    ) -> tuple[Playback, list[PlaybackEvent]]:
        """Queue a new playback (its PCM follows through :meth:`feed`)."""
        assert not self.closed
        if playback_id:
            check_playback_id(playback_id)
        events: list[PlaybackEvent] = []
        if mode is PlaybackMode.REPLACE:
            events = self.interrupt(InterruptReason.REPLACED)
        if playback_id:
            if any(p.id == playback_id for p in self._queue):
                raise PlaybackExists(f"playback {playback_id!r} is already queued or playing")
        else:
            self._next_id += 1
            playback_id = f"pb-{self._next_id}"
        if len(self._queue) >= MAX_PLAYBACKS:
            raise CapacityExceeded(
                f"{len(self._queue)} playbacks are already queued or playing on this session "
                f"(at most {MAX_PLAYBACKS}); wait for one to end, or REPLACE them"
            )
        playback = Playback(playback_id, interrupt_on_speech)
        self._queue.append(playback)
        return playback, events

    def feed(self, playback: Playback, pcm: bytes) -> None:
        """More 48 kHz mono PCM for ``playback``; ignored once it has ended."""
        assert len(pcm) % 2 == 0
        if playback.result is None and not playback.input_done:
            playback.pcm += pcm

    def end_input(self, playback: Playback) -> list[PlaybackEvent]:
        """The caller sent everything. A playback at the head that never got audio ends here."""
        playback.input_done = True
        at_head = bool(self._queue) and self._queue[0] is playback
        if at_head and not playback.pcm and not playback.started:
            self._queue.popleft()
            return [self._finish(playback)]
        return []

    def tick(self, players: int) -> tuple[bytes | None, list[PlaybackEvent]]:
        """The next 20 ms frame (``None`` for silence) and what happened to playbacks."""
        events: list[PlaybackEvent] = []
        if self._fade is not None:
            fade, self._fade = self._fade, None
            return fade, events
        while self._queue:
            head = self._queue[0]
            if not head.pcm:
                if head.input_done:
                    self._queue.popleft()
                    events.append(self._finish(head))
                    continue
                return None, events
            if len(head.pcm) < FRAME_BYTES and not head.input_done:
                return None, events
            frame = bytes(head.pcm[:FRAME_BYTES])
            del head.pcm[:FRAME_BYTES]
            if not head.started:
                head.started = True
                events.append(PlaybackStarted(head.id, players))
            head.played_samples += len(frame) // 2
            if not head.pcm and head.input_done:
                self._queue.popleft()
                events.append(self._finish(head))
            if len(frame) < FRAME_BYTES:
                frame += bytes(FRAME_BYTES - len(frame))
            return frame, events
        return None, events

    def interrupt(
        self, reason: InterruptReason, only: Playback | None = None
    ) -> list[PlaybackEvent]:
        """Drop what is queued or playing (just ``only``, if given); for USER_SPEECH only the
        playbacks that allow it."""
        events: list[PlaybackEvent] = []
        kept: deque[Playback] = deque()
        for position, playback in enumerate(self._queue):
            if only is not None:
                cut = playback is only
            else:
                cut = reason is not InterruptReason.USER_SPEECH or playback.interrupt_on_speech
            if not cut:
                kept.append(playback)
                continue
            if position == 0 and playback.started:
                self._fade = fade_out(bytes(playback.pcm[:FRAME_BYTES]))
            playback.result = PlaybackResult(playback.id, playback.played_ms, reason)
            playback.pcm.clear()
            events.append(PlaybackInterrupted(playback.id, playback.played_ms, reason))
        self._queue = kept
        return events

    def close(self) -> list[PlaybackEvent]:
        events = self.interrupt(InterruptReason.SESSION_CLOSED)
        self._fade = None
        self.closed = True
        return events

    def _finish(self, playback: Playback) -> PlaybackFinished:
        playback.result = PlaybackResult(playback.id, playback.played_ms)
        return PlaybackFinished(playback.id, playback.played_ms)
