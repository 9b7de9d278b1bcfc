"""One publisher's Opus RTP packets → mono 16-bit PCM at the VAD's rate, dated on the RTP clock.

Runs on the event loop, packet by packet, in order: a small reorder buffer, then libopus decoding
straight to the VAD's rate (no decoder thread, no resampler). A loss of up to
``CONCEAL_MAX_TICKS`` is filled from the next packet's forward error correction (or concealment
where it has none), so the decoder and the VAD see continuous audio; a longer gap stays a gap.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Protocol

from media.audio.opus_decoder import NATIVE_RATES, OPUS_CLOCK_RATE, OpusDecoder
from media.audio.pcm import PcmConverter
from media.core.reorder import ReorderBuffer
from media.core.rtp_clock import TimestampUnwrapper
from media.metrics import DecodeCounts

CONCEAL_MAX_TICKS: Final = 3 * 960  # 60 ms at Opus' 48 kHz RTP clock
CONCEAL_GRANULE_TICKS: Final = 120  # libopus conceals whole 2.5 ms steps only


class RtpPacket(Protocol):
    """What is read of an RTP packet (aiortc's ``RtpPacket`` has it)."""

    @property
    def sequence_number(self) -> int: ...

    @property
    def timestamp(self) -> int: ...

    @property
    def payload(self) -> bytes: ...


class OpusInput:
    """Reorders, decodes and dates one publisher's Opus packets; hands ``on_pcm(pcm, start)``
    the PCM and its first sample's place on the media clock (at ``rate``, 0 at the first packet).
    """

    def __init__(
        self,
        rate: int,
        reorder_frames: int,
        on_pcm: Callable[[bytes, int], None],
        counts: DecodeCounts,
    ) -> None:
        decode_rate = rate if rate in NATIVE_RATES else OPUS_CLOCK_RATE
        self.rate = rate
        self._decoder = OpusDecoder(decode_rate)
        self._resampler = PcmConverter(decode_rate, 1, rate) if decode_rate != rate else None
        self._ticks_per_sample = OPUS_CLOCK_RATE // decode_rate
        self._reorder: ReorderBuffer[RtpPacket] = ReorderBuffer(reorder_frames)
        self._clock = TimestampUnwrapper()
        self._end: int | None = None  # where the decoded audio ends, in RTP ticks
        self._on_pcm = on_pcm
        self._counts = counts

    def push(self, packet: RtpPacket) -> int:
        """Take a packet; decode every packet that is now in order. Returns how many decoded."""
        reorder = self._reorder
        reorder.push(packet.sequence_number, packet)
        decoded = 0
        while (ready := reorder.pop()) is not None:
            decoded += self._decode(ready)
        return decoded

    def close(self) -> None:
        self._decoder.close()

    def _decode(self, packet: RtpPacket) -> int:
        ticks = self._clock.unwrap(packet.timestamp)
        payload = packet.payload
        if self._reorder.skipped and self._end is not None:
            self._conceal(self._end, ticks - self._end, payload)
        pcm = self._decoder.decode(payload)
        if pcm is None:
            self._counts.errors += 1
            return 0
        self._counts.frames += 1
        self._emit(pcm, ticks)
        return 1

    def _conceal(self, start: int, missing_ticks: int, payload: bytes) -> None:
        if not 0 < missing_ticks <= CONCEAL_MAX_TICKS or missing_ticks % CONCEAL_GRANULE_TICKS:
            return
        missing = missing_ticks // self._ticks_per_sample
        recoverable = min(self._decoder.samples_in(payload), missing)
        if recoverable <= 0:
            return
        if missing > recoverable:
            pcm = self._decoder.conceal(missing - recoverable)
            if pcm is None:
                return
            self._emit(pcm, start)
            start = self._end or start
        pcm = self._decoder.recover(payload, recoverable)
        if pcm is not None:
            self._emit(pcm, start)

    def _emit(self, pcm: bytes, ticks: int) -> None:
        self._end = ticks + len(pcm) // 2 * self._ticks_per_sample
        if self._resampler is not None:
            pcm = self._resampler.convert(pcm)
        self._on_pcm(pcm, ticks * self.rate // OPUS_CLOCK_RATE)
