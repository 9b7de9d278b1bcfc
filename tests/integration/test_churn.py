"""300 sessions created and ended every way there is: nothing may be left behind."""

from __future__ import annotations

import asyncio
import gc
import os
import resource
import threading
from collections.abc import Awaitable, Callable

from media.app import HarkApp
from media.v1 import media_pb2 as pb
from tests.support import grpc_stub, publish, running_server

PER_KIND = 75
CONCURRENCY = 10


def live_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if not t.done()}


def resources() -> tuple[int, int, int]:
    """Live asyncio tasks, threads and open file descriptors.

    The default executor's pool threads (``asyncio_N``, used by aiohttp's resolver) are left out:
    the pool is bounded and keeps its threads by design.
    """
    gc.collect()
    threads = [t for t in threading.enumerate() if not t.name.startswith("asyncio_")]
    return len(live_tasks()), len(threads), len(os.listdir("/proc/self/fd"))


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 2**20


async def test_churn_leaves_no_sessions_tasks_threads_or_descriptors() -> None:
    async with running_server(media_timeout=1.0, session_ttl=0.5, closed_retention=0.0) as app:
        async with grpc_stub(app) as stub:

            async def deleted() -> None:
                publisher = await publish(app.base_url)
                assert await publisher.delete() == 200
                await publisher.vanish()

            async def ended() -> None:
                publisher = await publish(app.base_url)
                await stub.EndSession(pb.EndSessionRequest(session_id=publisher.session_id))
                await publisher.vanish()

            async def vanished() -> None:
                publisher = await publish(app.base_url)
                await app.registry.wait_ready(publisher.session_id)
                await publisher.vanish()

            async def expired() -> None:
                await stub.CreateSession(pb.CreateSessionRequest())

            await deleted()
            await settle(app)
            before = resources()
            tasks_before = live_tasks()
            rss_before = rss_mib()

            kinds: list[Callable[[], Awaitable[None]]] = [deleted, ended, vanished, expired]
            jobs = [kind for kind in kinds for _ in range(PER_KIND)]
            gate = asyncio.Semaphore(CONCURRENCY)

            async def run(job: Callable[[], Awaitable[None]]) -> None:
                async with gate:
                    await job()

            await asyncio.gather(*(run(job) for job in jobs))
            await settle(app)
            # aiortc's RTCP tasks end only once the last peer connections finish closing
            deadline = asyncio.get_running_loop().time() + 15
            while len(live_tasks()) > before[0] + 3:
                if asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.2)
            after = resources()
            new_tasks = [t.get_coro() for t in live_tasks() - tasks_before]
            rss_after = rss_mib()
            closed = await app_metrics_closed(app)

    print(
        f"\nchurn of {len(jobs)} sessions: tasks {before[0]} -> {after[0]}, "
        f"threads {before[1]} -> {after[1]}, fds {before[2]} -> {after[2]}, "
        f"RSS {rss_before:.1f} -> {rss_after:.1f} MiB ({rss_after - rss_before:+.1f} MiB)"
    )
    assert closed == {"CLIENT_DELETE": PER_KIND + 1, "API_END": PER_KIND} | {
        "MEDIA_TIMEOUT": PER_KIND,
        "EXPIRED": PER_KIND,
    }
    assert after[0] <= before[0] + 3, f"asyncio tasks leaked: {new_tasks}"
    assert after[1] <= before[1] + 2, "threads leaked"
    assert after[2] <= before[2] + 8, "file descriptors leaked"


async def settle(app: HarkApp) -> None:
    """Wait until every session is closed and forgotten, and its media released."""
    async with asyncio.timeout(30):
        while list(app.registry.entries()):
            await asyncio.sleep(0.1)
    await asyncio.sleep(1.0)


async def app_metrics_closed(app: HarkApp) -> dict[str, int]:
    counts = {}
    for metric in app.metrics.sessions_closed.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value:
                counts[sample.labels["reason"]] = int(sample.value)
    return counts
