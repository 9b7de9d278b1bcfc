"""Load benchmark: Hark against a bare aiortc receiver, N concurrent publishers at a time.

    .venv/bin/python benchmarks/load.py [--sweep 10,25,50,100] [--seconds 10]
    .venv/bin/python benchmarks/load.py --overload 100 [--ramp 0.2] [--max-loop-lag-ms 25]
    .venv/bin/python benchmarks/load.py --udp-port 40000 [--sweep 25,50]
    .venv/bin/python benchmarks/load.py --workers 1,2 [--sweep 30,40,50,60,70,80]
    .venv/bin/python benchmarks/load.py --workers 1,2 --niced-at 25 [--passes 3]

The server under test is pinned to CPU 0 (taskset). The publishers run in a separate process
pinned to CPU 1, sending the speech fixture's Opus packets without re-encoding, in a loop. This
process, also on CPU 1, plays the backend for Hark: every session that becomes READY is told to
listen and gets a StreamAudio subscriber that consumes its speech. Once every publisher is up, it
measures for ``--seconds``: server CPU per session, frames decoded per second against the 50 x N
expected, time to READY, event-loop lag p99, RSS per session, and the publishers' own CPU. The
same load is then put on ``bare_receiver.py``, and Hark's CPU per session is reported as a ratio.

Capacity per core = the largest N where frames stay >= 99 % of expected and loop lag p99 < 50 ms.

With LOAD_PROFILE=<file> set, Hark runs under cProfile and writes its profile there when it stops
(the profiler slows Python calls down: read shares from it, not the CPU figures). With
LOAD_NO_STREAM=1 the backend listens without a StreamAudio subscriber (the receive path alone).

With ``--udp-port``, each step also runs Hark with every session through that one UDP port (the
demultiplexer), and reports its CPU per session against the per-connection sockets' of the same run.

With ``--workers 1,2``, the sweep runs ``hark serve --workers N`` for each N instead (no bare
receiver): the server gets the first N CPUs, the load the others (or every CPU when none is left,
which the report says), and the capacity per worker count follows the same rule, with CPU and RSS
summed over the supervisor and its workers.

With ``--workers 1,2 --niced-at N``, each worker count W runs once per pass with W x N sessions,
server and load on every CPU and the load at nice 19, and the capacity of W workers against one is
derived from the CPU of the busiest worker and of every process (``report_niced``): on a 2-CPU
machine the sweep of two workers measures the load generator competing for the same CPUs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pathlib
import re
import statistics
import sys
from dataclasses import dataclass, field
from typing import Any

import aiohttp

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FIXTURE = ROOT / "tests" / "fixtures" / "speech.ogg"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LAG_LIMIT_S = 0.05


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process descended from it (a supervisor's workers)."""
    children: dict[int, list[int]] = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(stat.parent.name))
    tree, pending = [], [pid]
    while pending:
        current = pending.pop()
        tree.append(current)
        pending += children.get(current, [])
    return tree


def tree_rss_bytes(pid: int) -> int:
    return sum(_gone_as_zero(rss_bytes, p) for p in process_tree(pid))


def _gone_as_zero(read: Any, pid: int) -> Any:
    try:
        return read(pid)
    except OSError:  # the process ended between listing and reading
        return 0


def rss_bytes(pid: int) -> int:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


# the publishers' process

REPEATS = 8  # 8 x 14 s: longer than any ramp-up plus measurement


def repeated_fixture(times: int) -> pathlib.Path:
    """The fixture's Opus packets ``times`` over, timestamps rising throughout, no re-encoding.

    MediaPlayer(loop=True) restarts timestamps at every loop and then sends the whole file as
    fast as it can, which would measure the load generator's bursts instead of the servers.
    """
    import tempfile

    import av

    path = pathlib.Path(tempfile.gettempdir()) / f"hark-load-{times}x-{FIXTURE.stat().st_size}.ogg"
    if path.exists():
        return path
    with av.open(str(FIXTURE)) as source:
        packets = [p for p in source.demux(audio=0) if p.size]
        template = source.streams.audio[0]
        with av.open(str(path), "w", format="ogg") as out:
            stream = out.add_stream_from_template(template)
            span = packets[-1].pts + packets[-1].duration - packets[0].pts
            for repeat in range(times):
                for packet in packets:
                    copy = av.Packet(bytes(packet))
                    copy.pts = copy.dts = packet.pts + repeat * span
                    copy.duration = packet.duration
                    copy.time_base = packet.time_base
                    copy.stream = stream
                    out.mux(copy)
    return path


async def run_publishers(
    url: str, count: int, ramp_s: float = 0.0, fresh_connections: bool = False
) -> None:
    """``count`` publishers, all at once (8 at a time), or one every ``ramp_s`` seconds, in which
    case a refusal (503) is counted instead of ending the run. ``fresh_connections``: each WHIP
    POST on a connection of its own, as separate browsers would (the kernel spreads connections,
    not requests, over ``--workers`` sharing the port)."""
    import aioice.ice
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from aiortc.contrib.media import MediaPlayer

    from media.rtc.compat import keep_consent_through_stalls

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]
    # The publishers stand for browsers, whose ICE consent checks are retransmitted, not for
    # aioice's single 0.5 s try: without this, a busy CPU 1 ends them, not the server's load.
    keep_consent_through_stalls()
    if os.environ.get("LOAD_LOG_DIR"):
        import logging

        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
        logging.getLogger("media.rtc.compat").setLevel(logging.INFO)
    peers: list[Any] = []
    players: list[Any] = []
    gate = asyncio.Semaphore(8)
    source = repeated_fixture(REPEATS)
    refused = 0

    async def one(http: aiohttp.ClientSession) -> None:
        nonlocal refused
        async with gate:
            player = MediaPlayer(str(source), decode=False)
            pc = RTCPeerConnection()
            pc.addTransceiver(player.audio, direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            headers = {"Content-Type": "application/sdp"}
            async with http.post(url, data=pc.localDescription.sdp, headers=headers) as response:
                answer = await response.text()
                if response.status == 503 and ramp_s:
                    refused += 1
                    await pc.close()
                    player.audio.stop()
                    return
                if response.status != 201:
                    raise SystemExit(f"publisher: {response.status} {answer}")
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            players.append(player)
            peers.append(pc)

    connector = aiohttp.TCPConnector(force_close=fresh_connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        if ramp_s:
            starts = []
            for _ in range(count):
                starts.append(asyncio.ensure_future(one(http)))
                await asyncio.sleep(ramp_s)
            await asyncio.gather(*starts)
        else:
            await asyncio.gather(*(one(http) for _ in range(count)))
    print(f"published admitted={len(peers)} refused={refused}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await asyncio.gather(*(pc.close() for pc in peers), return_exceptions=True)
    for player in players:
        if player.audio is not None:
            player.audio.stop()


# the measuring side


@dataclass
class Step:
    kind: str
    sessions: int
    seconds: float
    server_cpu: float = 0.0
    publisher_cpu: float = 0.0
    frames_per_s: float = 0.0
    rss_per_session: float = 0.0
    lag_p99: float = 0.0
    ready_s: list[float] = field(default_factory=list)
    workers: int = 1
    shared_cpus: bool = False
    worker_cpu: list[float] = field(default_factory=list)  # each worker's, busiest first
    cpu_by_worker: dict[int, float] = field(default_factory=dict)  # by worker index
    supervisor_cpu: float = 0.0
    spread: dict[int, int] = field(default_factory=dict)  # sessions per worker index

    @property
    def frames_ratio(self) -> float:
        return self.frames_per_s / (50 * self.sessions)

    @property
    def cpu_per_session(self) -> float:
        return self.server_cpu / self.seconds / self.sessions

    @property
    def keeps_up(self) -> bool:
        lag_ok = self.kind == "bare" or self.lag_p99 < LAG_LIMIT_S
        return self.frames_ratio >= 0.99 and lag_ok


async def spawn(
    cpus: int | str, *args: str, pattern: str, stream: str, nice: int = 0
) -> tuple[Any, re.Match[str]]:
    process = await asyncio.create_subprocess_exec(
        *(("nice", "-n", str(nice)) if nice else ()),
        "taskset",
        "-c",
        str(cpus),
        *args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    source = process.stderr if stream == "stderr" else process.stdout
    assert source is not None
    async with asyncio.timeout(120):
        while line := (await source.readline()).decode():
            if match := re.search(pattern, line):
                drain = process.stdout if stream == "stderr" else process.stderr
                log = kept_log(process.pid)
                process._drains = [  # keep the pipes from filling up
                    asyncio.ensure_future(_discard(source, log)),
                    asyncio.ensure_future(_discard(drain, log)),
                ]
                return process, match
    raise SystemExit(f"{args[0]} exited before printing {pattern!r}")


def kept_log(pid: int) -> Any:
    """With LOAD_LOG_DIR set, what a process writes goes to ``<dir>/<pid>.log`` (diagnosis)."""
    folder = os.environ.get("LOAD_LOG_DIR")
    return open(pathlib.Path(folder) / f"{pid}.log", "ab") if folder else None  # noqa: SIM115


async def _discard(stream: Any, log: Any = None) -> None:
    while chunk := await stream.read(65536):
        if log is not None:
            log.write(chunk)
            log.flush()


async def stop(process: Any) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(20):
            await process.wait()
    if process.returncode is None:
        process.kill()
        await process.wait()


async def scrape(http: aiohttp.ClientSession, base: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    async with http.get(base + "/metrics") as response:
        text = await response.text()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = sample.name + (f"|{sample.labels['le']}" if "le" in sample.labels else "")
            values[key] = values.get(key, 0.0) + sample.value
    return values


def lag_p99(before: dict[str, float], after: dict[str, float]) -> float:
    name = "hark_event_loop_lag_seconds_bucket|"
    buckets = sorted(
        (float(k.split("|")[1]), after[k] - before.get(k, 0.0)) for k in after if k.startswith(name)
    )
    total = buckets[-1][1] if buckets else 0.0
    for bound, count in buckets:
        if total and count >= 0.99 * total:
            return bound
    return float("inf")


class Backend:
    """Listens to every READY session and consumes its speech, as a voice-agent backend would."""

    chunk_ms = 0  # StreamAudio's chunk_ms (--chunk-ms; 0: the server's default)

    def __init__(self, target: str) -> None:
        import grpc

        from media.v1 import media_pb2_grpc

        self._channel = grpc.aio.insecure_channel(target)
        self._stub = media_pb2_grpc.MediaServiceStub(self._channel)
        self._tasks: set[asyncio.Task[None]] = set()
        self.connecting: dict[str, float] = {}
        self.ready: dict[str, float] = {}

    async def run(self) -> None:
        from media.v1 import media_pb2 as pb

        async for event in self._stub.WatchSessions(pb.WatchSessionsRequest()):
            if not event.HasField("state_changed"):
                continue
            when = event.time.seconds + event.time.nanos / 1e9
            if event.state_changed.state == pb.CONNECTING:
                self.connecting[event.session_id] = when
            elif event.state_changed.state == pb.READY:
                self.ready[event.session_id] = when
                task = asyncio.ensure_future(self._listen(event.session_id))
                self._tasks.add(task)

    async def _listen(self, session_id: str) -> None:
        from media.v1 import media_pb2 as pb

        await self._stub.StartListening(pb.StartListeningRequest(session_id=session_id))
        if os.environ.get("LOAD_NO_STREAM"):
            return
        request = pb.StreamAudioRequest(session_id=session_id, chunk_ms=self.chunk_ms)
        async for _ in self._stub.StreamAudio(request):
            pass

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._channel.close()


@dataclass(frozen=True)
class CpuLayout:
    """taskset CPU lists: the server's, and the load's (publishers and backend)."""

    server: str = "0"
    load: str = "1"
    shared: bool = False
    load_nice: int = 0  # the publishers' niceness (and this process's, set by the caller)


def cpu_layout(workers: int) -> CpuLayout:
    """The first ``workers`` CPUs for the server, the rest for the load, or every CPU for the load
    when none is left (then they share)."""
    cpus = sorted(os.sched_getaffinity(0))
    server, rest = cpus[:workers], cpus[workers:]
    listed = ",".join(map(str, server))
    return CpuLayout(listed, ",".join(map(str, rest or cpus)), shared=not rest)


def niced_layout() -> CpuLayout:
    """Server and load on every CPU, the load at nice 19: the server gets the CPU whenever it
    wants it, and its CPU per session is measured with the same layout for any worker count."""
    every = ",".join(map(str, sorted(os.sched_getaffinity(0))))
    return CpuLayout(every, every, shared=True, load_nice=19)


def process_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of ``pid`` and of each of its descendants, by process id."""
    return {p: _gone_as_zero(cpu_seconds, p) for p in process_tree(pid)}


async def measure(
    kind: str,
    sessions: int,
    seconds: float,
    udp_port: int | None = None,
    workers: int | None = None,
    cpus: CpuLayout = CpuLayout(),
) -> Step:
    """One step. ``workers``: run ``hark serve --workers N`` (else today's single process, no
    flag), spread the publishers' connections, and sum CPU and RSS over its processes."""
    step = Step(kind, sessions, seconds, workers=workers or 1, shared_cpus=cpus.shared)
    python = sys.executable
    if kind in ("hark", "mux"):
        profile = os.environ.get("LOAD_PROFILE")
        server, found = await spawn(
            cpus.server,
            python,
            *(("-m", "cProfile", "-o", profile) if profile else ()),
            "-m",
            "media",
            "serve",
            *("--http-port", "0", "--grpc-port", "0", "--ice-address", "127.0.0.1"),
            *("--rate-limit", "0", "--max-sessions", "100000", "--max-watchers", "100000"),
            *(("--udp-port", str(udp_port)) if kind == "mux" else ()),
            *(("--workers", str(workers)) if workers is not None else ()),
            pattern=r"HTTP on [\d.]+:(\d+), gRPC on [\d.]+:(\d+)",
            stream="stderr",
        )
        base, grpc_target = f"http://127.0.0.1:{found[1]}", f"127.0.0.1:{found[2]}"
        if workers is not None:
            await wait_for_workers(server.pid, workers, base)
    else:
        server, found = await spawn(
            cpus.server,
            python,
            str(ROOT / "benchmarks" / "bare_receiver.py"),
            pattern=r"port (\d+)",
            stream="stdout",
        )
        base, grpc_target = f"http://127.0.0.1:{found[1]}", ""
    backend = Backend(grpc_target) if kind != "bare" else None
    watching = asyncio.ensure_future(backend.run()) if backend else None
    idle_rss = tree_rss_bytes(server.pid)
    publishers = None
    try:
        publishers, _ = await spawn(
            cpus.load,
            python,
            __file__,
            "publishers",
            *("--url", base + "/whip", "--n", str(sessions)),
            *(("--fresh-connections",) if workers is not None else ()),
            pattern="published",
            stream="stdout",
            nice=cpus.load_nice,
        )
        async with aiohttp.ClientSession() as http:
            await wait_until_flowing(http, base, kind, sessions, backend)
            await asyncio.sleep(2.0)
            before = await counters(http, base, kind)
            cpu0, pub0 = process_cpu(server.pid), cpu_seconds(publishers.pid)
            await asyncio.sleep(seconds)
            after = await counters(http, base, kind)
            cpu1 = process_cpu(server.pid)
            step.publisher_cpu = cpu_seconds(publishers.pid) - pub0
        used = {pid: cpu1[pid] - cpu0.get(pid, 0.0) for pid in cpu1}
        step.server_cpu = sum(used.values())
        step.supervisor_cpu = used.get(server.pid, 0.0) if workers and workers > 1 else 0.0
        step.worker_cpu = sorted((v for p, v in used.items() if p != server.pid), reverse=True)
        step.cpu_by_worker = {
            worker_index(p): v for p, v in used.items() if p != server.pid and worker_index(p) >= 0
        }
        if not workers or workers == 1:
            step.worker_cpu = [step.server_cpu]
        step.frames_per_s = (after["frames"] - before["frames"]) / seconds
        step.rss_per_session = (tree_rss_bytes(server.pid) - idle_rss) / sessions
        if kind != "bare":
            step.lag_p99 = lag_p99(before, after)
            assert backend is not None
            step.ready_s = [
                backend.ready[s] - backend.connecting[s]
                for s in backend.ready
                if s in backend.connecting
            ]
            step.spread = sessions_per_worker(backend.ready)
    finally:
        if publishers is not None:
            assert publishers.stdin is not None
            publishers.stdin.close()
            await stop(publishers)
        if backend is not None and watching is not None:
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            await backend.close()
        await stop(server)
    return step


def worker_index(pid: int) -> int:
    """The index a supervisor gave worker ``pid`` (in its environment), or -1."""
    try:
        environ = pathlib.Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return -1
    for entry in environ:
        if entry.startswith(b"HARK_WORKER_INDEX="):
            return int(entry.split(b"=", 1)[1])
    return -1


def sessions_per_worker(session_ids: Any) -> dict[int, int]:
    """How many sessions each worker holds, from the worker index their ids name."""
    from media.core.session_ids import owner_of

    spread: dict[int, int] = {}
    for session_id in session_ids:
        owner = owner_of(session_id)
        if owner is not None:
            spread[owner.worker] = spread.get(owner.worker, 0) + 1
    return dict(sorted(spread.items()))


async def wait_for_workers(pid: int, workers: int, base: str) -> None:
    """Every worker process up and the public port answering before publishers arrive (the
    kernel spreads connections only over sockets already listening). A build without workers runs
    one process for any N: say so, and measure what runs."""
    if workers > 1:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                while len(process_tree(pid)) - 1 < workers:
                    await asyncio.sleep(0.2)
        found = len(process_tree(pid)) - 1
        if found < workers:
            print(
                f"warning: --workers {workers} runs {found} worker processes; measuring that",
                file=sys.stderr,
                flush=True,
            )
    async with asyncio.timeout(60), aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(base + "/readyz") as response:
                    if response.status == 200:
                        return
            await asyncio.sleep(0.2)


async def wait_until_flowing(
    http: aiohttp.ClientSession, base: str, kind: str, sessions: int, backend: Backend | None
) -> None:
    """Every session READY (Hark), or frames arriving at the full rate (bare), within 60 s."""
    async with asyncio.timeout(60):
        if backend is not None:
            while len(backend.ready) < sessions:
                await asyncio.sleep(0.2)
            return
        while True:
            before = (await counters(http, base, kind))["frames"]
            await asyncio.sleep(1.0)
            if (await counters(http, base, kind))["frames"] - before >= 0.99 * 50 * sessions:
                return


async def counters(http: aiohttp.ClientSession, base: str, kind: str) -> dict[str, float]:
    if kind == "bare":
        async with http.get(base + "/stats") as response:
            return {"frames": float((await response.json())["frames"])}
    values = await scrape(http, base)
    values["frames"] = values.get("hark_audio_frames_decoded_total", 0.0)
    return values


async def scrape_by_label(http: aiohttp.ClientSession, base: str, name: str) -> dict[str, float]:
    """One labelled metric's samples, by the value of its only label."""
    from prometheus_client.parser import text_string_to_metric_families

    async with http.get(base + "/metrics") as response:
        text = await response.text()
    return {
        next(iter(sample.labels.values())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and sample.labels
    }


async def overload(attempts: int, seconds: float, ramp_s: float, max_lag_ms: int) -> None:
    """Publishers arrive one every ``ramp_s`` s, past capacity: some are admitted, the rest get
    503; then the admitted sessions' frames are measured for ``seconds``.

    A busy loop shares CPU 0 with the server, which halves its capacity, so that the publishers
    and the backend on CPU 1 (which saturate near 80 sessions) are not what runs out first.
    """
    os.sched_setaffinity(0, {1})
    ballast = await asyncio.create_subprocess_exec(
        "taskset", "-c", "0", sys.executable, "-c", "while True: pass"
    )
    try:
        await _overload(attempts, seconds, ramp_s, max_lag_ms)
    finally:
        await stop(ballast)


async def _overload(attempts: int, seconds: float, ramp_s: float, max_lag_ms: int) -> None:
    server, found = await spawn(
        0,
        sys.executable,
        *("-m", "media", "serve", "--http-port", "0", "--grpc-port", "0"),
        *("--ice-address", "127.0.0.1", "--rate-limit", "0", "--max-sessions", "100000"),
        *("--max-watchers", "100000", "--max-loop-lag-ms", str(max_lag_ms)),
        *(("--log-level", "INFO") if os.environ.get("LOAD_LOG_DIR") else ()),
        pattern=r"HTTP on [\d.]+:(\d+), gRPC on [\d.]+:(\d+)",
        stream="stderr",
    )
    base, grpc_target = f"http://127.0.0.1:{found[1]}", f"127.0.0.1:{found[2]}"
    backend = Backend(grpc_target)
    watching = asyncio.ensure_future(backend.run())
    tracing = asyncio.ensure_future(trace_load(base)) if os.environ.get("LOAD_LOG_DIR") else None
    publishers = None
    try:
        publishers, published = await spawn(
            1,
            sys.executable,
            __file__,
            "publishers",
            *("--url", base + "/whip", "--n", str(attempts), "--ramp", str(ramp_s)),
            pattern=r"published admitted=(\d+) refused=(\d+)",
            stream="stdout",
        )
        admitted, refused = int(published[1]), int(published[2])
        async with aiohttp.ClientSession() as http:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(30):
                    while len(backend.ready) < admitted:
                        await asyncio.sleep(0.2)
            await asyncio.sleep(2.0)
            before = await counters(http, base, "hark")
            closed_before = await scrape_by_label(http, base, "hark_sessions_closed_total")
            cpu0 = cpu_seconds(publishers.pid)
            await asyncio.sleep(seconds)
            publishers_cpu = (cpu_seconds(publishers.pid) - cpu0) / seconds
            after = await counters(http, base, "hark")
            closed_after = await scrape_by_label(http, base, "hark_sessions_closed_total")
            refusals = await scrape_by_label(http, base, "hark_sessions_refused_total")
    finally:
        if publishers is not None:
            assert publishers.stdin is not None
            publishers.stdin.close()
            await stop(publishers)
        watching.cancel()
        if tracing is not None:
            tracing.cancel()
        await asyncio.gather(watching, *(t for t in [tracing] if t), return_exceptions=True)
        await backend.close()
        await stop(server)
    live = after.get("hark_sessions", 0.0)
    frames = (after["frames"] - before["frames"]) / seconds
    closed = {
        reason: count - closed_before.get(reason, 0.0)
        for reason, count in closed_after.items()
        if count > closed_before.get(reason, 0.0)
    }
    print(
        "| publishers (one every s) | --max-loop-lag-ms | admitted | refused 503 | READY | "
        "frames of admitted | live at the end | loop lag p99 | closed while measured | "
        "refusals by reason | publishers' CPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    reasons = ", ".join(f"{k} {v:.0f}" for k, v in refusals.items() if v)
    closes = ", ".join(f"{k} {v:.0f}" for k, v in closed.items())
    print(
        f"| {attempts} ({ramp_s:g}) | {max_lag_ms} | {admitted} | {refused} | "
        f"{len(backend.ready)} | {frames:.0f}/s of {50 * admitted} "
        f"({frames / max(1.0, 50 * admitted) * 100:.1f} %) | {live:.0f} | "
        f"{lag_p99(before, after) * 1000:.0f} ms | {closes or '0'} | {reasons or '-'} | "
        f"{publishers_cpu * 100:.0f} % |"
    )


async def trace_load(base: str) -> None:
    """Every 0.5 s: live sessions, mean loop lag, overloaded (LOAD_LOG_DIR/trace.log)."""
    path = pathlib.Path(os.environ["LOAD_LOG_DIR"]) / "trace.log"
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with aiohttp.ClientSession() as http:
        with path.open("w") as trace:
            while True:
                with contextlib.suppress(aiohttp.ClientError):
                    values = await scrape(http, base)
                    live = values.get("hark_sessions", 0)
                    lag_ms = values.get("hark_event_loop_lag_mean_seconds", 0) * 1000
                    overloaded = values.get("hark_overloaded", 0)
                    elapsed = loop.time() - start
                    trace.write(f"{elapsed:6.1f} s  live {live:3.0f}  lag {lag_ms:5.0f} ms  ")
                    trace.write(f"overloaded {overloaded:.0f}\n")
                    trace.flush()
                await asyncio.sleep(0.5)


def report(steps: list[Step]) -> None:
    bare = {s.sessions: s for s in steps if s.kind == "bare"}
    print(
        "| N | Hark CPU/session | bare CPU/session (its frames) | ratio | Hark frames/s (of 50N) | "
        "READY p50/p95/p99 | loop lag p99 | RSS/session | publishers' CPU |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for step in (s for s in steps if s.kind == "hark"):
        base = bare.get(step.sessions)
        ratio = f"{step.cpu_per_session / base.cpu_per_session:.2f}x" if base else "-"
        base_cpu = (
            f"{base.cpu_per_session * 100:.2f} % ({base.frames_ratio * 100:.0f} %)" if base else "-"
        )
        ready = "/".join(f"{percentile(step.ready_s, q) * 1000:.0f}" for q in (0.5, 0.95, 0.99))
        print(
            f"| {step.sessions} | {step.cpu_per_session * 100:.2f} % | {base_cpu} | {ratio} | "
            f"{step.frames_per_s:.0f} ({step.frames_ratio * 100:.1f} %) | {ready} ms | "
            f"{step.lag_p99 * 1000:.1f} ms | {step.rss_per_session / 2**20:.2f} MiB | "
            f"{step.publisher_cpu / step.seconds * 100:.0f} % |"
        )
    capable = [s.sessions for s in steps if s.kind == "hark" and s.keeps_up]
    print(
        f"\ncapacity per core: {max(capable) if capable else 0} sessions "
        f"(frames >= 99 % of expected and loop lag p99 < {LAG_LIMIT_S * 1000:.0f} ms)"
    )
    report_mux(steps)


def report_mux(steps: list[Step]) -> None:
    """The --udp-port demultiplexer's cost: Hark's CPU per session on one port against a port per
    connection, same run, same load."""
    shared = {s.sessions: s for s in steps if s.kind == "mux"}
    if not shared:
        return
    print("\n| N | CPU/session, a port per connection | one --udp-port | difference | frames |")
    print("|---|---|---|---|---|")
    for step in (s for s in steps if s.kind == "hark" and s.sessions in shared):
        mux = shared[step.sessions]
        change = mux.cpu_per_session / step.cpu_per_session - 1
        print(
            f"| {step.sessions} | {step.cpu_per_session * 100:.2f} % | "
            f"{mux.cpu_per_session * 100:.2f} % | {change * 100:+.1f} % | "
            f"{mux.frames_ratio * 100:.1f} % |"
        )
    capable = [s.sessions for s in shared.values() if s.keeps_up]
    print(f"\ncapacity per core on one --udp-port: {max(capable) if capable else 0} sessions")


async def sweep(sizes: list[int], seconds: float, udp_port: int | None = None) -> None:
    # This process is the backend (gRPC watch + StreamAudio): keep it off the server's CPU.
    os.sched_setaffinity(0, {1})
    steps = []
    kinds = ("hark", "mux", "bare") if udp_port is not None else ("hark", "bare")
    for size in sizes:
        for kind in kinds:
            step = await measure(kind, size, seconds, udp_port)
            steps.append(step)
            print(
                f"{kind:4} N={size:4}: {step.cpu_per_session * 100:.2f} % CPU/session, "
                f"{step.frames_ratio * 100:.1f} % of frames, lag p99 {step.lag_p99 * 1000:.1f} ms",
                file=sys.stderr,
                flush=True,
            )
        if not steps[-len(kinds)].keeps_up:
            break
    report(steps)
    if steps:
        print(
            f"\nmedian time to READY over the sweep: "
            f"{statistics.median(t for s in steps for t in s.ready_s) * 1000:.0f} ms"
        )


def report_workers(steps: list[Step]) -> None:
    """Each worker count's sweep, then the capacity of each against one worker's."""
    print(
        "| workers | N | Hark CPU/session | frames/s (of 50N) | READY p50/p95/p99 | "
        "loop lag p99 | RSS/session | publishers' CPU |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for step in steps:
        ready = "/".join(f"{percentile(step.ready_s, q) * 1000:.0f}" for q in (0.5, 0.95, 0.99))
        print(
            f"| {step.workers} | {step.sessions} | {step.cpu_per_session * 100:.2f} % | "
            f"{step.frames_per_s:.0f} ({step.frames_ratio * 100:.1f} %) | {ready} ms | "
            f"{step.lag_p99 * 1000:.1f} ms | {step.rss_per_session / 2**20:.2f} MiB | "
            f"{step.publisher_cpu / step.seconds * 100:.0f} % |"
        )
    counts = sorted({s.workers for s in steps})
    capacity = {
        n: max((s.sessions for s in steps if s.workers == n and s.keeps_up), default=0)
        for n in counts
    }
    print(
        f"\ncapacity: the largest N with frames >= 99 % of expected and loop lag p99 < "
        f"{LAG_LIMIT_S * 1000:.0f} ms\n"
    )
    print("| workers | capacity | x one worker | load generator's CPUs |")
    print("|---|---|---|---|")
    for n in counts:
        one = capacity.get(1, 0)
        ratio = f"{capacity[n] / one:.2f}x" if one else "-"
        shared = any(s.shared_cpus for s in steps if s.workers == n)
        print(
            f"| {n} | {capacity[n]} | {ratio} | {'shared with the server' if shared else 'own'} |"
        )


async def sweep_workers(counts: list[int], sizes: list[int], seconds: float) -> None:
    """For each worker count, the sweep against ``hark serve --workers N``, stopping at the first
    size it does not keep up with."""
    steps = []
    for workers in counts:
        cpus = cpu_layout(workers)
        # This process is the backend (gRPC watch + StreamAudio): it runs with the load.
        os.sched_setaffinity(0, {int(cpu) for cpu in cpus.load.split(",")})
        for size in sizes:
            step = await measure("hark", size, seconds, workers=workers, cpus=cpus)
            steps.append(step)
            print(
                f"workers={workers} N={size:4}: {step.cpu_per_session * 100:.2f} % CPU/session, "
                f"{step.frames_ratio * 100:.1f} % of frames, lag p99 {step.lag_p99 * 1000:.1f} ms",
                file=sys.stderr,
                flush=True,
            )
            if not step.keeps_up:
                break
    report_workers(steps)


async def niced_workers(counts: list[int], per_worker: int, seconds: float, passes: int) -> None:
    """Each worker count W with ``per_worker`` x W sessions, server and load sharing every CPU
    with the load at nice 19, passes alternated; then the capacity of each against one worker's,
    derived from the CPU its processes use (see ``report_niced``)."""
    os.nice(19)  # this process is the backend: it is part of the load
    cpus = niced_layout()
    steps = []
    for _ in range(passes):
        for workers in counts:
            sessions = per_worker * workers
            step = await measure("hark", sessions, seconds, workers=workers, cpus=cpus)
            steps.append(step)
            print(
                f"workers={workers} N={sessions}: {step.cpu_per_session * 100:.2f} % CPU/session, "
                f"CPU by worker {by_worker(step)}, sessions by worker {step.spread}, "
                f"{step.frames_ratio * 100:.1f} % of frames",
                file=sys.stderr,
                flush=True,
            )
    report_niced(steps)


def by_worker(step: Step) -> str:
    """Each worker's CPU in % of a core, by index."""
    cpu = step.cpu_by_worker or dict(enumerate(step.worker_cpu))
    return "/".join(f"{cpu[k] / step.seconds * 100:.1f}" for k in sorted(cpu))


def report_niced(steps: list[Step]) -> None:
    """Capacity from CPU, at the same sessions per worker: one worker with n sessions uses A of
    a core; W workers with W n sessions use T in all (supervisor included), B in the busiest
    worker. A worker on a core of its own keeps up to some CPU A*, so C1 = n A* / A and, with
    every worker's CPU proportional to its sessions, the busiest worker reaches A* at
    W n A* / B sessions, and all processes fill W cores at W n W A* / T. So
    C_W / C1 = min(W A / B, W^2 A / T): W exactly when W workers with n sessions each cost what
    one worker with n costs."""
    print(
        "| workers | N | node CPU | CPU by worker | supervisor | node CPU/session | "
        "sessions by worker | frames/s (of 50N) | loop lag p99 | READY p50/p95 |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for step in steps:
        ready = "/".join(f"{percentile(step.ready_s, q) * 1000:.0f}" for q in (0.5, 0.95))
        print(
            f"| {step.workers} | {step.sessions} | {step.server_cpu / step.seconds * 100:.1f} % | "
            f"{by_worker(step)} % | "
            f"{step.supervisor_cpu / step.seconds * 100:.1f} % | "
            f"{step.cpu_per_session * 100:.2f} % | "
            f"{'/'.join(str(n) for n in step.spread.values())} | "
            f"{step.frames_per_s:.0f} ({step.frames_ratio * 100:.1f} %) | "
            f"{step.lag_p99 * 1000:.1f} ms | {ready} ms |"
        )
    one = [s for s in steps if s.workers == 1]
    if not one:
        return
    a = statistics.median(s.server_cpu / s.seconds for s in one)
    print("\n| workers | W A / B (busiest worker) | W² A / T (every process) | capacity x one |")
    print("|---|---|---|---|")
    for count in sorted({s.workers for s in steps}):
        mine = [s for s in steps if s.workers == count]
        b = statistics.median(s.worker_cpu[0] / s.seconds for s in mine)
        t = statistics.median(s.server_cpu / s.seconds for s in mine)
        busiest, every = count * a / b, count * count * a / t
        print(f"| {count} | {busiest:.2f} | {every:.2f} | **{min(busiest, every):.2f}x** |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    commands = parser.add_subparsers(dest="command")
    publishers = commands.add_parser("publishers", help="(internal) the publishers' process")
    publishers.add_argument("--url", required=True)
    publishers.add_argument("--n", type=int, required=True)
    publishers.add_argument("--ramp", type=float, default=0.0)
    publishers.add_argument("--fresh-connections", action="store_true")
    parser.add_argument("--sweep", default="10,25,50,100")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--overload",
        type=int,
        metavar="N",
        help="instead of the sweep: N publishers past capacity",
    )
    parser.add_argument("--ramp", type=float, default=0.2, help="--overload: seconds between them")
    parser.add_argument("--max-loop-lag-ms", type=int, default=25, help="--overload: the server's")
    parser.add_argument(
        "--udp-port", type=int, help="also run Hark with every session on this one UDP port"
    )
    parser.add_argument(
        "--workers",
        metavar="N,N",
        help="instead of the sweep against the bare receiver: the sweep against "
        "hark serve --workers N for each N, and the capacity of each",
    )
    parser.add_argument(
        "--niced-at",
        type=int,
        metavar="N",
        help="with --workers: instead of the sweep, N sessions per worker (W N in all) for each "
        "worker count W, server and load on every CPU, the load at nice 19; capacity derived "
        "from the CPU of the busiest worker and of every process",
    )
    parser.add_argument("--passes", type=int, default=2, help="--niced-at: passes, alternated")
    parser.add_argument(
        "--chunk-ms", type=int, default=0, help="StreamAudio chunk_ms of the backend's subscribers"
    )
    args = parser.parse_args()
    Backend.chunk_ms = args.chunk_ms
    if args.command == "publishers":
        asyncio.run(run_publishers(args.url, args.n, args.ramp, args.fresh_connections))
    elif args.workers and args.niced_at:
        counts = [int(n) for n in args.workers.split(",")]
        asyncio.run(niced_workers(counts, args.niced_at, args.seconds, args.passes))
    elif args.workers:
        sizes = [int(n) for n in args.sweep.split(",")]
        counts = [int(n) for n in args.workers.split(",")]
        asyncio.run(sweep_workers(counts, sizes, args.seconds))
    elif args.overload:
        asyncio.run(overload(args.overload, args.seconds, args.ramp, args.max_loop_lag_ms))
    else:
        asyncio.run(sweep([int(n) for n in args.sweep.split(",")], args.seconds, args.udp_port))


if __name__ == "__main__":
    main()
