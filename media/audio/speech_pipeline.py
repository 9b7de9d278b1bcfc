"""One session's speech pipeline: VAD frames → webrtcvad → segmenter → events and audio subscribers.

Nothing here awaits. PCM arrives from the publisher's ``OpusInput``; events leave through a
callback into the session; audio leaves through each StreamAudio subscriber's bounded queue
(``media.audio.subscribers``), subscribers grouped by sample rate.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable

import webrtcvad

from media.audio.framing import Framer
from media.audio.subscribers import (
    DEFAULT_CHUNK_MS,
    STREAM_ENDED,
    AudioMode,
    AudioSubscriber,
    RateGroup,
    SegmentEnd,
    SegmentStart,
)
from media.core.events import EndReason, SpeechEnded, SpeechStarted
from media.core.segmenter import Segmenter, SegmenterConfig
from media.core.speech_settings import SpeechSettings
from media.metrics import Metrics

logger = logging.getLogger(__name__)

SpeechEvent = SpeechStarted | SpeechEnded


class SpeechPipeline:
    """Per-session pipeline. ``push`` takes decoded frames; listening gates analysis."""

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
        self._groups: dict[int, RateGroup] = {}  # by subscriber sample rate
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
        for group in self._groups.values():
            group.keep_history(self._recent.maxlen or 0)
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
        for group in self._groups.values():
            group.flush()

    def close(self) -> None:
        """End analysis and every subscriber; nothing pushed afterwards is analysed."""
        self.stop(EndReason.CLOSED)
        for group in self._groups.values():
            group.push(STREAM_ENDED)
        self._groups.clear()
        self._closed = True

    # subscribers

    def subscribe(
        self, mode: AudioMode, sample_rate: int, chunk_ms: int = DEFAULT_CHUNK_MS
    ) -> AudioSubscriber:
        """A subscriber at ``sample_rate`` (0: the VAD rate), sharing that rate's resampler."""
        rate = sample_rate or self._rate
        subscriber = AudioSubscriber(
            mode,
            rate,
            self.settings.frame_ms,
            self.settings.subscriber_queue_ms,
            chunk_ms,
            self._metrics,
        )
        group = self._groups.get(rate)
        if group is None:
            group = self._groups[rate] = RateGroup(self._rate, rate)
            group.keep_history(self._recent.maxlen or 0)
        group.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: AudioSubscriber) -> None:
        group = self._groups.get(subscriber.sample_rate)
        if group is None:
            return
        group.remove(subscriber)
        if not group.subscribers:
            del self._groups[subscriber.sample_rate]

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
        if self._groups:
            segment_id = self._segment.segment_id if self._segment is not None else 0
            # SPEECH subscribers got the frame that started a segment with its pre-roll.
            in_speech = bool(segment_id) and not events
            for group in self._groups.values():
                group.deliver(offset_ms, vad_frame, voiced, segment_id, in_speech)
                if events:  # a segment's first audio is not held back to fill a chunk
                    group.flush()

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
        backlog = [recent for recent in self._recent if recent[0] >= audio_start]
        for group in self._groups.values():
            group.segment_started(marker, backlog, event.segment_id)

    def _segment_ended(self, event: SpeechEnded) -> None:
        marker = SegmentEnd(event.segment_id, event.start_ms, event.end_ms, event.reason)
        for group in self._groups.values():
            group.push(marker)
