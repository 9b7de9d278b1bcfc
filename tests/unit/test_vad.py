"""The speech segmenter on synthetic voiced flags with explicit media time: no event loop."""

from __future__ import annotations

import dataclasses
import math
import struct
from collections.abc import Iterable

import pytest
import webrtcvad
from hypothesis import given, settings
from hypothesis import strategies as st

from media.core.events import EndReason, SegmentEvent, SpeechEnded, SpeechStarted
from media.core.segmenter import Segmenter, SegmenterConfig
from media.errors import InvalidRequest

F = 20


def run(
    pattern: str, config: SegmenterConfig | None = None, offset: int = 0
) -> tuple[list[SegmentEvent], Segmenter]:
    """Feed one frame per character, '#' voiced and '.' unvoiced, from ``offset`` on."""
    segmenter = Segmenter(config)
    frame = segmenter.config.frame_ms
    events: list[SegmentEvent] = []
    for i, mark in enumerate(pattern):
        events += segmenter.push(mark == "#", offset + i * frame)
    return events, segmenter


def pushed_at(pattern: str, config: SegmenterConfig, kind: type[SegmentEvent]) -> int:
    """Media offset of the frame whose push emitted the first event of ``kind``."""
    segmenter = Segmenter(config)
    for i, mark in enumerate(pattern):
        if any(isinstance(e, kind) for e in segmenter.push(mark == "#", i * config.frame_ms)):
            return i * config.frame_ms
    raise AssertionError(f"no {kind.__name__}")


def speech(ms: int, frame: int = F) -> str:
    return "#" * (ms // frame)


def silence(ms: int, frame: int = F) -> str:
    return "." * (ms // frame)


def ended(events: Iterable[SegmentEvent]) -> list[SpeechEnded]:
    return [e for e in events if isinstance(e, SpeechEnded)]


# start and end dating


def test_one_utterance_is_one_segment_from_its_first_to_its_last_voiced_frame() -> None:
    events, segmenter = run(silence(400) + speech(600) + silence(800))
    assert events == [SpeechStarted(1, 400), SpeechEnded(1, 400, 1000, EndReason.SILENCE)]
    assert ended(events)[0].duration_ms == 600
    assert not segmenter.speaking
    assert segmenter.discarded == 0


def test_start_is_dated_at_the_first_voiced_frame_of_the_window_that_started_it() -> None:
    # 4 of the 5 frames [300, 400) are voiced; the first of them is at 300, not at 380
    events, _ = run(silence(300) + "#.##" + "#" + speech(400) + silence(800))
    assert events[0] == SpeechStarted(1, 300)
    # a voiced frame that has left the window by the time speech starts does not date it
    events, _ = run(silence(300) + "#...#" + "###" + speech(400) + silence(800))
    assert events[0] == SpeechStarted(1, 300 + 4 * F)


def test_start_is_announced_at_the_frame_that_spans_min_speech() -> None:
    pattern = silence(200) + speech(1000) + silence(800)
    # the start window holds at [260, 280); [280, 300) completes 100 ms from the onset at 200
    assert pushed_at(pattern, SegmenterConfig(), SpeechStarted) == 280
    assert pushed_at(pattern, SegmenterConfig(min_speech_ms=0), SpeechStarted) == 260
    assert pushed_at(pattern, SegmenterConfig(min_speech_ms=300), SpeechStarted) == 480
    for config in (SegmenterConfig(min_speech_ms=0), SegmenterConfig(min_speech_ms=300)):
        events, _ = run(pattern, config)
        assert events[0] == SpeechStarted(1, 200)  # the date never depends on when it is announced


def test_speaking_is_true_from_the_announced_start_to_the_end() -> None:
    segmenter = Segmenter()
    states = []
    for i, mark in enumerate(speech(200) + silence(600)):
        segmenter.push(mark == "#", i * F)
        states.append(segmenter.speaking)
    assert states.index(True) == 4  # announced at [80, 100)
    assert states.index(False, 4) == 10 + 22  # the 23rd unvoiced frame of the last 25 ends it


def test_end_is_dated_at_the_last_speech_frame_not_at_a_stray_voiced_frame_after_it() -> None:
    events, _ = run(speech(600) + "....#...#" + silence(800))
    assert ended(events) == [SpeechEnded(1, 0, 600, EndReason.SILENCE)]
    # a short dip inside speech is part of it: the end is the last voiced frame after the dip
    events, _ = run(speech(600) + ".#" + "####" + silence(800))
    assert ended(events) == [SpeechEnded(1, 0, 720, EndReason.SILENCE)]


# every parameter changes the outcome


def test_frame_ms_sets_the_duration_of_each_flag() -> None:
    burst = "...." + "####" + "." * 40
    events, segmenter = run(burst, SegmenterConfig(frame_ms=20))
    assert events == [] and segmenter.discarded == 1  # 80 ms is under min_speech_ms
    events, _ = run(burst, SegmenterConfig(frame_ms=30))
    assert events == [SpeechStarted(1, 120), SpeechEnded(1, 120, 240, EndReason.SILENCE)]
    for frame in (10, 20, 30):
        pattern = silence(300, frame) + speech(600, frame) + silence(900, frame)
        events, _ = run(pattern, SegmenterConfig(frame_ms=frame))
        assert events == [SpeechStarted(1, 300), SpeechEnded(1, 300, 900, EndReason.SILENCE)]


def test_start_window_and_ratio_decide_what_counts_as_speech() -> None:
    sparse = silence(200) + "#." * 10 + silence(800)
    assert run(sparse)[0] == []  # never 4 voiced in 5
    events, _ = run(sparse, SegmenterConfig(start_ratio=0.5, end_ratio=0.95))
    assert events == [SpeechStarted(1, 200), SpeechEnded(1, 200, 580, EndReason.SILENCE)]

    patchy = silence(200) + "#..#" + speech(300) + silence(800)
    events, _ = run(patchy)
    assert events[0] == SpeechStarted(1, 260)  # [200, 300) holds 2 voiced frames only
    events, _ = run(patchy, SegmenterConfig(start_window_ms=60, start_ratio=1.0))
    assert events[0] == SpeechStarted(1, 260)
    events, _ = run(patchy, SegmenterConfig(start_window_ms=200, start_ratio=0.5))
    assert events[0] == SpeechStarted(1, 200)  # 5 of 10 voiced by 320; the first is at 200


def test_start_window_is_rounded_up_to_whole_frames() -> None:
    assert SegmenterConfig(frame_ms=30, start_window_ms=100).start_frames == 4
    assert SegmenterConfig(frame_ms=20, end_silence_ms=510).end_frames == 26


def test_end_silence_and_ratio_decide_when_speech_ends() -> None:
    pauses = speech(400) + silence(300) + speech(400) + silence(1000)
    events, _ = run(pauses)
    assert ended(events) == [SpeechEnded(1, 0, 1100, EndReason.SILENCE)]  # a 300 ms pause is kept
    events, _ = run(pauses, SegmenterConfig(end_silence_ms=200))
    assert ended(events) == [
        SpeechEnded(1, 0, 400, EndReason.SILENCE),
        SpeechEnded(2, 700, 1100, EndReason.SILENCE),
    ]
    assert pushed_at(pauses, SegmenterConfig(), SpeechEnded) == 1100 + 22 * F  # 23 of 25
    assert pushed_at(pauses, SegmenterConfig(end_silence_ms=1000), SpeechEnded) == 1100 + 44 * F

    # 14 of 25 is 0.56, though 0.56 * 25 is a little over 14 in floating point
    assert pushed_at(pauses, SegmenterConfig(end_ratio=0.56), SpeechEnded) == 400 + 13 * F

    blips = speech(400) + (silence(180) + "#") * 6 + silence(1000)
    assert pushed_at(blips, SegmenterConfig(end_ratio=0.85), SpeechEnded) == 400 + 23 * F
    assert pushed_at(blips, SegmenterConfig(end_ratio=0.95), SpeechEnded) == 400 + 74 * F
    events, _ = run(blips, SegmenterConfig(end_ratio=0.95))
    assert ended(events) == [SpeechEnded(1, 0, 400, EndReason.SILENCE)]


def test_pre_roll_gives_the_segment_audio_range_clamped_at_zero_and_the_previous_end() -> None:
    config = SegmenterConfig()
    assert config.audio_start_ms(1000) == 700
    assert config.audio_start_ms(100) == 0
    assert config.audio_start_ms(1000, previous_end_ms=800) == 800
    assert SegmenterConfig(pre_roll_ms=0).audio_start_ms(1000) == 1000
    assert SegmenterConfig(pre_roll_ms=1500).audio_start_ms(2000, previous_end_ms=100) == 500


def test_bursts_shorter_than_min_speech_are_counted_and_emit_nothing() -> None:
    burst = silence(200) + speech(80) + silence(800)
    events, segmenter = run(burst * 3)
    assert events == []
    assert segmenter.discarded == 3
    assert not segmenter.speaking
    events, segmenter = run(burst, SegmenterConfig(min_speech_ms=60))
    assert events == [SpeechStarted(1, 200), SpeechEnded(1, 200, 280, EndReason.SILENCE)]
    assert segmenter.discarded == 0


def test_discarded_bursts_take_no_segment_id() -> None:
    events, segmenter = run(speech(80) + silence(600) + speech(400) + silence(600))
    assert events == [SpeechStarted(1, 680), SpeechEnded(1, 680, 1080, EndReason.SILENCE)]
    assert segmenter.discarded == 1


def test_long_speech_is_split_at_max_segment_into_consecutive_segments() -> None:
    events, segmenter = run(speech(2500) + silence(800), SegmenterConfig(max_segment_ms=1000))
    assert events == [
        SpeechStarted(1, 0),
        SpeechEnded(1, 0, 1000, EndReason.MAX_LENGTH),
        SpeechStarted(2, 1000),
        SpeechEnded(2, 1000, 2000, EndReason.MAX_LENGTH),
        SpeechStarted(3, 2000),
        SpeechEnded(3, 2000, 2500, EndReason.SILENCE),
    ]
    assert segmenter.config.audio_start_ms(2000, previous_end_ms=2000) == 2000  # no pre-roll
    events, _ = run(speech(2500) + silence(800))
    assert ended(events) == [SpeechEnded(1, 0, 2500, EndReason.SILENCE)]


def test_the_split_is_emitted_by_the_frame_that_goes_past_max_segment() -> None:
    config = SegmenterConfig(max_segment_ms=1000)
    segmenter = Segmenter(config)
    for i in range(50):
        assert len(segmenter.push(True, i * F)) == (1 if i == 4 else 0)
    assert segmenter.push(True, 1000) == [
        SpeechEnded(1, 0, 1000, EndReason.MAX_LENGTH),
        SpeechStarted(2, 1000),
    ]
    assert segmenter.speaking


def test_speech_that_stops_before_max_segment_is_not_split_by_its_trailing_silence() -> None:
    events, _ = run(speech(900) + silence(1000), SegmenterConfig(max_segment_ms=1000))
    assert events == [SpeechStarted(1, 0), SpeechEnded(1, 0, 900, EndReason.SILENCE)]


def test_a_pause_across_max_segment_is_split_at_max_segment() -> None:
    pattern = speech(900) + silence(200) + speech(500) + silence(1000)
    events, _ = run(pattern, SegmenterConfig(max_segment_ms=1000))
    assert events == [
        SpeechStarted(1, 0),
        SpeechEnded(1, 0, 1000, EndReason.MAX_LENGTH),
        SpeechStarted(2, 1000),
        SpeechEnded(2, 1000, 1600, EndReason.SILENCE),
    ]


def test_scattered_voiced_frames_cannot_hold_a_segment_open_past_max_segment() -> None:
    noise = (silence(140) + "#") * 100  # 3 or 4 voiced in every 25 frames: never 90% unvoiced
    config = SegmenterConfig(max_segment_ms=1000)
    events, _ = run(speech(400) + noise, config)
    assert events == [SpeechStarted(1, 0), SpeechEnded(1, 0, 400, EndReason.SILENCE)]
    assert pushed_at(speech(400) + noise, config, SpeechEnded) == 1000 + 500 - F
    events, segmenter = run(speech(400) + noise)
    assert ended(events) == [] and segmenter.speaking  # under the default 30 s it is still open


# gaps in the media clock


def feed(segmenter: Segmenter, frames: Iterable[tuple[bool, int]]) -> list[SegmentEvent]:
    events: list[SegmentEvent] = []
    for voiced, offset in frames:
        events += segmenter.push(voiced, offset)
    return events


def voiced(start_ms: int, end_ms: int, flag: bool = True) -> list[tuple[bool, int]]:
    return [(flag, offset) for offset in range(start_ms, end_ms, F)]


def test_a_short_gap_counts_as_unvoiced_frames() -> None:
    segmenter = Segmenter()
    events = feed(segmenter, voiced(0, 400) + voiced(600, 1000))  # 200 ms missing
    events += feed(segmenter, voiced(1000, 2000, False))
    assert ended(events) == [SpeechEnded(1, 0, 1000, EndReason.SILENCE)]

    segmenter = Segmenter()
    events = feed(segmenter, voiced(0, 400) + voiced(400, 700, False))
    assert segmenter.push(False, 1000) == [SpeechEnded(1, 0, 400, EndReason.SILENCE)]
    assert [type(e) for e in events] == [SpeechStarted]


def test_a_gap_of_end_silence_or_more_ends_speech_at_once() -> None:
    segmenter = Segmenter()
    feed(segmenter, voiced(0, 400))
    assert segmenter.push(True, 900) == [SpeechEnded(1, 0, 400, EndReason.SILENCE)]
    assert not segmenter.speaking
    events = feed(segmenter, voiced(920, 1400) + voiced(1400, 2000, False))
    assert events == [SpeechStarted(2, 900), SpeechEnded(2, 900, 1400, EndReason.SILENCE)]

    segmenter = Segmenter(SegmenterConfig(end_silence_ms=1000))
    feed(segmenter, voiced(0, 400))
    assert segmenter.push(True, 900) == []  # 480 ms missing is under end_silence_ms now
    assert segmenter.speaking


def test_a_gap_ends_an_unconfirmed_burst_as_discarded() -> None:
    segmenter = Segmenter()
    assert feed(segmenter, voiced(0, 80) + voiced(5000, 5020)) == []
    assert segmenter.discarded == 1


def test_offsets_that_are_not_frame_aligned_are_dated_as_given() -> None:
    segmenter = Segmenter()
    events = feed(segmenter, voiced(7, 607) + voiced(617, 1500, False))
    assert events == [SpeechStarted(1, 7), SpeechEnded(1, 7, 607, EndReason.SILENCE)]


def test_a_clock_that_goes_back_ends_speech_and_restarts_there() -> None:
    segmenter = Segmenter()
    events = feed(segmenter, voiced(5000, 5400))
    events += feed(segmenter, voiced(0, 400) + voiced(400, 1000, False))
    assert events == [
        SpeechStarted(1, 5000),
        SpeechEnded(1, 5000, 5400, EndReason.SILENCE),
        SpeechStarted(2, 0),
        SpeechEnded(2, 0, 400, EndReason.SILENCE),
    ]


# flush


@pytest.mark.parametrize("reason", [EndReason.STOPPED, EndReason.CLOSED])
def test_flush_ends_a_confirmed_segment_with_the_callers_reason(reason: EndReason) -> None:
    segmenter = Segmenter()
    feed(segmenter, voiced(0, 400) + voiced(400, 500, False))
    assert segmenter.flush(reason, 500) == [SpeechEnded(1, 0, 400, reason)]
    assert not segmenter.speaking
    assert segmenter.flush(reason, 500) == []


def test_flush_never_dates_the_end_after_the_cut() -> None:
    segmenter = Segmenter()
    feed(segmenter, voiced(0, 400))
    assert segmenter.flush(EndReason.STOPPED, 300) == [SpeechEnded(1, 0, 300, EndReason.STOPPED)]


def test_flush_discards_an_unconfirmed_burst_and_resets() -> None:
    segmenter = Segmenter()
    feed(segmenter, voiced(0, 400))
    segmenter.flush(EndReason.STOPPED, 400)
    feed(segmenter, voiced(1000, 1080))
    assert segmenter.flush(EndReason.CLOSED, 1080) == []
    assert segmenter.discarded == 1
    # no gap is measured across a flush, and ids keep counting
    events = feed(segmenter, voiced(200, 600) + voiced(600, 1200, False))
    assert events == [SpeechStarted(2, 200), SpeechEnded(2, 200, 600, EndReason.SILENCE)]


def test_flush_does_not_let_frames_before_it_start_speech_after_it() -> None:
    segmenter = Segmenter()
    feed(segmenter, voiced(0, 60))
    segmenter.flush(EndReason.STOPPED, 60)
    assert segmenter.push(True, 60) == []
    assert segmenter.discarded == 0


# configuration


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("frame_ms", 25, "frame_ms must be 10, 20 or 30, got 25"),
        ("frame_ms", 20.0, "frame_ms must be a whole number of ms, got 20.0"),
        ("start_window_ms", 10, "start_window_ms must be between 20 and 1000, got 10"),
        ("start_window_ms", 1020, "start_window_ms must be between 20 and 1000"),
        ("start_ratio", 1.5, "start_ratio must be between 0.05 and 1, got 1.5"),
        ("start_ratio", 0.0, "start_ratio must be between 0.05 and 1, got 0"),
        ("start_ratio", math.nan, "start_ratio must be between 0.05 and 1, got nan"),
        ("end_silence_ms", 50, "end_silence_ms must be between 100 and 5000, got 50"),
        ("end_silence_ms", True, "end_silence_ms must be a whole number of ms, got True"),
        ("end_ratio", 0.0, "end_ratio must be between 0.05 and 1, got 0"),
        ("end_ratio", 1.01, "end_ratio must be between 0.05 and 1"),
        ("pre_roll_ms", 3000, "pre_roll_ms must be between 0 and 2000, got 3000"),
        ("pre_roll_ms", -1, "pre_roll_ms must be between 0 and 2000"),
        ("min_speech_ms", -1, "min_speech_ms must be between 0 and 5000, got -1"),
        ("min_speech_ms", 5001, "min_speech_ms must be between 0 and 5000"),
        ("max_segment_ms", 500, "max_segment_ms must be between 1000 and 600000, got 500"),
        ("max_segment_ms", 600001, "max_segment_ms must be between 1000 and 600000"),
    ],
)
def test_invalid_parameters_name_the_field_and_its_range(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(InvalidRequest, match=f"^{message}"):
        dataclasses.replace(SegmenterConfig(), **{field: value})


def test_max_segment_must_exceed_min_speech() -> None:
    with pytest.raises(InvalidRequest, match="^max_segment_ms must be greater than min_speech_ms"):
        SegmenterConfig(min_speech_ms=3000, max_segment_ms=3000)
    assert SegmenterConfig(frame_ms=10, start_window_ms=10).start_frames == 1


def test_the_default_config_matches_the_documented_defaults() -> None:
    assert SegmenterConfig() == SegmenterConfig(20, 100, 0.75, 500, 0.9, 300, 100, 30000)
    assert Segmenter().config == SegmenterConfig()


# properties


def reference(flags: list[bool], config: SegmenterConfig) -> tuple[list[SegmentEvent], int]:
    """The documented rules, recomputed from whole lists at every frame: slow but plain."""
    frame = config.frame_ms
    n_start, n_end = config.start_frames, config.end_frames
    need_start = max(1, math.ceil(round(config.start_ratio * n_start, 9)))
    need_end = max(1, math.ceil(round(config.end_ratio * n_end, 9)))
    events: list[SegmentEvent] = []
    discarded, segment_id, since = 0, 1, 0
    start: int | None = None
    detected = speech_end = 0
    confirmed = False
    for i, flag in enumerate(flags):
        offset = i * frame
        lo = max(since, i - n_start + 1)
        is_speech = flag and sum(flags[lo : i + 1]) >= need_start
        if start is None:
            if not is_speech:
                continue
            start = flags.index(True, lo) * frame
            detected, confirmed = i, False
        if is_speech:
            speech_end = offset + frame
            if not confirmed and speech_end - start >= config.min_speech_ms:
                confirmed = True
                events.append(SpeechStarted(segment_id, start))
            if confirmed and speech_end - start > config.max_segment_ms:
                split = min(offset, start + config.max_segment_ms)
                events.append(SpeechEnded(segment_id, start, split, EndReason.MAX_LENGTH))
                segment_id += 1
                start = split
                events.append(SpeechStarted(segment_id, split))
        tail = flags[max(detected, i - n_end + 1) : i + 1]
        quiet = len(tail) == n_end and tail.count(False) >= need_end
        if quiet or offset + frame - start >= config.max_segment_ms + config.end_silence_ms:
            if confirmed:
                events.append(SpeechEnded(segment_id, start, speech_end, EndReason.SILENCE))
                segment_id += 1
            else:
                discarded += 1
            start, confirmed, since = None, False, i + 1
    return events, discarded


configs = st.builds(
    SegmenterConfig,
    frame_ms=st.sampled_from([10, 20, 30]),
    start_window_ms=st.sampled_from([30, 60, 100, 210]),
    start_ratio=st.sampled_from([0.05, 0.4, 0.6, 0.75, 1.0]),
    end_silence_ms=st.sampled_from([100, 150, 300, 500]),
    end_ratio=st.sampled_from([0.05, 0.5, 0.6, 0.9, 1.0]),
    pre_roll_ms=st.sampled_from([0, 300]),
    min_speech_ms=st.sampled_from([0, 50, 100, 400]),
    max_segment_ms=st.sampled_from([1000, 1500]),
)


def runs_of_flags() -> st.SearchStrategy[list[bool]]:
    """Flags in runs, like real VAD output, so that speech, pauses and splits all happen."""
    runs = st.lists(st.tuples(st.booleans(), st.integers(1, 60)), max_size=25)
    return runs.map(lambda rs: [flag for flag, n in rs for _ in range(n)])


@settings(max_examples=300, deadline=None)
@given(runs_of_flags() | st.lists(st.booleans(), max_size=300), configs)
def test_the_segmenter_follows_the_documented_rules(
    flags: list[bool], config: SegmenterConfig
) -> None:
    events, segmenter = run("".join("#" if f else "." for f in flags), config)
    assert (events, segmenter.discarded) == reference(flags, config)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from([0, 0, 0, 0, 0, 1, 7, 20, 100, 480, 2000])),
        max_size=400,
    ),
    configs,
    st.sampled_from([EndReason.STOPPED, EndReason.CLOSED]),
)
def test_events_always_form_well_ordered_segments(
    frames: list[tuple[bool, int]], config: SegmenterConfig, reason: EndReason
) -> None:
    segmenter = Segmenter(config)
    events: list[SegmentEvent] = []
    offset = 0
    for flag, skipped_ms in frames:
        offset += skipped_ms
        events += segmenter.push(flag, offset)
        open_segments = sum(1 if isinstance(e, SpeechStarted) else -1 for e in events)
        assert segmenter.speaking == (open_segments == 1)
        offset += config.frame_ms
    events += segmenter.flush(reason, offset)
    assert not segmenter.speaking

    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded] * (len(events) // 2)
    assert [e.segment_id for e in events] == [i // 2 + 1 for i in range(len(events))]
    previous: SpeechEnded | None = None
    for start, end in zip(events[::2], events[1::2], strict=True):
        assert isinstance(end, SpeechEnded)
        assert end.start_ms == start.start_ms < end.end_ms <= offset
        assert end.duration_ms <= config.max_segment_ms
        continues = previous is not None and previous.reason is EndReason.MAX_LENGTH
        if continues:
            assert previous is not None and start.start_ms == previous.end_ms
        else:
            assert end.duration_ms >= config.min_speech_ms
            assert end.reason is not EndReason.MAX_LENGTH or end.duration_ms > 0
        assert previous is None or start.start_ms >= previous.end_ms
        assert end.reason in (EndReason.SILENCE, EndReason.MAX_LENGTH, reason)
        previous = end
    assert events[-1:] == [] or ended(events)[-1].reason is not EndReason.MAX_LENGTH


# with the real webrtcvad


def harmonic_burst(rate: int, ms: int) -> bytes:
    """A voiced-sounding signal: a 150 Hz sawtooth, amplitude-modulated at 4 Hz."""
    samples = []
    for n in range(rate * ms // 1000):
        t = n / rate
        saw = 2 * ((150 * t) % 1.0) - 1
        samples.append(int(12000 * saw * (0.6 + 0.4 * math.sin(2 * math.pi * 4 * t))))
    return struct.pack(f"<{len(samples)}h", *samples)


def silent(rate: int, ms: int) -> bytes:
    return bytes(rate * ms // 1000 * 2)


def test_real_webrtcvad_flags_make_one_segment_around_the_burst() -> None:
    rate = 16000
    pcm = silent(rate, 500) + harmonic_burst(rate, 800) + silent(rate, 2000)
    vad = webrtcvad.Vad(2)
    segmenter = Segmenter()
    frame_bytes = rate * F // 1000 * 2
    events: list[SegmentEvent] = []
    for i in range(len(pcm) // frame_bytes):
        flag = vad.is_speech(pcm[i * frame_bytes : (i + 1) * frame_bytes], rate)
        events += segmenter.push(flag, i * F)
    assert [type(e) for e in events] == [SpeechStarted, SpeechEnded]
    assert abs(events[0].start_ms - 500) <= 40
    end = ended(events)[0]
    assert end.reason is EndReason.SILENCE
    assert 1300 <= end.end_ms <= 1300 + 200  # webrtcvad holds "voiced" a little past the burst
    assert segmenter.discarded == 0
