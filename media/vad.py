"""The speech segmenter: pure. Per-frame voiced flags and media offsets in, speech events out.

webrtcvad classifies each fixed frame; this turns the flags into segments:

* speech **starts** once ``start_ratio`` of the last ``start_window_ms`` is voiced, dated at the
  first voiced frame of that window;
* a start is only announced once the segment spans ``min_speech_ms`` (from its start to the end of
  its latest voiced frame), so a shorter burst is discarded without any event (``discarded`` counts
  them);
* speech **ends** once the last ``end_silence_ms`` is at least ``end_ratio`` unvoiced, dated at the
  end of the last voiced frame that still met the start criterion (so a stray voiced frame in
  the trailing silence does not stretch the segment);
* speech longer than ``max_segment_ms`` is split: ``SpeechEnded(MAX_LENGTH)`` and a new
  ``SpeechStarted`` at the same offset.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass

from media.errors import InvalidRequest


class EndReason(enum.IntEnum):
    SILENCE = 1
    MAX_LENGTH = 2
    STOPPED = 3
    CLOSED = 4


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


def _check(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}, got {value:g}")


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    """Segmenter parameters; allowed ranges in brackets.

    frame_ms 10, 20 or 30; start_window_ms [frame_ms, 1000]; start_ratio [0.05, 1];
    end_silence_ms [100, 5000]; end_ratio [0.05, 1]; pre_roll_ms [0, 2000];
    min_speech_ms [0, 5000]; max_segment_ms [1000, 600000] and above min_speech_ms.
    """

    frame_ms: int = 20
    start_window_ms: int = 100
    start_ratio: float = 0.75
    end_silence_ms: int = 500
    end_ratio: float = 0.9
    pre_roll_ms: int = 300
    min_speech_ms: int = 100
    max_segment_ms: int = 30000

    def __post_init__(self) -> None:
        if self.frame_ms not in (10, 20, 30):
            raise InvalidRequest(f"frame_ms must be 10, 20 or 30, got {self.frame_ms}")
        _check("start_window_ms", self.start_window_ms, self.frame_ms, 1000)
        _check("start_ratio", self.start_ratio, 0.05, 1.0)
        _check("end_silence_ms", self.end_silence_ms, 100, 5000)
        _check("end_ratio", self.end_ratio, 0.05, 1.0)
        _check("pre_roll_ms", self.pre_roll_ms, 0, 2000)
        _check("min_speech_ms", self.min_speech_ms, 0, 5000)
        _check("max_segment_ms", self.max_segment_ms, max(1000, self.min_speech_ms + 1), 600000)

    @property
    def start_frames(self) -> int:
        return math.ceil(self.start_window_ms / self.frame_ms)

    @property
    def end_frames(self) -> int:
        return math.ceil(self.end_silence_ms / self.frame_ms)


class _FlagWindow:
    """The last ``size`` flags with a running count of the true ones: O(1) per push."""

    __slots__ = ("_flags", "size", "count")

    def __init__(self, size: int) -> None:
        self._flags: deque[tuple[int, bool]] = deque()
        self.size = size
        self.count = 0

    def push(self, offset_ms: int, flag: bool) -> None:
        self._flags.append((offset_ms, flag))
        self.count += flag
        if len(self._flags) > self.size:
            self.count -= self._flags.popleft()[1]

    def first_true(self) -> int:
        return next(offset for offset, flag in self._flags if flag)

    def __len__(self) -> int:
        return len(self._flags)

    def clear(self) -> None:
        self._flags.clear()
        self.count = 0


class Segmenter:
    __slots__ = (
        "config",
        "discarded",
        "_start_window",
        "_end_window",
        "_start_needed",
        "_end_needed",
        "_start_ms",
        "_speech_end",
        "_confirmed",
        "_next_id",
        "_expected_ms",
    )

    def __init__(self, config: SegmenterConfig | None = None) -> None:
        self.config = config or SegmenterConfig()
        self.discarded = 0
        self._start_window = _FlagWindow(self.config.start_frames)
        self._end_window = _FlagWindow(self.config.end_frames)
        self._start_needed = max(
            1, math.ceil(self.config.start_ratio * self.config.start_frames - 1e-9)
        )
        self._end_needed = max(1, math.ceil(self.config.end_ratio * self.config.end_frames - 1e-9))
        self._start_ms: int | None = None
        self._speech_end = 0
        self._confirmed = False
        self._next_id = 1
        self._expected_ms: int | None = None

    @property
    def speaking(self) -> bool:
        """True between an announced SpeechStarted and its SpeechEnded."""
        return self._confirmed

    def push(self, voiced: bool, offset_ms: int) -> list[SegmentEvent]:
        """One frame's flag; ``offset_ms`` is where the frame starts on the media clock."""
        events: list[SegmentEvent] = []
        frame = self.config.frame_ms
        if self._expected_ms is not None and offset_ms > self._expected_ms:
            missing = (offset_ms - self._expected_ms) // frame
            limit = self.config.end_frames + self.config.start_frames
            for i in range(min(missing, limit)):
                self._step(False, offset_ms - (min(missing, limit) - i) * frame, events)
            if missing > limit:
                self._start_window.clear()
        self._step(voiced, offset_ms, events)
        self._expected_ms = offset_ms + frame
        return events

    def flush(self, reason: EndReason, offset_ms: int) -> list[SegmentEvent]:
        """End whatever is in progress with ``reason`` (listening stopped, session closing)."""
        events: list[SegmentEvent] = []
        if self._start_ms is not None:
            self._end(reason, events)
        self._start_window.clear()
        self._expected_ms = None
        return events

    def _step(self, voiced: bool, offset_ms: int, events: list[SegmentEvent]) -> None:
        frame = self.config.frame_ms
        self._start_window.push(offset_ms, voiced)
        dense = voiced and self._start_window.count >= self._start_needed
        if dense:
            self._speech_end = offset_ms + frame
        if self._start_ms is None:
            if not dense:
                return
            self._start_ms = self._start_window.first_true()
            self._end_window.clear()
            self._confirmed = False
        self._end_window.push(offset_ms, voiced)
        assert self._start_ms is not None
        if not self._confirmed:
            if self._speech_end - self._start_ms >= self.config.min_speech_ms:
                self._confirmed = True
                events.append(SpeechStarted(self._next_id, self._start_ms))
        if (
            len(self._end_window) >= self.config.end_frames
            and self.config.end_frames - self._end_window.count >= self._end_needed
        ):
            self._end(EndReason.SILENCE, events)
        elif self._confirmed and offset_ms + frame - self._start_ms >= self.config.max_segment_ms:
            split_ms = offset_ms + frame
            events.append(
                SpeechEnded(self._next_id, self._start_ms, split_ms, EndReason.MAX_LENGTH)
            )
            self._next_id += 1
            self._start_ms = split_ms
            events.append(SpeechStarted(self._next_id, split_ms))

    def _end(self, reason: EndReason, events: list[SegmentEvent]) -> None:
        assert self._start_ms is not None
        if self._confirmed:
            end_ms = max(self._speech_end, self._start_ms)
            events.append(SpeechEnded(self._next_id, self._start_ms, end_ms, reason))
            self._next_id += 1
        else:
            self.discarded += 1
        self._start_ms = None
        self._confirmed = False
        self._start_window.clear()
        self._end_window.clear()
