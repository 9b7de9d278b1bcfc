"""StreamAudio chunks and resamplers on the speech pipeline, fed the fixture's decoded audio.

No event loop, no mock: the pipeline gets the PCM libopus decodes from each packet of
tests/fixtures/speech.ogg, as a publisher's ``OpusInput`` hands it over, and each subscriber is read
as its call reads it.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import pytest

from media.audio.speech_pipeline import SpeechPipeline
from media.audio.subscribers import (
    Audio,
    AudioMode,
    AudioSubscriber,
    SegmentEnd,
    SegmentStart,
    StreamItem,
)
from media.core.segmenter import SegmenterConfig
from media.core.speech_settings import SpeechSettings
from media.metrics import Metrics
from tests.support import fixture_pcm, truth

UTTERANCES = len(truth()["utterances"])


@functools.cache
def decoded_fixture() -> tuple[tuple[bytes, int], ...]:
    """Each packet's 16 kHz PCM and its first sample on the media clock."""
    return tuple(fixture_pcm())


def listening_pipeline() -> SpeechPipeline:
    pipeline = SpeechPipeline(SpeechSettings(), lambda event: None)
    pipeline.start(SegmenterConfig(), 2)
    return pipeline


def drain(subscriber: AudioSubscriber) -> list[StreamItem]:
    items = []
    while (item := subscriber.get_nowait()) is not None:
        items.append(item)
    return items


def publish_fixture(
    pipeline: SpeechPipeline, after_each: Callable[[int], None] = lambda index: None
) -> None:
    for index, (pcm, start) in enumerate(decoded_fixture()):
        pipeline.push(pcm, start)
        after_each(index)
    pipeline.close()
    after_each(len(decoded_fixture()))


def read_all(pipeline: SpeechPipeline, *subscribers: AudioSubscriber) -> list[list[StreamItem]]:
    """What each subscriber reads of the whole fixture, reading as it goes."""
    read: list[list[StreamItem]] = [[] for _ in subscribers]

    def after_each(index: int) -> None:
        for items, subscriber in zip(read, subscribers, strict=True):
            items += drain(subscriber)

    publish_fixture(pipeline, after_each)
    return read


def segments(items: list[StreamItem]) -> Iterator[tuple[SegmentStart, list[Audio], SegmentEnd]]:
    """Each segment's markers and audio, checking that nothing falls outside a segment."""
    start: SegmentStart | None = None
    audio: list[Audio] = []
    for item in items:
        if isinstance(item, SegmentStart):
            assert start is None
            start, audio = item, []
        elif isinstance(item, Audio):
            assert start is not None and item.segment_id == start.segment_id
            audio.append(item)
        elif isinstance(item, SegmentEnd):
            assert start is not None and item.segment_id == start.segment_id
            yield start, audio, item
            start = None


def test_chunks_of_100_ms_carry_the_same_pcm_and_boundaries_as_frames_of_20() -> None:
    pipeline = listening_pipeline()
    frames = pipeline.subscribe(AudioMode.SPEECH, 0, chunk_ms=20)
    chunks = pipeline.subscribe(AudioMode.SPEECH, 0, chunk_ms=100)
    by_frame, by_chunk = (list(segments(read)) for read in read_all(pipeline, frames, chunks))

    assert len(by_frame) == UTTERANCES
    assert [(s, e) for s, _, e in by_chunk] == [(s, e) for s, _, e in by_frame]
    for (start, frame_audio, _), (_, chunk_audio, _) in zip(by_frame, by_chunk, strict=True):
        assert b"".join(a.pcm for a in chunk_audio) == b"".join(a.pcm for a in frame_audio)
        assert chunk_audio[0].offset_ms == frame_audio[0].offset_ms == start.audio_start_ms
        for before, after in zip(chunk_audio, chunk_audio[1:], strict=False):
            assert after.offset_ms == before.offset_ms + before.duration_ms
        for chunk in chunk_audio:
            assert chunk.duration_ms <= 100
            assert len(chunk.pcm) == chunk.duration_ms * 32
            end_ms = chunk.offset_ms + chunk.duration_ms
            covered = [a for a in frame_audio if chunk.offset_ms <= a.offset_ms < end_ms]
            assert chunk.voiced == any(a.voiced for a in covered)
        assert len(chunk_audio) < len(frame_audio) / 3


@pytest.mark.parametrize("chunk_ms", [140, 200])
def test_a_segments_first_audio_and_its_end_come_as_soon_as_with_20_ms(chunk_ms: int) -> None:
    """Pushed frame by frame: a segment's start, its pre-roll and its end are readable after the
    same frame whatever the chunk size; only audio inside a segment waits to fill a chunk."""
    pipeline = listening_pipeline()
    small = pipeline.subscribe(AudioMode.SPEECH, 0, chunk_ms=20)
    large = pipeline.subscribe(AudioMode.SPEECH, 0, chunk_ms=chunk_ms)
    read_after: dict[AudioSubscriber, list[tuple[int, StreamItem]]] = {small: [], large: []}

    def read(index: int) -> None:
        for subscriber, items in read_after.items():
            items += [(index, item) for item in drain(subscriber)]

    publish_fixture(pipeline, read)

    def markers(subscriber: AudioSubscriber) -> list[tuple[int, StreamItem]]:
        return [(i, item) for i, item in read_after[subscriber] if not isinstance(item, Audio)]

    def frames_read(subscriber: AudioSubscriber) -> dict[int, int]:
        """When each 20 ms frame became readable (the index of the frame pushed last)."""
        return {
            item.offset_ms + ms: i
            for i, item in read_after[subscriber]
            if isinstance(item, Audio)
            for ms in range(0, item.duration_ms, 20)
        }

    assert markers(large) == markers(small)
    assert len(markers(small)) == 2 * UTTERANCES + 1  # the last is the stream's end
    small_read, large_read = frames_read(small), frames_read(large)
    assert large_read.keys() == small_read.keys()
    starts = {i for i, item in markers(small) if isinstance(item, SegmentStart)}
    at_start = [offset for offset, i in small_read.items() if i in starts]
    assert len(at_start) >= UTTERANCES * 300 // 20  # each start's pre-roll, at least
    assert all(large_read[offset] in starts for offset in at_start)
    for i, item in read_after[large]:
        if isinstance(item, Audio):
            # a full chunk goes with its last frame, the rest of a segment with its end
            last_frame = item.offset_ms + item.duration_ms - 20
            assert i - small_read[last_frame] <= (0 if item.duration_ms == chunk_ms else 1)
            assert i - small_read[item.offset_ms] < chunk_ms // 20  # the first frame's wait


def test_all_mode_chunks_never_mix_voiced_and_unvoiced_frames_or_segments() -> None:
    pipeline = listening_pipeline()
    frames = pipeline.subscribe(AudioMode.ALL, 0, chunk_ms=20)
    chunks = pipeline.subscribe(AudioMode.ALL, 0, chunk_ms=200)
    frame_audio, chunk_audio = (
        [a for a in read if isinstance(a, Audio)] for read in read_all(pipeline, frames, chunks)
    )

    def per_frame(audio: list[Audio]) -> list[tuple[int, bool, int]]:
        return [
            (a.offset_ms + ms, a.voiced, a.segment_id)
            for a in audio
            for ms in range(0, a.duration_ms, 20)
        ]

    assert per_frame(chunk_audio) == per_frame(frame_audio)
    assert b"".join(a.pcm for a in chunk_audio) == b"".join(a.pcm for a in frame_audio)
    assert max(a.duration_ms for a in chunk_audio) == 200
    assert len(chunk_audio) < len(frame_audio) / 3


def test_a_chunk_ms_between_frames_rounds_down_to_whole_frames() -> None:
    pipeline = listening_pipeline()
    subscriber = pipeline.subscribe(AudioMode.ALL, 0, chunk_ms=50)
    (read,) = read_all(pipeline, subscriber)
    durations = {a.duration_ms for a in read if isinstance(a, Audio)}
    assert max(durations) == 40 and all(d % 20 == 0 for d in durations)


def test_chunks_longer_than_the_queue_limit_are_not_dropped() -> None:
    pipeline = SpeechPipeline(SpeechSettings(subscriber_queue_ms=100), lambda event: None)
    pipeline.start(SegmenterConfig(), 2)
    subscriber = pipeline.subscribe(AudioMode.ALL, 0, chunk_ms=200)
    dropped = 0

    def read(index: int) -> None:
        nonlocal dropped
        dropped += sum(a.dropped_ms for a in drain(subscriber) if isinstance(a, Audio))

    publish_fixture(pipeline, read)
    assert dropped == 0 and subscriber.total_dropped_ms == 0


def test_subscribers_at_one_rate_share_one_resampler() -> None:
    """Two ALL subscribers and a SPEECH one at 8 kHz get each frame from one resample: the very
    same bytes object (one resampler each would make equal bytes, never the same object)."""
    pipeline = listening_pipeline()
    first = pipeline.subscribe(AudioMode.ALL, 8000, chunk_ms=20)
    second = pipeline.subscribe(AudioMode.ALL, 8000, chunk_ms=20)
    speech = pipeline.subscribe(AudioMode.SPEECH, 8000, chunk_ms=20)
    vad_rate = pipeline.subscribe(AudioMode.ALL, 0, chunk_ms=20)
    a, b, s, v = (
        [item for item in read if isinstance(item, Audio)]
        for read in read_all(pipeline, first, second, speech, vad_rate)
    )

    assert len(a) == len(b) == len(v) > 500
    assert all(x.pcm is y.pcm and x.offset_ms == y.offset_ms for x, y in zip(a, b, strict=True))
    assert all(x.sample_rate == 8000 for x in a + s) and v[0].sample_rate == 16000
    # The pre-roll the SPEECH subscriber gets at a segment's start was resampled live, in order:
    # its own resampler, or the shared one fed those frames again, would make other samples.
    live = {x.offset_ms: x.pcm for x in a}
    assert s
    for chunk in s:
        frames = range(chunk.offset_ms, chunk.offset_ms + chunk.duration_ms, 20)
        assert chunk.pcm == b"".join(live[offset] for offset in frames)
    assert abs(sum(len(x.pcm) for x in a) - sum(len(x.pcm) for x in v) / 2) <= 64


def test_audio_dropped_for_a_slow_reader_is_published_on_scrape_under_the_same_name() -> None:
    metrics = Metrics()
    pipeline = SpeechPipeline(SpeechSettings(subscriber_queue_ms=500), lambda e: None, metrics)
    pipeline.start(SegmenterConfig(), 2)
    never_read = pipeline.subscribe(AudioMode.ALL, 0)
    publish_fixture(pipeline)
    dropped_s = metrics.registry.get_sample_value("hark_stream_audio_dropped_seconds_total")
    assert never_read.total_dropped_ms > 10000
    assert dropped_s == pytest.approx(never_read.total_dropped_ms / 1000)
    assert b"hark_stream_audio_dropped_seconds_total" in metrics.exposition()
