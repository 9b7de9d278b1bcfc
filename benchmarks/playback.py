"""Playback benchmark: CPU per WHEP player against a naïve aiortc relay, and first-audio latency.

    .venv/bin/python benchmarks/playback.py [--seconds 10] [--players 4,8,16] [--trials 20]

1. CPU per player. The server under test is pinned to CPU 0 (taskset). A load process pinned to
   CPU 1 publishes the speech fixture's Opus packets over WHIP (no re-encoding, as in load.py)
   and opens N WHEP players that decode what they get, counting frames and loud frames. This
   process, also on CPU 1, is the backend: for agent audio it streams a continuous tone into
   PlayAudio for the whole window (``--max-playback-queue-s 1`` paces it to real time). Each
   configuration gets a fresh server, a warm-up, then ``--seconds`` of measurement: server CPU
   from /proc, frames per player, the load process' CPU. Per-player cost = (CPU with N players
   - CPU of the same server with none) / N, for
   - Hark forwarding (``/whep/{id}?source=publisher``: the publisher's packets, no codec),
   - Hark agent audio (``/whep/{id}`` during a PlayAudio: one encode per session),
   - naive_relay.py, in the same run: ``MediaRelay().subscribe(track)``, one encode per player.
2. First audio. One agent player (tests/listening.py; aiortc jitter buffer set to 1 frame) sits
   idle, hearing Hark's silence packets; then, per trial, a 200 ms tone goes into PlayAudio.
   t0 = just before the first PCM message is yielded to gRPC; the results are the arrival of the
   first RTP packet that is not the idle silence packet (before the jitter buffer) and of the
   first decoded frame louder than -50 dBFS, both minus t0, on one clock (this process).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import pathlib
import random
import statistics
import sys
import time
import warnings
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.load import (  # noqa: E402
    REPEATS,
    counters,
    cpu_seconds,
    percentile,
    repeated_fixture,
    spawn,
    stop,
)

FRAMES_PER_S = 50
LOUD_RMS = 32768 * 10 ** (-50 / 20)  # -50 dBFS, tests/listening.py's SILENCE_DBFS
WARMUP_S = 2.0
TONE_CHUNK_S = 0.1  # 400 Hz: 40 whole periods per chunk, so repeated chunks join smoothly
TRIAL_TONE_S = 0.2
SDP_HEADERS = {"Content-Type": "application/sdp"}


def loopback_only() -> None:
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


# the load process: one publisher and N players, on CPU 1


@dataclass
class Player:
    pc: Any
    frames: int = 0
    loud: int = 0
    task: asyncio.Task[None] | None = None


async def publish(http: aiohttp.ClientSession, url: str) -> tuple[Any, Any, str]:
    """A WHIP publisher of the repeated fixture; returns its peer, its source and session id."""
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    source = MediaPlayer(str(repeated_fixture(REPEATS)), decode=False)
    pc = RTCPeerConnection()
    pc.addTransceiver(source.audio, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    async with http.post(url, data=pc.localDescription.sdp, headers=SDP_HEADERS) as response:
        answer = await response.text()
        if response.status != 201:
            raise SystemExit(f"publisher: {response.status} {answer}")
        location = response.headers["Location"]
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pc, source, location.rstrip("/").rsplit("/", 1)[1]


async def play(http: aiohttp.ClientSession, url: str) -> Player:
    """A WHEP player that decodes everything it receives and counts the frames."""
    from aiortc import RTCSessionDescription

    from tests.listening import recvonly_offer

    pc = await recvonly_offer()
    tracks: asyncio.Queue[Any] = asyncio.Queue()
    pc.on("track", tracks.put_nowait)
    async with http.post(url, data=pc.localDescription.sdp, headers=SDP_HEADERS) as response:
        answer = await response.text()
        if response.status != 201:
            await pc.close()
            raise SystemExit(f"player: {response.status} {answer}")
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    player = Player(pc)
    player.task = asyncio.ensure_future(
        count_frames(await asyncio.wait_for(tracks.get(), 10), player)
    )
    return player


async def count_frames(track: Any, player: Player) -> None:
    from aiortc.mediastreams import MediaStreamError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop  # RMS in C; deprecated, still in Python 3.11 and 3.12

    with contextlib.suppress(MediaStreamError):
        while True:
            frame = await track.recv()
            pcm = bytes(frame.planes[0])[: frame.samples * 2 * len(frame.layout.channels)]
            player.frames += 1
            if audioop.rms(pcm, 2) > LOUD_RMS:
                player.loud += 1


async def close_player(player: Player) -> None:
    from media.rtc.negotiation import close_peer_connection

    if player.task is not None:
        player.task.cancel()
        await asyncio.gather(player.task, return_exceptions=True)
    await close_peer_connection(player.pc)


async def run_peers(base: str, count: int, source: str) -> None:
    """Publish, open ``count`` players, print ``ready {session}``; then answer ``count`` lines
    on stdin with the players' frame counts as JSON, until stdin closes."""
    loopback_only()
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(4)
    async with aiohttp.ClientSession() as http:
        publisher, media, session_id = await publish(http, base + "/whip")
        query = "?source=publisher" if source == "publisher" else ""

        async def one() -> Player:
            async with gate:
                return await play(http, f"{base}/whep/{session_id}{query}")

        players = await asyncio.gather(*(one() for _ in range(count)))
    async with asyncio.timeout(30):
        while not all(p.frames for p in players):
            await asyncio.sleep(0.1)
    print(f"ready {session_id}", flush=True)
    while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "count":
        counts = {"frames": [p.frames for p in players], "loud": [p.loud for p in players]}
        print(json.dumps(counts), flush=True)
    await asyncio.gather(*(close_player(p) for p in players), return_exceptions=True)
    await publisher.close()
    if media.audio is not None:
        media.audio.stop()


class Peers:
    """The load process, seen from here: started, asked for counts, closed."""

    def __init__(self, process: Any, session_id: str, errors: collections.deque[str]) -> None:
        self.process = process
        self.session_id = session_id
        self._errors = errors
        self._drain: asyncio.Future[None] | None = None

    @classmethod
    async def start(cls, base: str, players: int, source: str) -> Peers:
        process = await asyncio.create_subprocess_exec(
            *("taskset", "-c", "1", sys.executable, __file__, "peers"),
            *("--base", base, "--count", str(players), "--source", source),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        errors: collections.deque[str] = collections.deque(maxlen=20)
        peers = cls(process, "", errors)
        peers._drain = asyncio.ensure_future(_keep_tail(process.stderr, errors))
        try:
            line = await peers._line(60)
            if not line.startswith("ready "):
                raise RuntimeError(f"load process said {line!r}")
        except BaseException:
            await peers.close()
            raise
        peers.session_id = line.split()[1]
        return peers

    async def count(self) -> tuple[list[int], list[int]]:
        assert self.process.stdin is not None
        self.process.stdin.write(b"count\n")
        counts = json.loads(await self._line(10))
        return counts["frames"], counts["loud"]

    async def _line(self, timeout: float) -> str:
        assert self.process.stdout is not None
        async with asyncio.timeout(timeout):
            line = (await self.process.stdout.readline()).decode().strip()
        if not line:
            await asyncio.sleep(0.2)  # let stderr drain
            raise RuntimeError("load process ended:\n" + "".join(self._errors))
        return line

    async def close(self) -> None:
        assert self.process.stdin is not None
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.process.stdin.close()
        with contextlib.suppress(TimeoutError):  # it closes its peers itself, then exits
            async with asyncio.timeout(10):
                await self.process.wait()
        await stop(self.process)
        if self._drain is not None:
            self._drain.cancel()
            await asyncio.gather(self._drain, return_exceptions=True)


async def _keep_tail(stream: Any, tail: collections.deque[str]) -> None:
    while line := await stream.readline():
        tail.append(line.decode(errors="replace"))


# servers and the backend


async def start_server(kind: str, max_players: int) -> tuple[Any, str, str]:
    """Hark or the naïve relay on CPU 0: the process, its HTTP base URL and gRPC target."""
    python = sys.executable
    if kind == "hark":
        server, found = await spawn(
            0,
            *(python, "-m", "media", "serve"),
            *("--http-port", "0", "--grpc-port", "0", "--ice-address", "127.0.0.1"),
            *("--rate-limit", "0", "--max-players-per-session", str(max(1, max_players))),
            *("--max-playback-queue-s", "1"),
            pattern=r"HTTP on [\d.]+:(\d+), gRPC on [\d.]+:(\d+)",
            stream="stderr",
        )
        return server, f"http://127.0.0.1:{found[1]}", f"127.0.0.1:{found[2]}"
    server, found = await spawn(
        0,
        *(python, str(ROOT / "benchmarks" / "naive_relay.py")),
        pattern=r"port (\d+)",
        stream="stdout",
    )
    return server, f"http://127.0.0.1:{found[1]}", ""


class Speaker:
    """The backend's side of agent audio: one PlayAudio call streaming a tone until closed."""

    def __init__(self, target: str, session_id: str, seconds: float) -> None:
        import grpc

        from media.v1 import media_pb2_grpc

        self._channel = grpc.aio.insecure_channel(target)
        stub = media_pb2_grpc.MediaServiceStub(self._channel)
        self._task = asyncio.ensure_future(stub.PlayAudio(self._requests(session_id, seconds)))

    @staticmethod
    async def _requests(session_id: str, seconds: float) -> AsyncIterator[Any]:
        from media.v1 import media_pb2 as pb
        from tests.listening import RATE, tone

        start = pb.PlayAudioStart(
            session_id=session_id, sample_rate=RATE, channels=1, interrupt_on_speech=False
        )
        yield pb.PlayAudioRequest(start=start)
        chunk = pb.PlayAudioRequest(pcm=tone(400, TONE_CHUNK_S))
        for _ in range(round(seconds / TONE_CHUNK_S)):  # Hark reads at real time (flow control)
            yield chunk

    def check(self) -> None:
        if self._task.done():
            raise RuntimeError(f"PlayAudio ended during the measurement: {self._task.result()}")

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self._channel.close()


# CPU per player


@dataclass(frozen=True)
class Config:
    server: str  # "hark" or "naive"
    source: str  # "publisher" (forwarding; the naïve relay's only one) or "agent"
    players: int

    @property
    def speaking(self) -> bool:
        return self.server == "hark" and self.source == "agent"

    @property
    def label(self) -> str:
        if self.server == "naive":
            return "naïve relay" if self.players else "naïve relay, publisher only"
        if self.speaking:
            return "Hark, agent audio (PlayAudio)"
        return "Hark, forwarding" if self.players else "Hark, publisher only"


@dataclass
class Measured:
    config: Config
    seconds: float
    server_cpu: float = 0.0  # fraction of a core
    peers_cpu: float = 0.0
    frames: list[int] = field(default_factory=list)  # per player, during the window
    loud: list[int] = field(default_factory=list)
    decoded_per_s: float = 0.0  # the publisher's frames the server decoded
    played_per_s: float = 0.0  # agent frames Hark played out
    dropped: float = 0.0  # packets Hark's player tracks dropped

    def per_player_fps(self) -> tuple[float, float]:
        rates = [f / self.seconds for f in self.frames] or [0.0]
        return min(rates), max(rates)

    @property
    def saturated(self) -> bool:
        return bool(self.frames) and self.per_player_fps()[0] < 0.99 * FRAMES_PER_S

    @property
    def loud_share(self) -> float:
        return sum(self.loud) / sum(self.frames) if sum(self.frames) else 0.0


def configs(sizes: list[int]) -> list[Config]:
    base = [
        Config("hark", "publisher", 0),
        Config("naive", "publisher", 0),
        Config("hark", "agent", 0),
        Config("hark", "agent", 1),
    ]
    for n in sizes:
        base += [Config("hark", "publisher", n), Config("naive", "publisher", n)]
        base += [Config("hark", "agent", n)]
    return base


async def measure(config: Config, seconds: float, max_players: int) -> Measured:
    result = Measured(config, seconds)
    kind = "bare" if config.server == "naive" else "hark"  # load.counters' names for /stats
    server, base, grpc_target = await start_server(config.server, max_players)
    peers: Peers | None = None
    speaker: Speaker | None = None
    try:
        peers = await Peers.start(base, config.players, config.source)
        if config.speaking:
            speaker = Speaker(grpc_target, peers.session_id, seconds + WARMUP_S + 30)
        await asyncio.sleep(WARMUP_S)
        async with aiohttp.ClientSession() as http:
            before, (frames0, loud0) = await counters(http, base, kind), await peers.count()
            cpu0, peers0 = cpu_seconds(server.pid), cpu_seconds(peers.process.pid)
            await asyncio.sleep(seconds)
            result.server_cpu = (cpu_seconds(server.pid) - cpu0) / seconds
            result.peers_cpu = (cpu_seconds(peers.process.pid) - peers0) / seconds
            after, (frames1, loud1) = await counters(http, base, kind), await peers.count()
        if speaker is not None:
            speaker.check()
    finally:
        if speaker is not None:
            await speaker.close()
        if peers is not None:
            await peers.close()
        await stop(server)
    result.frames = [b - a for a, b in zip(frames0, frames1, strict=True)]
    result.loud = [b - a for a, b in zip(loud0, loud1, strict=True)]
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    result.decoded_per_s = delta["frames"] / seconds
    result.played_per_s = delta.get("hark_playback_frames_total", 0.0) / seconds
    result.dropped = delta.get("hark_whep_packets_dropped_total", 0.0)
    return result


# first audio


@dataclass
class Trial:
    rtp_s: float | None  # first RTP packet of the playback at the player, after t0
    audible_s: float | None  # first decoded frame louder than -50 dBFS, after t0


async def wait_ready(stub: Any, session_id: str) -> None:
    from media.v1 import media_pb2 as pb

    async with asyncio.timeout(20):
        request = pb.GetSessionRequest(session_id=session_id)
        while (await stub.GetSession(request)).state != pb.READY:
            await asyncio.sleep(0.05)


def tap_arrivals(listener: Any) -> list[tuple[float, bytes]]:
    """(wall time, payload) of every Opus RTP packet the player gets, before its jitter buffer."""
    from media.rtc.compat import tap_opus_packets
    from tests.listening import opus_payload_type

    arrivals: list[tuple[float, bytes]] = []
    receiver = listener.pc.getTransceivers()[0].receiver
    payload_type = opus_payload_type(listener.answer)
    if not tap_opus_packets(receiver, payload_type, lambda p, _: arrivals.append((time.time(), p))):
        print("this aiortc hides RTP packets: no RTP arrival times", file=sys.stderr)
    return arrivals


async def one_trial(
    stub: Any, session_id: str, listener: Any, arrivals: list[tuple[float, bytes]], idle: bytes
) -> Trial:
    from tests.listening import loud, play_requests, tone

    messages = play_requests(session_id, tone(440, TRIAL_TONE_S))
    heard_from, arrived_from = len(listener.heard), len(arrivals)
    t0 = 0.0

    async def requests() -> AsyncIterator[Any]:
        nonlocal t0
        yield messages[0]
        t0 = time.time()  # the first PCM chunk goes to gRPC now
        for message in messages[1:]:
            yield message

    async with asyncio.timeout(10):
        await stub.PlayAudio(requests())  # returns once the playback finished
    await asyncio.sleep(random.uniform(0.2, 0.3))  # its last frames arrive; a random tick phase
    audible = [h.time for h in loud(listener.heard[heard_from:]) if h.time >= t0]
    packets = [t for t, payload in arrivals[arrived_from:] if t >= t0 and payload != idle]
    return Trial(
        packets[0] - t0 if packets else None,
        audible[0] - t0 if audible else None,
    )


async def first_audio(trials: int) -> tuple[list[Trial], float]:
    """Per-trial latencies, and the share of idle packets that were Hark's silence packet."""
    import grpc

    from media.v1 import media_pb2_grpc
    from tests.listening import listen

    loopback_only()
    server, base, grpc_target = await start_server("hark", 1)
    channel = grpc.aio.insecure_channel(grpc_target)
    peers: Peers | None = None
    listener: Any = None
    try:
        peers = await Peers.start(base, 0, "agent")  # the publisher: a live, READY session
        stub = media_pb2_grpc.MediaServiceStub(channel)
        await wait_ready(stub, peers.session_id)
        listener = await listen(base, peers.session_id)  # jitter buffer: 1 frame
        arrivals = tap_arrivals(listener)
        await asyncio.sleep(1.0)
        idle, idle_count = collections.Counter(p for _, p in arrivals).most_common(1)[0]
        idle_share = idle_count / len(arrivals)
        results = []
        for _ in range(trials):
            results.append(await one_trial(stub, peers.session_id, listener, arrivals, idle))
        return results, idle_share
    finally:
        if listener is not None:
            await listener.close()
        await channel.close()
        if peers is not None:
            await peers.close()
        await stop(server)


# report


def pct(value: float) -> str:
    return f"{value * 100:.2f} %"


def report(results: list[Measured], sizes: list[int], trials: list[Trial]) -> None:
    print(
        "| configuration | players | server CPU | frames/s per player (of 50) | loud frames | ",
        end="",
    )
    print("server decoded/s | agent played/s | load process CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        low, high = r.per_player_fps()
        fps = f"{low:.1f}–{high:.1f}" if r.frames else "-"
        loud = f"{r.loud_share * 100:.0f} %" if r.frames else "-"
        played = f"{r.played_per_s:.1f}" if r.config.speaking else "-"
        print(
            f"| {r.config.label} | {r.config.players} | {pct(r.server_cpu)} | {fps} | {loud} | "
            f"{r.decoded_per_s:.1f} | {played} | {pct(r.peers_cpu)} |"
        )
    dropped = sum(r.dropped for r in results)
    print(f"\npackets dropped by Hark's player tracks, all configurations: {dropped:.0f}\n")

    per_player_table({r.config: r for r in results}, sizes)

    print("\n| first audio, ms after the first PCM chunk | median | p95 | max | trials |")
    print("|---|---|---|---|---|")
    for name, values in (
        ("first RTP packet of the playback at the player", [t.rtp_s for t in trials]),
        ("**first audible frame decoded** (target < 100)", [t.audible_s for t in trials]),
    ):
        found = [v * 1000 for v in values if v is not None]
        if not found:
            print(f"| {name} | - | - | - | 0 of {len(values)} |")
            continue
        print(
            f"| {name} | {statistics.median(found):.0f} | {percentile(found, 0.95):.0f} | "
            f"{max(found):.0f} | {len(found)} of {len(values)} |"
        )


def per_player_table(measured: dict[Config, Measured], sizes: list[int]) -> None:
    def cpu(server: str, source: str, players: int) -> float:
        return measured[Config(server, source, players)].server_cpu

    def mark(text: str, *keys: Config) -> str:
        return text + "*" if any(measured[k].saturated for k in keys) else text

    hark0, naive0 = cpu("hark", "publisher", 0), cpu("naive", "publisher", 0)
    agent0, agent1 = cpu("hark", "agent", 0), cpu("hark", "agent", 1)
    print("| CPU per player (% of a core) | " + " | ".join(f"N = {n}" for n in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    rows: dict[str, list[str]] = collections.defaultdict(list)
    for n in sizes:
        naive_n, forward_n = Config("naive", "publisher", n), Config("hark", "publisher", n)
        agent_n = Config("hark", "agent", n)
        forwarding = (cpu("hark", "publisher", n) - hark0) / n
        naive = (cpu("naive", "publisher", n) - naive0) / n
        agent = (cpu("hark", "agent", n) - agent1) / (n - 1)
        rows["naïve relay: (CPU(N) - CPU(0)) / N"].append(mark(pct(naive), naive_n))
        rows["Hark forwarding: (CPU(N) - CPU(0)) / N"].append(mark(pct(forwarding), forward_n))
        rows["**forwarding / naïve** (target < 0.33)"].append(
            mark(f"**{forwarding / naive:.2f}**", naive_n, forward_n)
        )
        rows["Hark agent audio: (CPU(N) - CPU(1)) / (N - 1)"].append(mark(pct(agent), agent_n))
        rows["agent audio / naïve"].append(mark(f"{agent / naive:.2f}", naive_n, agent_n))
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(values) + " |")
    if any(m.saturated for m in measured.values()):
        print(
            "\n\\* saturated: its players got under 99 % of their frames, so the server's "
            "CPU per player there is a lower bound."
        )
    print(
        f"\nagent audio, fixed per session: PlayAudio with 1 player - publisher only = "
        f"{pct(agent1 - hark0)}; PlayAudio with no player - publisher only = {pct(agent0 - hark0)}"
    )


async def run(sizes: list[int], seconds: float, trials: int) -> None:
    # This process is the backend and the latency player: keep it off the server's CPU.
    os.sched_setaffinity(0, {1})
    results = []
    for config in configs(sizes):
        result = await measure(config, seconds, max(sizes))
        results.append(result)
        low, _ = result.per_player_fps()
        print(
            f"{config.label:34} N={config.players:3}: server {pct(result.server_cpu)}, "
            f"min {low:.1f} frames/s per player",
            file=sys.stderr,
            flush=True,
        )
    latencies, idle_share = await first_audio(trials)
    print(
        f"first audio: {len(latencies)} trials; {idle_share * 100:.0f} % of idle packets "
        "were the silence packet",
        file=sys.stderr,
    )
    report(results, sizes, latencies)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command")
    peers = commands.add_parser("peers", help="(internal) the load process")
    peers.add_argument("--base", required=True)
    peers.add_argument("--count", type=int, required=True)
    peers.add_argument("--source", choices=("publisher", "agent"), required=True)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--players", default="4,8,16")
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    if args.command == "peers":
        asyncio.run(run_peers(args.base, args.count, args.source))
        return
    sizes = [int(n) for n in args.players.split(",")]
    if not all(2 <= n <= 256 for n in sizes):
        parser.error("--players: each N must be 2..256")
    asyncio.run(run(sizes, args.seconds, args.trials))


if __name__ == "__main__":
    main()
