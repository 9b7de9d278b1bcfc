"""The WHIP HTTP surface through a real aiohttp server: headers, auth, and every client mistake."""

from __future__ import annotations

import aiohttp
import grpc
import pytest

from media.config import IceServer
from media.v1 import media_pb2 as pb
from tests.offers import OFFER
from tests.support import grpc_stub, publish, running_server

SDP = {"Content-Type": "application/sdp"}
TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}

VIDEO_ONLY = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n"
)
PCMU_ONLY = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"
    "m=audio 9 UDP/TLS/RTP/SAVPF 0\r\nc=IN IP4 0.0.0.0\r\na=sendonly\r\na=rtpmap:0 PCMU/8000\r\n"
)
RECVONLY = PCMU_ONLY.replace("0\r\nc=", "111\r\nc=").replace(
    "a=sendonly\r\na=rtpmap:0 PCMU/8000", "a=recvonly\r\na=rtpmap:111 opus/48000/2"
)


async def test_bad_whip_requests_get_the_documented_4xx_with_a_reason() -> None:
    async with running_server() as app, aiohttp.ClientSession() as http:
        base = app.base_url
        cases: list[tuple[str, str, dict[str, str], bytes | str, int, str]] = [
            ("POST", "/whip", {"Content-Type": "text/plain"}, "v=0", 415, "application/sdp"),
            ("POST", "/whip", {}, "v=0", 415, "application/sdp"),
            ("POST", "/whip", SDP, "", 400, "empty"),
            ("POST", "/whip", SDP, "hello", 400, "v=0"),
            ("POST", "/whip", SDP, b"v=0\r\n\xff\xfe", 400, "UTF-8"),
            ("POST", "/whip", SDP, "v=0\r\nm=audio x\r\n", 400, "m= line"),
            ("POST", "/whip", SDP, VIDEO_ONLY, 422, "no audio"),
            ("POST", "/whip", SDP, PCMU_ONLY, 422, "no Opus"),
            ("POST", "/whip", SDP, RECVONLY, 422, "recvonly"),
            ("POST", "/whip", SDP, "v=0\r\n" + "a=x\r\n" * 20000, 413, "limit"),
            ("POST", "/whip/nope", SDP, "v=0", 404, "'nope' not found"),
            ("PATCH", "/whip/nope", TRICKLE, "a=end-of-candidates", 404, "not found"),
            ("DELETE", "/whip/nope", {}, "", 404, "not found"),
            ("GET", "/whip/nope", {}, "", 404, "not found"),
        ]
        for method, path, headers, body, status, reason in cases:
            async with http.request(method, base + path, headers=headers, data=body) as response:
                text = await response.text()
                assert response.status == status, (method, path, status, text)
                assert reason in text, (method, path, text)
                assert response.content_type == "text/plain"


async def test_bad_trickle_requests_on_a_live_session() -> None:
    async with running_server() as app, aiohttp.ClientSession() as http:
        publisher = await publish(app.base_url)
        try:
            url = publisher.url
            ufrag = next(
                line.split(":", 1)[1]
                for line in publisher.pc.localDescription.sdp.splitlines()
                if line.startswith("a=ice-ufrag:")
            )
            candidate = "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host"
            mline = "m=audio 9 UDP/TLS/RTP/SAVPF 111"
            good = f"a=ice-ufrag:{ufrag}\r\n{mline}\r\na=mid:0\r\n{candidate}\r\n"
            cases = [
                ({"Content-Type": "application/sdp"}, good, 415, "trickle-ice-sdpfrag"),
                ({**TRICKLE, "If-Match": '"stale"'}, good, 412, "If-Match"),
                (TRICKLE, "a=candidate:1 1 udp", 400, "candidate needs"),
                (TRICKLE, "garbage", 400, "x=value"),
                (TRICKLE, "a=ice-ufrag:other\r\na=ice-pwd:otherpassword", 422, "ICE restart"),
            ]
            for headers, body, status, reason in cases:
                async with http.patch(url, headers=headers, data=body) as response:
                    text = await response.text()
                    assert response.status == status, (headers, body, text)
                    assert reason in text
            for headers in (TRICKLE, {**TRICKLE, "If-Match": publisher.etag}):
                async with http.patch(url, headers=headers, data=good) as response:
                    assert response.status == 204, await response.text()
        finally:
            await publisher.vanish()


async def test_get_and_options_follow_rfc_9725() -> None:
    stun = IceServer.parse("stun:stun.example.net:3478")
    turn = IceServer.parse("turn:ann:pw@turn.example.net:3478?transport=udp")
    async with running_server(ice_servers=(stun, turn)) as app, aiohttp.ClientSession() as http:
        async with http.get(app.base_url + "/whip") as response:
            assert response.status == 204 and await response.read() == b""
        async with http.options(app.base_url + "/whip") as response:
            assert response.status == 204
            assert response.headers["Accept-Post"] == "application/sdp"
            exposed = response.headers["Access-Control-Expose-Headers"]
            assert {"Location", "ETag", "Link"} <= {h.strip() for h in exposed.split(",")}
            assert "POST" in response.headers["Access-Control-Allow-Methods"]
            assert response.headers["Access-Control-Allow-Origin"] == "*"
        publisher = await publish(app.base_url)
        try:
            async with http.get(publisher.url) as response:
                assert response.status == 204 and await response.read() == b""
        finally:
            await publisher.vanish()

        async with http.post(app.base_url + "/whip", headers=SDP, data=PCMU_ONLY) as response:
            assert response.status == 422
            assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_ice_servers_are_announced_in_link_headers_and_turn_credentials_only_in_a_201() -> (
    None
):
    stun = IceServer.parse("stun:stun.example.net:3478")
    turn = IceServer.parse("turn:ann:pw@turn.example.net:3478?transport=udp")
    stun_link = '<stun:stun.example.net:3478>; rel="ice-server"'
    turn_link = (
        '<turn:turn.example.net:3478?transport=udp>; rel="ice-server"; username="ann"; '
        'credential="pw"; credential-type="password"'
    )
    async with running_server(ice_servers=(stun, turn)) as app:
        async with aiohttp.ClientSession() as http:
            async with http.options(app.base_url + "/whip") as response:
                preflight_links = response.headers.getall("Link")
            sdp = {"Content-Type": "application/sdp"}
            async with http.post(app.base_url + "/whip", headers=sdp, data=OFFER) as response:
                assert response.status == 201, await response.text()
                answer_links = response.headers.getall("Link")
    assert preflight_links == [stun_link]
    assert answer_links == [stun_link, turn_link]


async def test_a_server_token_guards_whip_and_grpc() -> None:
    token = "s3cret-token-value"
    async with running_server(token=token) as app, aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong-token"}, {"Authorization": "Basic x"}):
            async with http.post(
                app.base_url + "/whip", headers={**SDP, **headers}, data="v=0"
            ) as response:
                assert response.status == 401
                assert response.headers["WWW-Authenticate"].startswith("Bearer")
                assert token not in await response.text()

        async with grpc_stub(app) as anonymous:
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await anonymous.ListSessions(pb.ListSessionsRequest())
            assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "bearer token" in (missing.value.details() or "")
            with pytest.raises(grpc.aio.AioRpcError) as missing_stream:
                await anonymous.WatchSessions(pb.WatchSessionsRequest()).read()
            assert missing_stream.value.code() == grpc.StatusCode.UNAUTHENTICATED
        async with grpc_stub(app, token="wrong-token") as wrong:
            with pytest.raises(grpc.aio.AioRpcError) as bad:
                await wrong.ListSessions(pb.ListSessionsRequest())
            assert bad.value.code() == grpc.StatusCode.UNAUTHENTICATED

        async with grpc_stub(app, token=token) as stub:
            created = await stub.CreateSession(pb.CreateSessionRequest())
            assert (await stub.ListSessions(pb.ListSessionsRequest())).sessions[0].id == created.id

        # the session token authorises only its own session, never POST /whip
        async with http.post(
            app.base_url + "/whip",
            headers={**SDP, "Authorization": f"Bearer {created.token}"},
            data="v=0",
        ) as response:
            assert response.status == 401
        other = await publish(app.base_url, token=token)
        try:
            async with http.delete(
                other.url, headers={"Authorization": f"Bearer {created.token}"}
            ) as response:
                assert response.status == 401
            publisher = await publish(app.base_url, f"/whip/{created.id}", token=created.token)
            assert await publisher.delete() == 200
            await publisher.vanish()
        finally:
            await other.vanish()


async def test_health_and_reflection_need_no_token() -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with running_server(token="s3cret-token-value") as app:
        async with grpc.aio.insecure_channel(app.grpc_target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("", "media.v1.MediaService"):
                reply = await health.Check(health_pb2.HealthCheckRequest(service=service))
                assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_bad_grpc_arguments_get_precise_status_codes() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        cases = [
            (stub.GetSession(pb.GetSessionRequest()), grpc.StatusCode.INVALID_ARGUMENT, "required"),
            (
                stub.GetSession(pb.GetSessionRequest(session_id="nope")),
                grpc.StatusCode.NOT_FOUND,
                "'nope' not found",
            ),
            (
                stub.StartListening(pb.StartListeningRequest(session_id="nope")),
                grpc.StatusCode.NOT_FOUND,
                "not found",
            ),
            (
                stub.EndSession(pb.EndSessionRequest(session_id="x" * 200)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "longer than",
            ),
            (
                stub.CreateSession(pb.CreateSessionRequest(ttl_seconds=-1)),
                grpc.StatusCode.INVALID_ARGUMENT,
                "ttl_seconds",
            ),
            (
                stub.CreateSession(pb.CreateSessionRequest(metadata={"k": "v" * 2000})),
                grpc.StatusCode.INVALID_ARGUMENT,
                "metadata",
            ),
        ]
        for call, code, text in cases:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await call
            assert failure.value.code() == code
            assert text in (failure.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as unknown_watch:
            await stub.WatchSession(pb.WatchSessionRequest(session_id="nope")).read()
        assert unknown_watch.value.code() == grpc.StatusCode.NOT_FOUND
        created = await stub.CreateSession(pb.CreateSessionRequest())
        with pytest.raises(grpc.aio.AioRpcError) as early:
            await stub.StartListening(pb.StartListeningRequest(session_id=created.id))
        assert early.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is NEW, not READY" in (early.value.details() or "")


async def test_offer_limits_are_configurable() -> None:
    from tests.offers import OFFER

    video = "m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n"
    async with running_server(max_m_lines=1, max_offer_bytes=2048) as app:
        async with aiohttp.ClientSession() as http:
            async with http.post(app.base_url + "/whip", headers=SDP, data=OFFER + video) as two:
                assert two.status == 422
                assert "2 m-lines; at most 1" in await two.text()
            padded = OFFER + "a=x-padding:" + "p" * 2048 + "\r\n"
            async with http.post(app.base_url + "/whip", headers=SDP, data=padded) as big:
                assert big.status == 413
                assert "the limit is 2048" in await big.text()


async def test_trickle_to_a_session_without_a_publisher_is_a_conflict() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        created = await stub.CreateSession(pb.CreateSessionRequest())
        async with aiohttp.ClientSession() as http:
            async with http.patch(
                created.whip_url,
                headers={**TRICKLE, "Authorization": f"Bearer {created.token}"},
                data="a=end-of-candidates",
            ) as response:
                assert response.status == 409
                assert "has no publisher" in await response.text()
