"""The speech segmenter on synthetic voiced flags with explicit media time: no event loop."""

from __future__ import annotations

import dataclasses
import math
import struct

import pytest
import webrtcvad
from hypothesis import given
from hypothesis import strategies as st

from media.errors import InvalidRequest
from media.vad import EndReason, Segmenter, SegmenterConfig, SpeechEnded, SpeechStarted

F = 20


def run(
    pattern: str, config: SegmenterConfig | None = None, offset: int = 0
) -> tuple[list[SpeechStarted | SpeechEnded], Segmenter]:
    """Feed one 20 ms frame per character: '#' voiced, '.' unvoiced."""
    segmenter = Segmenter(config or SegmenterConfig())
    events: list[SpeechStarted | SpeechEnded] = []
    for i, mark in enumerate(pattern):
        events += segmenter.push(mark == "#", offset + i * F)
    return events, segmenter


def frames(ms: int) -> int:
    return ms // F


def speech(ms: int) -> str:
    return "#" * frames(ms)


def silence(ms: int) -> str:
    return "." * frames(ms)


def test_one_utterance_gives_one_segment_dated_at_its_first_and_last_voiced_frames() -> None:
    events, _ = run(silence(400) + speech(600) + silence(800))
    assert events == [
        SpeechStarted(1, 400),
        SpeechEnded(1, 400, 1000, EndReason.SILENCE),
    ]
    assert events[1].duration_ms == 600  # type: ignore[union-attr]


def test_start_is_announced_once_min_speech_is_spanned() -> None:
    segmenter = Segmenter()
    announced_at = None
    for i in range(10):
        if segmenter.push(True, i * F):
            announced_at = i * F
            break
    assert announced_at == 80  # the frame [80, 100) completes 100 ms from the onset
    assert segmenter.speaking


def test_start_window_and_ratio_decide_what_counts_as_speech() -> None:
    sparse = silence(200) + "#.#.#.#.#.#.#.#.#.#." + silence(800)
    events, _ = run(sparse)
    assert events == []
    lenient = SegmenterConfig(start_ratio=0.5, end_ratio=0.95)
    events, _ = run(sparse, lenient)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert events[0].start_ms == 200

    patchy = silence(200) + "#..#" + speech(300) + silence(800)
    events, _ = run(patchy, SegmenterConfig(start_window_ms=60))
    assert events[0].start_ms == 200 + 3 * F  # the 60 ms window first fills at the second burst
    events, _ = run(patchy, SegmenterConfig(start_window_ms=200, start_ratio=0.5))
    assert events[0].start_ms == 200  # dated at the window's first voiced frame


def test_end_silence_and_ratio_decide_when_speech_ends() -> None:
    pauses = speech(400) + silence(300) + speech(400) + silence(1000)
    events, _ = run(pauses)
    assert len(events) == 2  # a 300 ms pause does not end 500 ms end_silence
    events, _ = run(pauses, SegmenterConfig(end_silence_ms=200))
    assert [e.segment_id for e in events] == [1, 1, 2, 2]
    assert events[1] == SpeechEnded(1, 0, 400, EndReason.SILENCE)

    blips = speech(400) + ("." * 9 + "#") * 6 + silence(1000)
    assert ended_at(blips, SegmenterConfig(end_ratio=0.85)) == 400 + 23 * F
    assert ended_at(blips, SegmenterConfig(end_ratio=0.95)) == 400 + 74 * F  # 1 blip in 25 at most
    events, _ = run(blips, SegmenterConfig(end_ratio=0.95))
    assert events[1] == SpeechEnded(1, 0, 400, EndReason.SILENCE)  # stray blips do not count


def ended_at(pattern: str, config: SegmenterConfig) -> int:
    """Media offset of the frame whose push emitted the first SpeechEnded."""
    segmenter = Segmenter(config)
    for i, mark in enumerate(pattern):
        if any(isinstance(e, SpeechEnded) for e in segmenter.push(mark == "#", i * F)):
            return i * F
    raise AssertionError("speech never ended")


def test_bursts_shorter_than_min_speech_are_discarded_and_counted() -> None:
    burst = silence(200) + speech(80) + silence(800)
    events, segmenter = run(burst * 3)
    assert events == []
    assert segmenter.discarded == 3
    events, segmenter = run(burst, SegmenterConfig(min_speech_ms=60))
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert segmenter.discarded == 0


def test_long_speech_is_split_at_max_segment_into_consecutive_segments() -> None:
    config = SegmenterConfig(max_segment_ms=1000)
    events, _ = run(speech(2500) + silence(800), config)
    assert events == [
        SpeechStarted(1, 0),
        SpeechEnded(1, 0, 1000, EndReason.MAX_LENGTH),
        SpeechStarted(2, 1000),
        SpeechEnded(2, 1000, 2000, EndReason.MAX_LENGTH),
        SpeechStarted(3, 2000),
        SpeechEnded(3, 2000, 2500, EndReason.SILENCE),
    ]


def test_pre_roll_is_carried_for_the_caller() -> None:
    assert SegmenterConfig().pre_roll_ms == 300
    assert SegmenterConfig(pre_roll_ms=0).pre_roll_ms == 0


def test_flush_ends_a_segment_with_the_callers_reason_and_drops_a_pending_one() -> None:
    segmenter = Segmenter()
    for i in range(frames(400)):
        segmenter.push(True, i * F)
    assert segmenter.flush(EndReason.STOPPED, 400) == [SpeechEnded(1, 0, 400, EndReason.STOPPED)]
    assert not segmenter.speaking
    for i in range(4):
        segmenter.push(True, 1000 + i * F)
    assert segmenter.flush(EndReason.CLOSED, 1080) == []
    assert segmenter.discarded == 1


def test_a_gap_in_the_media_clock_counts_as_silence() -> None:
    segmenter = Segmenter()
    events = []
    for i in range(frames(400)):
        events += segmenter.push(True, i * F)
    events += segmenter.push(True, 5000)
    assert SpeechEnded(1, 0, 400, EndReason.SILENCE) in events
    assert not segmenter.speaking


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("frame_ms", 25, "frame_ms must be 10, 20 or 30"),
        ("start_window_ms", 5, "start_window_ms must be between 20 and 1000"),
        ("start_ratio", 1.5, "start_ratio must be between 0.05 and 1"),
        ("start_ratio", math.nan, "start_ratio must be between"),
        ("end_silence_ms", 50, "end_silence_ms must be between 100 and 5000"),
        ("end_ratio", 0.0, "end_ratio must be between 0.05 and 1"),
        ("pre_roll_ms", 3000, "pre_roll_ms must be between 0 and 2000"),
        ("min_speech_ms", -1, "min_speech_ms must be between 0 and 5000"),
        ("max_segment_ms", 500, "max_segment_ms must be between 1000 and 600000"),
    ],
)
def test_invalid_parameters_name_the_field_and_its_range(
    field: str, value: float, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=message):
        dataclasses.replace(SegmenterConfig(), **{field: value})


@given(st.lists(st.booleans(), max_size=400), st.integers(0, 3))
def test_events_always_form_well_ordered_segments(flags: list[bool], preset: int) -> None:
    config = [
        SegmenterConfig(),
        SegmenterConfig(min_speech_ms=0, end_silence_ms=100),
        SegmenterConfig(max_segment_ms=1000, start_ratio=0.4),
        SegmenterConfig(frame_ms=10, start_window_ms=30, end_ratio=0.5),
    ][preset]
    segmenter = Segmenter(config)
    events = []
    for i, flag in enumerate(flags):
        events += segmenter.push(flag, i * config.frame_ms)
    events += segmenter.flush(EndReason.CLOSED, len(flags) * config.frame_ms)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded] * (len(events) // 2)
    ids = [e.segment_id for e in events]
    assert ids == [i // 2 + 1 for i in range(len(events))]
    last_end = 0
    for start, end in zip(events[::2], events[1::2], strict=True):
        assert isinstance(end, SpeechEnded)
        assert end.start_ms == start.start_ms >= last_end
        assert end.duration_ms >= 0
        if end.reason is EndReason.SILENCE:
            assert end.duration_ms >= config.min_speech_ms
        assert end.duration_ms <= config.max_segment_ms
        last_end = end.end_ms


def harmonic_burst(rate: int, ms: int) -> bytes:
    """A voiced-sounding signal: a 150 Hz sawtooth, amplitude-modulated at 4 Hz."""
    samples = []
    for n in range(rate * ms // 1000):
        t = n / rate
        saw = 2 * ((150 * t) % 1.0) - 1
        samples.append(int(12000 * saw * (0.6 + 0.4 * math.sin(2 * math.pi * 4 * t))))
    return struct.pack(f"<{len(samples)}h", *samples)


def test_real_webrtcvad_flags_through_the_segmenter() -> None:
    rate = 16000
    pcm = bytes(rate // 2) + harmonic_burst(rate, 800) + bytes(rate * 2)
    vad = webrtcvad.Vad(2)
    segmenter = Segmenter()
    frame_bytes = rate * F // 1000 * 2
    events = []
    for i in range(len(pcm) // frame_bytes):
        voiced = vad.is_speech(pcm[i * frame_bytes : (i + 1) * frame_bytes], rate)
        events += segmenter.push(voiced, i * F)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert abs(events[0].start_ms - 250) <= 60
    assert abs(events[1].end_ms - 1050) <= 200  # type: ignore[union-attr]
