"""Cost of StreamAudio delivery per second of audio, by chunk_ms, through a real gRPC server.

    .venv/bin/python benchmarks/stream_audio.py [--subscribers 20] [--seconds 20] [--passes 3]

A Hark server runs in this process; one session's pipeline is fed the speech fixture's decoded
frames one at a time at ``--speed`` (2) times real time, and ``--subscribers`` StreamAudio calls
(mode ALL, so every frame is delivered) read it over loopback from a separate reader process.
The server's CPU for the same feed with no subscriber is subtracted, so what remains is delivery:
queueing, building and sending the gRPC messages. Reported per subscriber and second of audio,
for each chunk_ms, with the ratio to chunk_ms=20 of the same run (passes interleaved; medians).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import pathlib
import statistics
import sys
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from media.core.segmenter import SegmenterConfig  # noqa: E402
from media.core.session import Origin  # noqa: E402
from media.server.live_session import LiveSession  # noqa: E402
from tests.support import fixture_pcm, running_server  # noqa: E402

CHUNK_SIZES = (20, 40, 60, 100, 200)
FRAME_S = 0.02


# the reader process


async def read_streams(target: str, session_id: str, count: int, chunk_ms: int) -> None:
    """``count`` StreamAudio calls until the session ends; prints what they got as JSON."""
    import grpc

    from media.v1 import media_pb2 as pb
    from media.v1 import media_pb2_grpc

    totals = {"messages": 0, "audio_ms": 0, "dropped_ms": 0}

    async def one(stub: Any) -> None:
        request = pb.StreamAudioRequest(session_id=session_id, mode=pb.ALL, chunk_ms=chunk_ms)
        async for chunk in stub.StreamAudio(request):
            totals["messages"] += 1
            totals["audio_ms"] += chunk.audio.duration_ms
            totals["dropped_ms"] += chunk.audio.dropped_ms

    async with grpc.aio.insecure_channel(target) as channel:
        stub = media_pb2_grpc.MediaServiceStub(channel)
        await asyncio.gather(*(one(stub) for _ in range(count)))
    print(json.dumps(totals), flush=True)


# the server side


def decoded_fixture() -> list[tuple[bytes, int]]:
    """Each packet's PCM at the VAD rate and its first sample, as ``OpusInput`` hands them over."""
    return fixture_pcm()


def feed(live: LiveSession, frame: tuple[bytes, int]) -> None:
    """One packet's PCM into the session's pipeline, as the publisher's ``OpusInput`` hands it."""
    live.pipeline.push(*frame)


async def one_pass(
    frames: list[tuple[bytes, int]], subscribers: int, chunk_ms: int, seconds: float, speed: int
) -> dict[str, float]:
    """Server CPU seconds for ``seconds`` of audio delivered to ``subscribers`` (0: none)."""
    async with running_server() as app:
        live = app.sessions.create(Origin.API)
        live.pipeline.start(SegmenterConfig(), 2)
        reader = None
        if subscribers:
            reader = await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--read",
                app.grpc_target,
                live.id,
                str(subscribers),
                str(chunk_ms),
                stdout=asyncio.subprocess.PIPE,
            )
            gauge = "hark_audio_subscribers"
            while app.metrics.registry.get_sample_value(gauge) != subscribers:
                await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        count = int(seconds / FRAME_S)
        step = 320  # samples of 20 ms at the VAD's 16 kHz
        cpu = time.process_time()
        started = loop.time()
        for index in range(count):
            pcm, _ = frames[index % len(frames)]
            feed(live, (pcm, index * step))
            # one frame at a time, as a publisher's arrive: audio only waits in the queue (and
            # is merged there) when a reader falls behind
            await asyncio.sleep(max(0.0, started + (index + 1) * FRAME_S / speed - loop.time()))
        live.pipeline.close()
        got = {"messages": 0.0, "audio_ms": 0.0, "dropped_ms": 0.0}
        if reader is not None:
            out, _ = await reader.communicate()
            got = json.loads(out)
        used = time.process_time() - cpu
    return {"cpu_s": used, **got}


async def measure(
    subscribers: int, seconds: float, passes: int, speed: int
) -> dict[int, list[dict[str, float]]]:
    frames = decoded_fixture()
    results: dict[int, list[dict[str, float]]] = {0: [], **{ms: [] for ms in CHUNK_SIZES}}
    for _ in range(passes):
        results[0].append(await one_pass(frames, 0, 0, seconds, speed))
        for chunk_ms in CHUNK_SIZES:
            results[chunk_ms].append(await one_pass(frames, subscribers, chunk_ms, seconds, speed))
    return results


def report(results: dict[int, list[dict[str, float]]], subscribers: int, seconds: float) -> None:
    baseline = statistics.median(r["cpu_s"] for r in results[0])
    audio_s = subscribers * seconds
    per_second: dict[int, float] = {}
    print(f"{subscribers} subscribers x {seconds:g} s of audio; pipeline alone: {baseline:.2f} s")
    print("| chunk_ms | messages per s of audio | server CPU per s of audio | vs 20 ms |")
    print("|---|---|---|---|")
    for chunk_ms in CHUNK_SIZES:
        runs = results[chunk_ms]
        for run in runs:
            assert run["dropped_ms"] == 0, f"a reader fell behind at chunk_ms={chunk_ms}"
            assert run["audio_ms"] >= 0.99 * audio_s * 1000, run
        delivery = statistics.median(r["cpu_s"] for r in runs) - baseline
        per_second[chunk_ms] = delivery / audio_s
        messages = statistics.median(r["messages"] for r in runs) / audio_s
        print(
            f"| {chunk_ms} | {messages:.1f} | {per_second[chunk_ms] * 1e6:.0f} µs "
            f"({per_second[chunk_ms] * 100:.3f} % of a core) | "
            f"{per_second[chunk_ms] / per_second[20]:.2f}x |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--subscribers", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=20.0, help="audio per pass")
    parser.add_argument("--speed", type=int, default=2, help="times real time")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--read", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.read:
        target, session_id, count, chunk_ms = args.read
        asyncio.run(read_streams(target, session_id, int(count), int(chunk_ms)))
        return
    import logging

    logging.disable(logging.INFO)
    results = asyncio.run(measure(args.subscribers, args.seconds, args.passes, args.speed))
    report(results, args.subscribers, args.seconds)


if __name__ == "__main__":
    main()
