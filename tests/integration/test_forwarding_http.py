"""A session's URLs work at a node that does not own it (WHIP, trickle, DELETE, the SSE mirror and
/listening), proxied to the owner; the owner believes a client address only from a member."""

from __future__ import annotations

import logging
from urllib.parse import urlsplit

import aiohttp
import pytest

from media.core.events import CloseReason
from media.v1 import media_pb2 as pb
from tests.in_process_cluster import in_process_cluster
from tests.integration.test_browser_api import read_sse
from tests.listening import listening, play_requests, requests_of, tone
from tests.support import events_until, grpc_stub, publish
from tests.tcp_proxy import tcp_proxy

TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}


def _trickle_body(publisher_sdp: str) -> str:
    ufrag = next(
        line.split(":", 1)[1]
        for line in publisher_sdp.splitlines()
        if line.startswith("a=ice-ufrag:")
    )
    candidate = "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host"
    return f"a=ice-ufrag:{ufrag}\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\n{candidate}\r\n"


async def test_a_sessions_urls_at_a_non_owner_act_on_the_owners_session() -> None:
    async with (
        in_process_cluster("alpha", "beta") as members,
        grpc_stub(members["beta"]) as owner,
        aiohttp.ClientSession() as http,
    ):
        alpha, beta = members["alpha"], members["beta"]
        created = await owner.CreateSession(pb.CreateSessionRequest())
        sid = created.id
        auth = {"Authorization": f"Bearer {created.token}"}
        at_alpha = f"{alpha.base_url}/whip/{sid}"
        async with http.get(f"{at_alpha}/events?token={created.token}") as events:
            assert events.status == 200 and events.content_type == "text/event-stream"
            [(_, snapshot)] = await read_sse(events, 1)
            assert snapshot["snapshot"]["session"]["node"] == "beta"
            publisher = await publish(alpha.base_url, f"/whip/{sid}", token=created.token)
            try:
                assert publisher.url == at_alpha
                states = await read_sse(events, 3)
                assert [m["stateChanged"]["state"] for _, m in states] == [
                    "CONNECTING",
                    "CONNECTED",
                    "READY",
                ]
                async with http.post(
                    f"{at_alpha}/listening", json={"listening": True}, headers=auth
                ) as listening:
                    assert listening.status == 200, await listening.text()
                    body = await listening.json()
                    assert (body["listening"], body["node"]) == (True, "beta")
                headers = {**TRICKLE, **auth, "If-Match": publisher.etag}
                body_text = _trickle_body(publisher.pc.localDescription.sdp)
                async with http.patch(at_alpha, headers=headers, data=body_text) as trickled:
                    assert trickled.status == 204, await trickled.text()
                async with http.patch(
                    at_alpha, headers={**headers, "If-Match": '"stale"'}, data=body_text
                ) as stale:
                    assert stale.status == 412 and "If-Match" in await stale.text()
                assert await publisher.delete() == 200
                rest = await read_sse(events, 5)
                assert rest[-1][1]["stateChanged"]["closeReason"] == "CLIENT_DELETE"
                assert await events.content.read() == b""  # the stream ended with the session
                assert beta.sessions.get(sid).snapshot().close_reason == CloseReason.CLIENT_DELETE
            finally:
                await publisher.vanish()


async def test_unknown_and_lost_nodes_are_404_without_a_connection() -> None:
    async with (
        in_process_cluster("alpha", "beta") as members,
        aiohttp.ClientSession() as http,
    ):
        alpha = members["alpha"]
        unknown = "gamma.0.AAAAAAAAAAAAAAAAAAAAAAAA"
        async with http.delete(f"{alpha.base_url}/whip/{unknown}") as response:
            assert response.status == 404
            assert unknown in await response.text()
        members.lose("delta")
        lost = "delta.0.AAAAAAAAAAAAAAAAAAAAAAAA"
        for method, path in (("DELETE", ""), ("POST", "/listening")):
            async with http.request(method, f"{alpha.base_url}/whip/{lost}{path}") as response:
                assert response.status == 404
                text = await response.text()
                assert lost in text and "NODE_LOST" in text and "delta" in text
        assert alpha.http_forwarder is not None and alpha.http_forwarder.clients == 0


async def test_a_lost_sessions_event_stream_is_200_with_closed_node_lost() -> None:
    """EventSource gives up after any answer but 200: the page must hear NODE_LOST there."""
    async with (
        in_process_cluster("alpha", "beta") as members,
        aiohttp.ClientSession() as http,
    ):
        members.lose("delta")
        lost = "delta.0.AAAAAAAAAAAAAAAAAAAAAAAA"
        url = f"{members['alpha'].base_url}/whip/{lost}/events"
        async with http.get(url) as fresh:
            assert fresh.status == 200 and fresh.content_type == "text/event-stream"
            [(_, snapshot)] = await read_sse(fresh, 1)
            session = snapshot["snapshot"]["session"]
            assert (session["id"], session["state"], session["closeReason"]) == (
                lost,
                "CLOSED",
                "NODE_LOST",
            )
            assert "delta" in session["closeDetail"]
            assert await fresh.content.read() == b""
        async with http.get(url, headers={"Last-Event-ID": "7"}) as resumed:
            assert resumed.status == 200
            [(event_id, closed)] = await read_sse(resumed, 1)
            assert event_id == "8" and closed["revision"] == "8"
            change = closed["stateChanged"]
            assert (change["state"], change["closeReason"]) == ("CLOSED", "NODE_LOST")
        async with http.get(url, headers={"Last-Event-ID": "x"}) as wrong:
            assert wrong.status == 400 and "Last-Event-ID" in await wrong.text()


async def test_a_relayed_event_stream_outlives_its_owner_connection_then_says_node_lost() -> None:
    async with (
        in_process_cluster("alpha", "beta") as members,
        grpc_stub(members["beta"]) as owner,
        tcp_proxy(urlsplit(members["beta"].base_url).port or 0) as network,
        aiohttp.ClientSession() as http,
    ):
        members.addresses["beta"].base_url = f"http://{network.target}"
        alpha = members["alpha"]
        ended = await owner.CreateSession(pb.CreateSessionRequest())
        url = f"{alpha.base_url}/whip/{ended.id}/events?token={ended.token}"
        async with http.get(url) as events:
            [(first_id, _)] = await read_sse(events, 1)
            network.cut()
            await owner.EndSession(pb.EndSessionRequest(session_id=ended.id))
            network.restore()
            rest = await read_sse(events, 2)
            assert [(i, m["stateChanged"]["closeReason"]) for i, m in rest] == [
                (str(int(first_id) + 1), "API_END")
            ]
            assert await events.content.read() == b""

        lost = await owner.CreateSession(pb.CreateSessionRequest())
        url = f"{alpha.base_url}/whip/{lost.id}/events?token={lost.token}"
        async with http.get(url) as events:
            [(first_id, snapshot)] = await read_sse(events, 1)
            network.cut()
            members.lose("beta")
            [(event_id, closed)] = await read_sse(events, 1)
            assert event_id == str(int(first_id) + 1)
            change = closed["stateChanged"]
            assert (change["state"], change["closeReason"]) == ("CLOSED", "NODE_LOST")
            assert change["previous"] == snapshot["snapshot"]["session"]["state"]
            assert "beta" in change["closeDetail"]
            assert await events.content.read() == b""


async def test_the_owner_sees_the_client_address_only_from_a_member() -> None:
    limited = {"rate_limit": 0.001, "rate_burst": 1}
    async with (
        in_process_cluster("alpha", "beta", configs={"beta": limited}) as members,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=("127.0.0.5", 0))) as far,
        aiohttp.ClientSession() as near,
    ):
        alpha, beta = members["alpha"], members["beta"]
        missing = "beta.0.BBBBBBBBBBBBBBBBBBBBBBBB"
        async with far.delete(f"{alpha.base_url}/whip/{missing}") as first:
            assert first.status == 404  # answered by the owner
        async with far.delete(f"{alpha.base_url}/whip/{missing}") as second:
            assert second.status == 429
            assert "from 127.0.0.5" in await second.text()

        forged = {"X-Hark-Forwarded": "forged", "X-Hark-Client-Address": "127.0.0.5"}
        async with near.delete(f"{beta.base_url}/whip/{missing}", headers=forged) as plain:
            assert plain.status == 404  # its own budget: not 127.0.0.5's, which is spent
        async with near.delete(f"{beta.base_url}/whip/{missing}", headers=forged) as again:
            assert again.status == 429
            assert "from 127.0.0.1" in await again.text()


async def test_a_whep_player_opened_at_a_non_owner_plays_the_owners_audio() -> None:
    async with (
        in_process_cluster("alpha", "beta") as members,
        grpc_stub(members["beta"]) as owner,
    ):
        alpha = members["alpha"]
        created = await owner.CreateSession(pb.CreateSessionRequest())
        sid = created.id
        watch = owner.WatchSession(pb.WatchSessionRequest(session_id=sid))
        async with listening(alpha.base_url, sid, token=created.token) as player:
            assert player.url.startswith(f"{alpha.base_url}/whep/{sid}/")
            messages = play_requests(sid, tone(440, 0.2), playback_id="hello")
            reply = await owner.PlayAudio(requests_of(messages))
            assert reply.played_ms == 200
            [started] = [
                e
                for e in await events_until(watch, "playback_started")
                if e.HasField("playback_started")
            ]
            assert started.playback_started.players == 1
            assert await player.delete() == 200
        watch.cancel()


async def test_an_unreachable_owner_is_503_retry_and_no_token_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with (
        in_process_cluster("alpha", "beta") as members,
        grpc_stub(members["beta"]) as owner,
        aiohttp.ClientSession() as http,
    ):
        alpha = members["alpha"]
        created = await owner.CreateSession(pb.CreateSessionRequest())
        members.addresses["beta"].base_url = "http://127.0.0.1:1"  # nothing listens there
        caplog.set_level(logging.DEBUG)
        url = f"{alpha.base_url}/whip/{created.id}/events?token={created.token}"
        async with http.get(url) as response:
            assert response.status == 503
            assert response.headers["Retry-After"] == "1"
            assert created.id in await response.text()
        assert created.token not in caplog.text
