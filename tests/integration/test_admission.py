"""Admission control by the node's own load: a lagging event loop refuses new sessions (503 +
Retry-After, RESOURCE_EXHAUSTED, /readyz and gRPC health NOT_SERVING) while the sessions it has
keep their audio, and takes new ones again once the lag is gone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from media.app import HarkApp
from media.v1 import media_pb2 as pb
from tests.offers import OFFER
from tests.support import grpc_stub, publish, running_server

HOG_BLOCK_S = 0.3
HOG_PAUSE_S = 0.05


class LoopHog:
    """Test-only load: a callback in the server's loop that blocks it for 300 ms every 50 ms."""

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(HOG_PAUSE_S, self._block)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _block(self) -> None:
        time.sleep(HOG_BLOCK_S)
        self.start()


async def eventually(check: Callable[[], object], what: str, timeout: float = 30.0) -> None:
    """Wait until the awaitable ``check()`` returns true."""
    try:
        async with asyncio.timeout(timeout):
            while not await check():  # type: ignore[misc]
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"gave up waiting for: {what}") from None


def frames_decoded(app: HarkApp) -> float:
    return app.metrics.decoded.frames


async def readyz(http: aiohttp.ClientSession, app: HarkApp) -> aiohttp.ClientResponse:
    async with http.get(app.base_url + "/readyz") as response:
        await response.read()
        return response


@pytest.fixture
async def hog() -> AsyncIterator[LoopHog]:
    hog = LoopHog()
    yield hog
    hog.stop()


async def test_an_overloaded_node_refuses_new_sessions_and_keeps_the_ones_it_has(
    hog: LoopHog,
) -> None:
    async with (
        running_server(max_loop_lag_ms=100) as app,
        grpc_stub(app) as stub,
        grpc.aio.insecure_channel(app.grpc_target) as channel,
        aiohttp.ClientSession() as http,
    ):
        health = health_pb2_grpc.HealthStub(channel)

        async def serving() -> int:
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
            return int(reply.status)

        admitted = await publish(app.base_url)
        await app.sessions.wait_ready(admitted.session_id)
        assert (await readyz(http, app)).status == 200

        hog.start()

        async def not_ready() -> bool:
            return (await readyz(http, app)).status == 503

        await eventually(not_ready, "/readyz 503 while the loop lags")
        response = await readyz(http, app)
        assert int(response.headers["Retry-After"]) > 0
        async with http.post(
            app.base_url + "/whip", data=OFFER, headers={"Content-Type": "application/sdp"}
        ) as refused:
            assert refused.status == 503
            assert int(refused.headers["Retry-After"]) > 0
            assert "overloaded" in await refused.text()
        with pytest.raises(grpc.aio.AioRpcError) as created:
            await stub.CreateSession(pb.CreateSessionRequest())
        assert created.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "overloaded" in (created.value.details() or "")
        assert await serving() == health_pb2.HealthCheckResponse.NOT_SERVING

        before = frames_decoded(app)

        async def audio_flows() -> bool:
            return frames_decoded(app) >= before + 50

        await eventually(audio_flows, "the admitted session's audio still decoded")
        session = await stub.GetSession(pb.GetSessionRequest(session_id=admitted.session_id))
        assert session.state == pb.READY

        hog.stop()

        async def ready_again() -> bool:
            return (await readyz(http, app)).status == 200

        await eventually(ready_again, "/readyz 200 once the lag is gone")
        assert await serving() == health_pb2.HealthCheckResponse.SERVING
        newcomer = await publish(app.base_url)
        await app.sessions.wait_ready(newcomer.session_id)
        refusals = app.metrics.sessions_refused.labels("overloaded")._value.get()
        assert refusals == 2
        for publisher in (admitted, newcomer):
            await publisher.delete()
            await publisher.vanish()


async def test_a_stalled_loop_does_not_close_live_sessions_as_media_timeout() -> None:
    async with running_server(media_timeout=1.0) as app, grpc_stub(app) as stub:
        publisher = await publish(app.base_url)
        await app.sessions.wait_ready(publisher.session_id)
        asyncio.get_running_loop().call_soon(time.sleep, 2.5)  # the node stalls, not the peer
        await asyncio.sleep(0)
        before = frames_decoded(app)

        async def audio_flows() -> bool:
            return frames_decoded(app) >= before + 100 or not app.sessions.live_count()

        await eventually(audio_flows, "audio flowing again after the stall")
        session = await stub.GetSession(pb.GetSessionRequest(session_id=publisher.session_id))
        assert pb.SessionState.Name(session.state) == "READY", session.close_detail
        await publisher.delete()
        await publisher.vanish()
