"""The whole cluster, end to end: three real ``hark serve --redis-url`` processes (one worker
each) on loopback and a real redis-server; real aiortc publishers, real gRPC and HTTP clients.
A session is served at any node, the cluster-wide watch and list cover every node, a killed
node's sessions close with NODE_LOST everywhere, and the cluster survives a Redis restart."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import time
import urllib.parse
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc

from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc
from tests.cluster_support import SECRET, HarkNode, RedisServer, running_redis
from tests.integration.test_browser_api import read_sse
from tests.integration.test_cluster_redis import cluster_formed
from tests.support import Publisher, eventually, publish, running_server

TTL = 2.0
NAMES = ("alpha", "beta", "gamma")
Stub = media_pb2_grpc.MediaServiceStub


class Cluster:
    """The nodes by name, a gRPC stub for each, and the Redis they share."""

    def __init__(self, redis: RedisServer, nodes: dict[str, HarkNode]) -> None:
        self.redis = redis
        self.nodes = nodes
        self._channels = {
            name: grpc.aio.insecure_channel(n.grpc_address) for name, n in nodes.items()
        }
        self.stubs = {name: Stub(channel) for name, channel in self._channels.items()}

    def __getitem__(self, name: str) -> HarkNode:
        return self.nodes[name]

    async def formed(self, *names: str) -> None:
        async with self.redis.client() as redis:
            await cluster_formed(redis, *(names or tuple(self.nodes)))

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()


@contextlib.asynccontextmanager
async def three_nodes(folder: pathlib.Path, **extra: tuple[str, ...]) -> AsyncIterator[Cluster]:
    """alpha, beta and gamma, each with its ``extra`` arguments, once they all know each other."""
    async with running_redis(folder) as redis, contextlib.AsyncExitStack() as stack:
        nodes = {
            name: await stack.enter_async_context(
                HarkNode(
                    redis, name, "--workers", "1", "--node-ttl", str(TTL), *extra.get(name, ())
                )
            )
            for name in NAMES
        }
        cluster = Cluster(redis, nodes)
        stack.push_async_callback(cluster.close)
        await cluster.formed()
        yield cluster


async def create_at(stub: Stub) -> pb.Session:
    created: pb.Session = await stub.CreateSession(pb.CreateSessionRequest(), timeout=10)
    return created


async def publish_to(session: pb.Session) -> Publisher:
    """A real aiortc publisher, posting to the session's absolute ``whip_url`` as given."""
    return await publish(session.whip_url, "", token=session.token)


async def first_event(stream: Any, matches: Any, timeout: float = 20.0) -> pb.SessionEvent:
    """The first message of ``stream`` for which ``matches`` holds."""
    async with asyncio.timeout(timeout):
        async for event in stream:
            if matches(event):
                return event  # type: ignore[no-any-return]
    raise AssertionError("the stream ended before the awaited event")


def is_state(session_id: str, state: int) -> Any:
    def matches(event: pb.SessionEvent) -> bool:
        if event.session_id != session_id:
            return False
        if event.HasField("snapshot"):
            return bool(event.snapshot.session.state == state)
        return event.HasField("state_changed") and event.state_changed.state == state

    return matches


def closed_reason(event: pb.SessionEvent) -> int:
    if event.HasField("snapshot"):
        return int(event.snapshot.session.close_reason)
    return int(event.state_changed.close_reason)


async def test_a_session_is_published_watched_listened_to_and_streamed_at_three_nodes(
    tmp_path: pathlib.Path,
) -> None:
    async with three_nodes(tmp_path) as cluster:
        alpha = cluster["alpha"]
        created = await create_at(cluster.stubs["alpha"])
        assert (created.node, created.grpc_address) == ("alpha", alpha.grpc_address)
        assert created.whip_url == f"{alpha.base_url}/whip/{created.id}"

        watch = cluster.stubs["beta"].WatchSession(pb.WatchSessionRequest(session_id=created.id))
        first = await first_event(watch, lambda e: e.session_id == created.id)
        assert first.snapshot.session.state == pb.NEW
        listening = asyncio.ensure_future(
            cluster.stubs["gamma"].StartListening(
                pb.StartListeningRequest(session_id=created.id, wait_for_ready=True), timeout=30
            )
        )
        publisher = await publish_to(created)
        try:
            assert publisher.location == created.whip_url
            await first_event(watch, is_state(created.id, pb.READY))
            ready = await listening
            assert (ready.state, ready.listening) == (pb.READY, True)
            assert (ready.node, ready.grpc_address) == ("alpha", alpha.grpc_address)

            stream = cluster.stubs["gamma"].StreamAudio(  # SPEECH: segments of speech only
                pb.StreamAudioRequest(session_id=created.id), timeout=30
            )
            start = await first_event(stream, lambda c: c.HasField("segment_start"))
            chunk = await first_event(stream, lambda c: True)
            assert start.session_id == chunk.session_id == created.id
            assert chunk.audio.pcm and chunk.sequence == start.sequence + 1
            stream.cancel()

            got = await cluster.stubs["beta"].GetSession(
                pb.GetSessionRequest(session_id=created.id), timeout=10
            )
            assert (got.node, got.grpc_address, got.state) == (
                "alpha",
                alpha.grpc_address,
                pb.READY,
            )
        finally:
            watch.cancel()
            await publisher.vanish()


async def test_the_cluster_watch_and_list_cover_every_node_and_the_browser_mirror_works_anywhere(
    tmp_path: pathlib.Path,
) -> None:
    async with three_nodes(tmp_path) as cluster, aiohttp.ClientSession() as http:
        watch = cluster.stubs["beta"].WatchSessions(pb.WatchSessionsRequest())
        created = {name: await create_at(cluster.stubs[name]) for name in NAMES}
        assert {name: s.node for name, s in created.items()} == {n: n for n in NAMES}
        seen: set[str] = set()
        ids = {s.id for s in created.values()}

        def all_seen(event: pb.SessionEvent) -> bool:
            seen.add(event.session_id)
            return seen >= ids

        await first_event(watch, all_seen)
        watch.cancel()
        for name in NAMES:
            listed = await cluster.stubs[name].ListSessions(pb.ListSessionsRequest(), timeout=10)
            assert {s.id for s in listed.sessions} >= ids, name

        # The SSE mirror at gamma and /listening at beta, for alpha's session.
        session = created["alpha"]
        gamma, beta = cluster["gamma"], cluster["beta"]
        events_url = f"{gamma.base_url}/whip/{session.id}/events?token={session.token}"
        async with http.get(events_url) as events:
            assert events.status == 200 and events.content_type == "text/event-stream"
            [(_, snapshot)] = await read_sse(events, 1)
            assert snapshot["snapshot"]["session"]["state"] == "NEW"
            publisher = await publish_to(session)
            try:
                listen_url = f"{beta.base_url}/whip/{session.id}/listening"
                async with http.post(
                    listen_url,
                    json={"listening": True, "wait_for_ready": True},
                    headers={"Authorization": f"Bearer {session.token}"},
                ) as response:
                    assert response.status == 200, await response.text()
                    body = await response.json()
                    assert (body["state"], body["listening"]) == ("READY", True)
                    assert body["node"] == "alpha"
                states: list[str] = []
                while "READY" not in states:
                    [(_, event)] = await read_sse(events, 1)
                    if "stateChanged" in event:
                        states.append(event["stateChanged"]["state"])
            finally:
                await publisher.vanish()


async def test_an_unknown_or_malformed_node_is_not_found_at_every_node_and_never_dialled(
    tmp_path: pathlib.Path,
) -> None:
    """At the three processes and at an in-process fourth node (whose outgoing channels and
    HTTP clients can be counted): NOT_FOUND / 404, and nothing dialled."""
    bad = ["nowhere.0.abcdefghijklmnopqrstuvwx", "alpha.7.abcdefghijklmnopqrstuvwx", "127.0.0.1:1"]
    bad += ["not-an-id", "alpha..x", "ALPHA.0.abcdefghijklmnopqrstuvwx", "alpha.0.x/../y"]
    async with (
        three_nodes(tmp_path) as cluster,
        running_server(
            redis_url=cluster.redis.url, node_id="delta", cluster_secret=SECRET, node_ttl=TTL
        ) as delta,
        grpc.aio.insecure_channel(delta.grpc_target) as channel,
        aiohttp.ClientSession() as http,
    ):
        await cluster.formed(*NAMES, "delta")
        at = {name: (cluster.stubs[name], cluster[name].base_url) for name in NAMES}
        at["delta"] = (Stub(channel), delta.base_url)
        for name, (stub, base_url) in at.items():
            for session_id in bad:
                await not_found_anywhere(http, stub, base_url, session_id, name)
        assert delta.upstreams.targets == []
        assert delta.http_forwarder.clients == 0


async def not_found_anywhere(
    http: aiohttp.ClientSession, stub: Stub, base_url: str, session_id: str, name: str
) -> None:
    calls = (
        stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=10),
        stub.StartListening(pb.StartListeningRequest(session_id=session_id), timeout=10),
    )
    for call in calls:
        try:
            await call
            raise AssertionError(f"{session_id} answered at {name}")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND, (name, session_id)
    watch = stub.WatchSession(pb.WatchSessionRequest(session_id=session_id))
    try:
        await first_event(watch, lambda e: True, timeout=10)
        raise AssertionError(f"{session_id} watched at {name}")
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.NOT_FOUND, (name, session_id)
    for method, path in (("GET", "/events"), ("DELETE", ""), ("PATCH", "")):
        url = f"{base_url}/whip/{urllib.parse.quote(session_id, safe='')}{path}"
        async with http.request(method, url) as response:
            assert response.status == 404, (name, method, url)


def lost_closed(session_id: str) -> Any:
    def matches(event: pb.SessionEvent) -> bool:
        return is_state(session_id, pb.CLOSED)(event) and closed_reason(event) == pb.NODE_LOST

    return matches


async def all_lost_in(stream: Any, ids: set[str]) -> float:
    """Read ``stream`` until each of ``ids`` closed with NODE_LOST; the monotonic time then."""
    pending = set(ids)

    def one_more(event: pb.SessionEvent) -> bool:
        if event.session_id in pending and lost_closed(event.session_id)(event):
            pending.discard(event.session_id)
        return not pending

    await first_event(stream, one_more, timeout=TTL + 20)
    return time.monotonic()


async def sse_until_closed(events: aiohttp.ClientResponse) -> list[tuple[str, dict[str, Any]]]:
    """The SSE messages of ``events`` up to the one saying CLOSED, which must end the stream."""
    messages: list[tuple[str, dict[str, Any]]] = []
    async with asyncio.timeout(TTL + 20):
        while not messages or messages[-1][1].get("stateChanged", {}).get("state") != "CLOSED":
            got = await read_sse(events, 1)
            assert got, f"the event stream ended without CLOSED after {messages}"
            messages += got
    assert await events.content.read() == b""
    return messages


async def test_a_killed_nodes_sessions_close_with_node_lost_for_every_watcher_and_getsession(
    tmp_path: pathlib.Path,
) -> None:
    async with three_nodes(tmp_path) as cluster, aiohttp.ClientSession() as http:
        alpha, beta = cluster.stubs["alpha"], cluster.stubs["beta"]
        precreated = await create_at(cluster.stubs["gamma"])
        published = await create_at(cluster.stubs["gamma"])
        assert precreated.node == published.node == "gamma"
        ids = {precreated.id, published.id}
        publisher = await publish_to(published)
        try:
            watch_new = alpha.WatchSession(pb.WatchSessionRequest(session_id=precreated.id))
            watch_ready = beta.WatchSession(pb.WatchSessionRequest(session_id=published.id))
            await first_event(watch_new, is_state(precreated.id, pb.NEW))
            await first_event(watch_ready, is_state(published.id, pb.READY))
            # A browser's event stream at alpha, relayed from gamma.
            sse_url = f"{cluster['alpha'].base_url}/whip/{published.id}/events"
            sse = await http.get(f"{sse_url}?token={published.token}")
            [(ready_id, ready)] = await read_sse(sse, 1)
            assert ready["snapshot"]["session"]["state"] == "READY"
            everything = {
                name: cluster.stubs[name].WatchSessions(pb.WatchSessionsRequest())
                for name in ("alpha", "beta")
            }
            for stream in everything.values():
                await first_event(stream, is_state(published.id, pb.READY))
            # A watcher that goes away before the death and comes back after it, with its token.
            cut = beta.WatchSessions(pb.WatchSessionsRequest())
            last = await first_event(cut, is_state(published.id, pb.READY))
            cut.cancel()

            killed = time.monotonic()
            cluster["gamma"].kill()
            try:  # gamma not yet known to be lost: it cannot answer, and the call says so
                await alpha.ListSessions(pb.ListSessionsRequest(), timeout=10)
            except grpc.aio.AioRpcError as error:
                assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                assert "member gamma/0" in (error.details() or "")
            watchers = {
                "WatchSession(NEW) at alpha": all_lost_in(watch_new, {precreated.id}),
                "WatchSession(READY) at beta": all_lost_in(watch_ready, {published.id}),
                **{f"WatchSessions at {n}": all_lost_in(s, ids) for n, s in everything.items()},
            }
            times = await asyncio.gather(*watchers.values())
            for what, when in zip(watchers, times, strict=True):
                print(f"NODE_LOST after kill -9, {what}: {when - killed:.2f} s (TTL {TTL} s)")
            relayed = await sse_until_closed(sse)
            sse.release()
            revisions = [int(event_id) for event_id, _ in relayed]
            assert revisions == list(range(int(ready_id) + 1, int(ready_id) + 1 + len(relayed)))
            closed = relayed[-1][1]["stateChanged"]
            assert (closed["closeReason"], closed["previous"]) == ("NODE_LOST", "READY")
            assert "gamma" in closed["closeDetail"]
            # An EventSource (re)connecting after the death hears it: 200, then CLOSED.
            sse_url = f"{cluster['beta'].base_url}/whip/{precreated.id}/events"
            async with http.get(f"{sse_url}?token={precreated.token}") as late_sse:
                assert late_sse.status == 200
                [(_, snapshot)] = await read_sse(late_sse, 1)
                session = snapshot["snapshot"]["session"]
                assert (session["state"], session["closeReason"]) == ("CLOSED", "NODE_LOST")
                assert await late_sse.content.read() == b""

            for name in ("alpha", "beta"):
                for session_id in ids:
                    got = await cluster.stubs[name].GetSession(
                        pb.GetSessionRequest(session_id=session_id), timeout=10
                    )
                    assert (got.state, got.close_reason) == (pb.CLOSED, pb.NODE_LOST), name

            for name in ("alpha", "beta"):  # listed with include_closed, as closed sessions are
                listed = await cluster.stubs[name].ListSessions(
                    pb.ListSessionsRequest(include_closed=True), timeout=10
                )
                found = {s.id: (s.state, s.close_reason) for s in listed.sessions}
                for session_id in ids:
                    assert found.get(session_id) == (pb.CLOSED, pb.NODE_LOST), name
            # Watchers that (re)connect after the death still learn of it.
            late = beta.WatchSession(pb.WatchSessionRequest(session_id=precreated.id))
            await all_lost_in(late, {precreated.id})
            fresh = alpha.WatchSessions(pb.WatchSessionsRequest(include_closed=True))
            await all_lost_in(fresh, ids)
            fresh.cancel()
            resumed = alpha.WatchSessions(pb.WatchSessionsRequest(resume_token=last.resume_token))
            await all_lost_in(resumed, ids)
            resumed.cancel()
            for stream in everything.values():
                stream.cancel()
        finally:
            await publisher.vanish()


async def closes_until(watch: Any, session_id: str) -> list[pb.SessionEvent]:
    """The CLOSED events ``watch`` sends before the first event of ``session_id``."""
    closed: list[pb.SessionEvent] = []

    def until(event: pb.SessionEvent) -> bool:
        if event.session_id and is_state(event.session_id, pb.CLOSED)(event):
            closed.append(event)
        return event.session_id == session_id

    await first_event(watch, until)
    return closed


async def every_node_detached(cluster: Cluster) -> None:
    """Every node has been without Redis for its TTL: each refuses new sessions (/readyz 503),
    and no record written before is still alive in Redis."""
    async with aiohttp.ClientSession() as http:

        async def unready() -> bool:
            for node in cluster.nodes.values():
                async with http.get(f"{node.base_url}/readyz") as response:
                    if response.status != 503:
                        return False
            return True

        await eventually(unready, "every node out of the cluster", timeout=TTL + 10)


async def test_the_cluster_recovers_when_redis_stops_and_comes_back_empty(
    tmp_path: pathlib.Path,
) -> None:
    async with three_nodes(tmp_path, alpha=("--max-sessions", "2")) as cluster:
        stubs = cluster.stubs
        before = await create_at(stubs["beta"])
        publisher = await publish_to(before)
        watch = stubs["alpha"].WatchSessions(pb.WatchSessionsRequest())
        try:
            await first_event(watch, is_state(before.id, pb.READY))
            await cluster.redis.stop()
            await every_node_detached(cluster)
            for name in NAMES:  # the sessions go on, served and forwarded as before
                got = await stubs[name].GetSession(
                    pb.GetSessionRequest(session_id=before.id), timeout=10
                )
                assert got.state == pb.READY, name
            await cluster.redis.start()  # empty, as a Redis without persistence restarts
            await cluster.formed()
            await cluster.formed()  # and each has read the others again since

            async with cluster.redis.client() as redis:
                assert before.id in await redis.smembers("hark:node:beta:sessions")
            for name in NAMES:  # forwarding by the ids' nodes again, from every node
                got = await stubs[name].GetSession(
                    pb.GetSessionRequest(session_id=before.id), timeout=10
                )
                assert (got.state, got.node) == (pb.READY, "beta"), name
            placed = [await create_at(stubs["alpha"]) for _ in range(4)]  # alpha takes 2
            nodes = [session.node for session in placed]
            assert nodes.count("alpha") == 2 and set(nodes) - {"alpha"} <= {"beta", "gamma"}
            closed = await closes_until(watch, placed[0].id)
            assert closed == [], closed  # no session was lost
            elsewhere = next(s for s in placed if s.node != "alpha")
            assert elsewhere.whip_url.startswith(cluster[elsewhere.node].base_url)
            second = await publish_to(elsewhere)
            try:
                ready = await stubs["alpha"].StartListening(
                    pb.StartListeningRequest(session_id=elsewhere.id, wait_for_ready=True),
                    timeout=30,
                )
                assert (ready.state, ready.node) == (pb.READY, elsewhere.node)
            finally:
                await second.vanish()
        finally:
            watch.cancel()
            await publisher.vanish()


async def test_a_persisted_redis_back_after_the_ttl_loses_no_live_session(
    tmp_path: pathlib.Path,
) -> None:
    """A Redis that keeps its data (RDB) and restarts after more than the TTL comes back with
    every node listed and no record alive; the nodes then come back one by one. None of them was
    lost: the first one back must not leave the others' sessions NODE_LOST."""
    async with three_nodes(tmp_path) as cluster:
        stubs = cluster.stubs
        sessions = [await create_at(stubs[name]) for name in NAMES]
        watch = stubs["alpha"].WatchSessions(pb.WatchSessionsRequest())
        ids = {session.id for session in sessions}
        seen: set[str] = set()

        def all_seen(event: pb.SessionEvent) -> bool:
            seen.add(event.session_id)
            return seen >= ids

        await first_event(watch, all_seen)
        async with cluster.redis.client() as redis:
            await redis.save()  # dump.rdb in its folder: loaded when it starts again
        await cluster.redis.stop()
        await every_node_detached(cluster)
        await cluster.redis.start()
        await cluster.formed()
        await cluster.formed()  # and each has read the others again since
        for name in NAMES:
            for session in sessions:
                got = await stubs[name].GetSession(
                    pb.GetSessionRequest(session_id=session.id), timeout=10
                )
                assert got.state == pb.NEW, (name, session.id, got.close_detail)
        created = await create_at(stubs["gamma"])  # a session event after the outage
        closed = await closes_until(watch, created.id)
        assert closed == [], closed  # no session was lost
        watch.cancel()


async def test_a_lost_session_is_answered_for_the_retention_period_then_forgotten(
    tmp_path: pathlib.Path,
) -> None:
    retention = ("--closed-retention", "3", "--node-ttl", str(TTL))
    async with (
        running_redis(tmp_path) as redis,
        HarkNode(redis, "alpha", *retention) as alpha,
        HarkNode(redis, "beta", *retention) as beta,
        grpc.aio.insecure_channel(alpha.grpc_address) as channel,
        grpc.aio.insecure_channel(beta.grpc_address) as to_beta,
        redis.client() as client,
    ):
        await cluster_formed(client, "alpha", "beta")
        at_alpha = Stub(channel)
        created = await create_at(Stub(to_beta))
        beta.kill()

        async def answered(state: int | None) -> bool:
            try:
                got = await at_alpha.GetSession(pb.GetSessionRequest(session_id=created.id))
            except grpc.aio.AioRpcError as error:
                return state is None and error.code() == grpc.StatusCode.NOT_FOUND
            return state is not None and (got.state, got.close_reason) == (state, pb.NODE_LOST)

        await eventually(lambda: answered(pb.CLOSED), "NODE_LOST at alpha", timeout=TTL + 10)
        await eventually(lambda: answered(None), "forgotten after the retention", timeout=20)
        assert not await client.exists("hark:node:beta:sessions")

        async def beta_forgotten() -> bool:
            return not await client.sismember("hark:nodes", "beta")

        await eventually(beta_forgotten, "beta out of hark:nodes once nothing is left of it")


async def test_a_node_restarted_at_once_answers_for_its_predecessors_sessions_at_every_node(
    tmp_path: pathlib.Path,
) -> None:
    """A pod restarted under its id before its record expired: no node saw it leave, so the
    others still forward its old ids to it; it answers them as lost, wherever they came from."""
    async with running_redis(tmp_path) as redis, redis.client() as client:
        async with (
            HarkNode(redis, "alpha", "--node-ttl", str(TTL)) as alpha,
            grpc.aio.insecure_channel(alpha.grpc_address) as channel,
        ):
            at_alpha = Stub(channel)
            async with HarkNode(redis, "gamma", "--node-ttl", str(TTL)) as gamma:
                await cluster_formed(client, "alpha", "gamma")
                async with grpc.aio.insecure_channel(gamma.grpc_address) as to_gamma:
                    old = await create_at(Stub(to_gamma))
                watch = at_alpha.WatchSession(pb.WatchSessionRequest(session_id=old.id))
                await first_event(watch, is_state(old.id, pb.NEW))
                gamma.kill()
            async with HarkNode(redis, "gamma", "--node-ttl", str(TTL)) as reborn:
                await cluster_formed(client, "alpha", "gamma")
                async with grpc.aio.insecure_channel(reborn.grpc_address) as to_reborn:
                    for stub in (at_alpha, Stub(to_reborn)):
                        got = await stub.GetSession(pb.GetSessionRequest(session_id=old.id))
                        assert (got.state, got.close_reason) == (pb.CLOSED, pb.NODE_LOST)
                await all_lost_in(watch, {old.id})
