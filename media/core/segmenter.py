"""The speech segmenter: pure. One VAD frame's voiced flag and media offset in, speech events out.

webrtcvad (run by the caller) classifies each fixed frame as voiced or not; ``Segmenter`` turns
those flags into speech segments on the session's media clock. No asyncio, no I/O, no wall clock.

A frame is a **speech frame** when it is voiced and at least ``start_ratio`` of the start window
(the last ``start_window_ms`` of frames, this one included) is voiced.

* Speech **starts** at the first speech frame; the segment is dated at the *first voiced frame* of
  that window.
* A segment is **confirmed** once it spans ``min_speech_ms`` from its start to the end of its
  latest speech frame, and only then announced with ``SpeechStarted`` (``min_speech_ms = 0``
  announces at the first speech frame). That is the earliest moment a segment is known not to be a
  discarded burst. A segment that ends before it is confirmed is a **discarded burst**: it emits
  no event at all and increments ``Segmenter.discarded``.
* Speech **ends** once the last ``end_silence_ms`` of frames of the segment is at least
  ``end_ratio`` unvoiced. The end is dated at the end of the last speech frame, so a stray voiced
  frame inside that mostly-unvoiced trailing stretch does not stretch the segment.
* Speech that goes on past ``max_segment_ms`` is **split**: when a speech frame would take the
  segment past ``max_segment_ms``, ``SpeechEnded(MAX_LENGTH)`` and the next segment's
  ``SpeechStarted`` are emitted together, both at the split offset (that frame's start, or
  ``start + max_segment_ms`` if a pause crossed that point). A segment whose speech stops before
  ``max_segment_ms`` is never split, so a split segment always holds speech; a continuation is
  announced at once (``min_speech_ms`` does not apply to it).
* A segment is never open longer than ``max_segment_ms + end_silence_ms``: past
  ``max_segment_ms``, ``end_silence_ms`` without a speech frame ends it (``SILENCE``) even if
  scattered voiced frames keep the trailing stretch under ``end_ratio``.

Segment ids count up from 1 per segmenter; discarded bursts take no id. For monotonic offsets,
segments never overlap: a new segment starts at or after the previous one's end.

The segmenter keeps no audio. A segment's audio is ``pre_roll_ms`` before its start through its
end, clamped at 0 and at the previous segment's end: ``SegmenterConfig.audio_start_ms``.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from media.core.events import (
    EndReason,
    SegmentEvent,
    SpeechEnded,
    SpeechStarted,
)
from media.errors import InvalidRequest

_MS_FIELDS = (
    "frame_ms",
    "start_window_ms",
    "end_silence_ms",
    "pre_roll_ms",
    "min_speech_ms",
    "max_segment_ms",
)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise InvalidRequest(f"{name} must be between {low:g} and {high:g}, got {value:g}")


def _frames(ms: int, frame_ms: int) -> int:
    return -(-ms // frame_ms)


def _share(ratio: float, frames: int) -> int:
    """Frames needed for ``ratio`` of ``frames``: at least one, and 0.6 * 5 is 3, not 4."""
    return max(1, math.ceil(ratio * frames - 1e-9))


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    """Segmenter parameters. Allowed values (an invalid one raises ``InvalidRequest`` naming it):

    - ``frame_ms``: 10, 20 or 30 (webrtcvad's frame sizes).
    - ``start_window_ms``: ``frame_ms`` to 1000; rounded up to whole frames.
    - ``start_ratio``: 0.05 to 1.0; voiced share of the start window that makes a speech frame.
    - ``end_silence_ms``: 100 to 5000; rounded up to whole frames.
    - ``end_ratio``: 0.05 to 1.0; unvoiced share of the trailing stretch that ends speech.
    - ``pre_roll_ms``: 0 to 2000; audio before the start that belongs to the segment.
    - ``min_speech_ms``: 0 to 5000; shorter bursts are discarded.
    - ``max_segment_ms``: 1000 to 600000 and above ``min_speech_ms``; longer speech is split.

    Durations are whole milliseconds on the media clock.
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
        for name in _MS_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidRequest(f"{name} must be a whole number of ms, got {value!r}")
        if self.frame_ms not in (10, 20, 30):
            raise InvalidRequest(f"frame_ms must be 10, 20 or 30, got {self.frame_ms}")
        _check_range("start_window_ms", self.start_window_ms, self.frame_ms, 1000)
        _check_range("start_ratio", self.start_ratio, 0.05, 1.0)
        _check_range("end_silence_ms", self.end_silence_ms, 100, 5000)
        _check_range("end_ratio", self.end_ratio, 0.05, 1.0)
        _check_range("pre_roll_ms", self.pre_roll_ms, 0, 2000)
        _check_range("min_speech_ms", self.min_speech_ms, 0, 5000)
        _check_range("max_segment_ms", self.max_segment_ms, 1000, 600000)
        if self.max_segment_ms <= self.min_speech_ms:
            raise InvalidRequest(
                f"max_segment_ms must be greater than min_speech_ms ({self.min_speech_ms}), "
                f"got {self.max_segment_ms}"
            )

    @property
    def start_frames(self) -> int:
        return _frames(self.start_window_ms, self.frame_ms)

    @property
    def end_frames(self) -> int:
        return _frames(self.end_silence_ms, self.frame_ms)

    def audio_start_ms(self, start_ms: int, previous_end_ms: int = 0) -> int:
        """Where a segment starting at ``start_ms`` has its audio begin, pre-roll included.

        ``previous_end_ms`` is the previous segment's ``end_ms`` on the same clock: pre-roll never
        reaches back into it, so a segment continuing a ``MAX_LENGTH`` split gets none.
        """
        return max(0, previous_end_ms, start_ms - self.pre_roll_ms)


class Segmenter:
    """One audio stream's segmenter (see the module docstring for the rules).

    ``discarded`` counts the bursts dropped for being shorter than ``min_speech_ms``; they emit
    no event, so a caller that wants a metric reads the counter after ``push`` or ``flush``.
    ``push`` is O(1): running counts over two bounded deques. A gap in the offsets counts as
    unvoiced frames; a gap of ``end_silence_ms`` or more, or an offset earlier than the end of
    the previous frame (the clock went back), ends speech at once and restarts segmentation there.
    """

    __slots__ = (
        "config",
        "discarded",
        "_frame_ms",
        "_start_frames",
        "_start_needed",
        "_end_frames",
        "_end_needed",
        "_min_speech_ms",
        "_max_segment_ms",
        "_max_open_ms",
        "_gap_limit_ms",
        "_start_flags",
        "_start_voiced",
        "_end_flags",
        "_end_unvoiced",
        "_start_ms",
        "_speech_end_ms",
        "_confirmed",
        "_segment_id",
        "_expected_ms",
    )

    def __init__(self, config: SegmenterConfig | None = None) -> None:
        if config is None:
            config = SegmenterConfig()
        self.config = config
        self.discarded = 0
        self._frame_ms = config.frame_ms
        self._start_frames = config.start_frames
        self._start_needed = _share(config.start_ratio, self._start_frames)
        self._end_frames = config.end_frames
        self._end_needed = _share(config.end_ratio, self._end_frames)
        self._min_speech_ms = config.min_speech_ms
        self._max_segment_ms = config.max_segment_ms
        self._max_open_ms = config.max_segment_ms + config.end_silence_ms
        self._gap_limit_ms = config.end_silence_ms
        self._start_flags: deque[bool] = deque(maxlen=self._start_frames)
        self._start_voiced: deque[int] = deque()  # offsets of the voiced frames in the window
        self._end_flags: deque[bool] = deque(maxlen=self._end_frames)
        self._end_unvoiced = 0
        self._start_ms: int | None = None  # the open segment's start, confirmed or not
        self._speech_end_ms = 0
        self._confirmed = False
        self._segment_id = 1
        self._expected_ms: int | None = None

    @property
    def speaking(self) -> bool:
        """True between a ``SpeechStarted`` and its ``SpeechEnded``."""
        return self._confirmed

    def push(self, voiced: bool, offset_ms: int) -> list[SegmentEvent]:
        """Take one frame: its voiced flag and the media offset (ms) where the frame starts."""
        events: list[SegmentEvent] = []
        expected = self._expected_ms
        if expected is not None and offset_ms != expected:
            gap = offset_ms - expected
            if gap < 0 or gap >= self._gap_limit_ms:
                self._restart(events)
            else:
                for missing_ms in range(expected, offset_ms - self._frame_ms + 1, self._frame_ms):
                    self._step(False, missing_ms, events)
        self._step(voiced, offset_ms, events)
        self._expected_ms = offset_ms + self._frame_ms
        return events

    def flush(self, reason: EndReason, offset_ms: int) -> list[SegmentEvent]:
        """End what is in progress with ``reason`` (``STOPPED``, ``CLOSED``) and reset.

        ``offset_ms`` is where the caller cut the audio: a confirmed segment ends at its last
        speech frame, but not after ``offset_ms``. An unconfirmed one is a discarded burst. The
        next ``push`` starts afresh (no gap is measured across a flush); ids keep counting.
        """
        events: list[SegmentEvent] = []
        start = self._start_ms
        if start is None:
            self._clear_start_window()
        else:
            self._end(reason, max(start, min(self._speech_end_ms, offset_ms)), events)
        self._expected_ms = None
        return events

    def _step(self, voiced: bool, offset_ms: int, events: list[SegmentEvent]) -> None:
        flags = self._start_flags
        voiced_offsets = self._start_voiced
        if len(flags) == self._start_frames and flags[0]:
            voiced_offsets.popleft()
        flags.append(voiced)
        speech = False
        if voiced:
            voiced_offsets.append(offset_ms)
            speech = len(voiced_offsets) >= self._start_needed

        start = self._start_ms
        if start is None:
            if not speech:
                return
            start = self._start_ms = voiced_offsets[0]
            self._confirmed = False
            self._end_flags.clear()
            self._end_unvoiced = 0

        end_flags = self._end_flags
        if len(end_flags) == self._end_frames and not end_flags[0]:
            self._end_unvoiced -= 1
        end_flags.append(voiced)
        if not voiced:
            self._end_unvoiced += 1

        frame_end = offset_ms + self._frame_ms
        if speech:
            self._speech_end_ms = frame_end
            if not self._confirmed and frame_end - start >= self._min_speech_ms:
                self._confirmed = True
                events.append(SpeechStarted(self._segment_id, start))
            if self._confirmed and frame_end - start > self._max_segment_ms:
                split_ms = min(offset_ms, start + self._max_segment_ms)
                events.append(SpeechEnded(self._segment_id, start, split_ms, EndReason.MAX_LENGTH))
                self._segment_id += 1
                start = self._start_ms = split_ms
                events.append(SpeechStarted(self._segment_id, split_ms))

        if len(end_flags) == self._end_frames and self._end_unvoiced >= self._end_needed:
            self._end(EndReason.SILENCE, self._speech_end_ms, events)
        elif frame_end - start >= self._max_open_ms:
            self._end(EndReason.SILENCE, self._speech_end_ms, events)

    def _restart(self, events: list[SegmentEvent]) -> None:
        if self._start_ms is None:
            self._clear_start_window()
        else:
            self._end(EndReason.SILENCE, self._speech_end_ms, events)

    def _end(self, reason: EndReason, end_ms: int, events: list[SegmentEvent]) -> None:
        start = self._start_ms
        assert start is not None
        if self._confirmed:
            events.append(SpeechEnded(self._segment_id, start, end_ms, reason))
            self._segment_id += 1
        else:
            self.discarded += 1
        self._start_ms = None
        self._confirmed = False
        self._clear_start_window()

    def _clear_start_window(self) -> None:
        self._start_flags.clear()
        self._start_voiced.clear()
