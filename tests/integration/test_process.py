"""The real ``hark serve`` process: startup log, graceful drain on SIGTERM, exit code."""

from __future__ import annotations

import asyncio
import signal
import sys

import aiohttp
import grpc

from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc
from tests.support import HarkProcess, collect_until_closed, eventually, next_event, publish


async def test_sigterm_drains_then_closes_everyone_with_shutdown_and_exits_0() -> None:
    async with HarkProcess("--drain-timeout", "2", "--log-level", "INFO") as hark:
        base = f"http://127.0.0.1:{hark.http_port}"
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hark.grpc_port}") as channel:
            stub = media_pb2_grpc.MediaServiceStub(channel)
            publisher = await publish(base)
            sid = publisher.session_id
            await stub.StartListening(
                pb.StartListeningRequest(session_id=sid, wait_for_ready=True), timeout=10
            )
            created = await stub.CreateSession(pb.CreateSessionRequest())
            watchers = [
                stub.WatchSession(pb.WatchSessionRequest(session_id=session_id))
                for session_id in (sid, created.id)
            ]
            for watcher in watchers:
                await next_event(watcher)
            everyone = stub.WatchSessions(pb.WatchSessionsRequest())
            await next_event(everyone)

            assert hark.proc is not None
            hark.proc.send_signal(signal.SIGTERM)  # how soon it exits: benchmarks/timings.py
            async with aiohttp.ClientSession() as http:

                async def readiness() -> tuple[int, str]:
                    async with http.get(base + "/readyz") as response:
                        return response.status, await response.text()

                async def draining() -> bool:
                    return (await readiness())[0] == 503

                await eventually(draining, "/readyz turns 503 once the signal arrives")
                assert "draining" in (await readiness())[1]
                async with http.post(
                    base + "/whip", headers={"Content-Type": "application/sdp"}, data="v=0"
                ) as response:
                    assert response.status == 503
            try:
                await stub.CreateSession(pb.CreateSessionRequest())
                raise AssertionError("CreateSession succeeded while draining")
            except grpc.aio.AioRpcError as draining:
                assert draining.code() == grpc.StatusCode.UNAVAILABLE

            for watcher in watchers:
                closed = (await collect_until_closed(watcher, timeout=10))[-1]
                assert closed.state_changed.state == pb.CLOSED
                assert closed.state_changed.close_reason == pb.SHUTDOWN
            code = await hark.wait(timeout=10)
            await publisher.vanish()
    assert code == 0, "".join(hark.log)
    assert "Traceback" not in "".join(hark.log)


async def test_port_zero_is_reported_and_bad_options_exit_with_a_message() -> None:
    async with HarkProcess() as hark:
        assert hark.http_port > 0 and hark.grpc_port > 0
        assert hark.proc is not None
        hark.proc.send_signal(signal.SIGINT)
        assert await hark.wait(timeout=10) == 0
    bad = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "media",
        "serve",
        "--http-host",
        "0.0.0.0",
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await bad.communicate()
    assert bad.returncode == 2
    assert b"--insecure-no-auth" in err
