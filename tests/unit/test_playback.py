"""The agent-voice queue and the relay's RTP clock, without an event loop."""

from __future__ import annotations

import pytest

from media.core.events import (
    InterruptReason,
    PlaybackFinished,
    PlaybackInterrupted,
    PlaybackStarted,
)
from media.core.playback_queue import (
    FADE_MS,
    FRAME_BYTES,
    MAX_PLAYBACKS,
    PlaybackMode,
    PlaybackQueue,
)
from media.core.rtp_clock import TimestampUnwrapper
from media.errors import CapacityExceeded, InvalidRequest, PlaybackExists

ENQUEUE, REPLACE = PlaybackMode.ENQUEUE, PlaybackMode.REPLACE


def pcm(ms: int, value: int = 1000) -> bytes:
    return value.to_bytes(2, "little", signed=True) * (48 * ms)


def drain(queue: PlaybackQueue, ticks: int, players: int = 1) -> tuple[list[bytes | None], list]:
    frames, events = [], []
    for _ in range(ticks):
        frame, happened = queue.tick(players)
        frames.append(frame)
        events.extend(happened)
    return frames, events


def test_a_playback_plays_in_20_ms_frames_and_reports_start_and_finish() -> None:
    queue = PlaybackQueue()
    playback, events = queue.begin(ENQUEUE)
    assert events == []
    queue.feed(playback, pcm(100))
    queue.end_input(playback)
    frames, events = drain(queue, 7, players=2)
    assert [f is not None for f in frames] == [True] * 5 + [False] * 2
    assert all(len(f) == FRAME_BYTES for f in frames if f is not None)
    assert events == [PlaybackStarted("pb-1", 2), PlaybackFinished("pb-1", 100)]
    assert playback.result is not None and playback.result.interrupted is None
    assert not queue.active


def test_a_partial_last_frame_is_padded_with_silence_and_counted_exactly() -> None:
    queue = PlaybackQueue()
    playback, _ = queue.begin(ENQUEUE)
    queue.feed(playback, pcm(30))
    queue.end_input(playback)
    frames, events = drain(queue, 2)
    assert frames[1] is not None and frames[1][FRAME_BYTES // 2 :] == bytes(FRAME_BYTES // 2)
    assert events[-1] == PlaybackFinished("pb-1", 30)


def test_a_caller_slower_than_real_time_gets_silent_gaps_that_are_not_counted() -> None:
    queue = PlaybackQueue()
    playback, _ = queue.begin(ENQUEUE)
    queue.feed(playback, pcm(10))
    frames, _ = drain(queue, 3)
    assert frames == [None, None, None]  # less than a frame, and more may come
    queue.feed(playback, pcm(30))
    queue.end_input(playback)
    frames, events = drain(queue, 3)
    assert [f is not None for f in frames] == [True, True, False]
    assert events[-1] == PlaybackFinished("pb-1", 40)


def test_enqueued_playbacks_play_one_after_another() -> None:
    queue = PlaybackQueue()
    first, _ = queue.begin(ENQUEUE)
    second, _ = queue.begin(ENQUEUE, playback_id="answer-2")
    queue.feed(second, pcm(40, 2000))
    queue.end_input(second)
    queue.feed(first, pcm(40, 1000))
    frames, events = drain(queue, 4)
    assert frames[:2] == [pcm(20, 1000)] * 2
    assert frames[2:] == [None, None]  # the first is still open: the second waits behind it
    queue.end_input(first)
    frames, more = drain(queue, 3)
    assert frames == [pcm(20, 2000), pcm(20, 2000), None]
    assert events + more == [
        PlaybackStarted("pb-1", 1),
        PlaybackFinished("pb-1", 40),
        PlaybackStarted("answer-2", 1),
        PlaybackFinished("answer-2", 40),
    ]


def test_replace_interrupts_what_is_queued_and_playing() -> None:
    queue = PlaybackQueue()
    first, _ = queue.begin(ENQUEUE)
    queue.feed(first, pcm(100))
    second, _ = queue.begin(ENQUEUE)
    drain(queue, 2)
    third, events = queue.begin(REPLACE)
    assert events == [
        PlaybackInterrupted("pb-1", 40, InterruptReason.REPLACED),
        PlaybackInterrupted("pb-2", 0, InterruptReason.REPLACED),
    ]
    assert first.result is not None and first.result.interrupted is InterruptReason.REPLACED
    assert queue.ids() == [third.id]


def test_barge_in_spares_playbacks_that_asked_not_to_be_interrupted() -> None:
    queue = PlaybackQueue()
    keep, _ = queue.begin(ENQUEUE, interrupt_on_speech=False)
    cut, _ = queue.begin(ENQUEUE)
    events = queue.interrupt(InterruptReason.USER_SPEECH)
    assert events == [PlaybackInterrupted(cut.id, 0, InterruptReason.USER_SPEECH)]
    assert queue.ids() == [keep.id]
    assert queue.interrupt(InterruptReason.STOP_PLAYBACK) == [
        PlaybackInterrupted(keep.id, 0, InterruptReason.STOP_PLAYBACK)
    ]


def samples_of(frame: bytes) -> list[int]:
    return [
        int.from_bytes(frame[i : i + 2], "little", signed=True) for i in range(0, len(frame), 2)
    ]


def test_the_next_frame_after_an_interrupt_fades_out_in_10_ms_then_silence() -> None:
    queue = PlaybackQueue()
    playback, _ = queue.begin(ENQUEUE)
    queue.feed(playback, pcm(1000, 8000))
    drain(queue, 3)
    queue.interrupt(InterruptReason.USER_SPEECH)
    fade, events = queue.tick(1)
    assert fade is not None and len(fade) == FRAME_BYTES and events == []
    samples = samples_of(fade)
    ramp, rest = samples[: 48 * FADE_MS], samples[48 * FADE_MS :]
    assert ramp[0] == 8000 and all(a >= b for a, b in zip(ramp, ramp[1:], strict=False))
    assert ramp[-1] < 8000 // 100 and set(rest) == {0}
    assert queue.tick(1) == (None, [])
    queue.feed(playback, pcm(100))  # the caller is still sending: it goes nowhere
    assert queue.tick(1) == (None, []) and queue.queued_ms == 0


def test_nothing_that_had_not_started_fades() -> None:
    queue = PlaybackQueue()
    playing, _ = queue.begin(ENQUEUE, interrupt_on_speech=False)
    waiting, _ = queue.begin(ENQUEUE)
    queue.feed(playing, pcm(100))
    queue.feed(waiting, pcm(100))
    drain(queue, 1)
    queue.interrupt(InterruptReason.USER_SPEECH)
    assert not queue.fading and queue.tick(1)[0] == pcm(20)
    queue.interrupt(InterruptReason.CALL_FAILED, only=playing)
    assert queue.fading


def test_replace_fades_out_what_played_then_plays_the_new_audio() -> None:
    queue = PlaybackQueue()
    first, _ = queue.begin(ENQUEUE)
    queue.feed(first, pcm(1000, 4000))
    drain(queue, 2)
    second, _ = queue.begin(REPLACE)
    queue.feed(second, pcm(20, 2000))
    queue.end_input(second)
    frames, events = drain(queue, 3)
    assert frames[0] is not None and samples_of(frames[0])[0] == 4000  # the fade
    assert frames[1:] == [pcm(20, 2000), None]
    assert events == [PlaybackStarted(second.id, 1), PlaybackFinished(second.id, 20)]


def test_a_failed_call_drops_only_its_own_playback() -> None:
    queue = PlaybackQueue()
    first, _ = queue.begin(ENQUEUE)
    failed, _ = queue.begin(ENQUEUE)
    queue.feed(first, pcm(40))
    queue.feed(failed, pcm(40))
    events = queue.interrupt(InterruptReason.CALL_FAILED, only=failed)
    assert events == [PlaybackInterrupted(failed.id, 0, InterruptReason.CALL_FAILED)]
    assert queue.ids() == [first.id] and queue.queued_ms == 40


def test_a_playback_that_never_got_audio_finishes_without_starting() -> None:
    queue = PlaybackQueue()
    playback, _ = queue.begin(ENQUEUE)
    assert queue.end_input(playback) == [PlaybackFinished("pb-1", 0)]
    assert not queue.active


def test_an_empty_playback_behind_another_finishes_in_its_turn() -> None:
    queue = PlaybackQueue()
    first, _ = queue.begin(ENQUEUE)
    empty, _ = queue.begin(ENQUEUE)
    queue.feed(first, pcm(20))
    assert queue.end_input(empty) == []
    queue.end_input(first)
    _, events = drain(queue, 2)
    assert events == [
        PlaybackStarted(first.id, 1),
        PlaybackFinished(first.id, 20),
        PlaybackFinished(empty.id, 0),
    ]


def test_queued_ms_counts_audio_not_yet_played() -> None:
    queue = PlaybackQueue()
    first, _ = queue.begin(ENQUEUE)
    second, _ = queue.begin(ENQUEUE)
    queue.feed(first, pcm(100))
    queue.feed(second, pcm(60))
    drain(queue, 2)
    assert queue.queued_ms == 120


def test_the_head_is_held_back_by_its_own_audio_and_the_rest_by_everything_queued() -> None:
    queue = PlaybackQueue()
    first, _ = queue.begin(ENQUEUE)
    second, _ = queue.begin(ENQUEUE)
    third, _ = queue.begin(ENQUEUE)
    queue.feed(first, pcm(100))
    queue.feed(second, pcm(3000))
    queue.feed(third, pcm(200))
    assert queue.backlog_ms(first) == 100
    assert queue.backlog_ms(second) == queue.backlog_ms(third) == 3300


def test_a_session_queues_at_most_32_playbacks() -> None:
    queue = PlaybackQueue()
    for _ in range(MAX_PLAYBACKS):
        queue.begin(ENQUEUE)
    with pytest.raises(CapacityExceeded, match="32 playbacks are already queued or playing"):
        queue.begin(ENQUEUE)
    replacing, events = queue.begin(REPLACE)
    assert len(events) == MAX_PLAYBACKS and queue.ids() == [replacing.id]


def test_playback_ids_are_checked_and_unique_while_queued() -> None:
    queue = PlaybackQueue()
    queue.begin(ENQUEUE, playback_id="greeting")
    with pytest.raises(PlaybackExists, match="'greeting' is already queued or playing"):
        queue.begin(ENQUEUE, playback_id="greeting")
    with pytest.raises(InvalidRequest, match="up to 64 printable characters"):
        queue.begin(ENQUEUE, playback_id="x" * 65)
    with pytest.raises(InvalidRequest, match="printable"):
        queue.begin(ENQUEUE, playback_id="a\nb")


def test_replace_may_reuse_the_id_it_replaces() -> None:
    queue = PlaybackQueue()
    old, _ = queue.begin(ENQUEUE, playback_id="answer")
    new, events = queue.begin(REPLACE, playback_id="answer")
    assert events == [PlaybackInterrupted("answer", 0, InterruptReason.REPLACED)]
    assert queue.ids() == ["answer"] and new is not old


def test_closing_interrupts_everything_with_session_closed() -> None:
    queue = PlaybackQueue()
    playback, _ = queue.begin(ENQUEUE)
    queue.feed(playback, pcm(100))
    drain(queue, 1)
    assert queue.close() == [PlaybackInterrupted("pb-1", 20, InterruptReason.SESSION_CLOSED)]
    assert queue.closed and not queue.active


@pytest.mark.parametrize("start", [0, 1000, 2**32 - 960 * 3])
def test_rtp_timestamps_unwrap_across_2_to_the_32(start: int) -> None:
    clock = TimestampUnwrapper()
    stamps = [(start + 960 * i) % 2**32 for i in range(8)]
    assert [clock.unwrap(t) for t in stamps] == [960 * i for i in range(8)]


def test_a_late_packet_unwraps_before_its_successor() -> None:
    clock = TimestampUnwrapper()
    start = 2**32 - 960
    assert clock.unwrap(start) == 0
    assert clock.unwrap((start + 1920) % 2**32) == 1920  # crossed the wrap
    assert clock.unwrap((start + 960) % 2**32) == 960  # the one in between, late
    assert clock.unwrap((start + 2880) % 2**32) == 2880


@pytest.mark.parametrize("start", [0, 2**32 - 960, 123_456_789])
def test_a_large_step_back_is_a_discontinuity_not_a_day_ahead(start: int) -> None:
    clock = TimestampUnwrapper()
    before = [clock.unwrap((start + 960 * i) % 2**32) for i in range(3)]
    back = (start + 960 * 3 - 48000) % 2**32  # the sender's clock went back 1 s
    after = [clock.unwrap((back + 960 * i) % 2**32) for i in range(3)]
    assert before + after == [960 * i for i in range(6)]
