"""PCM cut into fixed VAD frames, dated on the media clock.

The media clock is the RTP clock: a frame's ``pts`` (48 kHz, 0 at the first packet) dates it, so
lost packets leave a gap instead of shifting everything after them.
"""

from __future__ import annotations


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
        size = self.frame_bytes
        samples = size // 2
        if not self._buffer and len(pcm) == size:  # one packet, one frame: no copy
            offset_ms = self._next_sample * 1000 // self.rate
            self._next_sample += samples
            return [(offset_ms, pcm)]
        self._buffer += pcm
        frames: list[tuple[int, bytes]] = []
        while len(self._buffer) >= size:
            frames.append((self._next_sample * 1000 // self.rate, bytes(self._buffer[:size])))
            del self._buffer[:size]
            self._next_sample += samples
        return frames

    def _expected_sample(self) -> int | None:
        if self._next_sample is None:
            return None
        return self._next_sample + len(self._buffer) // 2
