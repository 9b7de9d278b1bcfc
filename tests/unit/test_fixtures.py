"""The committed audio fixtures match their ground truth (make fixtures rebuilds them)."""

from __future__ import annotations

import math

import av
import pytest

from scripts.make_fixtures import decode
from tests.support import FIXTURES, truth

NAMES = ("speech.ogg", "speech_noise20.ogg", "silence.ogg", "noise.ogg")


def rms_dbfs(samples: list[int] | memoryview) -> float:
    energy = sum(s * s for s in samples) / max(1, len(samples))
    return 20 * math.log10(math.sqrt(energy) / 32768) if energy else -200.0


@pytest.mark.parametrize("name", NAMES)
def test_fixtures_are_small_opus_in_20_ms_packets(name: str) -> None:
    path = FIXTURES / name
    assert path.stat().st_size < 200_000
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        durations = [p.duration for p in container.demux(stream) if p.size]
    # 20 ms at 48 kHz, so aiortc can send each packet as it is; Ogg trims the last one's duration.
    assert set(durations[:-1]) == {960}


def test_the_ground_truth_lines_up_with_the_speech() -> None:
    facts = truth()
    utterances = [(u["start_ms"], u["end_ms"]) for u in facts["utterances"]]
    assert utterances == sorted(utterances)
    for (_, end), (start, _) in zip(utterances, utterances[1:], strict=False):
        assert start - end >= 500
    samples = decode(FIXTURES / "speech.ogg")
    assert abs(len(samples) * 1000 // 48000 - facts["duration_ms"]) <= 40

    def span(start_ms: int, end_ms: int) -> memoryview:
        return memoryview(samples)[start_ms * 48 : end_ms * 48]

    gaps = [(0, utterances[0][0])] + [
        (end, start) for (_, end), (start, _) in zip(utterances, utterances[1:], strict=False)
    ]
    for start, end in utterances:
        assert rms_dbfs(span(start + 20, end - 20)) > -35
    for start, end in gaps:
        assert rms_dbfs(span(start + 20, end - 20)) < -60  # Opus leaves a little ringing


def test_silence_and_noise_have_the_levels_they_claim() -> None:
    silence = decode(FIXTURES / "silence.ogg")
    assert max(abs(s) for s in silence) <= 2
    noise = decode(FIXTURES / "noise.ogg")
    assert abs(rms_dbfs(memoryview(noise)[4800:-4800]) - truth()["noise_dbfs_of_noise"]) <= 2.0
    noisy = decode(FIXTURES / "speech_noise20.ogg")
    first_gap = memoryview(noisy)[48 * 100 : 48 * 900]
    expected = truth()["speech_rms_dbfs"] - truth()["snr_db_of_speech_noise20"]
    assert abs(rms_dbfs(first_gap) - expected) <= 3.0
