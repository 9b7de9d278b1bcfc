"""The session lifecycle over real WebRTC: a real server on port 0, a real aiortc publisher."""

from __future__ import annotations

import asyncio

import aiohttp
import grpc
import pytest

from media.v1 import media_pb2 as pb
from tests.offers import OFFER
from tests.scenarios import listening_publisher
from tests.support import (
    collect_until_closed,
    eventually,
    grpc_stub,
    next_event,
    publish,
    running_server,
)

S = pb.SessionState
R = pb.CloseReason


def state_of(event: pb.SessionEvent) -> int:
    assert event.WhichOneof("payload") == "state_changed", event
    return event.state_changed.state


async def test_whip_post_answers_201_with_location_etag_and_a_recvonly_answer() -> None:
    async with running_server() as app:
        publisher = await publish(app.base_url)
        try:
            assert publisher.location == f"/whip/{publisher.session_id}"
            assert len(publisher.session_id) >= 22
            assert publisher.etag.startswith('"') and publisher.etag.endswith('"')
            assert "a=recvonly" in publisher.answer
            assert "opus/48000" in publisher.answer.lower()
            assert "a=sendrecv" not in publisher.answer
        finally:
            await publisher.vanish()


async def test_a_watcher_sees_connecting_connected_ready_in_order() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        other = await stub.CreateSession(pb.CreateSessionRequest())
        watch_all = stub.WatchSessions(pb.WatchSessionsRequest())
        # The call starts lazily: its first snapshot proves the watcher is subscribed.
        assert (await next_event(watch_all)).snapshot.session.id == other.id
        publisher = await publish(app.base_url)
        try:
            seen: list[tuple[int, int]] = []
            while not seen or seen[-1][1] != S.READY:
                event = await next_event(watch_all)
                if event.session_id == publisher.session_id:
                    seen.append((event.revision, state_of(event)))
            assert seen == [(1, S.NEW), (2, S.CONNECTING), (3, S.CONNECTED), (4, S.READY)]
            session = await stub.GetSession(pb.GetSessionRequest(session_id=publisher.session_id))
            assert session.state == S.READY
            assert session.ready_time.seconds > 0
            assert session.origin == pb.WHIP
        finally:
            watch_all.cancel()
            await publisher.vanish()


async def test_start_listening_before_ready_names_the_state_or_waits() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        publisher = await publish(app.base_url)
        try:
            sid = publisher.session_id
            with pytest.raises(grpc.aio.AioRpcError) as early:
                await stub.StartListening(pb.StartListeningRequest(session_id=sid))
            assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "not READY" in (early.value.details() or "")
            assert any(s in (early.value.details() or "") for s in ("CONNECTING", "CONNECTED"))

            session = await stub.StartListening(
                pb.StartListeningRequest(session_id=sid, wait_for_ready=True), timeout=10
            )
            assert session.state == S.READY
            assert session.listening
            again = await stub.StartListening(pb.StartListeningRequest(session_id=sid))
            assert again.listening and again.revision == session.revision
        finally:
            await publisher.vanish()


async def test_wait_for_ready_ends_at_the_deadline_naming_the_state() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        created = await stub.CreateSession(pb.CreateSessionRequest())
        with pytest.raises(grpc.aio.AioRpcError) as late:
            await stub.StartListening(
                pb.StartListeningRequest(session_id=created.id, wait_for_ready=True), timeout=0.5
            )
        assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_wait_for_ready_fails_precondition_when_the_session_closes() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        created = await stub.CreateSession(pb.CreateSessionRequest())
        waiting = asyncio.ensure_future(
            stub.StartListening(
                pb.StartListeningRequest(session_id=created.id, wait_for_ready=True), timeout=10
            )
        )
        # the waiter subscribes to the session's events: it is counted once it is waiting
        live = app.sessions.get(created.id)
        await eventually(lambda: live.watcher_count == 1, "StartListening is waiting for READY")
        await stub.EndSession(pb.EndSessionRequest(session_id=created.id))
        with pytest.raises(grpc.aio.AioRpcError) as closed:
            await waiting
        assert closed.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "CLOSED (API_END)" in (closed.value.details() or "")


async def test_delete_closes_with_client_delete_and_ends_the_watch() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        publisher = await publish(app.base_url)
        sid = publisher.session_id
        await stub.StartListening(
            pb.StartListeningRequest(session_id=sid, wait_for_ready=True), timeout=10
        )
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=sid))
        first = await next_event(watch)
        assert first.WhichOneof("payload") == "snapshot"
        assert first.snapshot.session.state == S.READY
        assert await publisher.delete() == 200
        rest = await collect_until_closed(watch)
        assert [state_of(e) for e in rest] == [S.CLOSED]
        assert rest[0].state_changed.close_reason == R.CLIENT_DELETE
        assert rest[0].revision == first.revision + 1
        assert await publisher.delete() == 404
        await publisher.vanish()


async def test_a_publisher_that_vanishes_closes_with_media_timeout() -> None:
    async with running_server(media_timeout=1.0) as app, grpc_stub(app) as stub:
        publisher, watch = await listening_publisher(app, stub)
        await publisher.vanish()  # how soon it closes is measured in benchmarks/timings.py
        [closed] = await collect_until_closed(watch, timeout=10)
        assert closed.state_changed.close_reason == R.MEDIA_TIMEOUT


async def test_a_reconnecting_watcher_gets_exactly_the_missed_events() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        created = await stub.CreateSession(pb.CreateSessionRequest())
        sid = created.id
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=sid))
        snapshot = await next_event(watch)
        assert snapshot.revision == 1
        watch.cancel()

        publisher = await publish(app.base_url, f"/whip/{sid}", token=created.token)
        try:
            await stub.StartListening(
                pb.StartListeningRequest(session_id=sid, wait_for_ready=True), timeout=10
            )
            await stub.StopListening(pb.StopListeningRequest(session_id=sid))
            resumed = stub.WatchSession(pb.WatchSessionRequest(session_id=sid, since_revision=1))
            missed = [await next_event(resumed) for _ in range(5)]
            assert [e.revision for e in missed] == [2, 3, 4, 5, 6]
            kinds = [e.WhichOneof("payload") for e in missed]
            assert kinds == ["state_changed"] * 3 + ["listening_changed"] * 2
            assert [e.listening_changed.listening for e in missed[3:]] == [True, False]
            await stub.EndSession(pb.EndSessionRequest(session_id=sid))
            [closed] = await collect_until_closed(resumed)
            assert closed.revision == 7
        finally:
            await publisher.vanish()


async def test_a_revision_older_than_the_log_starts_with_a_resync_snapshot() -> None:
    async with running_server(event_retention=16) as app, grpc_stub(app) as stub:
        publisher = await publish(app.base_url)
        sid = publisher.session_id
        try:
            await stub.StartListening(
                pb.StartListeningRequest(session_id=sid, wait_for_ready=True), timeout=10
            )
            for _ in range(10):
                await stub.StopListening(pb.StopListeningRequest(session_id=sid))
                await stub.StartListening(pb.StartListeningRequest(session_id=sid))
            watch = stub.WatchSession(pb.WatchSessionRequest(session_id=sid, since_revision=2))
            first = await next_event(watch)
            assert first.WhichOneof("payload") == "snapshot"
            assert first.snapshot.resync
            assert first.revision == first.snapshot.session.revision == 25
            watch.cancel()

            with pytest.raises(grpc.aio.AioRpcError) as ahead:
                ahead_watch = stub.WatchSession(
                    pb.WatchSessionRequest(session_id=sid, since_revision=99)
                )
                await ahead_watch.read()
            assert ahead.value.code() == grpc.StatusCode.OUT_OF_RANGE
        finally:
            await publisher.vanish()


async def test_precreated_session_publish_with_its_token_becomes_ready() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        created = await stub.CreateSession(pb.CreateSessionRequest(metadata={"user": "ada"}))
        assert created.state == S.NEW
        assert created.whip_url == f"{app.base_url}/whip/{created.id}"
        assert created.token
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=created.id))
        assert (await next_event(watch)).snapshot.session.state == S.NEW

        async with aiohttp.ClientSession() as http:
            async with http.post(
                created.whip_url, data="v=0\r\n", headers={"Content-Type": "application/sdp"}
            ) as no_token:
                assert no_token.status == 401
                assert no_token.headers["WWW-Authenticate"].startswith("Bearer")

        publisher = await publish(app.base_url, f"/whip/{created.id}", token=created.token)
        try:
            assert publisher.session_id == created.id
            states = [state_of(await next_event(watch)) for _ in range(3)]
            assert states == [S.CONNECTING, S.CONNECTED, S.READY]
            with pytest.raises(AssertionError, match="409"):
                await publish(app.base_url, f"/whip/{created.id}", token=created.token)
            session = await stub.GetSession(pb.GetSessionRequest(session_id=created.id))
            assert session.metadata["user"] == "ada"
            assert session.origin == pb.API
            assert session.token == ""
        finally:
            watch.cancel()
            await publisher.vanish()


async def test_a_precreated_session_without_a_publisher_expires() -> None:
    async with running_server(session_ttl=0.5) as app, grpc_stub(app) as stub:
        created = await stub.CreateSession(pb.CreateSessionRequest())
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=created.id))
        events = await collect_until_closed(watch, timeout=5)
        assert events[-1].state_changed.close_reason == R.EXPIRED


async def test_watch_sessions_discovers_a_new_publisher() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        existing = await stub.CreateSession(pb.CreateSessionRequest())
        watch_all = stub.WatchSessions(pb.WatchSessionsRequest())
        first = await next_event(watch_all)
        assert first.snapshot.session.id == existing.id
        publisher = await publish(app.base_url)
        try:
            event = await next_event(watch_all)
            assert event.session_id == publisher.session_id
            assert state_of(event) == S.NEW
        finally:
            watch_all.cancel()
            await publisher.vanish()


async def test_closed_sessions_stay_readable_for_the_retention_then_are_not_found() -> None:
    async with running_server(closed_retention=0.5) as app, grpc_stub(app) as stub:
        created = await stub.CreateSession(pb.CreateSessionRequest())
        ended = await stub.EndSession(pb.EndSessionRequest(session_id=created.id))
        assert ended.state == S.CLOSED and ended.close_reason == R.API_END
        again = await stub.EndSession(pb.EndSessionRequest(session_id=created.id))
        assert again.revision == ended.revision
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=created.id))
        [snapshot] = await collect_until_closed(watch)
        assert snapshot.snapshot.session.state == S.CLOSED

        async def forgotten() -> bool:
            sessions = await stub.ListSessions(pb.ListSessionsRequest(include_closed=True))
            return all(session.id != created.id for session in sessions.sessions)

        await eventually(forgotten, "the closed session is forgotten after its retention")
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await stub.GetSession(pb.GetSessionRequest(session_id=created.id))
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        assert created.id in (gone.value.details() or "")


async def test_watchers_hear_heartbeats_when_idle() -> None:
    async with running_server(heartbeat_interval=0.2) as app, grpc_stub(app) as stub:
        created = await stub.CreateSession(pb.CreateSessionRequest())
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=created.id))
        await watch.read()
        beat = await asyncio.wait_for(watch.read(), 2)
        assert beat.WhichOneof("payload") == "heartbeat"
        assert beat.session_id == created.id and beat.revision == 1
        watch.cancel()


async def test_shutdown_closes_sessions_with_shutdown_and_completes_watchers() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        created = await stub.CreateSession(pb.CreateSessionRequest())
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=created.id))
        await next_event(watch)
        stopping = asyncio.ensure_future(app.stop())
        [closed] = await collect_until_closed(watch)
        assert closed.state_changed.close_reason == R.SHUTDOWN
        await stopping


def polling_tasks() -> list[str]:
    """Tasks that look like a timeout reaper: deadlines must be scheduled, not polled for."""
    return [task.get_name() for task in asyncio.all_tasks() if "reap" in task.get_name()]


async def test_timeouts_and_retention_fire_from_scheduled_deadlines_with_nothing_polling() -> None:
    async with (
        running_server(ready_timeout=0.5, session_ttl=0.5, closed_retention=0.5) as app,
        grpc_stub(app) as stub,
        aiohttp.ClientSession() as http,
    ):
        assert polling_tasks() == []
        created = await stub.CreateSession(pb.CreateSessionRequest())
        # an offer is answered, but no peer ever connects: stuck in CONNECTING
        async with http.post(
            app.base_url + "/whip", data=OFFER, headers={"Content-Type": "application/sdp"}
        ) as answered:
            assert answered.status == 201, await answered.text()
            stuck = answered.headers["Location"].rsplit("/", 1)[-1]
        for session_id, reason in ((created.id, R.EXPIRED), (stuck, R.READY_TIMEOUT)):
            watch = stub.WatchSession(pb.WatchSessionRequest(session_id=session_id))
            await collect_until_closed(watch, timeout=10)
            session = await stub.GetSession(pb.GetSessionRequest(session_id=session_id))
            assert (session.state, session.close_reason) == (S.CLOSED, reason)
        assert polling_tasks() == []

        async def forgotten() -> bool:
            try:
                await stub.GetSession(pb.GetSessionRequest(session_id=stuck))
            except grpc.aio.AioRpcError as exc:
                return exc.code() == grpc.StatusCode.NOT_FOUND
            return False

        await eventually(forgotten, "the closed session forgotten after its retention")
