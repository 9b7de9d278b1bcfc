"""ListSessions and WatchSessions over a cluster: real in-process Hark nodes on port 0 (and a real
`hark serve` process where one must die), real aiortc publishers, wired together by a test Router
that lists the other nodes as members."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from media.aio import cancel_and_wait
from media.app import HarkApp
from media.client.hark_client import Backoff, HarkClient
from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc
from tests.cluster_support import free_port
from tests.in_process_cluster import Member, in_process_cluster
from tests.support import HarkProcess, _AuthStub, eventually, publish, running_server
from tests.tcp_proxy import tcp_proxy

S = pb.SessionState


@contextlib.asynccontextmanager
async def cluster(
    *names: str, scoped: bool = True, **overrides: Any
) -> AsyncIterator[dict[str, HarkApp]]:
    """The in-process members ``names`` (each with its own secret unless ``overrides`` sets one)."""
    settings = {"cluster_secret": None, **overrides}
    async with in_process_cluster(*names, scoped=scoped, **settings) as members:
        yield members.apps


@contextlib.asynccontextmanager
async def stubs(
    *apps: HarkApp, token: str | None = None
) -> AsyncIterator[list[media_pb2_grpc.MediaServiceAsyncStub]]:
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(app.grpc_target))
            for app in apps
        ]
        stubs = [media_pb2_grpc.MediaServiceStub(channel) for channel in channels]
        yield [_AuthStub(stub, token) if token else stub for stub in stubs]  # type: ignore[misc]


class Seen:
    """What a watcher of every session received, per session."""

    def __init__(self) -> None:
        self.events: dict[str, list[pb.SessionEvent]] = {}
        self.token = ""

    def add(self, event: pb.SessionEvent) -> None:
        assert event.resume_token, f"a WatchSessions message without a resume_token: {event}"
        self.token = event.resume_token
        if event.WhichOneof("payload") != "heartbeat":
            self.events.setdefault(event.session_id, []).append(event)

    def revisions(self, session_id: str) -> list[int]:
        return [event.revision for event in self.events.get(session_id, [])]

    def latest(self, session_id: str) -> pb.SessionEvent | None:
        events = self.events.get(session_id)
        return events[-1] if events else None


async def read_until(watch: Any, seen: Seen, done: Any, timeout: float = 20.0) -> None:
    """Read ``watch`` into ``seen`` (heartbeats included) until ``done(seen)`` holds."""
    try:
        async with asyncio.timeout(timeout):
            while not done(seen):
                event = await watch.read()
                if event is grpc.aio.EOF:
                    raise AssertionError("the watch ended")
                seen.add(event)
    except TimeoutError:
        raise AssertionError(f"not seen within {timeout} s; seen: {seen.events}") from None


def state_of(event: pb.SessionEvent | None) -> int:
    if event is None:
        return 0
    if event.HasField("snapshot"):
        return event.snapshot.session.state
    if event.HasField("state_changed"):
        return event.state_changed.state
    return -1


def in_revision_order(seen: Seen, session_id: str) -> bool:
    """A snapshot (or the first event), then every later revision once, in order."""
    revisions = seen.revisions(session_id)
    return revisions == list(range(revisions[0], revisions[0] + len(revisions)))


async def test_watch_sessions_at_one_node_sees_the_sessions_of_every_node() -> None:
    async with cluster("a", "b", "c") as apps:
        async with stubs(*apps.values()) as (at_a, at_b, at_c):
            before = {
                node: await stub.CreateSession(pb.CreateSessionRequest())
                for node, stub in (("a", at_a), ("b", at_b), ("c", at_c))
            }
            watch = at_a.WatchSessions(pb.WatchSessionsRequest())
            seen = Seen()
            await read_until(watch, seen, lambda s: all(c.id in s.events for c in before.values()))
            for created in before.values():
                first = seen.events[created.id][0]
                assert first.snapshot.session.state == S.NEW and not first.snapshot.resync

            publisher = await publish(apps["c"].base_url)
            try:
                ended = await at_b.EndSession(pb.EndSessionRequest(session_id=before["b"].id))
                await read_until(
                    watch,
                    seen,
                    lambda s: (
                        state_of(s.latest(publisher.session_id)) == S.READY
                        and state_of(s.latest(ended.id)) == S.CLOSED
                    ),
                )
            finally:
                await publisher.vanish()
            watch.cancel()

    assert publisher.session_id.startswith("c.0.")
    assert [state_of(e) for e in seen.events[publisher.session_id]] == [
        S.NEW,
        S.CONNECTING,
        S.CONNECTED,
        S.READY,
    ]
    assert seen.revisions(publisher.session_id) == [1, 2, 3, 4]
    closing = seen.events[ended.id][-1].state_changed
    assert closing.close_reason == pb.API_END
    for session_id in seen.events:
        assert in_revision_order(seen, session_id), seen.events[session_id]


async def test_list_sessions_at_one_node_lists_every_node_and_the_scope_marker_narrows_it() -> None:
    async with cluster("a", "b", "c") as apps:
        async with stubs(*apps.values()) as (at_a, at_b, at_c):
            created = [
                await stub.CreateSession(pb.CreateSessionRequest())
                for stub in (at_a, at_b, at_c, at_c)
            ]
            await at_c.EndSession(pb.EndSessionRequest(session_id=created[3].id))
            listed = await at_b.ListSessions(pb.ListSessionsRequest())
            with_closed = await at_b.ListSessions(pb.ListSessionsRequest(include_closed=True))
            only_b = await at_b.ListSessions(
                pb.ListSessionsRequest(), metadata=(("x-hark-scope", "worker"),)
            )
            with pytest.raises(grpc.aio.AioRpcError) as wrong:
                await at_b.ListSessions(
                    pb.ListSessionsRequest(), metadata=(("x-hark-scope", "planet"),)
                )

    assert sorted(s.id for s in listed.sessions) == sorted(c.id for c in created[:3])
    assert sorted(s.id for s in with_closed.sessions) == sorted(c.id for c in created)
    assert [s.id for s in only_b.sessions] == [created[1].id]
    assert wrong.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "x-hark-scope" in (wrong.value.details() or "")


async def test_the_scope_marker_keeps_a_router_that_ignores_scope_from_looping() -> None:
    """Each node's router lists the other at every scope: without the marker, a call would bounce
    between them until its deadline."""
    async with cluster("a", "b", scoped=False) as apps:
        async with stubs(*apps.values()) as (at_a, at_b):
            created = [await at_a.CreateSession(pb.CreateSessionRequest())]
            created.append(await at_b.CreateSession(pb.CreateSessionRequest()))
            listed = await at_a.ListSessions(pb.ListSessionsRequest(), timeout=10)
            watch = at_a.WatchSessions(pb.WatchSessionsRequest(), timeout=30)
            seen = Seen()
            await read_until(watch, seen, lambda s: len(s.events) == 2)
            watch.cancel()

    assert sorted(s.id for s in listed.sessions) == sorted(c.id for c in created)
    assert sorted(seen.events) == sorted(c.id for c in created)
    assert all(len(events) == 1 for events in seen.events.values())


async def test_a_watcher_that_reconnects_with_its_token_anywhere_gets_exactly_what_it_missed() -> (
    None
):
    async with cluster("a", "b", "c") as apps:
        async with stubs(*apps.values()) as (at_a, at_b, at_c):
            at = {"a": at_a, "b": at_b, "c": at_c}
            first = {
                n: await stub.CreateSession(pb.CreateSessionRequest()) for n, stub in at.items()
            }
            watch = at_a.WatchSessions(pb.WatchSessionsRequest())
            before = Seen()
            await read_until(watch, before, lambda s: all(c.id in s.events for c in first.values()))
            # One live event from every node, so the token has stood in each node's log.
            for node, stub in at.items():
                await stub.EndSession(pb.EndSessionRequest(session_id=first[node].id))
            await read_until(
                watch,
                before,
                lambda s: all(state_of(s.latest(c.id)) == S.CLOSED for c in first.values()),
            )
            token = before.token
            watch.cancel()

            # While nobody watches: a publisher at c, sessions created and ended at a and b.
            publisher = await publish(apps["c"].base_url)
            try:
                missed = [await at_a.CreateSession(pb.CreateSessionRequest())]
                missed.append(await at_b.CreateSession(pb.CreateSessionRequest()))
                await at_b.EndSession(pb.EndSessionRequest(session_id=missed[1].id))
                await at_c.StartListening(
                    pb.StartListeningRequest(session_id=publisher.session_id, wait_for_ready=True),
                    timeout=20,
                )
                final = {
                    s.id: s.revision
                    for stub in at.values()
                    for s in (
                        await stub.ListSessions(
                            pb.ListSessionsRequest(include_closed=True),
                            metadata=(("x-hark-scope", "worker"),),
                        )
                    ).sessions
                }

                # At another node: the token is the whole cluster's.
                resumed = at_c.WatchSessions(pb.WatchSessionsRequest(resume_token=token))
                after = Seen()

                def caught_up(s: Seen) -> bool:
                    for session_id, events in s.events.items():
                        assert events[-1].revision <= final[session_id], "an event repeated"
                    return all(
                        s.revisions(sid)[-1:] == [revision]
                        for sid, revision in final.items()
                        if revision > before_revision(before, sid)
                    )

                await read_until(resumed, after, caught_up)
                resumed.cancel()
            finally:
                await publisher.vanish()

    assert not any(e.HasField("snapshot") for events in after.events.values() for e in events)
    for session_id, revision in final.items():
        got = before.revisions(session_id) + after.revisions(session_id)
        start = got[0] if before.revisions(session_id) else 1
        assert got == list(range(start, revision + 1)), (session_id, got)
    assert after.revisions(publisher.session_id)[:4] == [1, 2, 3, 4]


def before_revision(seen: Seen, session_id: str) -> int:
    revisions = seen.revisions(session_id)
    return revisions[-1] if revisions else 0


async def test_watchers_get_node_lost_for_every_open_session_of_a_dead_node() -> None:
    async with (
        cluster("a") as apps,
        HarkProcess("--node-id", "b", "--ice-address", "127.0.0.1") as b,
    ):
        members = apps["a"].router.members  # type: ignore[attr-defined]
        members["b"] = Member(f"127.0.0.1:{b.grpc_port}", f"http://127.0.0.1:{b.http_port}")
        async with (
            stubs(apps["a"]) as (at_a,),
            grpc.aio.insecure_channel(members["b"].grpc_target) as channel,
        ):
            at_b = media_pb2_grpc.MediaServiceStub(channel)
            waiting = await at_b.CreateSession(pb.CreateSessionRequest())
            ended = await at_b.CreateSession(pb.CreateSessionRequest())
            await at_b.EndSession(pb.EndSessionRequest(session_id=ended.id))
            publisher = await publish(members["b"].base_url)
            try:
                await at_b.StartListening(
                    pb.StartListeningRequest(session_id=publisher.session_id, wait_for_ready=True),
                    timeout=20,
                )
                here = await at_a.CreateSession(pb.CreateSessionRequest())
                watch = at_a.WatchSessions(pb.WatchSessionsRequest())
                seen = Seen()
                await read_until(
                    watch,
                    seen,
                    lambda s: {waiting.id, publisher.session_id, here.id} <= s.events.keys(),
                )
                assert b.proc is not None
                b.proc.kill()
                await b.proc.wait()
                members["b"].lost = True
                await read_until(
                    watch,
                    seen,
                    lambda s: (
                        state_of(s.latest(waiting.id)) == S.CLOSED
                        and state_of(s.latest(publisher.session_id)) == S.CLOSED
                    ),
                )
                watch.cancel()
            finally:
                await publisher.vanish()

    for session_id, previous in ((waiting.id, S.NEW), (publisher.session_id, S.READY)):
        *_, last_seen, closed = seen.events[session_id]
        assert closed.state_changed.close_reason == pb.NODE_LOST
        assert closed.state_changed.previous == previous
        assert "node b" in closed.state_changed.close_detail
        assert closed.revision == last_seen.revision + 1
    assert ended.id not in seen.events, "a closed session is not watched (include_closed unset)"
    assert state_of(seen.latest(here.id)) == S.NEW, "the surviving node's sessions are untouched"


def contiguous(seen: Seen, session_id: str) -> bool:
    revisions = seen.revisions(session_id)
    return bool(revisions) and revisions == list(range(revisions[0], revisions[-1] + 1))


async def test_a_member_stream_that_breaks_resumes_where_it_left() -> None:
    async with cluster("a", "b") as apps, tcp_proxy(apps["b"].grpc_port) as proxy:
        members = apps["a"].router.members  # type: ignore[attr-defined]
        members["b"].grpc_target = proxy.target
        async with stubs(*apps.values()) as (at_a, at_b):
            early = await at_b.CreateSession(pb.CreateSessionRequest())
            watch = at_a.WatchSessions(pb.WatchSessionsRequest())
            seen = Seen()
            await read_until(watch, seen, lambda s: early.id in s.events)
            proxy.cut()  # node a can no longer reach node b; both keep running
            missed = [await at_b.CreateSession(pb.CreateSessionRequest()) for _ in range(2)]
            await at_b.EndSession(pb.EndSessionRequest(session_id=missed[0].id))
            await at_b.EndSession(pb.EndSessionRequest(session_id=early.id))
            proxy.restore()
            await read_until(
                watch,
                seen,
                lambda s: (
                    state_of(s.latest(early.id)) == S.CLOSED
                    and state_of(s.latest(missed[0].id)) == S.CLOSED
                    and missed[1].id in s.events
                ),
            )
            watch.cancel()

    assert proxy.connections >= 2, "the member stream was never cut"
    for created in missed:
        assert seen.events[created.id][0].HasField("state_changed"), "replayed, not resynced"
        assert seen.revisions(created.id)[0] == 1
    assert seen.revisions(missed[0].id) == [1, 2]
    for session_id in seen.events:
        assert contiguous(seen, session_id), seen.events[session_id]


async def test_a_member_that_comes_back_as_another_process_closes_its_old_sessions() -> None:
    async with cluster("a") as apps, stubs(apps["a"]) as (at_a,):
        members = apps["a"].router.members  # type: ignore[attr-defined]
        async with HarkProcess("--node-id", "b") as first:
            members["b"] = Member(
                f"127.0.0.1:{first.grpc_port}", f"http://127.0.0.1:{first.http_port}"
            )
            async with grpc.aio.insecure_channel(members["b"].grpc_target) as channel:
                old = await media_pb2_grpc.MediaServiceStub(channel).CreateSession(
                    pb.CreateSessionRequest()
                )
            watch = at_a.WatchSessions(pb.WatchSessionsRequest())
            seen = Seen()
            await read_until(watch, seen, lambda s: old.id in s.events)
            assert first.proc is not None
            first.proc.kill()
            await first.proc.wait()
        async with HarkProcess("--node-id", "b") as second:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{second.grpc_port}") as channel:
                new = await media_pb2_grpc.MediaServiceStub(channel).CreateSession(
                    pb.CreateSessionRequest()
                )
            members["b"].grpc_target = f"127.0.0.1:{second.grpc_port}"  # same node, new process
            await read_until(
                watch, seen, lambda s: state_of(s.latest(old.id)) == S.CLOSED and new.id in s.events
            )
            watch.cancel()

    closed = seen.events[old.id][-1]
    assert closed.state_changed.close_reason == pb.NODE_LOST
    assert "restarted" in closed.state_changed.close_detail
    assert closed.revision == seen.events[old.id][-2].revision + 1
    assert seen.events[new.id][0].snapshot.resync, "what b's new process holds comes as resync"


async def test_the_sdk_watch_of_every_session_resumes_across_a_cut_with_its_token() -> None:
    async with cluster("a", "b") as apps, tcp_proxy(apps["a"].grpc_port) as proxy:
        fast = Backoff(initial=0.05, maximum=0.5)
        async with (
            stubs(*apps.values()) as (at_a, at_b),
            HarkClient(proxy.target, backoff=fast) as hark,
        ):
            sessions = [
                await stub.CreateSession(pb.CreateSessionRequest()) for stub in (at_a, at_b)
            ]
            seen = Seen()
            got_all = asyncio.Event()
            wanted: set[str] = {s.id for s in sessions}

            async def consume() -> None:
                async for event in hark.watch():
                    seen.add(event)
                    if wanted <= seen.events.keys() and all(
                        state_of(seen.latest(sid)) == S.CLOSED for sid in wanted
                    ):
                        got_all.set()

            watcher = asyncio.create_task(consume())
            try:
                await eventually(lambda: wanted <= seen.events.keys(), "both snapshots")
                proxy.cut()
                later = [
                    await stub.CreateSession(pb.CreateSessionRequest()) for stub in (at_a, at_b)
                ]
                wanted |= {s.id for s in later}
                for created in (*sessions, *later):
                    stub = at_a if created.id.startswith("a.") else at_b
                    await stub.EndSession(pb.EndSessionRequest(session_id=created.id))
                proxy.restore()
                async with asyncio.timeout(20):
                    await got_all.wait()
            finally:
                await cancel_and_wait(watcher)

    assert proxy.connections >= 2, "the watch was never cut"
    for created in sessions:
        assert seen.revisions(created.id) == [1, 2]
        assert seen.events[created.id][0].HasField("snapshot")
    for created in later:
        assert seen.revisions(created.id) == [1, 2], "resumed: every event once, no snapshot"
        assert all(e.HasField("state_changed") for e in seen.events[created.id])


async def test_an_idle_cluster_watch_hears_heartbeats_that_carry_the_token() -> None:
    async with cluster("a", "b") as apps, stubs(apps["a"]) as (at_a,):
        watch = at_a.WatchSessions(pb.WatchSessionsRequest())
        beats: list[pb.SessionEvent] = []
        async with asyncio.timeout(20):
            while len(beats) < 3:
                beats.append(await watch.read())
        watch.cancel()
    assert all(beat.HasField("heartbeat") for beat in beats)
    assert all(beat.resume_token for beat in beats[1:]), "every node's position, once known"
    assert {"a/0", "b/0"} <= {e.split("=")[0] for e in beats[-1].resume_token.split(",")}


async def test_members_are_asked_with_the_callers_credentials() -> None:
    token = "cluster-token-0123"
    async with cluster("a", "b", token=token) as apps:
        async with stubs(*apps.values(), token=token) as (at_a, at_b):
            created = [await stub.CreateSession(pb.CreateSessionRequest()) for stub in (at_a, at_b)]
            listed = await at_a.ListSessions(pb.ListSessionsRequest())
            watch = at_a.WatchSessions(pb.WatchSessionsRequest())
            seen = Seen()
            await read_until(watch, seen, lambda s: {c.id for c in created} <= s.events.keys())
            watch.cancel()
        async with stubs(apps["a"]) as (anonymous,):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await anonymous.ListSessions(pb.ListSessionsRequest())
    assert sorted(s.id for s in listed.sessions) == sorted(c.id for c in created)
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_node_of_several_workers_is_watched_and_listed_through_one_of_them() -> None:
    async with cluster("a", "a/1", "b") as apps:
        async with stubs(*apps.values()) as (at_a0, at_a1, at_b):
            created = {
                name: await stub.CreateSession(pb.CreateSessionRequest())
                for name, stub in (("a", at_a0), ("a/1", at_a1), ("b", at_b))
            }
            assert created["a/1"].id.startswith("a.1.")
            every = sorted(c.id for c in created.values())
            listings = [
                await stub.ListSessions(pb.ListSessionsRequest()) for stub in (at_a0, at_a1, at_b)
            ]
            node_a = await at_a0.ListSessions(
                pb.ListSessionsRequest(), metadata=(("x-hark-scope", "node"),)
            )

            watch = at_b.WatchSessions(pb.WatchSessionsRequest())
            seen = Seen()
            await read_until(watch, seen, lambda s: set(every) <= s.events.keys())
            await at_a1.EndSession(pb.EndSessionRequest(session_id=created["a/1"].id))
            await read_until(
                watch, seen, lambda s: state_of(s.latest(created["a/1"].id)) == S.CLOSED
            )
            token = seen.token
            watch.cancel()

            later = await at_a1.CreateSession(pb.CreateSessionRequest())
            await at_a0.EndSession(pb.EndSessionRequest(session_id=created["a"].id))
            resumed = at_b.WatchSessions(pb.WatchSessionsRequest(resume_token=token))
            after = Seen()
            await read_until(
                resumed,
                after,
                lambda s: later.id in s.events and state_of(s.latest(created["a"].id)) == S.CLOSED,
            )

            apps["a"].router.members["a/1"].lost = True  # type: ignore[attr-defined]
            await read_until(resumed, after, lambda s: state_of(s.latest(later.id)) == S.CLOSED)
            resumed.cancel()

    for listing in listings:
        assert sorted(s.id for s in listing.sessions) == every
    assert sorted(s.id for s in node_a.sessions) == sorted([created["a"].id, created["a/1"].id])
    assert {"a/0", "a/1", "b/0"} <= {e.split("=")[0] for e in token.split(",")}
    assert not any(e.HasField("snapshot") for events in after.events.values() for e in events)
    assert after.revisions(later.id) == [1, 2]
    assert after.revisions(created["a"].id) == [2]
    lost = after.events[later.id][-1].state_changed
    assert lost.close_reason == pb.NODE_LOST and "worker 1" in lost.close_detail
    assert sorted(after.events) == sorted([later.id, created["a"].id]), "nothing else repeated"


async def test_hark_watch_of_every_session_resumes_across_a_cut() -> None:
    async with cluster("a", "b") as apps, tcp_proxy(apps["a"].grpc_port) as proxy:
        async with stubs(*apps.values()) as (at_a, at_b):
            early = await at_b.CreateSession(pb.CreateSessionRequest())
            watcher = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "media", "watch", "--target", proxy.target, "--json",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            assert watcher.stdout is not None
            printed: list[dict[str, Any]] = []

            async def read_until_printed(session_id: str, state: str) -> None:
                async with asyncio.timeout(20):
                    while not any(
                        line.get("sessionId") == session_id
                        and line.get("stateChanged", {}).get("state") == state
                        for line in printed
                    ):
                        assert watcher.stdout is not None
                        printed.append(json.loads(await watcher.stdout.readline()))

            try:
                async with asyncio.timeout(20):
                    printed.append(json.loads(await watcher.stdout.readline()))
                assert printed[0]["snapshot"]["session"]["id"] == early.id
                proxy.cut()
                missed = await at_a.CreateSession(pb.CreateSessionRequest())
                await at_b.EndSession(pb.EndSessionRequest(session_id=early.id))
                proxy.restore()
                await read_until_printed(early.id, "CLOSED")
                await read_until_printed(missed.id, "NEW")
            finally:
                watcher.kill()
                await watcher.wait()

    assert proxy.connections >= 2, "the watch was never cut"
    assert [line["sessionId"] for line in printed].count(early.id) == 2, "snapshot, then CLOSED"
    assert not any("snapshot" in line for line in printed[1:]), "resumed, not resynced"
    assert all(line["resumeToken"] for line in printed)


async def test_a_resume_token_that_is_not_one_is_invalid_argument_naming_it() -> None:
    async with cluster("a", "b") as apps, stubs(apps["a"]) as (at_a,):
        incarnation = apps["a"].sessions.feed.log.incarnation
        answers = []
        for token in ("not a token", f"a/0={incarnation}:99"):
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await at_a.WatchSessions(pb.WatchSessionsRequest(resume_token=token)).read()
            answers.append(bad.value)
    for error in answers:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "resume_token" in (error.details() or "")
    assert "ahead" in (answers[1].details() or "")


async def test_a_member_given_up_when_it_left_the_list_is_watched_again_once_it_is_back() -> None:
    async with cluster("a", "b") as apps, stubs(apps["a"], apps["b"]) as (at_a, at_b):
        members = apps["a"].router.members  # type: ignore[attr-defined]
        first = await at_b.CreateSession(pb.CreateSessionRequest())
        watch = at_a.WatchSessions(pb.WatchSessionsRequest())
        seen = Seen()
        await read_until(watch, seen, lambda s: first.id in s.events)
        b = members.pop("b")  # b leaves the list (its record expired) ...
        await read_until(watch, seen, lambda s: state_of(s.latest(first.id)) == S.CLOSED)
        members["b"] = b  # ... and comes back before the next look at the list
        second = await at_b.CreateSession(pb.CreateSessionRequest())
        await read_until(watch, seen, lambda s: second.id in s.events)
        watch.cancel()


async def test_a_member_that_cannot_answer_fails_the_call_with_its_status_naming_it() -> None:
    async with cluster("a") as apps, running_server(token="only-b-knows") as b:
        members = apps["a"].router.members  # type: ignore[attr-defined]
        members["c"] = Member(f"127.0.0.1:{free_port()}", "http://127.0.0.1:9")  # nobody there
        async with stubs(apps["a"]) as (at_a,):
            with pytest.raises(grpc.aio.AioRpcError) as listing:
                await at_a.ListSessions(pb.ListSessionsRequest(), timeout=10)
            del members["c"]
            members["b"] = Member(b.grpc_target, b.base_url)  # refuses a's callers
            with pytest.raises(grpc.aio.AioRpcError) as watching:
                await read_until(
                    at_a.WatchSessions(pb.WatchSessionsRequest()), Seen(), lambda s: False
                )
    assert listing.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "member c/0" in (listing.value.details() or "")
    assert watching.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "member b/0" in (watching.value.details() or "")
