"""Every session-scoped RPC works at a node that does not own the session: forwarded to the owner
(real servers on port 0 routing to each other by node name, a real aiortc publisher)."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.rpc.error_details_pb2 import ErrorInfo
from grpc_status import rpc_status

from media.app import HarkApp
from media.client import HarkClient
from media.errors import ERROR_DOMAIN
from media.v1 import media_pb2 as pb
from tests.in_process_cluster import in_process_cluster
from tests.integration.test_operations import scrape, value
from tests.listening import play_requests, requests_of, tone
from tests.support import (
    collect_until_closed,
    events_until,
    eventually,
    grpc_stub,
    next_event,
    publish,
)
from tests.tcp_proxy import tcp_proxy

UNKNOWN_NODE_ID = "gamma.0.AAAAAAAAAAAAAAAAAAAAAAAA"
LOST_NODE_ID = "delta.0.AAAAAAAAAAAAAAAAAAAAAAAA"


def error_info(error: grpc.aio.AioRpcError) -> ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None, f"{error.code()} without status details: {error.details()}"
    for detail in status.details:
        info = ErrorInfo()
        if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
            return info
    raise AssertionError(f"no ErrorInfo in {error.code()}: {error.details()}")


async def answered(app: HarkApp, method: str, code: str) -> float:
    samples = await scrape(app.base_url + "/metrics")
    return value(
        samples, "hark_grpc_requests_total", method=f"/media.v1.MediaService/{method}", code=code
    )


async def test_unary_rpcs_and_streams_at_a_non_owner_act_on_the_owners_session() -> None:
    async with (
        in_process_cluster("alpha", "beta") as members,
        grpc_stub(members["beta"]) as owner,
        grpc_stub(members["alpha"]) as other,
    ):
        beta = members["beta"]
        session = await owner.CreateSession(pb.CreateSessionRequest())
        sid = session.id
        assert (session.node, session.grpc_address) == ("beta", beta.grpc_target)
        got = await other.GetSession(pb.GetSessionRequest(session_id=sid))
        assert (got.id, got.state, got.node, got.grpc_address) == (
            sid,
            pb.NEW,
            "beta",
            beta.grpc_target,
        )

        waiting = asyncio.ensure_future(
            other.StartListening(
                pb.StartListeningRequest(session_id=sid, wait_for_ready=True), timeout=30
            )
        )
        await eventually(lambda: beta.sessions.get(sid).watcher_count > 0, "the owner waits")
        assert not waiting.done()
        publisher = await publish(beta.base_url, f"/whip/{sid}", token=session.token)
        try:
            ready = await waiting
            assert (ready.state, ready.listening) == (pb.READY, True)

            stream = other.StreamAudio(pb.StreamAudioRequest(session_id=sid, mode=pb.ALL))
            chunk = await anext(_audio(stream))
            assert chunk.session_id == sid and chunk.audio.pcm
            gauge = beta.metrics.audio_subscribers
            assert gauge._value.get() == 1
            stream.cancel()
            await eventually(lambda: gauge._value.get() == 0, "the owner's stream ended too")

            stopped = await other.StopListening(pb.StopListeningRequest(session_id=sid))
            assert not stopped.listening

            watch = owner.WatchSession(pb.WatchSessionRequest(session_id=sid))
            messages = play_requests(sid, tone(440, 5.0), playback_id="long")
            playing = asyncio.ensure_future(other.PlayAudio(requests_of(messages)))
            await events_until(watch, "playback_started")
            stop = await other.StopPlayback(pb.StopPlaybackRequest(session_id=sid))
            assert list(stop.playback_ids) == ["long"]
            reply = await playing
            assert reply.interrupted and reply.interrupt_reason == pb.STOP_PLAYBACK

            ended = await other.EndSession(pb.EndSessionRequest(session_id=sid))
            assert (ended.state, ended.close_reason) == (pb.CLOSED, pb.API_END)
            assert beta.sessions.get(sid).closed
            watch.cancel()
        finally:
            await publisher.vanish()


async def _audio(stream: Any) -> Any:
    async for chunk in stream:
        if chunk.HasField("audio") and chunk.audio.pcm:
            yield chunk


async def test_watch_session_at_a_non_owner_streams_and_ends_with_the_caller() -> None:
    async with (
        in_process_cluster("alpha", "beta") as members,
        grpc_stub(members["beta"]) as owner,
        grpc_stub(members["alpha"]) as other,
    ):
        beta = members["beta"]
        session = await owner.CreateSession(pb.CreateSessionRequest())
        live = beta.sessions.get(session.id)
        watch = other.WatchSession(pb.WatchSessionRequest(session_id=session.id))
        first = await next_event(watch)
        assert first.snapshot.session.state == pb.NEW and first.snapshot.session.node == "beta"
        assert live.watcher_count == 1
        publisher = await publish(beta.base_url, f"/whip/{session.id}", token=session.token)
        try:
            states = [
                e.state_changed.state
                for e in await events_until(watch, "state_changed")
                if e.HasField("state_changed")
            ]
            assert states == [pb.CONNECTING]
            watch.cancel()
            await eventually(lambda: live.watcher_count == 0, "the owner's watch was cancelled")

            timed = other.WatchSession(pb.WatchSessionRequest(session_id=session.id), timeout=1.0)
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                async for _ in timed:
                    pass
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await eventually(lambda: live.watcher_count == 0, "the owner's watch timed out")
        finally:
            await publisher.vanish()


async def test_the_owners_errors_reach_the_caller_unchanged() -> None:
    async with (
        in_process_cluster("alpha", "beta") as members,
        grpc_stub(members["beta"]) as owner,
        grpc_stub(members["alpha"]) as other,
    ):
        beta = members["beta"]
        missing = "beta.0.BBBBBBBBBBBBBBBBBBBBBBBB"
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await other.GetSession(pb.GetSessionRequest(session_id=missing))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        info = error_info(raised.value)
        assert (info.reason, info.metadata["session_id"]) == ("SESSION_NOT_FOUND", missing)
        assert await answered(beta, "GetSession", "NOT_FOUND") == 1

        session = await owner.CreateSession(pb.CreateSessionRequest())
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await other.StartListening(pb.StartListeningRequest(session_id=session.id))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "NEW" in (raised.value.details() or "")
        info = error_info(raised.value)
        assert (info.reason, info.metadata["state"]) == ("SESSION_NOT_READY", "NEW")

        request = pb.StartListeningRequest(session_id=session.id, wait_for_ready=True)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await other.StartListening(request, timeout=1.0)
        assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        live = beta.sessions.get(session.id)
        await eventually(lambda: live.watcher_count == 0, "the owner stopped waiting")

        members.addresses["beta"].grpc_target = "127.0.0.1:1"  # the owner cannot be reached
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await other.GetSession(pb.GetSessionRequest(session_id=session.id))
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE  # retryable, not NOT_FOUND


async def test_an_unknown_node_is_not_found_and_a_lost_one_closed_node_lost() -> None:
    async with (
        in_process_cluster("alpha", "beta") as members,
        grpc_stub(members["alpha"]) as other,
    ):
        alpha = members["alpha"]
        members.lose("delta")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await other.GetSession(pb.GetSessionRequest(session_id=UNKNOWN_NODE_ID))
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert error_info(raised.value).reason == "SESSION_NOT_FOUND"

        got = await other.GetSession(pb.GetSessionRequest(session_id=LOST_NODE_ID))
        assert (got.state, got.close_reason, got.node) == (pb.CLOSED, pb.NODE_LOST, "delta")
        assert "delta" in got.close_detail
        ended = await other.EndSession(pb.EndSessionRequest(session_id=LOST_NODE_ID))
        assert ended.close_reason == pb.NODE_LOST
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await other.StartListening(pb.StartListeningRequest(session_id=LOST_NODE_ID))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "CLOSED (NODE_LOST)" in (raised.value.details() or "")
        assert error_info(raised.value).metadata["close_reason"] == "NODE_LOST"
        events = await collect_until_closed(
            other.WatchSession(pb.WatchSessionRequest(session_id=LOST_NODE_ID))
        )
        assert [e.snapshot.session.close_reason for e in events] == [pb.NODE_LOST]
        assert alpha.upstreams.targets == []  # nothing was dialled for either


async def test_a_forwarded_watch_reconnects_and_ends_node_lost_when_the_owner_is_lost() -> None:
    async with (
        in_process_cluster("alpha", "beta") as members,
        grpc_stub(members["beta"]) as owner,
        grpc_stub(members["alpha"]) as other,
        tcp_proxy(members["beta"].grpc_port) as relay,
    ):
        members.addresses["beta"].grpc_target = relay.target
        session = await owner.CreateSession(pb.CreateSessionRequest())
        sid = session.id
        watch = other.WatchSession(pb.WatchSessionRequest(session_id=sid))
        assert (await next_event(watch)).revision == 1

        relay.cut()  # every connection through it broken; new ones go through again
        relay.restore()
        await owner.PlayAudio(requests_of(play_requests(sid, tone(440, 0.1), playback_id="p")))
        events = await events_until(watch, "playback_finished")
        assert [e.WhichOneof("payload") for e in events] == [
            "playback_started",
            "playback_finished",
        ]
        assert [e.revision for e in events] == [2, 3]
        assert relay.connections >= 2

        members.lose("beta")
        await relay.close()
        closed = await collect_until_closed(watch)
        assert [(e.revision, e.state_changed.close_reason) for e in closed] == [(4, pb.NODE_LOST)]
        assert closed[0].state_changed.previous == pb.NEW
        assert await watch.code() == grpc.StatusCode.OK


async def test_the_sdk_streams_and_plays_at_the_owner_directly() -> None:
    async with (
        in_process_cluster("alpha", "beta") as members,
        grpc_stub(members["beta"]) as owner,
        HarkClient(members["alpha"].grpc_target) as hark,
    ):
        alpha, beta = members["alpha"], members["beta"]
        session = await hark.create_session()  # at alpha: alpha owns this one
        assert session.node == "alpha"
        created = await owner.CreateSession(pb.CreateSessionRequest())
        publisher = await publish(beta.base_url, f"/whip/{created.id}", token=created.token)
        try:
            await hark.start_listening(created.id, wait_for_ready=True, timeout=30)
            async for chunk in hark.stream_audio(created.id, mode=pb.ALL):
                if chunk.HasField("audio") and chunk.audio.pcm:
                    break
            reply = await hark.play(created.id, [tone(440, 0.1)], 48000)
            assert reply.played_ms == 100
            for method in ("StreamAudio", "PlayAudio"):
                assert await answered(alpha, method, "OK") == 0
                assert await answered(alpha, method, "CANCELLED") == 0
            assert await answered(beta, "PlayAudio", "OK") == 1

            async def stream_counted() -> bool:
                return await answered(beta, "StreamAudio", "CANCELLED") == 1

            await eventually(stream_counted, "the owner served StreamAudio")
        finally:
            await publisher.vanish()
