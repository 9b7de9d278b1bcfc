"""Hark nodes joined through a real Redis: records anyone can read with redis commands, new
sessions placed on the node with room, a killed node's sessions known as lost, Redis restarts."""

from __future__ import annotations

import pathlib
import signal
import time

import aiohttp
import grpc
from redis.asyncio import Redis

from media.cluster.routing import Elsewhere, Here, Lost
from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc
from tests.cluster_support import SECRET, HarkNode, running_redis
from tests.listening import recvonly_offer
from tests.support import eventually, publish, running_server

SDP = {"Content-Type": "application/sdp"}


async def members(redis: Redis) -> set[str]:
    return set(await redis.smembers("hark:nodes"))


async def cluster_formed(redis: Redis, *nodes: str) -> None:
    """Every node's record is in Redis, and each node wrote once more after that: every node's
    beat reads the others right after writing, so each now knows all of them."""

    async def all_listed() -> bool:
        records = [await redis.hgetall(f"hark:node:{node}") for node in nodes]
        return all(records) and await members(redis) >= set(nodes)

    await eventually(all_listed, f"records of {nodes} in Redis")
    formed_at = time.time()

    async def all_wrote_again() -> bool:
        records = [await redis.hgetall(f"hark:node:{node}") for node in nodes]
        return all(record and float(record["updated"]) > formed_at for record in records)

    await eventually(all_wrote_again, "a beat of every node after all joined")


async def create_session(grpc_address: str) -> pb.Session:
    async with grpc.aio.insecure_channel(grpc_address) as channel:
        created: pb.Session = await media_pb2_grpc.MediaServiceStub(channel).CreateSession(
            pb.CreateSessionRequest(), timeout=10
        )
        return created


async def an_offer() -> str:
    """A real aiortc publisher's offer, for requests whose answer is not used."""
    from aiortc import RTCPeerConnection

    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    sdp: str = pc.localDescription.sdp
    await pc.close()
    return sdp


async def test_each_node_writes_a_plain_record_and_the_ids_of_its_sessions(
    tmp_path: pathlib.Path,
) -> None:
    async with (
        running_redis(tmp_path) as server,
        HarkNode(server, "alpha") as alpha,
        HarkNode(server, "beta", "--max-sessions", "7") as beta,
        HarkNode(server, "gamma") as gamma,
        server.client() as redis,
    ):
        await cluster_formed(redis, "alpha", "beta", "gamma")
        assert await members(redis) == {"alpha", "beta", "gamma"}
        record = await redis.hgetall("hark:node:beta")
        assert record["id"] == "beta"
        assert record["public_url"] == beta.base_url
        assert record["grpc_address"] == beta.grpc_address
        assert (record["state"], record["sessions"], record["capacity"]) == ("SERVING", "0", "7")
        assert record["workers"] == "1" and record["overloaded"] == "0"
        assert float(record["cpu"]) >= 0 and float(record["loop_lag_ms"]) >= 0
        assert 0 < await redis.pttl("hark:node:beta") <= 5000

        publisher = await publish(alpha.base_url)
        try:
            created = await create_session(gamma.grpc_address)
            assert publisher.location == f"{alpha.base_url}/whip/{publisher.session_id}"
            assert created.whip_url == f"{gamma.base_url}/whip/{created.id}"

            async def listed() -> bool:
                return await redis.smembers("hark:node:alpha:sessions") == {
                    publisher.session_id
                } and await redis.smembers("hark:node:gamma:sessions") == {created.id}

            await eventually(listed, "each node's session ids in its set")
            await eventually(
                lambda: _field(redis, "alpha", "sessions", "1"), "alpha's record counts 1"
            )
        finally:
            await publisher.vanish()


async def _field(redis: Redis, node: str, name: str, value: str) -> bool:
    return await redis.hget(f"hark:node:{node}", name) == value


async def test_a_whip_post_at_a_full_node_is_proxied_to_one_with_room(
    tmp_path: pathlib.Path,
) -> None:
    async with (
        running_redis(tmp_path) as server,
        HarkNode(server, "alpha", "--max-sessions", "1") as alpha,
        HarkNode(server, "beta") as beta,
        server.client() as redis,
    ):
        await cluster_formed(redis, "alpha", "beta")
        first = await publish(alpha.base_url)
        second = await publish(alpha.base_url)  # alpha is full: beta answers, through alpha
        try:
            assert first.session_id.startswith("alpha.")
            assert second.session_id.startswith("beta.")
            assert second.location == f"{beta.base_url}/whip/{second.session_id}"
            async with grpc.aio.insecure_channel(beta.grpc_address) as channel:
                ready = await media_pb2_grpc.MediaServiceStub(channel).StartListening(
                    pb.StartListeningRequest(session_id=second.session_id, wait_for_ready=True),
                    timeout=20,
                )
            assert ready.state == pb.READY
            async with aiohttp.ClientSession() as http:  # straight to the owner
                player = await recvonly_offer()
                whep = f"{beta.base_url}/whep/{second.session_id}"
                sdp = player.localDescription.sdp
                async with http.post(whep, data=sdp, headers=SDP) as response:
                    assert response.status == 201
                    assert response.headers["Location"].startswith(f"{whep}/")
                await player.close()
                async with http.delete(second.location) as response:
                    assert response.status == 200
                garbage = "v=0\r\nnot an offer\r\n"  # beta's answer, through alpha
                async with http.post(f"{alpha.base_url}/whip", data=garbage, headers=SDP) as r:
                    assert r.status == 400
                    assert r.content_type == "text/plain"
                    assert "line 2 is not" in await r.text()

            precreated = await create_session(beta.grpc_address)  # POST /whip/{id} at alpha
            third = await publish(alpha.base_url, f"/whip/{precreated.id}", token=precreated.token)
            try:
                assert third.location == precreated.whip_url
            finally:
                await third.vanish()
        finally:
            await first.vanish()
            await second.vanish()


async def test_with_whip_redirect_a_full_node_answers_307_to_the_owner(
    tmp_path: pathlib.Path,
) -> None:
    async with (
        running_redis(tmp_path) as server,
        HarkNode(server, "alpha", "--max-sessions", "1", "--whip-redirect") as alpha,
        HarkNode(server, "beta") as beta,
        server.client() as redis,
        aiohttp.ClientSession() as http,
    ):
        await cluster_formed(redis, "alpha", "beta")
        assert (await create_session(alpha.grpc_address)).id.startswith("alpha.")  # now full
        offer = await an_offer()
        url = f"{alpha.base_url}/whip"
        async with http.post(url, data=offer, headers=SDP, allow_redirects=False) as response:
            assert response.status == 307
            assert response.headers["Location"] == f"{beta.base_url}/whip"
        precreated = await create_session(beta.grpc_address)
        url = f"{alpha.base_url}/whip/{precreated.id}"
        async with http.post(url, data=offer, headers=SDP, allow_redirects=False) as response:
            assert response.status == 307
            assert response.headers["Location"] == precreated.whip_url


async def test_a_draining_node_says_so_at_once_and_new_sessions_go_elsewhere(
    tmp_path: pathlib.Path,
) -> None:
    async with (
        running_redis(tmp_path) as server,
        HarkNode(server, "alpha", "--drain-timeout", "60") as alpha,
        HarkNode(server, "beta") as beta,
        server.client() as redis,
    ):
        await cluster_formed(redis, "alpha", "beta")
        await create_session(alpha.grpc_address)  # keeps alpha draining
        assert alpha.proc is not None
        alpha.proc.send_signal(signal.SIGTERM)
        await eventually(lambda: _field(redis, "alpha", "state", "DRAINING"), "alpha DRAINING")
        publisher = await publish(alpha.base_url)
        try:
            assert publisher.location == f"{beta.base_url}/whip/{publisher.session_id}"
            created = await create_session(alpha.grpc_address)
            assert created.id.startswith("beta.")
            assert created.whip_url == f"{beta.base_url}/whip/{created.id}"
            async with grpc.aio.insecure_channel(alpha.grpc_address) as channel:
                try:  # beta's refusal comes back as beta said it, details included
                    await media_pb2_grpc.MediaServiceStub(channel).CreateSession(
                        pb.CreateSessionRequest(ttl_seconds=-1), timeout=10
                    )
                    raise AssertionError("a negative ttl_seconds was taken")
                except grpc.aio.AioRpcError as error:
                    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
                    assert "ttl_seconds" in (error.details() or "")
                    trailers = dict(error.trailing_metadata() or ())
                    assert "grpc-status-details-bin" in trailers
        finally:
            await publisher.vanish()


async def test_a_cluster_with_no_room_answers_503_and_resource_exhausted(
    tmp_path: pathlib.Path,
) -> None:
    async with (
        running_redis(tmp_path) as server,
        HarkNode(server, "alpha", "--max-sessions", "1") as alpha,
        HarkNode(server, "beta", "--max-sessions", "1") as beta,
        server.client() as redis,
        aiohttp.ClientSession() as http,
    ):
        await cluster_formed(redis, "alpha", "beta")
        assert (await create_session(alpha.grpc_address)).id.startswith("alpha.")
        placed = await create_session(alpha.grpc_address)
        assert placed.id.startswith("beta.")
        assert placed.whip_url == f"{beta.base_url}/whip/{placed.id}"
        await eventually(lambda: _field(redis, "beta", "sessions", "1"), "beta counts 1")
        await cluster_formed(redis, "alpha", "beta")  # alpha has read beta's new count
        try:
            await create_session(alpha.grpc_address)
            raise AssertionError("a full cluster created a session")
        except grpc.aio.AioRpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        async with http.post(f"{alpha.base_url}/whip", data=await an_offer(), headers=SDP) as r:
            assert r.status == 503
            assert "Retry-After" in r.headers
            assert "--max-sessions 1" in await r.text()


async def test_a_killed_nodes_sessions_are_known_as_lost_at_the_survivors(
    tmp_path: pathlib.Path,
) -> None:
    ttl = 2.0
    async with (
        running_redis(tmp_path) as server,
        running_server(
            redis_url=server.url, node_id="alpha", cluster_secret=SECRET, node_ttl=ttl
        ) as alpha,
        HarkNode(server, "beta") as _beta,
        HarkNode(server, "gamma", "--node-ttl", str(ttl)) as gamma,
        server.client() as redis,
    ):
        await cluster_formed(redis, "alpha", "beta", "gamma")
        publisher = await publish(gamma.base_url)
        try:
            created = await create_session(gamma.grpc_address)
            ids = {publisher.session_id, created.id}
            for session_id in ids:
                assert isinstance(alpha.router.route(session_id), Elsewhere)
            # Killed the moment it acknowledged them: they are in Redis already.
            gamma.kill()
            await eventually(
                lambda: all(isinstance(alpha.router.route(sid), Lost) for sid in ids),
                "gamma's sessions lost at alpha",
                timeout=ttl + 2,
            )
            assert await redis.get("hark:node:gamma:lost") in ("alpha", "beta")
            assert await redis.pttl("hark:node:gamma:sessions") > 0
            assert await redis.smembers("hark:node:gamma:sessions") == ids
            assert "gamma" not in alpha.cluster.directory.nodes()  # type: ignore[union-attr]
            assert isinstance(alpha.router.route(f"alpha.0.{'x' * 24}"), Here)
        finally:
            await publisher.vanish()


async def test_a_node_restarted_under_its_id_answers_for_its_predecessors_sessions_as_lost(
    tmp_path: pathlib.Path,
) -> None:
    async with running_redis(tmp_path) as server, server.client() as redis:
        async with HarkNode(server, "gamma") as gamma:
            created = await create_session(gamma.grpc_address)
            gamma.kill()  # and back at once, as a restarted pod: its record has not expired
        async with running_server(
            redis_url=server.url, node_id="gamma", cluster_secret=SECRET
        ) as reborn:
            await eventually(
                lambda: isinstance(reborn.router.route(created.id), Lost),
                "the old process's session lost at the new one",
            )
            assert await redis.smembers("hark:node:gamma:sessions") == set()
            assert isinstance(reborn.router.route(reborn.sessions.new_id()), Here)


async def test_nodes_keep_their_sessions_without_redis_and_rejoin_when_it_is_back(
    tmp_path: pathlib.Path,
) -> None:
    ttl = 2.0
    async with (
        running_redis(tmp_path) as server,
        running_server(
            redis_url=server.url, node_id="alpha", cluster_secret=SECRET, node_ttl=ttl
        ) as alpha,
        HarkNode(server, "beta", "--node-ttl", str(ttl)) as beta,
        aiohttp.ClientSession() as http,
    ):
        async with server.client() as redis:
            await cluster_formed(redis, "alpha", "beta")
        publisher = await publish(alpha.base_url)
        try:
            await server.stop()
            assert alpha.cluster is not None
            await eventually(lambda: alpha.cluster.detached, "alpha out of the cluster")  # type: ignore[union-attr]
            async with http.get(f"{alpha.base_url}/readyz") as response:
                assert response.status == 503
            async with http.post(
                f"{alpha.base_url}/whip", data=await an_offer(), headers=SDP
            ) as response:
                assert response.status == 503
                assert "Redis" in await response.text()
            live = alpha.sessions.get(publisher.session_id)
            assert not live.closed  # its own session goes on

            await server.start()  # empty, as a restarted Redis without persistence
            async with server.client() as redis:
                await cluster_formed(redis, "alpha", "beta")
                assert await redis.smembers("hark:node:alpha:sessions") == {publisher.session_id}
            await eventually(lambda: not alpha.cluster.detached, "alpha back")  # type: ignore[union-attr]
            async with http.get(f"{alpha.base_url}/readyz") as response:
                assert response.status == 200
            assert isinstance(alpha.router.route(f"beta.0.{'x' * 24}"), Elsewhere)
            assert beta.base_url in alpha.router.route(f"beta.0.{'x' * 24}").http_base  # type: ignore[union-attr]
        finally:
            await publisher.vanish()
