"""Pure pieces of the audio path: framing on the media clock, subscriber queues, rate limits."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from media.audio.framing import Framer
from media.audio.speech_pipeline import SpeechPipeline
from media.audio.subscribers import Audio, AudioMode, AudioSubscriber, SegmentEnd, SegmentStart
from media.core.events import EndReason
from media.core.rate_limiter import RateLimiter
from media.core.segmenter import SegmenterConfig
from media.core.speech_settings import SpeechSettings
from tests.unit.test_vad import harmonic_burst

RATE = 16000
FRAME_BYTES = 640  # 20 ms at 16 kHz, 16-bit mono


def test_framer_cuts_fixed_frames_dated_on_the_media_clock() -> None:
    framer = Framer(RATE, 20)
    assert framer.push(bytes(500), 0) == []
    frames = framer.push(bytes(1000), 250)
    assert [(offset, len(pcm)) for offset, pcm in frames] == [(0, 640), (20, 640)]
    assert framer.push(bytes(420), 750) == [(40, bytes(640))]


def test_framer_restarts_at_a_gap_instead_of_shifting_later_audio() -> None:
    framer = Framer(RATE, 20)
    framer.push(bytes(FRAME_BYTES * 2), 0)
    frames = framer.push(bytes(FRAME_BYTES), RATE)  # one second later: packets were lost
    assert [offset for offset, _ in frames] == [1000]


def push_frame(subscriber: AudioSubscriber, offset: int, segment: int = 1) -> None:
    subscriber.push_audio(offset, bytes(FRAME_BYTES), True, segment)


async def test_a_slow_subscriber_loses_the_oldest_audio_and_is_told_how_much() -> None:
    subscriber = AudioSubscriber(AudioMode.SPEECH, RATE, 20, limit_ms=100, chunk_ms=20)
    subscriber.push(SegmentStart(1, 0, 0))
    for i in range(10):
        push_frame(subscriber, i * 20)
    assert await subscriber.get() == SegmentStart(1, 0, 0)  # markers are never dropped
    kept = await subscriber.get()
    assert isinstance(kept, Audio)
    assert (kept.offset_ms, kept.duration_ms, kept.dropped_ms) == (100, 100, 100)
    assert subscriber.total_dropped_ms == 100
    push_frame(subscriber, 200)
    after = await subscriber.get()
    assert isinstance(after, Audio) and after.dropped_ms == 0


async def test_queued_audio_is_merged_into_chunks_of_at_most_100_ms() -> None:
    subscriber = AudioSubscriber(AudioMode.SPEECH, RATE, 20, limit_ms=2000, chunk_ms=20)
    for i in range(12):
        push_frame(subscriber, i * 20)
    chunks = [await subscriber.get() for _ in range(3)]
    spans = [(c.offset_ms, c.duration_ms) for c in chunks]  # type: ignore[union-attr]
    assert spans == [(0, 100), (100, 100), (200, 40)]
    assert all(len(c.pcm) == c.duration_ms * 32 for c in chunks)  # type: ignore[union-attr]


def test_rate_limiter_allows_a_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    assert [limiter.check("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.check("a", 0.0)
    assert wait == pytest.approx(0.5)
    assert limiter.retry_after(wait) == 1
    assert limiter.check("b", 0.0) == 0.0  # clients are independent
    assert limiter.check("a", 0.6) == 0.0  # refilled at 2 per second


def test_rate_limiter_forgets_the_least_recent_clients_first() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=2)
    limiter.check("a", 0.0)
    limiter.check("b", 0.0)
    limiter.check("c", 0.0)
    assert limiter.check("a", 0.0) == 0.0  # "a" was forgotten, so it starts with a full bucket
    assert limiter.check("c", 0.0) > 0.0


async def test_a_split_segment_continues_without_repeating_audio() -> None:
    pipeline = SpeechPipeline(SpeechSettings(), lambda event: None)
    subscriber = pipeline.subscribe(AudioMode.SPEECH, 0)
    pipeline.start(SegmenterConfig(max_segment_ms=1000), 2)
    pcm = bytes(RATE) + harmonic_burst(RATE, 2500) + bytes(RATE * 2)
    for start in range(0, len(pcm) - FRAME_BYTES + 1, FRAME_BYTES):
        pipeline.push(pcm[start : start + FRAME_BYTES], start // 2)
    items = []
    with contextlib.suppress(TimeoutError):
        while True:
            items.append(await asyncio.wait_for(subscriber.get(), 0.05))
    spans = [(a.offset_ms, a.offset_ms + a.duration_ms) for a in items if isinstance(a, Audio)]
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, "audio delivered twice"
    ends = [i.reason for i in items if isinstance(i, SegmentEnd)]
    assert ends.count(EndReason.MAX_LENGTH) >= 2
