"""Per-frame cost of the audio pipeline against its C-level floor, and onset latency over WebRTC.

    .venv/bin/python benchmarks/pipeline.py [--passes N] [--sessions N]

1. CPU: for every 20 ms Opus packet of the speech fixture, the floor is libopus decoding straight
   to 16 kHz mono + webrtcvad, called alone in a tight loop; Hark is all the server does per RTP
   packet (``LiveSession.opus_received``: reorder buffer, the same decode, RTP-clock dating, the
   session clock, framing, webrtcvad, segmenter, speech events, a StreamAudio subscriber). For
   reference, the path before Hark decoded itself (PyAV decode to 48 kHz stereo + PyAV resample
   + webrtcvad) is timed too. All run in the same process, interleaved pass by pass; the median
   pass is reported, with the ratio to the floor.
2. Onset latency: a real server on loopback, aiortc publishers sending the fixture without
   re-encoding; for each true onset, wall time from the publisher handing the RTP packet that
   carries it to aiortc, to the SpeechStarted event arriving at a gRPC watcher.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import statistics
import sys
import time
from typing import Any

import av
import webrtcvad
from aiortc.rtp import RtpPacket

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from media.audio.opus_decoder import OpusDecoder  # noqa: E402
from media.audio.speech_pipeline import AudioMode  # noqa: E402
from media.core.clock import Clock  # noqa: E402
from media.core.session import Origin, Timeouts  # noqa: E402
from media.server.session_table import SessionTable  # noqa: E402
from tests.support import FIXTURES, SPEECH, truth  # noqa: E402


def opus_packets(path: pathlib.Path) -> list[av.Packet]:
    with av.open(str(path)) as container:
        return [packet for packet in container.demux(audio=0) if packet.size]


def rtp_packets(packets: list[av.Packet]) -> list[RtpPacket]:
    return [
        RtpPacket(payload_type=111, sequence_number=i, timestamp=960 * i, payload=bytes(p))
        for i, p in enumerate(packets)
    ]


def floor_pass(packets: list[RtpPacket]) -> float:
    """libopus straight to 16 kHz mono, then webrtcvad: the least a listening session does."""
    decoder = OpusDecoder(16000)
    vad = webrtcvad.Vad(2)
    start = time.perf_counter()
    for packet in packets:
        pcm = decoder.decode(packet.payload)
        if pcm is not None:
            vad.is_speech(pcm, 16000)
    elapsed = time.perf_counter() - start
    decoder.close()
    return elapsed


def pyav_pass(packets: list[av.Packet]) -> float:
    """The path before: PyAV decode to 48 kHz stereo, PyAV resample to 16 kHz mono, webrtcvad."""
    decoder = av.CodecContext.create("opus", "r")
    resampler = av.AudioResampler(format="s16", layout="mono", rate=16000)
    vad = webrtcvad.Vad(2)
    buffer = b""
    start = time.perf_counter()
    for packet in packets:
        for frame in decoder.decode(packet):
            for out in resampler.resample(frame):
                buffer += bytes(out.planes[0])[: out.samples * 2]
                while len(buffer) >= 640:
                    vad.is_speech(buffer[:640], 16000)
                    buffer = buffer[640:]
    return time.perf_counter() - start


def hark_pass(packets: list[RtpPacket]) -> float:
    """Everything the server does per RTP packet: reorder, decode, session, pipeline, events."""
    return asyncio.run(_hark_pass(packets))


async def _hark_pass(packets: list[RtpPacket]) -> float:
    sessions = SessionTable(Clock(), timeouts=Timeouts(), closed_retention=60, max_sessions=10)
    live = sessions.create(Origin.WHIP)
    live.session.publisher_attached(0.0)
    live.pipeline.subscribe(AudioMode.SPEECH, 0)
    first = True
    start = time.perf_counter()
    for packet in packets:
        live.opus_received(packet)
        if first:
            live.start_listening()
            first = False
    elapsed = time.perf_counter() - start
    await sessions.shutdown()
    return elapsed


def cpu(passes: int) -> dict[str, float]:
    packets = opus_packets(SPEECH)
    rtp = rtp_packets(packets)
    floor_times, pyav_times, hark_times = [], [], []
    for _ in range(passes):
        floor_times.append(floor_pass(rtp))
        pyav_times.append(pyav_pass(packets))
        hark_times.append(hark_pass(rtp))
    per_frame = 1e6 / len(packets)
    return {
        "frames": len(packets),
        "floor_us": statistics.median(floor_times) * per_frame,
        "pyav_us": statistics.median(pyav_times) * per_frame,
        "hark_us": statistics.median(hark_times) * per_frame,
    }


async def onset_latency(sessions: int) -> list[float]:
    from aiortc.mediastreams import MediaStreamTrack

    from media.v1 import media_pb2 as pb
    from tests.support import grpc_stub, publish, running_server

    onsets = [u["start_ms"] for u in truth()["utterances"]]
    latencies: list[float] = []

    class Stamped(MediaStreamTrack):
        """Passes the player's packets on and notes when each one is handed to aiortc."""

        kind = "audio"

        def __init__(self, inner: MediaStreamTrack, sent: dict[int, float]) -> None:
            super().__init__()
            self._inner = inner
            self._sent = sent

        async def recv(self) -> Any:
            packet = await self._inner.recv()
            self._sent[int(packet.pts * 1000 * packet.time_base)] = time.time()
            return packet

    async def one(stub: Any, app: Any) -> None:
        created = await stub.CreateSession(pb.CreateSessionRequest())
        sent: dict[int, float] = {}
        heard: dict[int, float] = {}

        async def watch() -> None:
            async for event in stub.WatchSession(pb.WatchSessionRequest(session_id=created.id)):
                if event.HasField("speech_started"):
                    heard[event.speech_started.start_ms] = time.time()

        watcher = asyncio.ensure_future(watch())
        publisher = await publish(
            app.base_url,
            f"/whip/{created.id}",
            token=created.token,
            wrap=lambda track: Stamped(track, sent),
        )
        await stub.StartListening(
            pb.StartListeningRequest(session_id=created.id, wait_for_ready=True), timeout=10
        )
        await asyncio.sleep(truth()["duration_ms"] / 1000 + 0.5)
        await stub.EndSession(pb.EndSessionRequest(session_id=created.id))
        await asyncio.wait_for(watcher, 5)
        await publisher.vanish()
        for onset in onsets:
            packet_ms = max(t for t in sent if t <= onset)
            detected = min(heard, key=lambda start: abs(start - onset))
            latencies.append((heard[detected] - sent[packet_ms]) * 1000)

    async with running_server() as app, grpc_stub(app) as stub:
        await asyncio.gather(*(one(stub, app) for _ in range(sessions)))
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--passes", type=int, default=30)
    parser.add_argument("--sessions", type=int, default=3)
    args = parser.parse_args()

    result = cpu(args.passes)
    ratio = result["hark_us"] / result["floor_us"]
    print(f"fixture: {result['frames']:.0f} Opus packets of 20 ms ({FIXTURES.name}/speech.ogg)")
    print(f"before (PyAV decode + resample + webrtcvad): {result['pyav_us']:.1f} us per 20 ms")
    print(f"floor (libopus to 16 kHz + webrtcvad): {result['floor_us']:.1f} us per 20 ms")
    print(
        f"hark  (LiveSession.opus_received, decode included): {result['hark_us']:.1f} us per 20 ms"
    )
    print(f"ratio: {ratio:.2f}x (target <= 1.5x)")

    import logging

    for name in ("aiortc", "aioice"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    latencies = asyncio.run(onset_latency(args.sessions))
    print(
        f"onset latency over loopback WebRTC ({len(latencies)} onsets, {args.sessions} sessions): "
        f"median {statistics.median(latencies):.0f} ms, p95 {percentile(latencies, 0.95):.0f} ms "
        "(target: median < 160 ms)"
    )


if __name__ == "__main__":
    main()
