"""PCM conversion with PyAV: decoded frames or interleaved PCM to 16-bit mono at the VAD's rate."""

from __future__ import annotations

import av
from av import AudioFrame


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
