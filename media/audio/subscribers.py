"""StreamAudio subscribers: audio batched into chunks, bounded queues, one resampler per rate.

Nothing here awaits but ``AudioSubscriber.get``. The speech pipeline hands every subscriber the
VAD frames it should get (``push_audio``) and the segment markers (``push``); a subscriber batches
frames into chunks of up to its ``chunk_ms`` and queues them for its StreamAudio call.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from media.audio.pcm import PcmConverter
from media.core.events import EndReason
from media.metrics import Metrics

CHUNK_MS_RANGE: Final = (20, 200)
DEFAULT_CHUNK_MS: Final = 100  # chosen by benchmarks/stream_audio.py: see its README table
MIN_MERGE_MS: Final = 100  # audio waiting for a slow reader is merged up to this (or chunk_ms)


class AudioMode(enum.IntEnum):
    SPEECH = 1
    ALL = 2


@dataclass(slots=True)
class Audio:
    """A chunk of PCM for one subscriber. ``dropped_ms`` is filled in on delivery."""

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
Marker = SegmentStart | SegmentEnd | StreamEnded
RecentFrame = tuple[int, bytes, bool]  # offset_ms, VAD frame, voiced


def chunk_frames_ms(chunk_ms: int, frame_ms: int) -> int:
    """The chunk a subscriber asking for ``chunk_ms`` gets: whole frames, at least one."""
    return max(frame_ms, chunk_ms // frame_ms * frame_ms)


class AudioSubscriber:
    """One StreamAudio caller: frames batched into chunks of up to ``chunk_ms``, then a queue
    bounded in ms of audio where the oldest audio goes first.

    A chunk holds contiguous frames of one segment (in ALL mode, all voiced or all unvoiced) and
    goes to the queue once full, or on ``flush`` (a segment's first audio) or a marker (a segment's
    end). Audio dropped for a slow reader is added up and reported on the next audio it receives.
    """

    def __init__(
        self,
        mode: AudioMode,
        sample_rate: int,
        frame_ms: int,
        limit_ms: int,
        chunk_ms: int = DEFAULT_CHUNK_MS,
        metrics: Metrics | None = None,
    ) -> None:
        self.mode = mode
        self.sample_rate = sample_rate
        self._frame_ms = frame_ms
        self.chunk_ms = chunk_frames_ms(chunk_ms, frame_ms)
        self._merge_ms = max(self.chunk_ms, MIN_MERGE_MS)
        self._limit_ms = max(limit_ms, self._merge_ms)
        self._metrics = metrics
        self._filling: Audio | None = None
        self._parts: list[bytes] = []
        self._queue: deque[StreamItem] = deque()
        self._queued_ms = 0
        self._dropped_ms = 0
        self.total_dropped_ms = 0
        self._wake = asyncio.Event()

    # from the pipeline

    def push_audio(self, offset_ms: int, pcm: bytes, voiced: bool, segment_id: int) -> None:
        """One VAD frame (``pcm`` at this subscriber's rate)."""
        filling = self._filling
        if filling is not None:
            if (
                segment_id == filling.segment_id
                and offset_ms == filling.offset_ms + filling.duration_ms
                and (voiced == filling.voiced or self.mode is AudioMode.SPEECH)
            ):
                self._parts.append(pcm)
                filling.duration_ms += self._frame_ms
                filling.voiced = filling.voiced or voiced
                if filling.duration_ms >= self.chunk_ms:
                    self.flush()
                return
            self.flush()
        self._filling = Audio(pcm, self.sample_rate, offset_ms, self._frame_ms, segment_id, voiced)
        self._parts.append(pcm)
        if self._frame_ms >= self.chunk_ms:
            self.flush()

    def flush(self) -> None:
        """Queue the chunk being filled, whatever its length."""
        filling = self._filling
        if filling is None:
            return
        self._filling = None
        if len(self._parts) > 1:
            filling.pcm = b"".join(self._parts)
        self._parts.clear()
        self._enqueue(filling)

    def push(self, marker: Marker) -> None:
        """A segment marker or the end of the stream, after the audio before it."""
        self.flush()
        self._queue.append(marker)
        self._wake.set()

    # to the StreamAudio call

    async def get(self) -> StreamItem:
        while not self._queue:
            self._wake.clear()
            await self._wake.wait()
        return self._pop()

    def get_nowait(self) -> StreamItem | None:
        """The next item if one is queued (a chunk still filling is not), else None."""
        return self._pop() if self._queue else None

    # internals

    def _pop(self) -> StreamItem:
        item = self._queue.popleft()
        if isinstance(item, Audio):
            self._queued_ms -= item.duration_ms
            item.dropped_ms, self._dropped_ms = self._dropped_ms, 0
        return item

    def _enqueue(self, audio: Audio) -> None:
        if not self._merge(audio):
            self._queue.append(audio)
        self._queued_ms += audio.duration_ms
        while self._queued_ms > self._limit_ms:
            self._drop_oldest_audio()
        self._wake.set()

    def _merge(self, audio: Audio) -> bool:
        """Append ``audio`` to the chunk still waiting for the reader, when it continues it."""
        if not self._queue:
            return False
        last = self._queue[-1]
        if (
            not isinstance(last, Audio)
            or last.segment_id != audio.segment_id
            or (self.mode is AudioMode.ALL and last.voiced != audio.voiced)
            or last.offset_ms + last.duration_ms != audio.offset_ms
            or last.duration_ms + audio.duration_ms > self._merge_ms
        ):
            return False
        last.pcm += audio.pcm
        last.duration_ms += audio.duration_ms
        last.voiced = last.voiced or audio.voiced
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


class RateGroup:
    """The subscribers at one sample rate and the one resampler they share (none at the VAD
    rate): each frame is resampled once, however many subscribers take it.

    Frames are resampled in media order. When ALL and SPEECH subscribers share the rate, the ALL
    ones take frames live that a SPEECH one takes later, in a segment's pre-roll: the recent
    results are kept for that, so no frame goes through the resampler twice or out of order.
    """

    def __init__(self, vad_rate: int, rate: int) -> None:
        self.rate = rate
        self.subscribers: list[AudioSubscriber] = []
        self._resampler = PcmConverter(vad_rate, 1, rate) if rate != vad_rate else None
        self._history = 0
        self._keep = False
        self._sources: deque[bytes] = deque()
        self._outputs: deque[bytes] = deque()

    def add(self, subscriber: AudioSubscriber) -> None:
        self.subscribers.append(subscriber)
        self._update_keep()

    def remove(self, subscriber: AudioSubscriber) -> None:
        if subscriber in self.subscribers:
            self.subscribers.remove(subscriber)
            self._update_keep()

    def keep_history(self, frames: int) -> None:
        """Keep the results for the last ``frames`` frames (the pipeline's recent audio)."""
        self._history = frames
        self._update_keep()

    def deliver(
        self, offset_ms: int, frame: bytes, voiced: bool, segment_id: int, in_speech: bool
    ) -> None:
        """A live frame: to every ALL subscriber, and to SPEECH ones when ``in_speech``."""
        pcm: bytes | None = None
        for subscriber in self.subscribers:
            if in_speech or subscriber.mode is AudioMode.ALL:
                if pcm is None:
                    pcm = self._convert(frame)
                subscriber.push_audio(offset_ms, pcm, voiced, segment_id)

    def segment_started(
        self, marker: SegmentStart, backlog: Sequence[RecentFrame], segment_id: int
    ) -> None:
        """The marker to all; to SPEECH subscribers, the segment's audio so far, sent at once."""
        converted: list[bytes] | None = None
        for subscriber in self.subscribers:
            subscriber.push(marker)
            if subscriber.mode is AudioMode.SPEECH:
                if converted is None:
                    converted = self._convert_recent(frame for _, frame, _ in backlog)
                for (offset_ms, _, voiced), pcm in zip(backlog, converted, strict=True):
                    subscriber.push_audio(offset_ms, pcm, voiced, segment_id)
                subscriber.flush()

    def push(self, marker: Marker) -> None:
        for subscriber in self.subscribers:
            subscriber.push(marker)

    def flush(self) -> None:
        for subscriber in self.subscribers:
            subscriber.flush()

    # internals

    def _update_keep(self) -> None:
        modes = {subscriber.mode for subscriber in self.subscribers}
        self._keep = self._resampler is not None and self._history > 0 and len(modes) > 1
        if not self._keep:
            self._sources.clear()
            self._outputs.clear()

    def _convert(self, frame: bytes) -> bytes:
        if self._resampler is None:
            return frame
        if self._sources and self._sources[-1] is frame:  # a segment's start took it already
            return self._outputs[-1]
        pcm = self._resampler.convert(frame)
        if self._keep:
            self._sources.append(frame)
            self._outputs.append(pcm)
            if len(self._sources) > self._history:
                self._sources.popleft()
                self._outputs.popleft()
        return pcm

    def _convert_recent(self, frames: Iterable[bytes]) -> list[bytes]:
        if self._resampler is None:
            return list(frames)
        done = {id(source): pcm for source, pcm in zip(self._sources, self._outputs, strict=True)}
        converted = []
        for frame in frames:
            pcm = done.get(id(frame))
            converted.append(self._convert(frame) if pcm is None else pcm)
        return converted
