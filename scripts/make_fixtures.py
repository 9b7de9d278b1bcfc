"""Build the committed audio fixtures in tests/fixtures/ (needs espeak-ng: make deps-debian).

speech.ogg         espeak-ng utterances separated by silences of known length
speech.json        the ground truth: each utterance's interval, exact to the sample
speech_noise20.ogg the same speech plus white noise at 20 dB SNR (speech.json is its truth too)
silence.ogg        5 s of digital silence
noise.ogg          5 s of white noise at -50 dBFS RMS

Every file is 48 kHz mono Opus in Ogg: one 20 ms Opus frame per Ogg packet and per Ogg page, and
every packet's duration is exactly 960 samples (the audio is padded so the encoder's pre-skip
fills the last packet), so aiortc's MediaPlayer(path, decode=False) can send the packets as RTP
as they are. Levels in dBFS are RMS relative to 32768 (a full-scale square wave is 0 dBFS).

The output is deterministic: espeak-ng, the seeded noise and libopus are, and the Ogg muxer runs
bit-exact (fixed stream serial, no library versions written).

Usage: python scripts/make_fixtures.py [OUT_DIR]   (default: tests/fixtures next to this script)
"""

from __future__ import annotations

import array
import json
import math
import pathlib
import random
import shutil
import subprocess
import sys
import tempfile
import wave
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import av

ROOT = pathlib.Path(__file__).resolve().parent.parent
RATE = 48000
FRAME = 960  # 20 ms at 48 kHz
BIT_RATE = 32000
LEAD_MS = 1000
TAIL_MS = 1000  # at least: the tail grows by < 20 ms so the last Opus packet is a full one
# Each utterance and the silence that follows it (the last one's is TAIL_MS).
UTTERANCES: tuple[tuple[str, int], ...] = (
    ("hello there", 800),
    ("start listening now please", 1200),
    ("what is the weather like today", 1500),
    ("turn on the kitchen lights", 1000),
    ("thank you very much goodbye", 2000),
)
ESPEAK_VOICE = "en-us"
ESPEAK_WPM = "150"
TRIM_THRESHOLD = 0.01  # of full scale: where an utterance's own leading/trailing silence ends
NOISE_DBFS = -50.0
SNR_DB = 20.0
NOISE_SECONDS = 5
SEED = 9725
FULL_SCALE = 32768.0
EDGE_MS = 40  # kept clear of each utterance when measuring the noise between them


def require_tools() -> None:
    """Fail with a clear message when an external tool or codec is missing."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit(
            "make_fixtures: espeak-ng is not installed (Debian: apt-get install espeak-ng, "
            "or `make deps-debian`)"
        )
    try:
        av.codec.Codec("libopus", "w")
    except ValueError as exc:  # av.codec.codec.UnknownCodecError
        raise SystemExit(f"make_fixtures: PyAV has no libopus encoder ({exc})") from exc


def speak(text: str, workdir: pathlib.Path) -> array.array[int]:
    """espeak-ng's rendering of ``text`` at 48 kHz mono, its own silence trimmed off.

    The first and last samples kept are the first and last whose amplitude exceeds
    TRIM_THRESHOLD of full scale, so the returned audio is exactly the utterance's extent.
    """
    wav = workdir / "utterance.wav"
    subprocess.run(
        ["espeak-ng", "-v", ESPEAK_VOICE, "-s", ESPEAK_WPM, "-w", str(wav), text],
        check=True,
        capture_output=True,
    )
    samples = decode(wav)
    limit = int(FULL_SCALE * TRIM_THRESHOLD)
    loud = [i for i, s in enumerate(samples) if abs(s) > limit]
    if not loud:
        raise SystemExit(f"make_fixtures: espeak-ng produced no audible audio for {text!r}")
    return samples[loud[0] : loud[-1] + 1]


def decode(path: pathlib.Path | str) -> array.array[int]:
    """Any audio file, decoded and converted to 48 kHz mono 16-bit samples.

    For Ogg Opus the decoder honours the header's pre-skip, so sample 0 is the first sample
    that was given to the encoder.
    """
    out: array.array[int] = array.array("h")
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            for converted in resampler.resample(frame):
                out.frombytes(bytes(converted.planes[0])[: converted.samples * 2])
        for converted in resampler.resample(None):
            out.frombytes(bytes(converted.planes[0])[: converted.samples * 2])
    return out


def decode_to_wav(ogg_path: pathlib.Path | str, wav_path: pathlib.Path | str) -> pathlib.Path:
    """Decode a fixture to a 48 kHz mono 16-bit WAV (e.g. Chromium's fake microphone)."""
    samples = decode(ogg_path)
    if sys.byteorder != "little":  # WAV is little-endian
        samples.byteswap()
    with wave.open(str(wav_path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(samples.tobytes())
    return pathlib.Path(wav_path)


def silence(count: int) -> array.array[int]:
    return array.array("h", bytes(2 * count))


def ms_to_samples(ms: int) -> int:
    return RATE * ms // 1000


def samples_to_ms(count: int) -> int:
    return count * 1000 // RATE


def rms(samples: Iterable[float]) -> float:
    total = 0.0
    count = 0
    for s in samples:
        total += float(s) * float(s)
        count += 1
    return math.sqrt(total / max(1, count))


def dbfs(level: float) -> float:
    return 20 * math.log10(level / FULL_SCALE) if level > 0 else -math.inf


def white_noise(count: int, level: float, rng: random.Random) -> list[float]:
    """Gaussian white noise with RMS ``level`` (in sample units)."""
    return [rng.gauss(0.0, level) for _ in range(count)]


def to_samples(values: Iterable[float]) -> array.array[int]:
    return array.array("h", (max(-32768, min(32767, round(v))) for v in values))


def opus_pre_skip() -> int:
    """The samples libopus delays its output by (OpusHead bytes 10-11), 312 at 48 kHz."""
    context = av.codec.CodecContext.create("libopus", "w")
    context.sample_rate = RATE
    context.layout = "mono"
    context.format = "s16"
    context.bit_rate = BIT_RATE
    context.open()
    head = bytes(context.extradata)
    if head[:8] != b"OpusHead":
        raise SystemExit("make_fixtures: libopus did not produce an OpusHead header")
    return int.from_bytes(head[10:12], "little")


def full_packet_length(count: int, pre_skip: int) -> int:
    """The smallest length >= count whose encoding ends on a whole 20 ms packet.

    The Ogg granule position counts the pre-skip too, so the last packet's duration is whole
    only when count + pre_skip is a multiple of FRAME.
    """
    return count + (-(count + pre_skip) % FRAME)


def encode(samples: Sequence[int], path: pathlib.Path) -> None:
    """48 kHz mono Opus in Ogg: 20 ms packets, one per Ogg page, deterministic bytes."""
    options = {
        "fflags": "+bitexact",  # fixed Ogg serial number, no version strings
        "page_duration": str(FRAME * 1_000_000 // RATE),  # microseconds: one packet per page
    }
    with av.open(str(path), "w", format="ogg", options=options) as container:
        stream = container.add_stream("libopus", rate=RATE, layout="mono")
        stream.bit_rate = BIT_RATE
        pts = 0
        for start in range(0, len(samples), FRAME):
            chunk = array.array("h", samples[start : start + FRAME])
            frame = av.AudioFrame(format="s16", layout="mono", samples=len(chunk))
            frame.planes[0].update(chunk.tobytes())
            frame.sample_rate = RATE
            frame.pts = pts
            pts += len(chunk)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    check_packets(path)


def check_packets(path: pathlib.Path) -> None:
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        durations = {
            packet.duration * stream.time_base
            for packet in container.demux(stream)
            if packet.size and packet.duration is not None
        }
    if durations != {FRAME * stream.time_base}:
        raise SystemExit(f"make_fixtures: {path.name} has packet durations {sorted(durations)} s")


def encode_at_level(
    render: Callable[[float], array.array[int]],
    level: float,
    measure: Callable[[array.array[int]], float],
    path: pathlib.Path,
) -> None:
    """Encode render(gain), adjusting gain until measure(decoded file) is within 0.1 dB of level.

    Opus is close to linear in level for noise, so this settles in two or three encodes.
    """
    gain = level
    for _ in range(5):
        encode(render(gain), path)
        error_db = 20 * math.log10(level / measure(decode(path)))
        if abs(error_db) < 0.1:
            return
        gain *= 10 ** (error_db / 20)
    raise SystemExit(f"make_fixtures: {path.name} did not settle at its level ({error_db:+.2f} dB)")


def gap_ranges(truth: Sequence[dict[str, Any]], total: int) -> list[tuple[int, int]]:
    """Sample ranges of the silences around the utterances, EDGE_MS clear of them."""
    edge = ms_to_samples(EDGE_MS)
    bounds = [0, *(u[key] for u in truth for key in ("start_sample", "end_sample")), total]
    return [(a + edge, b - edge) for a, b in zip(bounds[::2], bounds[1::2], strict=True)]


def speech_track(
    workdir: pathlib.Path, pre_skip: int
) -> tuple[array.array[int], list[dict[str, Any]]]:
    """The speech timeline and the sample-exact interval of every utterance in it."""
    timeline = silence(ms_to_samples(LEAD_MS))
    truth: list[dict[str, Any]] = []
    for index, (text, gap_ms) in enumerate(UTTERANCES):
        voice = speak(text, workdir)
        start = len(timeline)
        timeline.extend(voice)
        end = len(timeline)
        truth.append(
            {
                "text": text,
                "start_ms": samples_to_ms(start),
                "end_ms": -(-end * 1000 // RATE),  # rounded up: the interval covers the audio
                "start_sample": start,
                "end_sample": end,  # exclusive
            }
        )
        last = index == len(UTTERANCES) - 1
        timeline.extend(silence(ms_to_samples(TAIL_MS if last else gap_ms)))
    timeline.extend(silence(full_packet_length(len(timeline), pre_skip) - len(timeline)))
    return timeline, truth


def build(out: pathlib.Path) -> None:
    require_tools()
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    pre_skip = opus_pre_skip()

    with tempfile.TemporaryDirectory() as tmp:
        speech, truth = speech_track(pathlib.Path(tmp), pre_skip)
    encode(speech, out / "speech.ogg")

    # The SNR is against the speech-active portions only; the noise is scaled so that the
    # *decoded* files have the intended levels (at 32 kbps Opus loses ~1.8 dB of white noise).
    speech_level = rms(s for u in truth for s in speech[u["start_sample"] : u["end_sample"]])
    noise_level = speech_level / 10 ** (SNR_DB / 20)
    noise = white_noise(len(speech), 1.0, rng)
    quiet = gap_ranges(truth, len(speech))
    encode_at_level(
        lambda gain: to_samples(s + gain * n for s, n in zip(speech, noise, strict=True)),
        noise_level,
        lambda decoded: rms(s for start, end in quiet for s in decoded[start:end]),
        out / "speech_noise20.ogg",
    )

    count = full_packet_length(RATE * NOISE_SECONDS, pre_skip)
    encode(silence(count), out / "silence.ogg")
    plain = white_noise(count, 1.0, rng)
    edge = ms_to_samples(EDGE_MS)
    encode_at_level(
        lambda gain: to_samples(gain * n for n in plain),
        FULL_SCALE * 10 ** (NOISE_DBFS / 20),
        lambda decoded: rms(decoded[edge:-edge]),
        out / "noise.ogg",
    )

    facts = {
        "sample_rate": RATE,
        "duration_ms": samples_to_ms(len(speech)),
        "duration_samples": len(speech),
        "speech_rms_dbfs": round(dbfs(speech_level), 1),
        "snr_db_of_speech_noise20": SNR_DB,
        "noise_dbfs_of_noise": NOISE_DBFS,
        "noise_dbfs_of_speech_noise20": round(dbfs(noise_level), 1),
        "utterances": truth,
        "generator": "scripts/make_fixtures.py",
    }
    (out / "speech.json").write_text(json.dumps(facts, indent=2) + "\n")

    for name in ("speech.ogg", "speech_noise20.ogg", "silence.ogg", "noise.ogg", "speech.json"):
        print(f"{out / name}: {(out / name).stat().st_size} bytes")
    for u in truth:
        print(f"  {u['start_ms']:6d}-{u['end_ms']:6d} ms  {u['text']}")


def main(argv: Sequence[str]) -> None:
    build(pathlib.Path(argv[1]) if len(argv) > 1 else ROOT / "tests" / "fixtures")


if __name__ == "__main__":
    main(sys.argv)
