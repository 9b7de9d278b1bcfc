"""A closed session keeps only its record: its threads, sockets and codecs go at close, not when
``--closed-retention`` ends."""

from __future__ import annotations

import asyncio
import os
import threading

from media.v1 import media_pb2 as pb
from tests.support import grpc_stub, publish, running_server

SESSIONS = 4


def native_threads() -> int:
    """OS threads of this process (FFmpeg's worker threads too), without the default executor's
    pool threads, which the loop keeps by design."""
    pool = sum(1 for t in threading.enumerate() if t.name.startswith("asyncio_"))
    return len(os.listdir("/proc/self/task")) - pool


def udp_sockets() -> int:
    """UDP sockets this process holds (IPv4 and IPv6)."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/self/net/udp", "/proc/self/net/udp6"):
        with open(table) as lines:
            next(lines)
            count += sum(1 for line in lines if line.split()[9] in inodes)
    return count


async def wait_until(condition: object, timeout: float, what: str) -> None:
    assert callable(condition)
    try:
        async with asyncio.timeout(timeout):
            while not condition():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(what()) from None  # type: ignore[operator]


async def test_closed_sessions_release_threads_and_sockets_during_retention() -> None:
    async with running_server(closed_retention=300.0) as app:
        async with grpc_stub(app) as stub:
            warmup = await publish(app.base_url)
            await app.sessions.wait_ready(warmup.session_id)
            assert await warmup.delete() == 200
            await warmup.vanish()
            threads, sockets = native_threads(), udp_sockets()

            publishers = [await publish(app.base_url) for _ in range(SESSIONS)]
            for publisher in publishers:
                await app.sessions.wait_ready(publisher.session_id)
                await stub.StartListening(pb.StartListeningRequest(session_id=publisher.session_id))
            assert native_threads() > threads and udp_sockets() > sockets
            for publisher in publishers:
                assert await publisher.delete() == 200
                await publisher.vanish()

            await wait_until(
                lambda: native_threads() <= threads and udp_sockets() <= sockets,
                60,
                lambda: (
                    f"after {SESSIONS} sessions closed: {native_threads()} threads "
                    f"(baseline {threads}), {udp_sockets()} UDP sockets (baseline {sockets})"
                ),
            )
            for publisher in publishers:
                session = await stub.GetSession(
                    pb.GetSessionRequest(session_id=publisher.session_id)
                )
                assert session.state == pb.CLOSED
