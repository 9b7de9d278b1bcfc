"""Cluster benchmark: what serving a session through a node that does not own it costs.

    .venv/bin/python benchmarks/cluster.py [--seconds 10] [--passes 3] [--subscribers 20]
        [--watchers 20] [--toggles 25] [--trials 20]

A real ``redis-server`` on a free loopback port and two ``hark serve --redis-url`` nodes, alpha and
beta, started by this process, which then runs at nice 19 (it is the load: publishers and backend)
while the nodes run at normal priority on every CPU. Every number is a ratio to the direct case
measured in the same run, passes interleaved.

- *StreamAudio*: one aiortc publisher on beta sends the fixture's Opus packets without
  re-encoding; ``--subscribers`` StreamAudio calls (mode ALL, so every frame is delivered, chunk_ms
  100) read it either from beta (direct) or from alpha (forwarded to beta). Cost = CPU of both
  nodes above the same publisher with no subscriber, per second of audio delivered.
- *WatchSession*: the same session, a backend toggling StartListening / StopListening at beta
  ``--toggles`` times a second (each a ListeningChanged event, in every phase); ``--watchers``
  WatchSession calls at beta (direct) or at alpha (forwarded). Cost = CPU of both nodes above the
  same toggling with no watcher, per event delivered.
- *WHIP*: alpha is full (``--max-sessions 1``, held by a pre-created session); a publisher's WHIP
  POST at alpha is proxied to beta, a local one goes to beta itself, alternated, ``--trials`` of
  each, one at a time. Measured: the POST's round trip (to the 201) and the time from just before
  the POST to the READY event's timestamp at a WatchSessions watcher on beta (one clock).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import grpc  # noqa: E402

from benchmarks.load import percentile, process_cpu, repeated_fixture  # noqa: E402
from media.v1 import media_pb2 as pb  # noqa: E402
from media.v1 import media_pb2_grpc  # noqa: E402
from tests.cluster_support import HarkNode, RedisServer  # noqa: E402
from tests.support import Publisher, publish  # noqa: E402

FIXTURE_REPEATS = 30  # 7 minutes of speech: the publisher outlasts every phase
T = TypeVar("T")
COUNTED = ("state_changed", "listening_changed", "speech_started", "speech_ended")


def node_cpu(node: HarkNode) -> float:
    assert node.proc is not None
    return sum(process_cpu(node.proc.pid).values())


@dataclass
class Phase:
    """One measured window: which way the calls went, the CPU each node used, what was delivered
    (seconds of audio, or events)."""

    name: str
    seconds: float
    alpha_cpu: float = 0.0
    beta_cpu: float = 0.0
    delivered: float = 0.0

    @property
    def cpu(self) -> float:
        return self.alpha_cpu + self.beta_cpu


@dataclass
class Cluster:
    alpha: HarkNode
    beta: HarkNode
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    def stub(self, node: HarkNode) -> media_pb2_grpc.MediaServiceAsyncStub:
        if node.grpc_address not in self.channels:
            self.channels[node.grpc_address] = grpc.aio.insecure_channel(node.grpc_address)
        stub: media_pb2_grpc.MediaServiceAsyncStub = media_pb2_grpc.MediaServiceStub(
            self.channels[node.grpc_address]
        )
        return stub

    def target(self, phase: str) -> HarkNode:
        """Where a phase's calls go: the owner (beta), or alpha, which forwards them."""
        return self.alpha if phase == "forwarded" else self.beta


@contextlib.asynccontextmanager
async def cluster(folder: pathlib.Path) -> AsyncIterator[Cluster]:
    redis = RedisServer(folder)
    await redis.start()
    try:
        async with (
            HarkNode(redis, "alpha", "--max-sessions", "1", "--session-ttl", "3600") as alpha,
            HarkNode(redis, "beta", "--rate-limit", "0") as beta,
        ):
            await joined(redis, "alpha", "beta")
            made = Cluster(alpha, beta)
            try:
                yield made
            finally:
                for channel in made.channels.values():
                    await channel.close()
    finally:
        await redis.stop()


async def joined(redis: RedisServer, *nodes: str) -> None:
    """Every node's record in Redis, then one more beat of each, after which each knows all."""
    async with redis.client() as client, asyncio.timeout(30):
        while not await client.smembers("hark:nodes") >= set(nodes):
            await asyncio.sleep(0.2)
        listed_at = time.time()
        for node in nodes:
            while float(await client.hget(f"hark:node:{node}", "updated") or 0) <= listed_at:
                await asyncio.sleep(0.2)


async def measured(name: str, seconds: float, c: Cluster, delivered: Callable[[], float]) -> Phase:
    phase = Phase(name, seconds)
    alpha0, beta0, delivered0 = node_cpu(c.alpha), node_cpu(c.beta), delivered()
    await asyncio.sleep(seconds)
    phase.alpha_cpu = node_cpu(c.alpha) - alpha0
    phase.beta_cpu = node_cpu(c.beta) - beta0
    phase.delivered = delivered() - delivered0
    if name != "none" and not phase.delivered:
        raise SystemExit(f"{name}: nothing delivered in {seconds} s (did the session close?)")
    return phase


async def owned(tasks: list[asyncio.Task[None]], body: Awaitable[T]) -> T:
    """``body``'s result; then ``tasks`` cancelled and awaited, and the first that failed raised."""
    try:
        return await body
    finally:
        for task in tasks:
            task.cancel()
        ended = await asyncio.gather(*tasks, return_exceptions=True)
        failed = [e for e in ended if isinstance(e, Exception)]
        if failed:
            raise failed[0]


# StreamAudio


async def stream_audio_phase(c: Cluster, session_id: str, name: str, n: int, s: float) -> Phase:
    received = [0]
    stub = c.stub(c.target(name))

    async def read() -> None:
        request = pb.StreamAudioRequest(session_id=session_id, mode=pb.ALL)
        async for chunk in stub.StreamAudio(request):
            received[0] += chunk.audio.duration_ms

    tasks = [asyncio.create_task(read()) for _ in range(n if name != "none" else 0)]
    await asyncio.sleep(1.5)  # every call open and flowing
    return await owned(tasks, measured(name, s, c, lambda: received[0] / 1000))


# WatchSession


async def watch_phase(c: Cluster, session_id: str, name: str, n: int, s: float) -> Phase:
    events = [0]
    stub = c.stub(c.target(name))

    async def watch() -> None:
        async for event in stub.WatchSession(pb.WatchSessionRequest(session_id=session_id)):
            if event.WhichOneof("payload") in COUNTED:
                events[0] += 1

    tasks = [asyncio.create_task(watch()) for _ in range(n if name != "none" else 0)]
    await asyncio.sleep(1.5)
    return await owned(tasks, measured(name, s, c, lambda: float(events[0])))


async def toggle_listening(c: Cluster, session_id: str, per_s: float) -> None:
    """StartListening and StopListening at the owner, in turn, ``per_s`` times a second."""
    stub = c.stub(c.beta)
    loop = asyncio.get_running_loop()
    start, count = loop.time(), 0
    while True:
        if count % 2:
            await stub.StopListening(pb.StopListeningRequest(session_id=session_id))
        else:
            await stub.StartListening(pb.StartListeningRequest(session_id=session_id))
        count += 1
        await asyncio.sleep(max(0.0, start + count / per_s - loop.time()))


# WHIP


@dataclass
class WhipTrial:
    way: str
    post_s: float
    ready_s: float


class ReadyWatch:
    """WatchSessions at beta: the READY timestamp of every session, by id."""

    def __init__(self, c: Cluster) -> None:
        self.ready: dict[str, float] = {}
        self._stub = c.stub(c.beta)

    async def run(self) -> None:
        async for event in self._stub.WatchSessions(pb.WatchSessionsRequest()):
            if event.HasField("state_changed") and event.state_changed.state == pb.READY:
                self.ready[event.session_id] = event.time.seconds + event.time.nanos / 1e9

    async def ready_at(self, session_id: str) -> float:
        async with asyncio.timeout(30):
            while session_id not in self.ready:
                await asyncio.sleep(0.01)  # polling what the watch task records
        return self.ready[session_id]


async def whip_trial(c: Cluster, watch: ReadyWatch, way: str) -> WhipTrial:
    node = c.alpha if way == "proxied" else c.beta
    start = time.time()
    publisher = await publish(node.base_url)
    posted = time.time()
    try:
        if not publisher.session_id.startswith("beta."):
            raise SystemExit(f"{way} POST at {node.node_id} placed on {publisher.session_id}")
        ready = await watch.ready_at(publisher.session_id)
    finally:
        await close(publisher)
    return WhipTrial(way, posted - start, ready - start)


async def close(publisher: Publisher) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.delete(publisher.location):
            pass
    await publisher.vanish()


# the run


async def run(args: argparse.Namespace) -> None:
    import aioice.ice

    from media.rtc.compat import keep_consent_through_stalls

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    keep_consent_through_stalls()  # browsers retransmit consent checks; a niced load needs it
    with tempfile.TemporaryDirectory() as folder:
        async with cluster(pathlib.Path(folder)) as c:
            os.nice(19)  # from here on, this process is the load: the nodes come first
            print(f"load average before: {os.getloadavg()}", file=sys.stderr, flush=True)
            await c.stub(c.alpha).CreateSession(pb.CreateSessionRequest(), timeout=10)
            source = repeated_fixture(FIXTURE_REPEATS)
            publisher = await publish(c.beta.base_url, fixture=source)
            try:
                await c.stub(c.beta).StartListening(
                    pb.StartListeningRequest(session_id=publisher.session_id, wait_for_ready=True),
                    timeout=30,
                )
                audio = await interleaved(args, stream_audio_phase, c, publisher.session_id)
                toggling = asyncio.create_task(
                    toggle_listening(c, publisher.session_id, args.toggles)
                )
                watch = await owned(
                    [toggling], interleaved(args, watch_phase, c, publisher.session_id)
                )
            finally:
                await close(publisher)
            trials = await whip_trials(c, args.trials)
            print(f"load average after: {os.getloadavg()}", file=sys.stderr, flush=True)
    report_costs("StreamAudio", "s of audio", audio, args.subscribers)
    report_costs("WatchSession", "event", watch, args.watchers)
    report_whip(trials)


async def interleaved(
    args: argparse.Namespace,
    phase: Callable[[Cluster, str, str, int, float], Awaitable[Phase]],
    c: Cluster,
    session_id: str,
) -> list[Phase]:
    n = args.subscribers if phase is stream_audio_phase else args.watchers
    phases = []
    for _ in range(args.passes):
        for name in ("none", "direct", "forwarded"):
            done = await phase(c, session_id, name, n, args.seconds)
            phases.append(done)
            print(
                f"{phase.__name__} {name}: alpha {done.alpha_cpu / done.seconds * 100:.1f} %, "
                f"beta {done.beta_cpu / done.seconds * 100:.1f} %, delivered {done.delivered:.0f}",
                file=sys.stderr,
                flush=True,
            )
    return phases


async def whip_trials(c: Cluster, trials: int) -> list[WhipTrial]:
    watch = ReadyWatch(c)
    watching = asyncio.create_task(watch.run())
    try:
        done = []
        for _ in range(trials):
            for way in ("local", "proxied"):
                done.append(await whip_trial(c, watch, way))
        return done
    finally:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)


def per_unit(phases: list[Phase], name: str) -> tuple[float, float, float]:
    """Median over passes of (alpha, beta, both) CPU above the same pass's idle phase, per unit
    delivered, in seconds."""
    idle = [p for p in phases if p.name == "none"]
    mine = [p for p in phases if p.name == name]
    alpha, beta = [], []
    for base, phase in zip(idle, mine, strict=True):
        scale = phase.seconds / base.seconds
        alpha.append((phase.alpha_cpu - base.alpha_cpu * scale) / phase.delivered)
        beta.append((phase.beta_cpu - base.beta_cpu * scale) / phase.delivered)
    both = [a + b for a, b in zip(alpha, beta, strict=True)]
    return statistics.median(alpha), statistics.median(beta), statistics.median(both)


def report_costs(rpc: str, unit: str, phases: list[Phase], calls: int) -> None:
    print(f"\n{rpc}, {calls} calls: CPU above the idle phase, per {unit} delivered (median)\n")
    print(f"| {rpc} | delivered per s | alpha | beta | both nodes | x direct |")
    print("|---|---|---|---|---|---|")
    direct = per_unit(phases, "direct")[2]
    for name in ("direct", "forwarded"):
        alpha, beta, both = per_unit(phases, name)
        rate = statistics.median(p.delivered / p.seconds for p in phases if p.name == name)
        print(
            f"| {name} | {rate:.0f} | {alpha * 1e6:.0f} µs | {beta * 1e6:.0f} µs | "
            f"{both * 1e6:.0f} µs | {both / direct:.2f}x |"
        )
    idle = [p for p in phases if p.name == "none"]
    print(
        f"\nidle phase (no {rpc} call): alpha "
        f"{statistics.median(p.alpha_cpu / p.seconds for p in idle) * 100:.1f} %, beta "
        f"{statistics.median(p.beta_cpu / p.seconds for p in idle) * 100:.1f} % of a core"
    )


def report_whip(trials: list[WhipTrial]) -> None:
    print(f"\nWHIP POST, {len(trials) // 2} each, alternated\n")
    print("| WHIP POST | 201 p50 | 201 p95 | READY p50 | READY p95 |")
    print("|---|---|---|---|---|")
    medians = {}
    for way in ("local", "proxied"):
        post = [t.post_s for t in trials if t.way == way]
        ready = [t.ready_s for t in trials if t.way == way]
        medians[way] = (statistics.median(post), statistics.median(ready))
        print(
            f"| {way} | {medians[way][0] * 1000:.0f} ms | {percentile(post, 0.95) * 1000:.0f} ms"
            f" | {medians[way][1] * 1000:.0f} ms | {percentile(ready, 0.95) * 1000:.0f} ms |"
        )
    post_ratio = medians["proxied"][0] / medians["local"][0]
    ready_ratio = medians["proxied"][1] / medians["local"][1]
    print(f"\nproxied / local, medians: 201 {post_ratio:.2f}x, READY {ready_ratio:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0, help="each measured phase")
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--subscribers", type=int, default=20, help="StreamAudio calls")
    parser.add_argument("--watchers", type=int, default=20, help="WatchSession calls")
    parser.add_argument("--toggles", type=float, default=25.0, help="listening changes per s")
    parser.add_argument("--trials", type=int, default=20, help="WHIP POSTs each way")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
