"""Decoded audio in, fixed VAD frames out: PyAV downmix/resample and framing on the media clock.

aiortc decodes Opus with PyAV on its own thread; ``AudioConsumer`` reads the decoded frames on
the event loop. The media clock is the RTP clock: a frame's ``pts`` (48 kHz, 0 at the first packet)
dates it, so lost packets leave a gap instead of shifting everything after them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

logger = logging.getLogger(__name__)

VAD_SAMPLE_RATES = (8000, 16000, 32000, 48000)  # the rates webrtcvad accepts


def pcm_bytes(frame: AudioFrame) -> bytes:
    """The samples of a packed s16 mono frame (planes may carry padding)."""
    return bytes(frame.planes[0])[: frame.samples * 2]


class Downmixer:
    """Any decoded frame → 16-bit mono PCM at ``rate``; one PyAV resampler kept across frames."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)

    def convert(self, frame: AudioFrame) -> bytes:
        out = self._resampler.resample(frame)
        if len(out) == 1:
            return pcm_bytes(out[0])
        return b"".join(pcm_bytes(f) for f in out)


class PcmConverter:
    """Interleaved 16-bit PCM at any rate, mono or stereo → 16-bit mono PCM at ``to_rate``."""

    def __init__(self, from_rate: int, channels: int, to_rate: int) -> None:
        self._from = from_rate
        self._layout = "mono" if channels == 1 else "stereo"
        self.frame_bytes = 2 * channels
        self.slice_bytes = from_rate // 10 * self.frame_bytes  # 100 ms of input
        self._passthrough = from_rate == to_rate and channels == 1
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=to_rate)

    def convert(self, pcm: bytes) -> bytes:
        """Converted audio; ``pcm`` holds whole samples of every channel."""
        assert len(pcm) % self.frame_bytes == 0
        if self._passthrough or not pcm:
            return pcm
        frame = AudioFrame(format="s16", layout=self._layout, samples=len(pcm) // self.frame_bytes)
        frame.planes[0].update(pcm)
        frame.sample_rate = self._from
        return b"".join(pcm_bytes(f) for f in self._resampler.resample(frame))

    def flush(self) -> bytes:
        """What the resampler still holds, at the end of the input."""
        if self._passthrough:
            return b""
        return b"".join(pcm_bytes(f) for f in self._resampler.resample(None))


class Framer:
    """Cuts PCM into fixed frames, each dated in ms on the media clock. Pure."""

    def __init__(self, rate: int, frame_ms: int) -> None:
        self.rate = rate
        self.frame_ms = frame_ms
        self.frame_bytes = rate * frame_ms // 1000 * 2
        self._buffer = bytearray()
        self._next_sample: int | None = None

    def push(self, pcm: bytes, start_sample: int | None = None) -> list[tuple[int, bytes]]:
        """Frames completed by ``pcm``, as ``(offset_ms, frame)``.

        ``start_sample`` (at ``rate``) dates ``pcm``; when it is more than a frame away from where
        the previous audio ended, the partial frame is dropped and framing restarts there.
        """
        if start_sample is not None:
            expected = self._expected_sample()
            if expected is None or abs(start_sample - expected) > self.frame_bytes // 2:
                self._buffer.clear()
                self._next_sample = start_sample
        elif self._next_sample is None:
            self._next_sample = 0
        assert self._next_sample is not None
        self._buffer += pcm
        frames: list[tuple[int, bytes]] = []
        size = self.frame_bytes
        samples = size // 2
        while len(self._buffer) >= size:
            frames.append((self._next_sample * 1000 // self.rate, bytes(self._buffer[:size])))
            del self._buffer[:size]
            self._next_sample += samples
        return frames

    def _expected_sample(self) -> int | None:
        if self._next_sample is None:
            return None
        return self._next_sample + len(self._buffer) // 2


class AudioConsumer:
    """Reads one remote audio track until it ends."""

    def __init__(
        self,
        session_id: str,
        track: MediaStreamTrack,
        on_frame: Callable[[AudioFrame], None],
    ) -> None:
        self.session_id = session_id
        self._track = track
        self._on_frame = on_frame

    async def run(self) -> None:
        logger.debug("session %s: audio consumer started", self.session_id)
        while True:
            try:
                frame = await self._track.recv()
            except MediaStreamError:
                logger.debug("session %s: audio track ended", self.session_id)
                return
            assert isinstance(frame, AudioFrame)
            self._on_frame(frame)
