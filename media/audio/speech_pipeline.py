"""One session's speech pipeline: VAD frames → webrtcvad → segmenter → events and audio subscribers.

Nothing here awaits. PCM arrives from the publisher's ``OpusInput``; events leave through a
callback into the session; audio leaves through each StreamAudio subscriber's bounded queue.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import webrtcvad

from media.audio.framing import Framer
from media.audio.pcm import PcmConverter
from media.core.events import EndReason, SpeechEnded, SpeechStarted
from media.core.segmenter import Segmenter, SegmenterConfig
from media.core.speech_settings import SpeechSettings
from media.metrics import Metrics

logger = logging.getLogger(__name__)

MAX_CHUNK_MS: Final = 100


class AudioMode(enum.IntEnum):
    SPEECH = 1
    ALL = 2


@dataclass(slots=True)
class Audio:
    """A piece of PCM for subscribers. ``dropped_ms`` is filled in on delivery."""

    pcm: bytes
    sample_rate: int
    offset_ms: int
    duration_ms: int
    segment_id: int
    voiced: bool
    dropped_ms: int = 0


@dataclass(frozen=True, slots=True)
class SegmentStart:
    segment_id: int
    start_ms: int
    audio_start_ms: int


@dataclass(frozen=True, slots=True)
class SegmentEnd:
    segment_id: int
    start_ms: int
    end_ms: int
    reason: EndReason


class StreamEnded:
    """The session closed: nothing more will come."""


STREAM_ENDED: Final = StreamEnded()

StreamItem = Audio | SegmentStart | SegmentEnd | StreamEnded


class AudioSubscriber:
    """One StreamAudio caller's queue, bounded in ms of audio; the oldest audio goes first.

    Audio dropped for a slow reader is added up and reported on the next audio it receives.
    """

    def __init__(
        self,
        mode: AudioMode,
        sample_rate: int,
        source_rate: int,
        limit_ms: int,
        metrics: Metrics | None = None,
    ) -> None:
        self.mode = mode
        self._metrics = metrics
        self.sample_rate = sample_rate
        self._resampler = (
            PcmConverter(source_rate, 1, sample_rate) if sample_rate != source_rate else None
        )
        self._limit_ms = limit_ms
        self._queue: deque[StreamItem] = deque()
        self._queued_ms = 0
        self._dropped_ms = 0
        self.total_dropped_ms = 0
        self._wake = asyncio.Event()

    def push(self, item: StreamItem) -> None:
        if isinstance(item, Audio):
            if self._resampler is not None:
                pcm = self._resampler.convert(item.pcm)
                item = dataclasses.replace(item, pcm=pcm, sample_rate=self.sample_rate)
            if not self._merge(item):
                self._queue.append(item)
            self._queued_ms += item.duration_ms
            while self._queued_ms > self._limit_ms:
                self._drop_oldest_audio()
        else:
            self._queue.append(item)
            if item is STREAM_ENDED:
                self._resampler = None
        self._wake.set()

    def _merge(self, item: Audio) -> bool:
        if not self._queue:
            return False
        last = self._queue[-1]
        if (
            not isinstance(last, Audio)
            or last.segment_id != item.segment_id
            or (self.mode is AudioMode.ALL and last.voiced != item.voiced)
            or last.offset_ms + last.duration_ms != item.offset_ms
            or last.duration_ms + item.duration_ms > MAX_CHUNK_MS
        ):
            return False
        last.pcm += item.pcm
        last.duration_ms += item.duration_ms
        last.voiced = last.voiced or item.voiced
        return True

    def _drop_oldest_audio(self) -> None:
        for index, queued in enumerate(self._queue):
            if isinstance(queued, Audio):
                del self._queue[index]
                self._queued_ms -= queued.duration_ms
                self._dropped_ms += queued.duration_ms
                self.total_dropped_ms += queued.duration_ms
                if self._metrics is not None:
                    self._metrics.audio_dropped.inc(queued.duration_ms / 1000)
                return

    async def get(self) -> StreamItem:
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        item = self._queue.popleft()
        if isinstance(item, Audio):
            self._queued_ms -= item.duration_ms
            item.dropped_ms, self._dropped_ms = self._dropped_ms, 0
        return item


SpeechEvent = SpeechStarted | SpeechEnded


class SpeechPipeline:
    """Per-session pipeline. ``push`` takes decoded PCM; listening gates analysis."""

    def __init__(
        self,
        settings: SpeechSettings,
        on_event: Callable[[SpeechEvent], None],
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self._metrics = metrics
        self._on_event = on_event
        self._rate = settings.sample_rate
        self._closed = False
        self._framer = Framer(self._rate, settings.frame_ms)
        self._vad = webrtcvad.Vad(settings.aggressiveness)
        self._pre_listen: deque[tuple[int, bytes]] = deque(
            maxlen=max(1, settings.pre_listen_ms // settings.frame_ms)
        )
        self._recent: deque[tuple[int, bytes, bool]] = deque()
        self._segmenter: Segmenter | None = None
        self._segment: SpeechStarted | None = None
        self._subscribers: set[AudioSubscriber] = set()
        self._last_offset_ms = 0
        self._discarded_seen = 0
        self._previous_end_ms = 0

    # input

    def push(self, pcm: bytes, start_sample: int | None = None) -> None:
        """16-bit mono PCM at the pipeline's rate; ``start_sample`` dates it on the media clock."""
        if self._closed:
            return
        for offset_ms, vad_frame in self._framer.push(pcm, start_sample):
            self._last_offset_ms = offset_ms
            if self._segmenter is None:
                self._pre_listen.append((offset_ms, vad_frame))
            else:
                self._analyse(offset_ms, vad_frame)

    # listening

    def start(self, segmenter: SegmenterConfig, aggressiveness: int) -> None:
        """Start analysing, beginning with the pre-listen buffer."""
        if self._segmenter is not None:
            return
        self._segmenter = Segmenter(segmenter)
        self._discarded_seen = 0
        self._vad.set_mode(aggressiveness)
        # A pause before confirmation can delay SpeechStarted by up to end_silence_ms.
        keep_ms = (
            segmenter.pre_roll_ms
            + segmenter.start_window_ms
            + segmenter.min_speech_ms
            + segmenter.end_silence_ms
        )
        self._recent = deque(maxlen=keep_ms // segmenter.frame_ms + 2)
        buffered, self._pre_listen = list(self._pre_listen), deque(maxlen=self._pre_listen.maxlen)
        for offset_ms, vad_frame in buffered:
            self._analyse(offset_ms, vad_frame)

    def stop(self, reason: EndReason = EndReason.STOPPED) -> None:
        """Stop analysing; a segment in progress ends with ``reason``."""
        if self._segmenter is None:
            return
        events = self._segmenter.flush(reason, self._last_offset_ms + self.settings.frame_ms)
        self._count_discarded()
        self._segmenter = None
        self._recent.clear()
        self._handle(events)

    def close(self) -> None:
        """End analysis and every subscriber; nothing pushed afterwards is analysed."""
        self.stop(EndReason.CLOSED)
        for subscriber in self._subscribers:
            subscriber.push(STREAM_ENDED)
        self._subscribers.clear()
        self._closed = True

    # subscribers

    def subscribe(self, mode: AudioMode, sample_rate: int) -> AudioSubscriber:
        subscriber = AudioSubscriber(
            mode,
            sample_rate or self._rate,
            self._rate,
            self.settings.subscriber_queue_ms,
            self._metrics,
        )
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: AudioSubscriber) -> None:
        self._subscribers.discard(subscriber)

    # internals

    def _analyse(self, offset_ms: int, vad_frame: bytes) -> None:
        assert self._segmenter is not None
        voiced = self._vad.is_speech(vad_frame, self._rate)
        self._recent.append((offset_ms, vad_frame, voiced))
        events = self._segmenter.push(voiced, offset_ms)
        if self._segmenter.discarded != self._discarded_seen:
            self._count_discarded()
        if events:
            self._handle(events)
        if self._subscribers:
            segment_id = self._segment.segment_id if self._segment is not None else 0
            for subscriber in self._subscribers:
                if subscriber.mode is AudioMode.ALL or (segment_id and not events):
                    subscriber.push(self._audio(offset_ms, vad_frame, voiced, segment_id))

    def _count_discarded(self) -> None:
        assert self._segmenter is not None
        new = self._segmenter.discarded - self._discarded_seen
        self._discarded_seen = self._segmenter.discarded
        if self._metrics is not None and new:
            self._metrics.discarded_bursts.inc(new)

    def _handle(self, events: list[SpeechEvent]) -> None:
        for event in events:
            if isinstance(event, SpeechStarted):
                self._segment = event
                self._segment_started(event)
            else:
                self._segment = None
                self._previous_end_ms = event.end_ms
                self._segment_ended(event)
            self._on_event(event)

    def _segment_started(self, event: SpeechStarted) -> None:
        """Marker, then the backlog: pre-roll and the audio that confirmed the start.

        Pre-roll never reaches back into the previous segment, whose audio was delivered already
        (a continuation after a max_segment_ms split gets none).
        """
        assert self._segmenter is not None
        audio_start = self._segmenter.config.audio_start_ms(event.start_ms, self._previous_end_ms)
        marker = SegmentStart(event.segment_id, event.start_ms, audio_start)
        backlog = [
            self._audio(offset, pcm, voiced, event.segment_id)
            for offset, pcm, voiced in self._recent
            if offset >= audio_start
        ]
        for subscriber in self._subscribers:
            subscriber.push(marker)
            if subscriber.mode is AudioMode.SPEECH:
                for audio in backlog:
                    subscriber.push(dataclasses.replace(audio))

    def _segment_ended(self, event: SpeechEnded) -> None:
        marker = SegmentEnd(event.segment_id, event.start_ms, event.end_ms, event.reason)
        for subscriber in self._subscribers:
            subscriber.push(marker)

    def _audio(self, offset_ms: int, pcm: bytes, voiced: bool, segment_id: int) -> Audio:
        return Audio(pcm, self._rate, offset_ms, self.settings.frame_ms, segment_id, voiced)
