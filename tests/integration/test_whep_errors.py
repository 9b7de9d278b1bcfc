"""Every client mistake on the return path (WHEP over HTTP, PlayAudio and StopPlayback over gRPC)
gets its documented status and a reason that names the problem, and the server keeps serving.

A real server on port 0, real aiortc WHEP players over loopback, real gRPC calls; no mocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from multidict import CIMultiDictProxy

from media.app import HarkApp
from media.rtc.negotiation import close_peer_connection
from media.v1 import media_pb2 as pb
from tests.listening import (
    auth,
    fell_silent,
    hold_open,
    listen,
    listening,
    loud,
    play_requests,
    recvonly_offer,
    tone,
)
from tests.listening import requests_of as messages
from tests.support import eventually, grpc_stub, next_event, running_server

SDP = "application/sdp"
TRICKLE = "application/trickle-ice-sdpfrag"
TOKEN = "server-token-for-whep-tests"
INVALID = grpc.StatusCode.INVALID_ARGUMENT


# HTTP helpers


async def offer_sdp() -> str:
    """A real aiortc recvonly offer's SDP (the peer is closed; the server only reads the text)."""
    pc = await recvonly_offer()
    sdp = str(pc.localDescription.sdp)
    await pc.close()
    return sdp


def with_direction(sdp: str, direction: str) -> str:
    assert "a=recvonly\r\n" in sdp
    return sdp.replace("a=recvonly\r\n", f"a={direction}\r\n")


def pcmu_only(sdp: str) -> str:
    """The offer with every codec but PCMU (static payload type 0) taken out."""
    lines = []
    for line in sdp.split("\r\n"):
        if line.startswith("m=audio "):
            line = " ".join(line.split()[:3] + ["0"])
        elif (match := re.match(r"a=(?:rtpmap|fmtp|rtcp-fb):(\d+) ", line)) and match[1] != "0":
            continue
        lines.append(line)
    edited = "\r\n".join(lines)
    assert "opus" not in edited.lower() and "PCMU/8000" in edited
    return edited


def ice_credentials(sdp: str) -> tuple[str, str]:
    ufrag = re.search(r"^a=ice-ufrag:(\S+)", sdp, re.MULTILINE)
    pwd = re.search(r"^a=ice-pwd:(\S+)", sdp, re.MULTILINE)
    assert ufrag and pwd
    return ufrag[1], pwd[1]


async def request(
    http: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    headers: dict[str, str] | None = None,
    data: str = "",
) -> tuple[int, str, CIMultiDictProxy[str]]:
    async with http.request(method, url, headers=headers or {}, data=data) as response:
        return response.status, await response.text(), response.headers


class Player:
    """A WHEP player opened by hand, keeping what ``listen`` does not: its ETag and offer."""

    def __init__(self, pc: RTCPeerConnection, url: str, etag: str, token: str | None) -> None:
        self.pc, self.url, self.etag, self.token = pc, url, etag, token


@contextlib.asynccontextmanager
async def open_player(
    http: aiohttp.ClientSession, base_url: str, session_id: str, token: str | None
) -> AsyncIterator[Player]:
    pc = await recvonly_offer()
    try:
        status, answer, headers = await request(
            http,
            "POST",
            f"{base_url}/whep/{session_id}",
            headers={"Content-Type": SDP, **auth(token)},
            data=pc.localDescription.sdp,
        )
        assert status == 201, answer
        assert headers.get("Content-Type", "").startswith(SDP)
        location = headers["Location"]
        assert location.startswith(f"/whep/{session_id}/")
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        player = Player(pc, base_url + location, headers["ETag"], token)
        yield player
    finally:
        await close_peer_connection(pc)


async def still_serves(app: HarkApp, token: str | None = None) -> None:
    """A fresh session plays a tone to a fresh WHEP player, end to end."""
    async with grpc_stub(app, token) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        async with listening(app.base_url, session.id, token=session.token) as player:
            reply = await stub.PlayAudio(
                messages(play_requests(session.id, tone(440, 0.3))), timeout=10
            )
            await eventually(lambda: fell_silent(player.heard), "the player heard the tone end")
        assert reply.played_ms == 300 and not reply.interrupted
        assert len(loud(player.heard)) >= 10, "the player heard (almost) nothing"
        await stub.EndSession(pb.EndSessionRequest(session_id=session.id))


# HTTP (WHEP)


async def test_bad_whep_offers_get_the_documented_4xx_with_a_reason() -> None:
    async with running_server() as app, aiohttp.ClientSession() as http:
        async with grpc_stub(app) as stub:
            live = await stub.CreateSession(pb.CreateSessionRequest())
            closed = await stub.CreateSession(pb.CreateSessionRequest())
            await stub.EndSession(pb.EndSessionRequest(session_id=closed.id))
        good = await offer_sdp()
        own = {"Content-Type": SDP, **auth(live.token)}
        recvonly = "it must be recvonly"
        mine = f"/whep/{live.id}"
        cases: list[tuple[str, dict[str, str], str, int, list[str]]] = [
            ("/whep/nope", {"Content-Type": SDP}, good, 404, ["'nope' not found"]),
            (f"/whep/{closed.id}", own, good, 409, ["CLOSED (API_END)", "live session"]),
            (mine, own, with_direction(good, "sendonly"), 422, ["sendonly", recvonly]),
            (mine, own, with_direction(good, "sendrecv"), 422, ["sendrecv", recvonly]),
            (mine, own, with_direction(good, "inactive"), 422, ["inactive", recvonly]),
            (mine, own, pcmu_only(good), 422, ["no Opus", "offered: PCMU"]),
            (
                mine,
                {**own, "Content-Type": "text/plain"},
                good,
                415,
                ["Content-Type must be application/sdp, got text/plain"],
            ),
            (
                mine,
                {**own, "Content-Type": TRICKLE},
                good,
                415,
                [f"Content-Type must be application/sdp, got {TRICKLE}"],
            ),
            (f"/whep/{live.id}?source=bogus", own, good, 400, ["source must be", "'bogus'"]),
        ]
        for path, headers, body, status, reasons in cases:
            got, text, response_headers = await request(
                http, "POST", app.base_url + path, headers=headers, data=body
            )
            assert got == status, (path, status, got, text)
            for reason in reasons:
                assert reason in text, (path, reason, text)
            assert response_headers["Content-Type"].startswith("text/plain"), path
            assert response_headers["Access-Control-Allow-Origin"] == "*", path
            if status == 409:
                assert int(response_headers["Retry-After"]) > 0, response_headers
            else:
                assert "Retry-After" not in response_headers, path

        # none of that broke the live session: it still takes a player, and the server serves
        async with listening(app.base_url, live.id, token=live.token) as player:
            assert player.answer.startswith("v=0")
        await still_serves(app)


async def test_a_server_token_guards_whep_and_a_session_token_opens_its_own_session() -> None:
    async with running_server(token=TOKEN) as app, aiohttp.ClientSession() as http:
        async with grpc_stub(app, TOKEN) as stub:
            session = await stub.CreateSession(pb.CreateSessionRequest())
            other = await stub.CreateSession(pb.CreateSessionRequest())
        assert session.token and session.token != TOKEN
        url = f"{app.base_url}/whep/{session.id}"
        offer = await offer_sdp()
        for given, reason in [
            ({}, "missing bearer token"),
            ({"Authorization": "Basic dXNlcjpwdw=="}, "missing bearer token"),
            ({"Authorization": "Bearer wrong-token-value"}, "wrong bearer token"),
            ({"Authorization": f"Bearer {other.token}"}, "wrong bearer token"),
        ]:
            status, text, headers = await request(
                http, "POST", url, headers={"Content-Type": SDP, **given}, data=offer
            )
            assert status == 401, (given, status, text)
            assert reason in text, (given, text)
            assert headers["WWW-Authenticate"].startswith("Bearer"), headers
            assert TOKEN not in text and session.token not in text

        own = await listen(app.base_url, session.id, token=session.token)
        server = await listen(app.base_url, session.id, token=TOKEN)
        try:
            assert own.url != server.url
            assert await own.delete() == 200
            assert await server.delete() == 200
        finally:
            await own.close()
            await server.close()
        await still_serves(app, TOKEN)


async def test_players_beyond_the_limit_get_503_until_one_leaves() -> None:
    async with running_server(max_players_per_session=2) as app, aiohttp.ClientSession() as http:
        async with grpc_stub(app) as stub:
            session = await stub.CreateSession(pb.CreateSessionRequest())
        url = f"{app.base_url}/whep/{session.id}"
        headers = {"Content-Type": SDP, **auth(session.token)}
        offer = await offer_sdp()
        first = await listen(app.base_url, session.id, token=session.token)
        second = await listen(app.base_url, session.id, token=session.token)
        third = None
        try:
            status, text, response_headers = await request(
                http, "POST", url, headers=headers, data=offer
            )
            assert status == 503, (status, text)
            assert "has 2 WHEP players" in text and "--max-players-per-session 2" in text, text
            assert int(response_headers["Retry-After"]) > 0

            assert await first.delete() == 200
            third = await listen(app.base_url, session.id, token=session.token)
            assert third.url not in (first.url, second.url)
            status, text, _ = await request(http, "POST", url, headers=headers, data=offer)
            assert status == 503, (status, text)
        finally:
            for player in (first, second, third):
                if player is not None:
                    await player.close()
        await still_serves(app)


async def test_player_resources_delete_get_options_and_trickle() -> None:
    async with running_server() as app, aiohttp.ClientSession() as http:
        async with grpc_stub(app) as stub:
            session = await stub.CreateSession(pb.CreateSessionRequest())
        token = auth(session.token)
        endpoint = f"{app.base_url}/whep/{session.id}"
        async with open_player(http, app.base_url, session.id, session.token) as player:
            # GET and OPTIONS
            for url in (endpoint, player.url):
                status, text, _ = await request(http, "GET", url, headers=token)
                assert 200 <= status < 300, (url, status, text)
                status, text, headers = await request(http, "OPTIONS", url)
                assert 200 <= status < 300, (url, status, text)
                assert headers["Accept-Post"] == SDP
                assert headers["Access-Control-Allow-Origin"] == "*"
                methods = {m.strip() for m in headers["Access-Control-Allow-Methods"].split(",")}
                assert {"POST", "PATCH", "DELETE", "OPTIONS"} <= methods, methods
                allowed = headers["Access-Control-Allow-Headers"].lower()
                assert "authorization" in allowed and "if-match" in allowed, allowed
                exposed = {h.strip() for h in headers["Access-Control-Expose-Headers"].split(",")}
                assert {"Location", "ETag", "Retry-After", "WWW-Authenticate"} <= exposed
                if url == player.url:
                    assert headers["Accept-Patch"] == TRICKLE
                else:
                    assert "Accept-Patch" not in headers

            # trickle (RFC 8840) on the player URL
            ufrag, pwd = ice_credentials(player.pc.localDescription.sdp)
            end = (
                f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n"
                "m=audio 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:0\r\na=end-of-candidates\r\n"
            )
            restart = "a=ice-ufrag:newU\r\na=ice-pwd:aBrandNewIcePassword1234\r\n"
            cases: list[tuple[dict[str, str], str, int, str]] = [
                ({**token, "Content-Type": TRICKLE, "If-Match": '"stale"'}, end, 412, "If-Match"),
                ({**token, "Content-Type": TRICKLE}, restart, 422, "ICE restart"),
                ({**token, "Content-Type": SDP}, end, 415, TRICKLE),
                ({"Content-Type": TRICKLE}, end, 401, "missing bearer token"),
                ({**token, "Content-Type": TRICKLE}, end, 204, ""),
                ({**token, "Content-Type": TRICKLE, "If-Match": player.etag}, end, 204, ""),
            ]
            for headers, body, status, reason in cases:
                got, text, _ = await request(http, "PATCH", player.url, headers=headers, data=body)
                assert got == status, (headers, body, got, text)
                assert reason in text, (reason, text)
            status, text, _ = await request(
                http,
                "PATCH",
                f"{endpoint}/no-such-player",
                headers={**token, "Content-Type": TRICKLE},
                data=end,
            )
            assert status == 404 and "no WHEP player 'no-such-player'" in text, (status, text)

            # DELETE
            status, text, _ = await request(
                http, "DELETE", f"{endpoint}/no-such-player", headers=token
            )
            assert status == 404 and "no WHEP player 'no-such-player'" in text, (status, text)
            status, text, _ = await request(http, "DELETE", player.url, headers=token)
            assert status == 200, (status, text)
            for method in ("DELETE", "GET"):
                status, text, _ = await request(http, method, player.url, headers=token)
                assert status == 404 and "has no WHEP player" in text, (method, status, text)
            status, text, _ = await request(http, "GET", endpoint)
            assert 200 <= status < 300, (status, text)

        await still_serves(app)


# gRPC: PlayAudio and StopPlayback


def start(session_id: str, **fields: Any) -> pb.PlayAudioRequest:
    fields.setdefault("sample_rate", 48000)
    return pb.PlayAudioRequest(start=pb.PlayAudioStart(session_id=session_id, **fields))


def pcm(data: bytes) -> pb.PlayAudioRequest:
    return pb.PlayAudioRequest(pcm=data)


async def play_fails(
    stub: Any, requests: list[pb.PlayAudioRequest], code: grpc.StatusCode, *reasons: str
) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as failure:
        await stub.PlayAudio(messages(requests), timeout=10)
    details = failure.value.details() or ""
    assert failure.value.code() == code, (requests[:1], failure.value.code(), details)
    for reason in reasons:
        assert reason in details, (reason, details)
    return details


async def test_bad_play_audio_calls_get_precise_status_codes() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        closed = await stub.CreateSession(pb.CreateSessionRequest())
        await stub.EndSession(pb.EndSessionRequest(session_id=closed.id))
        sid = session.id
        audio = tone(440, 0.1)
        cases: list[tuple[list[pb.PlayAudioRequest], grpc.StatusCode, tuple[str, ...]]] = [
            ([pcm(audio)], INVALID, ("first", "must be a start", "got pcm")),
            ([], INVALID, ("first", "must be a start", "got nothing")),
            ([pb.PlayAudioRequest()], INVALID, ("must be a start", "an empty message")),
            ([start(sid, sample_rate=7999)], INVALID, ("sample_rate", "got 7999")),
            ([start(sid, sample_rate=48001)], INVALID, ("sample_rate", "got 48001")),
            ([start(sid, sample_rate=0)], INVALID, ("sample_rate", "got 0")),
            ([start(sid, channels=3)], INVALID, ("channels must be 1 or 2", "got 3")),
            ([start(sid, mode=7)], INVALID, ("mode 7", "PlaybackMode")),
            ([start(sid), pcm(b"\x00\x01\x02")], INVALID, ("3 bytes", "16-bit")),
            ([start(sid), pcm(audio), pcm(audio[:-1])], INVALID, (f"{len(audio) - 1} bytes",)),
            ([start(sid, channels=2), pcm(bytes(6))], INVALID, ("6 bytes", "stereo")),
            ([start(sid), pcm(audio), start(sid)], INVALID, ("not pcm", "only the first")),
            ([start(sid, playback_id="p" * 65)], INVALID, ("playback_id", "64")),
            ([start(sid, playback_id="bad\nid")], INVALID, ("playback_id", "printable")),
            ([start("nope"), pcm(audio)], grpc.StatusCode.NOT_FOUND, ("'nope' not found",)),
            ([start(""), pcm(audio)], INVALID, ("session_id is required",)),
            ([start("x" * 200)], INVALID, ("session_id", "longer than 128")),
            (
                [start(closed.id), pcm(audio)],
                grpc.StatusCode.FAILED_PRECONDITION,
                (closed.id, "CLOSED (API_END)"),
            ),
        ]
        for requests, code, reasons in cases:
            await play_fails(stub, requests, code, *reasons)

        # the session those mistakes were made on still plays to a player
        async with listening(app.base_url, sid, token=session.token) as player:
            reply = await stub.PlayAudio(messages(play_requests(sid, tone(440, 0.3))), timeout=10)
            await eventually(lambda: fell_silent(player.heard), "the player heard the tone end")
        assert reply.played_ms == 300 and not reply.interrupted
        assert len(loud(player.heard)) >= 10


async def playback_events(watch: Any, until: str) -> list[pb.SessionEvent]:
    seen: list[pb.SessionEvent] = []
    while not seen or seen[-1].WhichOneof("payload") != until:
        event = await next_event(watch, 10)
        if (event.WhichOneof("payload") or "").startswith("playback_"):
            seen.append(event)
    return seen


async def test_a_playback_id_in_use_is_already_exists_and_free_again_once_it_ends() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=session.id))
        await next_event(watch)
        release = asyncio.Event()
        first = asyncio.ensure_future(
            stub.PlayAudio(
                hold_open(play_requests(session.id, tone(440, 0.1), playback_id="greet"), release),
                timeout=15,
            )
        )
        try:
            started = await playback_events(watch, "playback_started")
            assert [e.playback_started.playback_id for e in started] == ["greet"]
            await play_fails(
                stub,
                play_requests(session.id, tone(440, 0.1), playback_id="greet"),
                grpc.StatusCode.ALREADY_EXISTS,
                "'greet' is already queued or playing",
            )
            assert not first.done()
        finally:
            release.set()
        reply = await asyncio.wait_for(first, 10)
        assert reply.playback_id == "greet" and reply.played_ms == 100 and not reply.interrupted
        again = await stub.PlayAudio(
            messages(play_requests(session.id, tone(440, 0.1), playback_id="greet")), timeout=10
        )
        assert again.playback_id == "greet" and again.played_ms == 100
        watch.cancel()


async def test_bad_stop_playback_calls_and_an_idle_stop() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        closed = await stub.CreateSession(pb.CreateSessionRequest())
        await stub.EndSession(pb.EndSessionRequest(session_id=closed.id))
        cases = [
            ("nope", grpc.StatusCode.NOT_FOUND, "'nope' not found"),
            (closed.id, grpc.StatusCode.FAILED_PRECONDITION, "CLOSED (API_END)"),
            ("", INVALID, "session_id is required"),
        ]
        for session_id, code, reason in cases:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await stub.StopPlayback(pb.StopPlaybackRequest(session_id=session_id), timeout=10)
            assert failure.value.code() == code, (session_id, failure.value.details())
            assert reason in (failure.value.details() or ""), failure.value.details()
        idle = await stub.StopPlayback(pb.StopPlaybackRequest(session_id=session.id), timeout=10)
        assert list(idle.playback_ids) == []
        reply = await stub.PlayAudio(
            messages(play_requests(session.id, tone(440, 0.1))), timeout=10
        )
        assert reply.played_ms == 100 and not reply.interrupted


async def test_play_audio_needs_the_server_token() -> None:
    async with running_server(token=TOKEN) as app:
        async with grpc_stub(app, TOKEN) as stub:
            session = await stub.CreateSession(pb.CreateSessionRequest())
        requests = play_requests(session.id, tone(440, 0.1))
        async with grpc_stub(app) as anonymous:
            await play_fails(
                anonymous, requests, grpc.StatusCode.UNAUTHENTICATED, "missing bearer token"
            )
        for wrong in ("wrong-token-value", session.token):
            async with grpc_stub(app, wrong) as stub:
                await play_fails(
                    stub, requests, grpc.StatusCode.UNAUTHENTICATED, "wrong bearer token"
                )
        async with grpc_stub(app, TOKEN) as stub:
            reply = await stub.PlayAudio(messages(requests), timeout=10)
            assert reply.played_ms == 100 and not reply.interrupted


async def test_a_caller_that_goes_away_mid_stream_has_what_it_sent_played() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=session.id))
        await next_event(watch)
        release = asyncio.Event()
        sent = play_requests(session.id, tone(440, 0.3), playback_id="cut-off")
        assert len(sent) == 4  # the start, then 3 chunks of 100 ms
        call = stub.PlayAudio(hold_open(sent, release))
        try:
            started = await playback_events(watch, "playback_started")
            await eventually(  # every chunk is in; the stream stays open
                lambda: received_ms(app, session.id) >= 300, "the server has all 300 ms"
            )
            assert call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        finally:
            release.set()
        ended = await playback_events(watch, "playback_finished")
        events = started + ended
        assert [e.WhichOneof("payload") for e in events] == [
            "playback_started",
            "playback_finished",
        ]
        finished = events[-1].playback_finished
        assert finished.playback_id == "cut-off"
        assert finished.played_ms == 300, "not all that was sent was played"

        reply = await stub.PlayAudio(
            messages(play_requests(session.id, tone(440, 0.2))), timeout=10
        )
        assert reply.played_ms == 200 and not reply.interrupted
        watch.cancel()


def received_ms(app: HarkApp, session_id: str) -> int:
    """Agent audio the session has played or queued."""
    [played] = [
        sample.value
        for metric in app.metrics.playback_frames.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    ]
    return int(played) * 20 + app.sessions.get(session_id).voice.queue.queued_ms


async def test_a_33rd_playback_on_a_session_is_resource_exhausted_and_replace_still_works() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        voice = app.sessions.get(session.id).voice
        release = asyncio.Event()
        held = [
            asyncio.ensure_future(
                stub.PlayAudio(hold_open(play_requests(session.id, b""), release), timeout=20)
            )
            for _ in range(32)
        ]
        try:
            await eventually(lambda: len(voice.queue.ids()) == 32, "32 playbacks are queued")
            await play_fails(
                stub,
                play_requests(session.id, tone(440, 0.1)),
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "32 playbacks are already queued or playing",
                "at most 32",
            )
            reply = await stub.PlayAudio(
                messages(play_requests(session.id, tone(440, 0.1), mode=pb.REPLACE)), timeout=10
            )
            assert reply.played_ms == 100 and not reply.interrupted
        finally:
            release.set()
        replies = await asyncio.wait_for(asyncio.gather(*held), 10)
    assert all(r.interrupt_reason == pb.REPLACED for r in replies)
