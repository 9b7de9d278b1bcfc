"""Everything that happens to a session, as past-tense dataclasses, with the enums they carry.

A :class:`SessionEvent` wraps one payload with the session id, its revision and its time; the state
machine (``media.core.session``), the segmenter and the playback queue emit them, and every edge
(gRPC, SSE, metrics) reads them from here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class SessionState(enum.IntEnum):
    NEW = 1
    CONNECTING = 2
    CONNECTED = 3
    READY = 4
    CLOSED = 5


class CloseReason(enum.IntEnum):
    CLIENT_DELETE = 1
    API_END = 2
    ICE_FAILED = 3
    READY_TIMEOUT = 4
    MEDIA_TIMEOUT = 5
    EXPIRED = 6
    SHUTDOWN = 7
    ERROR = 8
    NODE_LOST = 9


class EndReason(enum.IntEnum):
    """Why a segment ended; the values are those of ``media.v1.SpeechEndReason``."""

    SILENCE = 1
    MAX_LENGTH = 2
    STOPPED = 3  # the caller stopped listening
    CLOSED = 4  # the session is closing


class InterruptReason(enum.IntEnum):
    USER_SPEECH = 1
    STOP_PLAYBACK = 2
    REPLACED = 3
    SESSION_CLOSED = 4
    CALL_FAILED = 5


@dataclass(frozen=True, slots=True)
class StateChanged:
    state: SessionState
    previous: SessionState | None
    close_reason: CloseReason | None = None
    close_detail: str = ""


@dataclass(frozen=True, slots=True)
class ListeningChanged:
    listening: bool


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    segment_id: int
    start_ms: int


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    segment_id: int
    start_ms: int
    end_ms: int
    reason: EndReason

    @property
    def duration_ms(self) -> int:
        return self.end_ms - self.start_ms


SegmentEvent = SpeechStarted | SpeechEnded


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


EventPayload = StateChanged | ListeningChanged | SpeechStarted | SpeechEnded | PlaybackEvent


@dataclass(frozen=True, slots=True)
class SessionEvent:
    session_id: str
    revision: int
    time: float
    payload: EventPayload
