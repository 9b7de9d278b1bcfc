"""The receive path without peers: the reorder buffer, libopus decoding and ``OpusInput``."""

from __future__ import annotations

from dataclasses import dataclass

import av
import pytest

from media.audio import opus_decoder
from media.audio.opus_decoder import OpusDecoder
from media.audio.opus_input import OpusInput
from media.audio.speech_pipeline import SpeechPipeline
from media.core.events import SpeechEnded
from media.core.reorder import ReorderBuffer
from media.core.segmenter import SegmenterConfig
from media.core.speech_settings import SpeechSettings
from media.metrics import DecodeCounts
from tests.support import SPEECH
from tests.unit.test_vad import harmonic_burst

GARBAGE = b"\xff\xff\xff\xff"  # a code-3 packet whose frame count libopus refuses


def fixture_packets() -> list[bytes]:
    with av.open(str(SPEECH)) as container:
        return [bytes(packet) for packet in container.demux(audio=0) if packet.size]


PACKETS = fixture_packets()


@dataclass(frozen=True)
class Packet:
    sequence_number: int
    timestamp: int
    payload: bytes


def rtp(packets: list[bytes], first_sequence: int = 0, first_timestamp: int = 0) -> list[Packet]:
    return [
        Packet((first_sequence + i) % 65536, (first_timestamp + 960 * i) % 2**32, payload)
        for i, payload in enumerate(packets)
    ]


def released(buffer: ReorderBuffer[str]) -> list[str]:
    out = []
    while (item := buffer.pop()) is not None:
        out.append(item)
    return out


# the reorder buffer


def test_packets_in_order_pass_straight_through() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(2)
    for sequence in range(65534, 65539):  # across the 16-bit wrap
        buffer.push(sequence % 65536, f"p{sequence}")
        assert released(buffer) == [f"p{sequence}"]
    assert buffer.lost == buffer.late == 0


def test_a_swapped_pair_comes_out_in_order() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(1)
    buffer.push(10, "a")
    assert released(buffer) == ["a"]
    buffer.push(12, "c")
    assert released(buffer) == [], "the missing packet is waited for"
    buffer.push(11, "b")
    assert released(buffer) == ["b", "c"]
    assert buffer.skipped == buffer.lost == buffer.late == 0


def test_a_lost_packet_is_given_up_once_depth_later_ones_are_held() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(2)
    buffer.push(1, "a")
    released(buffer)
    buffer.push(3, "c")
    buffer.push(4, "d")
    assert released(buffer) == []
    buffer.push(5, "e")
    assert buffer.pop() == "c"
    assert buffer.skipped == 1 and buffer.lost == 1
    assert released(buffer) == ["d", "e"]
    assert buffer.skipped == 0
    buffer.push(2, "b")
    assert released(buffer) == [] and buffer.late == 1, "too late: dropped"


def test_depth_zero_never_waits_and_drops_what_comes_late() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(0)
    out = []
    for sequence, item in [(1, "a"), (3, "c"), (2, "b"), (3, "c again")]:
        buffer.push(sequence, item)
        out += released(buffer)
    assert out == ["a", "c"]
    assert (buffer.lost, buffer.late) == (1, 2)


def test_a_sender_that_restarts_its_sequence_numbers_starts_afresh() -> None:
    buffer: ReorderBuffer[str] = ReorderBuffer(1)
    buffer.push(40000, "a")
    buffer.push(40001, "b")
    buffer.push(7, "restarted")
    buffer.push(8, "next")
    assert released(buffer) == ["a", "b", "restarted", "next"]


# libopus


@pytest.mark.parametrize("rate", [8000, 16000, 48000])
def test_the_fixture_decodes_straight_to_mono_at_the_rate_asked(rate: int) -> None:
    decoder = OpusDecoder(rate)
    sizes = {len(pcm or b"") for pcm in map(decoder.decode, PACKETS)}
    assert sizes == {rate // 50 * 2}, "20 ms of 16-bit mono per packet"
    decoder.close()


def test_a_corrupt_packet_is_refused_not_raised_and_decoding_goes_on() -> None:
    decoder = OpusDecoder(16000)
    assert decoder.decode(GARBAGE) is None
    assert decoder.samples_in(GARBAGE) < 0
    assert decoder.decode(PACKETS[0]) is not None


def test_a_rate_libopus_cannot_decode_to_is_refused() -> None:
    with pytest.raises(ValueError, match="32000"):
        OpusDecoder(32000)


# OpusInput


class Collected:
    def __init__(self) -> None:
        self.pieces: list[tuple[int, bytes]] = []

    def __call__(self, pcm: bytes, start: int) -> None:
        self.pieces.append((start, pcm))

    def gaps(self) -> list[tuple[int, int]]:
        """(where, how many samples) for each piece that does not start where the last ended."""
        found = []
        for (start, pcm), (next_start, _) in zip(self.pieces, self.pieces[1:], strict=False):
            if next_start != start + len(pcm) // 2:
                found.append((start + len(pcm) // 2, next_start - start - len(pcm) // 2))
        return found


def decoded(packets: list[Packet], reorder_frames: int = 1) -> tuple[Collected, DecodeCounts]:
    collected, counts = Collected(), DecodeCounts()
    opus = OpusInput(16000, reorder_frames, collected, counts)
    for packet in packets:
        opus.push(packet)
    opus.close()
    return collected, counts


def test_packets_in_order_become_continuous_pcm_dated_on_the_rtp_clock() -> None:
    collected, counts = decoded(rtp(PACKETS, 65000, 2**32 - 960 * 5))
    assert counts.frames == len(PACKETS) and counts.errors == 0
    assert collected.pieces[0][0] == 0 and collected.gaps() == []
    assert collected.pieces[-1][0] == (len(PACKETS) - 1) * 320


def test_packets_swapped_on_the_way_decode_as_if_they_had_come_in_order() -> None:
    packets = rtp(PACKETS)
    swapped = list(packets)
    for i in range(1, len(swapped) - 1, 7):
        swapped[i], swapped[i + 1] = swapped[i + 1], swapped[i]
    assert decoded(swapped)[0].pieces == decoded(packets)[0].pieces


def test_a_corrupt_packet_is_counted_and_leaves_a_gap() -> None:
    packets = rtp(PACKETS[:10])
    packets[5] = Packet(5, 5 * 960, GARBAGE)
    collected, counts = decoded(packets)
    assert (counts.frames, counts.errors) == (9, 1)
    assert collected.gaps() == [(5 * 320, 320)]


def test_a_short_loss_is_concealed_and_a_long_one_stays_a_gap() -> None:
    packets = rtp(PACKETS[:40])
    short = packets[:10] + packets[12:]  # 40 ms lost
    collected, counts = decoded(short)
    assert collected.gaps() == [] and counts.frames == 38
    long = packets[:10] + packets[14:]  # 80 ms lost
    assert decoded(long)[0].gaps() == [(10 * 320, 4 * 320)]


def test_at_32_khz_the_pcm_is_resampled_from_48_khz() -> None:
    collected, counts = Collected(), DecodeCounts()
    opus = OpusInput(32000, 1, collected, counts)
    for packet in rtp(PACKETS[:50]):
        opus.push(packet)
    total = sum(len(pcm) // 2 for _, pcm in collected.pieces)
    assert counts.frames == 50
    assert 49 * 640 <= total <= 50 * 640
    assert collected.pieces[10][0] == 10 * 640


def opus_packets(pcm_48k: bytes) -> list[bytes]:
    encoder = av.CodecContext.create("libopus", "w")
    encoder.sample_rate, encoder.layout, encoder.format = 48000, "mono", "s16"
    packets = []
    for start in range(0, len(pcm_48k) - 1919, 1920):
        frame = av.AudioFrame(format="s16", layout="mono", samples=960)
        frame.planes[0].update(pcm_48k[start : start + 1920])
        frame.sample_rate, frame.pts = 48000, start // 2
        packets += [bytes(p) for p in encoder.encode(frame)]  # type: ignore[attr-defined]
    packets += [bytes(p) for p in encoder.encode(None)]  # type: ignore[attr-defined]
    return packets


def test_a_sender_clock_stepping_back_1_s_keeps_speech_offsets_continuous() -> None:
    """A step back in RTP time is a discontinuity of the sender's clock, not a 24.85 h jump."""
    events: list[object] = []
    pipeline = SpeechPipeline(SpeechSettings(), events.append)
    pipeline.start(SegmenterConfig(), 2)
    opus = OpusInput(16000, 1, pipeline.push, DecodeCounts())
    utterance = opus_packets(bytes(96000) + harmonic_burst(48000, 1500) + bytes(96000))  # 3.5 s
    sequence, timestamp = 0, 0
    for _ in range(2):
        for payload in utterance:
            opus.push(Packet(sequence, timestamp, payload))
            sequence, timestamp = sequence + 1, timestamp + 960
        timestamp -= 48000  # the publisher's RTP clock goes back 1 s
    ends = [e for e in events if isinstance(e, SpeechEnded)]
    assert len(ends) == 2, events
    (first, second) = ends
    assert 900 <= first.start_ms <= 1100
    assert 4400 <= second.start_ms <= 4600, f"second utterance dated {second.start_ms} ms"


def test_without_a_loadable_libopus_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(opus_decoder, "_candidate_paths", lambda: ["/nowhere/libopus.so.0"])
    opus_decoder.libopus.cache_clear()
    try:
        with pytest.raises(opus_decoder.OpusUnavailable, match="/nowhere/libopus.so.0.*libopus0"):
            opus_decoder.libopus()
    finally:
        opus_decoder.libopus.cache_clear()
    assert issubclass(opus_decoder.OpusUnavailable, OSError), "hark serve: a message, status 2"
