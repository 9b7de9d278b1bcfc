"""Offers shaped like other WebRTC stacks send them, answered by a real server to real aiortc peers.

mDNS-only candidates (browsers without microphone permission), trickled mDNS names, actpass DTLS
roles, max-bundle and session-level attributes, and offers with codecs beside Opus.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from hypothesis import HealthCheck, assume, given, settings

from media.core.sdp import check_offer
from media.errors import HarkError
from media.rtc.negotiation import RemoteCandidates, answer_audio_offer, close_peer_connection
from media.v1 import media_pb2 as pb
from tests.support import SPEECH, collect_until_closed, grpc_stub, running_server
from tests.unit.test_sdp import CHROME_OFFER_LINES, mutated

S = pb.SessionState
HOST_CANDIDATE = re.compile(r"(a=candidate:\S+ \d+ \S+ \d+ )127\.0\.0\.1( \d+ typ host)")


def mdns_only(sdp: str) -> str:
    """Hide the host candidates behind mDNS names, as a browser without mic permission does."""
    hidden, count = HOST_CANDIDATE.subn(
        r"\g<1>5e0a4f3c-6b1d-4c1e-9a55-7c0f8e1d2b3a.local\g<2>", sdp
    )
    assert count > 0 and all(".local " in c for c in candidates_in(hidden)), hidden
    return hidden


def candidates_in(sdp: str) -> list[str]:
    return [line for line in sdp.splitlines() if line.startswith("a=candidate:")]


def audio_formats(sdp: str) -> tuple[list[str], list[str]]:
    """The answer's audio m-line formats and its a=rtpmap lines."""
    m_line = next(line for line in sdp.splitlines() if line.startswith("m=audio"))
    return m_line.split()[3:], [line for line in sdp.splitlines() if line.startswith("a=rtpmap:")]


@contextlib.asynccontextmanager
async def offering(
    base_url: str,
    path: str,
    edit: Callable[[str], str],
    direction: str = "sendonly",
    token: str = "",
) -> AsyncIterator[tuple[RTCPeerConnection, aiohttp.ClientResponse, str]]:
    """A real aiortc peer whose offer goes through ``edit`` before the POST; yields the reply."""
    pc = RTCPeerConnection()
    player = MediaPlayer(str(SPEECH), decode=False) if direction == "sendonly" else None
    if player is not None:
        pc.addTransceiver(player.audio, direction="sendonly")
    else:
        pc.addTransceiver("audio", direction="recvonly")
    try:
        await pc.setLocalDescription(await pc.createOffer())
        headers = {"Content-Type": "application/sdp"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        async with aiohttp.ClientSession() as http:
            async with http.post(
                base_url + path, data=edit(pc.localDescription.sdp), headers=headers
            ) as reply:
                body = await reply.text()
        yield pc, reply, body
    finally:
        await pc.close()
        if player is not None and player.audio is not None:
            player.audio.stop()


async def test_a_publisher_offering_only_mdns_candidates_gets_harks_candidates_and_is_ready() -> (
    None
):
    async with running_server() as app, grpc_stub(app) as stub:
        async with offering(app.base_url, "/whip", mdns_only) as (pc, reply, answer):
            assert reply.status == 201, answer
            assert candidates_in(answer), answer
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            sid = reply.headers["Location"].rsplit("/", 1)[1]
            session = await stub.StartListening(
                pb.StartListeningRequest(session_id=sid, wait_for_ready=True), timeout=20
            )
            assert session.state == S.READY


async def test_a_listen_only_player_offering_only_mdns_candidates_connects() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        session = await stub.CreateSession(pb.CreateSessionRequest())
        path = f"/whep/{session.id}"
        peer = offering(app.base_url, path, mdns_only, "recvonly", session.token)
        async with peer as (pc, reply, answer):
            assert reply.status == 201, answer
            assert candidates_in(answer), answer
            connected = asyncio.Event()
            pc.on(
                "connectionstatechange",
                lambda: connected.set() if pc.connectionState == "connected" else None,
            )
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            await asyncio.wait_for(connected.wait(), 20)


def still_gathering(sdp: str) -> str:
    """An offer sent before its candidates are all gathered: the rest will be trickled."""
    return sdp.replace("a=end-of-candidates\r\n", "")


def resolving_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("hark-mdns-")]


async def test_a_trickle_patch_of_mdns_names_is_answered_while_they_resolve() -> None:
    fragment = "a=mid:0\r\n" + "".join(
        f"a=candidate:{n} 1 udp 2122260223 {n:08x}-aaaa-4bbb-8ccc-123456789abc.local "
        f"{50000 + n} typ host\r\n"
        for n in range(10)
    )
    async with running_server() as app:
        async with offering(app.base_url, "/whip", still_gathering) as (pc, reply, answer):
            assert reply.status == 201, answer
            url = app.base_url + reply.headers["Location"]
            headers = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"}
            async with aiohttp.ClientSession() as http:
                async with http.patch(url, data=fragment, headers=headers) as patched:
                    assert patched.status == 204, await patched.text()
                # The PATCH was answered before the ten lookups (a second each) ended.
                pending = resolving_tasks()
                assert len(pending) == 10 and not any(t.done() for t in pending)
                async with http.delete(url) as deleted:
                    assert deleted.status == 200
            await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
            assert all(t.cancelled() for t in pending)


async def test_a_patch_past_the_mdns_limit_is_refused_and_repeats_are_looked_up_once() -> None:
    def fragment(first: int, count: int) -> str:
        return "a=mid:0\r\n" + "".join(
            f"a=candidate:{n} 1 udp 2122260223 {n:08x}-aaaa-4bbb-8ccc-123456789abc.local "
            f"{50000 + n} typ host\r\n"
            for n in range(first, first + count)
        )

    async with running_server() as app:
        async with offering(app.base_url, "/whip", still_gathering) as (pc, reply, answer):
            assert reply.status == 201, answer
            url = app.base_url + reply.headers["Location"]
            headers = {"Content-Type": "application/trickle-ice-sdpfrag", "If-Match": "*"}
            async with aiohttp.ClientSession() as http:
                async with http.patch(url, data=fragment(0, 12), headers=headers) as patched:
                    assert patched.status == 204, await patched.text()
                async with http.patch(url, data=fragment(0, 12), headers=headers) as again:
                    assert again.status == 204, await again.text()
                assert len(resolving_tasks()) == 12  # the same candidates are not looked up twice
                async with http.patch(url, data=fragment(12, 100), headers=headers) as refused:
                    text = await refused.text()
                assert refused.status == 400 and "at most 16" in text, text
                assert len(resolving_tasks()) == 12  # a refused fragment adds nothing
                async with http.delete(url) as deleted:
                    assert deleted.status == 200


async def test_an_actpass_offer_is_answered_passive_so_hark_is_the_dtls_server() -> None:
    async with running_server() as app:
        async with offering(app.base_url, "/whip", lambda sdp: sdp) as (_, reply, answer):
            assert reply.status == 201, answer
            assert re.findall(r"a=setup:\w+", answer) == ["a=setup:passive"]


def with_opus_on(payload_type: int) -> Callable[[str], str]:
    def edit(sdp: str) -> str:
        m_line = next(line for line in sdp.splitlines() if line.startswith("m=audio"))
        opus = next(
            line.split()[0].split(":")[1] for line in sdp.splitlines() if "opus/48000/2" in line
        )
        renumbered = " ".join(str(payload_type) if f == opus else f for f in m_line.split()[3:])
        sdp = sdp.replace(m_line, " ".join(m_line.split()[:3]) + " " + renumbered)
        return re.sub(rf"a=(rtpmap|fmtp|rtcp-fb):{opus} ", rf"a=\1:{payload_type} ", sdp)

    return edit


@pytest.mark.parametrize("direction", ["sendonly", "recvonly"], ids=["whip", "whep"])
async def test_the_answer_carries_opus_alone_on_the_offers_payload_type(direction: str) -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        path, token = "/whip", ""
        if direction == "recvonly":
            session = await stub.CreateSession(pb.CreateSessionRequest())
            path, token = f"/whep/{session.id}", session.token
        edit = with_opus_on(109)
        async with offering(app.base_url, path, edit, direction, token) as (pc, reply, answer):
            assert reply.status == 201, answer
            offered, _ = audio_formats(edit(pc.localDescription.sdp))
            assert len(offered) > 1  # aiortc offers G722, PCMU and PCMA too
            formats, rtpmaps = audio_formats(answer)
            assert formats == ["109"]
            assert rtpmaps == ["a=rtpmap:109 opus/48000/2"]


def max_bundle(sdp: str) -> str:
    """Audio as a bundle-only m-line (port 0) after a video m-line, as webrtcbin's max-bundle."""
    session, _, audio = sdp.partition("m=audio")
    audio = "m=audio" + audio
    first_audio_line = audio.split("\r\n", 1)[0]
    port = first_audio_line.split()[1]
    video = audio.replace(first_audio_line, f"m=video {port} UDP/TLS/RTP/SAVPF 120", 1)
    video = re.sub(r"a=rtpmap:\d+ [^\r]+\r\n", "", video)
    video = re.sub(r"a=(fmtp|rtcp-fb|ssrc|msid|extmap):[^\r]+\r\n", "", video)
    video = video.replace("a=mid:0", "a=mid:v").replace("a=sendonly", "a=inactive")
    video += "a=rtpmap:120 VP8/90000\r\n"
    bundled = re.sub(r"a=candidate:[^\r]+\r\n|a=end-of-candidates\r\n", "", audio)
    bundled = bundled.replace(first_audio_line, first_audio_line.replace(f" {port} ", " 0 "), 1)
    bundled = bundled.replace("a=mid:0\r\n", "a=mid:0\r\na=bundle-only\r\n")
    return session.replace("a=group:BUNDLE 0", "a=group:BUNDLE v 0") + video + bundled


async def test_a_max_bundle_offer_with_a_bundle_only_audio_m_line_is_answered() -> None:
    async with running_server() as app:
        async with offering(app.base_url, "/whip", max_bundle) as (_, reply, answer):
            assert reply.status == 201, answer
            assert "a=recvonly" in answer
            assert candidates_in(answer)


def session_level_direction(sdp: str) -> str:
    moved = sdp.replace("a=sendonly\r\n", "")
    return moved.replace("t=0 0\r\n", "t=0 0\r\na=sendonly\r\n", 1)


async def test_a_session_level_direction_is_valid_sdp_and_is_answered() -> None:
    async with running_server() as app:
        async with offering(app.base_url, "/whip", session_level_direction) as (_, reply, answer):
            assert reply.status == 201, answer
            assert "a=recvonly" in answer


def port_count(sdp: str) -> str:
    return re.sub(r"m=audio (\d+) ", r"m=audio \1/2 ", sdp, count=1)


def duplicate_mid(sdp: str) -> str:
    return sdp + "m=video 9 UDP/TLS/RTP/SAVPF 120\r\na=mid:0\r\na=rtpmap:120 VP8/90000\r\n"


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (port_count, r"line \d+ gives a port count \(\d+/2\); WebRTC m-lines have one port each"),
        (duplicate_mid, r"m-line at line \d+ repeats a=mid:0 of the m-line at line \d+"),
    ],
    ids=["port count", "duplicate mid"],
)
async def test_invalid_sdp_is_400_naming_the_line_and_the_problem(
    edit: Callable[[str], str], reason: str
) -> None:
    async with running_server() as app:
        async with offering(app.base_url, "/whip", edit) as (_, reply, body):
            assert reply.status == 400
            assert re.match(reason, body), body
            assert "Error" not in body


def wrong_fingerprints(sdp: str) -> str:
    """Fingerprints of some other certificate: ICE works, the DTLS handshake cannot."""
    return re.sub(
        r"(a=fingerprint:\S+ )([0-9A-F:]+)",
        lambda m: m[1] + re.sub(r"[0-9A-F]{2}", "00", m[2]),
        sdp,
    )


async def test_a_failed_dtls_handshake_closes_the_session_saying_dtls_failed() -> None:
    async with running_server() as app, grpc_stub(app) as stub:
        async with offering(app.base_url, "/whip", wrong_fingerprints) as (pc, reply, answer):
            assert reply.status == 201, answer
            sid = reply.headers["Location"].rsplit("/", 1)[1]
            watch = stub.WatchSession(pb.WatchSessionRequest(session_id=sid))
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            closed = (await collect_until_closed(watch))[-1].state_changed
    assert closed.state == S.CLOSED
    assert closed.close_reason == pb.CloseReason.ICE_FAILED
    assert closed.close_detail.startswith("DTLS failed"), closed.close_detail


async def answer_with_aiortc(offer: str) -> None:
    pc = RTCPeerConnection()
    remote = RemoteCandidates(pc, "fuzz")
    try:
        await answer_audio_offer(pc, offer, "recvonly", "fuzz", remote)
    finally:
        await remote.close()
        await close_peer_connection(pc)


@settings(deadline=None, max_examples=120, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(CHROME_OFFER_LINES))
def test_every_offer_hark_accepts_is_one_aiortc_can_answer(offer: str) -> None:
    """So a client's mistake gets check_offer's reason, never the stack's catch-all 400."""
    try:
        check_offer(offer, direction="publish")
    except HarkError:
        assume(False)
    asyncio.run(answer_with_aiortc(offer))
