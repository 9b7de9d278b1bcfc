"""300 sessions created and ended every way there is: nothing may be left behind."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import resource
import threading
from collections.abc import Awaitable, Callable

from media.app import HarkApp
from media.v1 import media_pb2 as pb
from tests.support import eventually, grpc_stub, publish, running_server

PER_KIND = 75
CONCURRENCY = 10


def live_tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if not t.done()}


def leaked_tasks(before: set[asyncio.Task[object]]) -> list[str]:
    """Tasks started since ``before`` and still running, by coroutine.

    The gRPC server's own accept tasks are left out: it keeps one waiting per method and
    replaces it on every call, and stops them itself. A call still being handled counts.
    """
    return sorted(
        coroutine_name(t)
        for t in live_tasks() - before
        if not coroutine_name(t).startswith("AioServer._request")
    )


def coroutine_name(task: asyncio.Task[object]) -> str:
    coroutine = task.get_coro()
    return str(getattr(coroutine, "__qualname__", None) or repr(coroutine))


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
                await app.sessions.wait_ready(publisher.session_id)
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
            with contextlib.suppress(AssertionError):  # the assertion below names what is left
                await eventually(lambda: not leaked_tasks(tasks_before), "no task left", 30)
            after = resources()
            new_tasks = leaked_tasks(tasks_before)
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
    assert not new_tasks, f"asyncio tasks leaked: {new_tasks}"
    assert after[1] <= before[1] + 2, "threads leaked"
    assert after[2] <= before[2] + 8, "file descriptors leaked"


async def settle(app: HarkApp) -> None:
    """Wait until every session is closed and forgotten, and its media released."""
    await eventually(lambda: not list(app.sessions.all()), "every session forgotten", 30)
    await eventually(lambda: not peer_tasks(), "every peer connection closed", 30)


def peer_tasks() -> list[asyncio.Task[object]]:
    """Tasks of aiortc and aioice: they end once a peer connection has finished closing."""
    return [t for t in live_tasks() if "aiortc" in repr(t) or "aioice" in repr(t)]


async def app_metrics_closed(app: HarkApp) -> dict[str, int]:
    counts = {}
    for metric in app.metrics.sessions_closed.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.value:
                counts[sample.labels["reason"]] = int(sample.value)
    return counts
