"""What an operator sees: metrics, probes, limits, and secrets kept out of sight."""

from __future__ import annotations

import asyncio
import fractions
import logging
from typing import Any

import aiohttp
import av
import grpc
import pytest
from aiortc.mediastreams import MediaStreamTrack
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from media.v1 import media_pb2 as pb
from tests.support import eventually, grpc_stub, publish, running_server, truth

SDP = {"Content-Type": "application/sdp"}


async def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as response:
            assert response.status == 200
            text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_move_through_a_publish_listen_speak_delete_cycle() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        metrics_url = app.base_url + "/metrics"
        before = await scrape(metrics_url)
        publisher = await publish(app.base_url)
        sid = publisher.session_id
        await stub.StartListening(
            pb.StartListeningRequest(session_id=sid, wait_for_ready=True), timeout=10
        )
        audio = stub.StreamAudio(pb.StreamAudioRequest(session_id=sid))
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=sid))
        ended = 0
        async with asyncio.timeout(10):
            async for event in watch:
                ended += event.HasField("speech_ended")
                if ended == 2:
                    break
        during = await scrape(metrics_url)
        assert await publisher.delete() == 200
        await publisher.vanish()
        watch.cancel()
        audio.cancel()

        async def streams_closed() -> bool:
            now = await scrape(metrics_url)
            return value(now, "hark_watch_streams") == value(now, "hark_audio_subscribers") == 0

        await eventually(streams_closed, "the server sees both streams end")
        after = await scrape(metrics_url)

    assert value(during, "hark_sessions", state="READY") == 1
    assert value(during, "hark_sessions_listening") == 1
    assert value(during, "hark_watch_streams") == 1
    assert value(during, "hark_audio_subscribers") == 1
    assert value(after, "hark_sessions", state="READY") == 0
    assert value(after, "hark_watch_streams") == value(after, "hark_audio_subscribers") == 0
    assert value(after, "hark_sessions_created_total", origin="WHIP") == 1
    assert value(after, "hark_sessions_closed_total", reason="CLIENT_DELETE") == 1
    assert value(after, "hark_time_to_ready_seconds_count") == 1
    assert 0 < value(after, "hark_time_to_ready_seconds_sum") < 10
    assert value(after, "hark_audio_frames_decoded_total") > 100
    assert value(after, "hark_vad_segments_total") >= 2
    first_two = truth()["utterances"][:2]
    spoken = sum(u["end_ms"] - u["start_ms"] for u in first_two) / 1000
    assert value(after, "hark_vad_speech_seconds_total") >= spoken * 0.8
    assert value(after, "hark_http_requests_total", route="/whip", method="POST", code="201") == 1
    assert (
        value(after, "hark_http_requests_total", route="/whip/{id}", method="DELETE", code="200")
        == 1
    )
    start = "/media.v1.MediaService/StartListening"
    assert value(after, "hark_grpc_requests_total", method=start, code="OK") == 1
    assert value(after, "hark_grpc_unary_duration_seconds_count", method=start) == 1
    assert value(after, "hark_event_loop_lag_seconds_count") > value(
        before, "hark_event_loop_lag_seconds_count"
    )
    assert value(after, "process_resident_memory_bytes") > 0
    assert not any(sid in str(key) for key in after), "a session id leaked into a metric label"


class GarbageEvery(MediaStreamTrack):
    """The player's Opus packets, with every ``n``th replaced by bytes libopus refuses."""

    kind = "audio"

    def __init__(self, inner: MediaStreamTrack, n: int) -> None:
        super().__init__()
        self._inner = inner
        self._n = n
        self._count = 0

    async def recv(self) -> Any:
        packet = await self._inner.recv()
        self._count += 1
        if self._count % self._n:
            return packet
        garbage = av.Packet(b"\xff\xff\xff\xff")
        garbage.pts, garbage.time_base = (
            packet.pts,
            packet.time_base or fractions.Fraction(1, 48000),
        )
        return garbage


async def test_undecodable_packets_are_counted_and_skipped_and_the_session_survives() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        publisher = await publish(app.base_url, wrap=lambda track: GarbageEvery(track, 5))
        sid = publisher.session_id
        try:
            await stub.StartListening(
                pb.StartListeningRequest(session_id=sid, wait_for_ready=True), timeout=10
            )

            async def through_garbage() -> bool:
                now = await scrape(app.base_url + "/metrics")
                return (
                    value(now, "hark_audio_decode_errors_total") >= 10
                    and value(now, "hark_audio_frames_decoded_total") >= 40
                )

            await eventually(through_garbage, "10 undecodable packets among 40 good ones")
            session = await stub.GetSession(pb.GetSessionRequest(session_id=sid))
            samples = await scrape(app.base_url + "/metrics")
        finally:
            await publisher.vanish()
    assert session.state == pb.READY
    assert value(samples, "hark_audio_decode_errors_total") >= 10
    assert value(samples, "hark_audio_frames_decoded_total") >= 40


async def test_probes_follow_capacity_and_grpc_health_agrees() -> None:
    async with running_server(max_sessions=1) as app, grpc_stub(app) as stub:
        async with (
            aiohttp.ClientSession() as http,
            grpc.aio.insecure_channel(app.grpc_target) as channel,
        ):
            health = health_pb2_grpc.HealthStub(channel)

            async def status() -> int:
                request = health_pb2.HealthCheckRequest(service="media.v1.MediaService")
                return (await health.Check(request)).status  # type: ignore[no-any-return]

            async with http.get(app.base_url + "/readyz") as response:
                assert response.status == 200

            async def serving() -> bool:
                return await status() == health_pb2.HealthCheckResponse.SERVING

            async def not_serving() -> bool:
                return await status() == health_pb2.HealthCheckResponse.NOT_SERVING

            created = await stub.CreateSession(pb.CreateSessionRequest())
            await eventually(not_serving, "gRPC health turns NOT_SERVING at capacity")
            async with http.get(app.base_url + "/readyz") as response:
                assert response.status == 503
                assert "at capacity" in await response.text()
            async with http.get(app.base_url + "/healthz") as response:
                assert response.status == 200

            async with http.post(app.base_url + "/whip", headers=SDP, data="v=0") as response:
                assert response.status == 503
                assert response.headers["Retry-After"] == "2"
            with pytest.raises(grpc.aio.AioRpcError) as full:
                await stub.CreateSession(pb.CreateSessionRequest())
            assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "--max-sessions 1" in (full.value.details() or "")

            await stub.EndSession(pb.EndSessionRequest(session_id=created.id))
            await eventually(serving, "gRPC health turns SERVING again")
            async with http.get(app.base_url + "/readyz") as response:
                assert response.status == 200


async def test_whip_at_capacity_answers_503_with_retry_after() -> None:
    async with running_server(max_sessions=1) as app:
        first = await publish(app.base_url)
        try:
            with pytest.raises(AssertionError, match="503.*at capacity"):
                await publish(app.base_url)
        finally:
            await first.vanish()


async def test_a_busy_client_is_rate_limited_with_retry_after() -> None:
    async with running_server(rate_limit=2.0, rate_burst=3) as app:
        statuses = []
        async with aiohttp.ClientSession() as http:
            for _ in range(6):
                async with http.delete(app.base_url + "/whip/nope") as response:
                    statuses.append(response.status)
                    if response.status == 429:
                        assert int(response.headers["Retry-After"]) >= 1
                        assert "too many requests" in await response.text()
            async with http.get(app.base_url + "/whip") as response:
                assert response.status == 204
        samples = await scrape(app.base_url + "/metrics")
    assert statuses[:3] == [404, 404, 404]
    assert 429 in statuses[3:]
    assert value(samples, "hark_http_rate_limited_total", route="/whip/{id}") >= 1


async def test_the_watcher_cap_answers_resource_exhausted() -> None:
    async with running_server(max_watchers=2) as app, grpc_stub(app) as stub:
        created = await stub.CreateSession(pb.CreateSessionRequest())
        watches = [
            stub.WatchSession(pb.WatchSessionRequest(session_id=created.id)) for _ in range(2)
        ]
        for watch in watches:
            await watch.read()
        with pytest.raises(grpc.aio.AioRpcError) as full:
            await stub.WatchSessions(pb.WatchSessionsRequest()).read()
        assert full.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "--max-watchers 2" in (full.value.details() or "")
        for watch in watches:
            watch.cancel()


async def test_tokens_never_appear_in_logs_metrics_or_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = "server-token-0123456789"
    wrong = "wrong-token-9876543210"
    caplog.set_level(logging.DEBUG, logger="media")
    texts: list[str] = []
    async with running_server(token=token) as app, aiohttp.ClientSession() as http:
        async with grpc_stub(app, token=token) as stub:
            created = await stub.CreateSession(pb.CreateSessionRequest())
        session_token = created.token
        for bearer in (wrong, session_token):
            async with http.post(
                app.base_url + "/whip", headers={**SDP, "Authorization": f"Bearer {bearer}"}
            ) as response:
                texts.append(await response.text())
        async with grpc_stub(app, token=wrong) as bad:
            with pytest.raises(grpc.aio.AioRpcError) as denied:
                await bad.GetSession(pb.GetSessionRequest(session_id=created.id))
            texts.append(denied.value.details() or "")
        publisher = await publish(app.base_url, f"/whip/{created.id}", token=session_token)
        texts.append(publisher.answer)
        await publisher.delete()
        await publisher.vanish()
        async with http.get(app.base_url + "/metrics") as response:
            texts.append(await response.text())
    texts.append(caplog.text)
    for secret in (token, wrong, session_token):
        assert not any(secret in text for text in texts)
