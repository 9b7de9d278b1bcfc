"""Nodes run with ``--workers 2`` joined through a real Redis: each worker is a member with its
own record and session set, a session of either worker of one node is served through the other
node's public ports (one hop to the node, one more to the sibling worker), and a node killed
whole (supervisor and workers) has its sessions lost at the other node."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import signal
from collections.abc import AsyncIterator

import aiohttp
import grpc
from redis.asyncio import Redis

from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc
from tests.cluster_support import SECRET, RedisServer, running_redis
from tests.integration.test_cluster_redis import cluster_formed
from tests.support import Publisher, eventually
from tests.workers_support import HarkWorkers, private_stub, publish_on_every_worker, worker_of

TTL = 2.0
MEMBERS = {"alpha.0", "alpha.1", "beta.0", "beta.1"}


def workers_node(redis: RedisServer, node: str) -> HarkWorkers:
    return HarkWorkers(
        *("--redis-url", redis.url, "--cluster-secret", SECRET),
        *("--ice-address", "127.0.0.1", "--node-ttl", str(TTL)),
        node=node,
    )


async def every_member_knows_the_others(redis: Redis) -> None:
    await cluster_formed(redis, *MEMBERS)
    assert set(await redis.smembers("hark:nodes")) == MEMBERS


@contextlib.asynccontextmanager
async def two_nodes(
    tmp_path: pathlib.Path,
) -> AsyncIterator[tuple[HarkWorkers, HarkWorkers, Redis]]:
    """Nodes alpha and beta, two workers each, every member knowing the others."""
    async with (
        running_redis(tmp_path) as server,
        workers_node(server, "alpha") as alpha,
        workers_node(server, "beta") as beta,
        server.client() as redis,
    ):
        await every_member_knows_the_others(redis)
        yield alpha, beta, redis


@contextlib.asynccontextmanager
async def stub_at(target: str) -> AsyncIterator[media_pb2_grpc.MediaServiceAsyncStub]:
    async with grpc.aio.insecure_channel(target) as channel:
        yield media_pb2_grpc.MediaServiceStub(channel)


async def first_audio(stream: grpc.aio.UnaryStreamCall[object, pb.StreamAudioResponse]) -> bool:
    async for chunk in stream:
        if chunk.HasField("audio") and chunk.audio.pcm:
            return True
    return False


async def test_each_worker_is_a_member_with_its_own_record_and_session_set(
    tmp_path: pathlib.Path,
) -> None:
    async with two_nodes(tmp_path) as (_, beta, redis):
        record = await redis.hgetall("hark:node:beta.1")
        assert (record["id"], record["worker"], record["workers"]) == ("beta", "1", "2")
        assert record["public_url"] == beta.base_url
        assert record["grpc_address"] == beta.grpc_target
        created = {}
        for worker in (0, 1):
            async with private_stub(beta, worker) as stub:
                created[worker] = (await stub.CreateSession(pb.CreateSessionRequest())).id

        async def listed_per_worker() -> bool:
            sets = [await redis.smembers(f"hark:node:beta.{worker}:sessions") for worker in (0, 1)]
            return sets == [{created[0]}, {created[1]}]

        await eventually(listed_per_worker, "each worker's session in its own set")


@dataclasses.dataclass
class TwoNodes:
    """Nodes alpha and beta (two workers each), a publisher on each worker of beta, and a gRPC
    stub on alpha's public port."""

    alpha: HarkWorkers
    beta: HarkWorkers
    redis: Redis
    at_alpha: media_pb2_grpc.MediaServiceAsyncStub
    publishers: list[Publisher]


@contextlib.asynccontextmanager
async def published_on_both_workers_of_beta(tmp_path: pathlib.Path) -> AsyncIterator[TwoNodes]:
    async with (
        two_nodes(tmp_path) as (alpha, beta, redis),
        stub_at(alpha.grpc_target) as at_alpha,
    ):
        publishers = await publish_on_every_worker(beta)
        try:
            yield TwoNodes(alpha, beta, redis, at_alpha, publishers)
        finally:
            for publisher in publishers:
                await publisher.vanish()


async def test_sessions_of_both_workers_of_a_node_are_served_at_another_node(
    tmp_path: pathlib.Path,
) -> None:
    async with (
        published_on_both_workers_of_beta(tmp_path) as nodes,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
    ):
        at_alpha = nodes.at_alpha
        for publisher in nodes.publishers:
            sid = publisher.session_id
            session = await at_alpha.GetSession(pb.GetSessionRequest(session_id=sid), timeout=10)
            assert (session.id, session.node) == (sid, "beta")
            request = pb.StartListeningRequest(session_id=sid, wait_for_ready=True)
            ready = await at_alpha.StartListening(request, timeout=30)
            assert (ready.state, ready.listening) == (pb.READY, True)
            watch = at_alpha.WatchSession(pb.WatchSessionRequest(session_id=sid), timeout=20)
            first = await anext(aiter(watch))
            assert first.snapshot.session.state == pb.READY
            watch.cancel()
            request = pb.StreamAudioRequest(session_id=sid, mode=pb.ALL)
            stream = at_alpha.StreamAudio(request, timeout=20)
            assert await first_audio(stream)
            stream.cancel()

        for publisher in nodes.publishers:
            sid = publisher.session_id
            async with http.delete(f"{nodes.alpha.base_url}/whip/{sid}") as response:
                assert response.status == 200, await response.text()
            async with private_stub(nodes.beta, worker_of(sid, "beta")) as owner:
                ended = await owner.GetSession(pb.GetSessionRequest(session_id=sid))
            assert (ended.state, ended.close_reason) == (pb.CLOSED, pb.CLIENT_DELETE)


async def test_a_node_killed_whole_has_its_sessions_lost_at_the_others(
    tmp_path: pathlib.Path,
) -> None:
    async with published_on_both_workers_of_beta(tmp_path) as nodes:
        at_alpha, beta = nodes.at_alpha, nodes.beta
        ids = [publisher.session_id for publisher in nodes.publishers]
        for sid in ids:
            await eventually(
                lambda sid=sid: _listed(nodes.redis, sid), f"{sid} in its worker's set in Redis"
            )
        watches = [at_alpha.WatchSession(pb.WatchSessionRequest(session_id=s)) for s in ids]
        for watch in watches:
            await anext(aiter(watch))  # the snapshot: the watch reached the owner

        assert beta.proc is not None
        for pid in [beta.proc.pid, *beta.pids.values()]:
            os.kill(pid, signal.SIGKILL)

        async def all_lost() -> bool:
            for sid in ids:
                try:
                    session = await at_alpha.GetSession(pb.GetSessionRequest(session_id=sid))
                except grpc.aio.AioRpcError as error:  # beta unreachable, not yet lost
                    assert error.code() == grpc.StatusCode.UNAVAILABLE, error
                    return False
                if session.close_reason != pb.NODE_LOST:
                    return False
            return True

        await eventually(all_lost, "beta's sessions NODE_LOST at alpha", timeout=TTL + 2)
        for watch in watches:
            closed = [event async for event in watch if event.HasField("state_changed")]
            assert closed[-1].state_changed.close_reason == pb.NODE_LOST


async def _listed(redis: Redis, session_id: str) -> bool:
    node, worker, _ = session_id.split(".")
    return bool(await redis.sismember(f"hark:node:{node}.{worker}:sessions", session_id))


async def test_a_node_stopped_with_sigterm_exits_and_its_members_leave_at_once(
    tmp_path: pathlib.Path,
) -> None:
    async with two_nodes(tmp_path) as (_, beta, redis):
        assert beta.proc is not None
        beta.proc.send_signal(signal.SIGTERM)
        assert await beta.wait(timeout=30) == 0
        for pid in beta.pids.values():
            assert not pathlib.Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the node"
        assert not await redis.exists("hark:node:beta.0", "hark:node:beta.1")
