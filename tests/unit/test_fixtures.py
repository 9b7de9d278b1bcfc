"""The committed audio fixtures are what speech.json says they are (make fixtures rebuilds them)."""

from __future__ import annotations

import array
import functools
import math
import pathlib
import wave
from fractions import Fraction

import av
import pytest

from scripts.make_fixtures import decode, decode_to_wav
from tests.support import FIXTURES, truth

RATE = 48000
OGGS = ("speech.ogg", "speech_noise20.ogg", "silence.ogg", "noise.ogg")
EDGE_MS = 40  # Opus smears a hard edge by a few ms; keep gap measurements clear of it


@functools.cache
def samples(name: str) -> array.array[int]:
    return decode(FIXTURES / name)


def rms_dbfs(values: array.array[int]) -> float:
    energy = sum(s * s for s in values) / max(1, len(values))
    return 10 * math.log10(energy / 32768**2) if energy else -200.0


def span(values: array.array[int], start_ms: int, end_ms: int) -> array.array[int]:
    return values[start_ms * RATE // 1000 : end_ms * RATE // 1000]


def intervals() -> list[tuple[int, int]]:
    return [(u["start_ms"], u["end_ms"]) for u in truth()["utterances"]]


def gaps() -> list[tuple[int, int]]:
    """The silences around and between the utterances, EDGE_MS clear of each utterance."""
    bounds = [0, *(ms for pair in intervals() for ms in pair), truth()["duration_ms"]]
    return [(a + EDGE_MS, b - EDGE_MS) for a, b in zip(bounds[::2], bounds[1::2], strict=True)]


def expected_ms(name: str) -> int:
    return int(truth()["duration_ms"]) if name.startswith("speech") else 5000


@pytest.mark.parametrize("name", OGGS)
def test_each_fixture_is_small_opus_in_ogg(name: str) -> None:
    path = FIXTURES / name
    assert path.is_file(), f"{path} is missing: run `make fixtures`"
    assert path.stat().st_size < 200_000
    with av.open(str(path)) as container:
        assert container.format.name == "ogg"
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        assert stream.codec_context.sample_rate == RATE
        assert stream.codec_context.channels == 1


@pytest.mark.parametrize("name", OGGS)
def test_every_packet_is_one_20_ms_opus_frame(name: str) -> None:
    """So aiortc's MediaPlayer(decode=False) can send each packet as one RTP payload."""
    with av.open(str(FIXTURES / name)) as container:
        stream = container.streams.audio[0]
        packets = [p for p in container.demux(stream) if p.size]
        assert packets
        for packet in packets:
            assert packet.duration is not None
            assert packet.duration * stream.time_base == Fraction(20, 1000)
            toc = bytes(packet)[0]
            config, code = toc >> 3, toc & 0b11
            assert code == 0, "one Opus frame per packet"
            # RFC 6716 3.1: SILK 10/20/40/60 ms, hybrid 10/20 ms, CELT 2.5/5/10/20 ms
            assert (
                (config < 12 and config % 4 == 1)
                or (12 <= config < 16 and config % 2 == 1)
                or (config >= 16 and config % 4 == 3)
            ), f"Opus config {config} is not a 20 ms frame"


@pytest.mark.parametrize("name", OGGS)
def test_each_fixture_decodes_to_its_expected_duration(name: str) -> None:
    decoded_ms = len(samples(name)) * 1000 / RATE
    assert abs(decoded_ms - expected_ms(name)) <= 40


def test_the_speech_intervals_are_sorted_separate_and_inside_the_audio() -> None:
    facts = truth()
    assert facts["sample_rate"] == RATE
    assert facts["generator"] == "scripts/make_fixtures.py"
    spans = intervals()
    assert 5 <= len(spans) <= 6
    assert spans == sorted(spans)
    for start, end in spans:
        assert 0 <= start < end <= facts["duration_ms"]
        assert 600 <= end - start <= 2000
    for start, end in gaps():
        assert end - start + 2 * EDGE_MS >= 500


def test_the_speech_is_where_the_ground_truth_says() -> None:
    speech = samples("speech.ogg")
    loudness = [rms_dbfs(span(speech, start, end)) for start, end in intervals()]
    quiet = [rms_dbfs(span(speech, start, end)) for start, end in gaps()]
    assert min(loudness) > -35
    assert min(loudness) - max(quiet) > 30, (loudness, quiet)
    # Each utterance was cut where its amplitude first/last exceeds 1% of full scale, so the
    # decoded audio crosses that level within a few ms of the recorded start.
    for u in truth()["utterances"]:
        start = u["start_ms"] * RATE // 1000
        window = speech[start - 960 : start + 960]
        first = next(i for i, s in enumerate(window) if abs(s) > 327)
        assert abs(first - 960) <= 5 * RATE // 1000, u["text"]


def test_silence_decodes_to_zeros() -> None:
    assert max(abs(s) for s in samples("silence.ogg")) <= 2


def test_noise_is_at_minus_50_dbfs() -> None:
    noise = samples("noise.ogg")[RATE // 10 : -RATE // 10]
    assert abs(rms_dbfs(noise) - truth()["noise_dbfs_of_noise"]) <= 2.0


def test_speech_noise20_has_noise_20_db_under_the_speech() -> None:
    facts = truth()
    speech = samples("speech.ogg")
    clean = array.array("h")
    for start, end in intervals():
        clean.extend(span(speech, start, end))
    assert abs(rms_dbfs(clean) - facts["speech_rms_dbfs"]) <= 1.0
    noisy = samples("speech_noise20.ogg")
    expected = facts["speech_rms_dbfs"] - facts["snr_db_of_speech_noise20"]
    for start, end in gaps():
        assert abs(rms_dbfs(span(noisy, start, end)) - expected) <= 2.0


def test_decode_to_wav_writes_a_48_khz_mono_16_bit_wav(tmp_path: pathlib.Path) -> None:
    path = decode_to_wav(FIXTURES / "silence.ogg", tmp_path / "silence.wav")
    with wave.open(str(path), "rb") as wav:
        assert (wav.getnchannels(), wav.getsampwidth(), wav.getframerate()) == (1, 2, RATE)
        assert wav.getnframes() == len(samples("silence.ogg"))
