"""Build the committed audio fixtures in tests/fixtures/ (needs espeak-ng: make deps-debian).

speech.ogg        espeak-ng utterances separated by silences of known length, Opus in Ogg
speech.json       the ground truth: each utterance's interval in ms, exact to the sample
speech_noise20.ogg the same speech mixed with white noise at 20 dB SNR (same truth)
silence.ogg       5 s of digital silence
noise.ogg         5 s of white noise at -50 dBFS RMS

Every file is 48 kHz mono Opus in 20 ms packets, so aiortc's MediaPlayer(decode=False) can send
the packets as they are. Usage: python scripts/make_fixtures.py [OUT_DIR]
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

import av

ROOT = pathlib.Path(__file__).resolve().parent.parent
RATE = 48000
FRAME = 960
LEAD_MS = 1000
TAIL_MS = 1000
UTTERANCES = [
    ("hello there", 800),
    ("start listening now please", 1200),
    ("what is the weather like today", 1500),
    ("turn on the kitchen lights", 1000),
    ("thank you very much goodbye", 2000),
]
TRIM_THRESHOLD = 0.01  # of full scale: where an utterance's own silence ends
NOISE_DBFS = -50.0
SNR_DB = 20.0
SEED = 9725


def speak(text: str, workdir: pathlib.Path) -> array.array[int]:
    """espeak-ng's rendering of ``text`` at 48 kHz mono, its own silence trimmed."""
    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: run `make deps-debian`")
    wav = workdir / "utterance.wav"
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text],
        check=True,
        capture_output=True,
    )
    samples = decode(wav)
    limit = int(32767 * TRIM_THRESHOLD)
    loud = [i for i, s in enumerate(samples) if abs(s) > limit]
    return samples[loud[0] : loud[-1] + 1]


def decode(path: pathlib.Path) -> array.array[int]:
    """Any audio file as 48 kHz mono 16-bit samples."""
    out: array.array[int] = array.array("h")
    resampler = av.AudioResampler(format="s16", layout="mono", rate=RATE)
    with av.open(str(path)) as container:
        for frame in container.decode(audio=0):
            for converted in resampler.resample(frame):
                out.frombytes(bytes(converted.planes[0])[: converted.samples * 2])
        for converted in resampler.resample(None):
            out.frombytes(bytes(converted.planes[0])[: converted.samples * 2])
    return out


def silence(ms: int) -> array.array[int]:
    return array.array("h", bytes(RATE * ms // 1000 * 2))


def white_noise(count: int, rms: float, rng: random.Random) -> list[float]:
    return [rng.gauss(0.0, rms) for _ in range(count)]


def rms_of(samples: array.array[int] | list[float]) -> float:
    return math.sqrt(sum(float(s) * float(s) for s in samples) / max(1, len(samples)))


def clip(values: list[float]) -> array.array[int]:
    return array.array("h", (max(-32768, min(32767, round(v))) for v in values))


def encode(samples: array.array[int], path: pathlib.Path) -> None:
    """48 kHz mono Opus in Ogg, one 20 ms packet per frame."""
    padded = array.array("h", samples)
    padded.extend([0] * (-len(padded) % FRAME))
    with av.open(str(path), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=RATE, layout="mono")
        stream.bit_rate = 32000
        pts = 0
        for start in range(0, len(padded), FRAME):
            frame = av.AudioFrame(format="s16", layout="mono", samples=FRAME)
            frame.planes[0].update(padded[start : start + FRAME].tobytes())
            frame.sample_rate = RATE
            frame.pts = pts
            pts += FRAME
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def build(out: pathlib.Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(SEED)
    timeline = silence(LEAD_MS)
    truth = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (text, gap_ms) in enumerate(UTTERANCES):
            voice = speak(text, pathlib.Path(tmp))
            start = len(timeline)
            timeline.extend(voice)
            truth.append(
                {
                    "text": text,
                    "start_ms": start * 1000 // RATE,
                    "end_ms": len(timeline) * 1000 // RATE,
                }
            )
            timeline.extend(silence(gap_ms if index < len(UTTERANCES) - 1 else TAIL_MS))
    encode(timeline, out / "speech.ogg")

    speech_rms = rms_of(
        array.array(
            "h",
            (
                s
                for u in truth
                for s in timeline[u["start_ms"] * RATE // 1000 : u["end_ms"] * RATE // 1000]
            ),
        )
    )
    noise = white_noise(len(timeline), speech_rms / 10 ** (SNR_DB / 20), rng)
    encode(clip([s + n for s, n in zip(timeline, noise, strict=True)]), out / "speech_noise20.ogg")
    encode(silence(5000), out / "silence.ogg")
    encode(clip(white_noise(RATE * 5, 32768 * 10 ** (NOISE_DBFS / 20), rng)), out / "noise.ogg")

    (out / "speech.json").write_text(
        json.dumps(
            {
                "sample_rate": RATE,
                "duration_ms": len(timeline) * 1000 // RATE,
                "speech_rms_dbfs": round(20 * math.log10(speech_rms / 32768), 1),
                "snr_db_of_speech_noise20": SNR_DB,
                "noise_dbfs_of_noise": NOISE_DBFS,
                "utterances": truth,
                "generator": "scripts/make_fixtures.py",
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    build(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "tests" / "fixtures")
