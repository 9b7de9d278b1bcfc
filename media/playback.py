"""The agent-voice queue: PCM in, one 20 ms frame per tick out, playback events. Pure, no asyncio.

The playout task calls :meth:`PlaybackQueue.tick` every 20 ms of wall time; what it returns is the
frame every player hears next (``None``: nothing to play, send silence). Playbacks are played one
after another in the order they began; REPLACE, StopPlayback, barge-in and the session closing cut
them. A playback whose caller has not finished sending waits at the head of the queue (its gaps
play as silence and are not counted as played).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field
from typing import Final

from media.errors import InvalidRequest, PlaybackExists

RATE: Final = 48000
FRAME_MS: Final = 20
FRAME_SAMPLES: Final = RATE * FRAME_MS // 1000
FRAME_BYTES: Final = FRAME_SAMPLES * 2
MAX_PLAYBACK_ID: Final = 64


class PlaybackMode(enum.IntEnum):
    ENQUEUE = 1
    REPLACE = 2


class InterruptReason(enum.IntEnum):
    USER_SPEECH = 1
    STOP_PLAYBACK = 2
    REPLACED = 3
    SESSION_CLOSED = 4


@dataclass(frozen=True, slots=True)
class PlaybackStarted:
    playback_id: str
    players: int


@dataclass(frozen=True, slots=True)
class PlaybackFinished:
    playback_id: str
    played_ms: int


@dataclass(frozen=True, slots=True)
class PlaybackInterrupted:
    playback_id: str
    played_ms: int
    reason: InterruptReason


PlaybackEvent = PlaybackStarted | PlaybackFinished | PlaybackInterrupted


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
        self._results: dict[str, PlaybackResult] = {}
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
            if any(p.id == playback_id for p in self._queue):
                raise PlaybackExists(f"playback {playback_id!r} is already queued or playing")
        else:
            self._next_id += 1
            playback_id = f"pb-{self._next_id}"
        events: list[PlaybackEvent] = []
        if mode is PlaybackMode.REPLACE:
            events = self.interrupt(InterruptReason.REPLACED)
        playback = Playback(playback_id, interrupt_on_speech)
        self._queue.append(playback)
        return playback, events

    def feed(self, playback: Playback, pcm: bytes) -> None:
        """More 48 kHz mono PCM for ``playback``; ignored once it has ended."""
        assert len(pcm) % 2 == 0
        if playback.result is None and not playback.input_done:
            playback.pcm += pcm

    def end_input(self, playback: Playback) -> list[PlaybackEvent]:
        """The caller sent everything. A playback that never got any audio ends here."""
        playback.input_done = True
        if playback.result is None and not playback.pcm and not playback.started:
            if playback in self._queue:
                self._queue.remove(playback)
            return [self._finish(playback)]
        return []

    def tick(self, players: int) -> tuple[bytes | None, list[PlaybackEvent]]:
        """The next 20 ms frame (``None`` for silence) and what happened to playbacks."""
        events: list[PlaybackEvent] = []
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

    def interrupt(self, reason: InterruptReason) -> list[PlaybackEvent]:
        """Drop everything queued or playing; for USER_SPEECH only playbacks that allow it."""
        events: list[PlaybackEvent] = []
        kept: deque[Playback] = deque()
        for playback in self._queue:
            if reason is InterruptReason.USER_SPEECH and not playback.interrupt_on_speech:
                kept.append(playback)
                continue
            playback.result = PlaybackResult(playback.id, playback.played_ms, reason)
            playback.pcm.clear()
            events.append(PlaybackInterrupted(playback.id, playback.played_ms, reason))
        self._queue = kept
        return events

    def close(self) -> list[PlaybackEvent]:
        events = self.interrupt(InterruptReason.SESSION_CLOSED)
        self.closed = True
        return events

    def _finish(self, playback: Playback) -> PlaybackFinished:
        playback.result = PlaybackResult(playback.id, playback.played_ms)
        return PlaybackFinished(playback.id, playback.played_ms)
