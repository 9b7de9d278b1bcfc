"""The HTTP edge as a real network meets it: bodies in several TCP segments, slow and idle
clients, many connections from one address, and logs that never carry a header's value."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
from collections.abc import Iterator

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer

from media.app import HarkApp
from media.rtc.negotiation import close_peer_connection
from media.v1 import media_pb2 as pb
from tests.integration.test_tls import issue, write
from tests.listening import recvonly_offer
from tests.slow_http import (
    closed_by_server,
    connect,
    read_response,
    request_head,
    send_in_pieces,
    write_in_pieces,
)
from tests.support import SPEECH, grpc_stub, next_event, publish, running_server

SDP = {"Content-Type": "application/sdp"}
TRICKLE = {"Content-Type": "application/trickle-ice-sdpfrag"}
JSON = {"Content-Type": "application/json"}
CANDIDATE = "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host"
FRAGMENT = f"a=mid:0\r\n{CANDIDATE}\r\na=end-of-candidates\r\n".encode()
# Split inside the candidate line, as a segment boundary may fall anywhere.
FRAGMENT_PARTS = [FRAGMENT[:25], FRAGMENT[25:]]


def state_of(event: pb.SessionEvent) -> int | None:
    if event.WhichOneof("payload") == "snapshot":
        return event.snapshot.session.state
    if event.WhichOneof("payload") == "state_changed":
        return event.state_changed.state
    return None


async def until_ready(app: HarkApp, session_id: str) -> None:
    async with grpc_stub(app) as stub:
        watch = stub.WatchSession(pb.WatchSessionRequest(session_id=session_id))
        while (state := state_of(await next_event(watch, 20))) != pb.READY:
            assert state != pb.CLOSED, "the session closed instead of READY"
        watch.cancel()


async def sendonly_offer(video: bool = False) -> tuple[RTCPeerConnection, MediaPlayer]:
    """aiortc's offer: 1.3 KB of audio alone, 3.2 KB with a video m-line (so over one
    1,448-byte segment, like Firefox's 2.6 KB audio offer)."""
    player = MediaPlayer(str(SPEECH), decode=False)
    pc = RTCPeerConnection()
    pc.addTransceiver(player.audio, direction="sendonly")
    if video:
        pc.addTransceiver("video", direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, player


@pytest.mark.parametrize(
    ("precreated", "chunks", "video"),
    [(False, False, False), (True, False, False), (False, True, False), (False, False, True)],
    ids=["POST /whip", "POST /whip/{id}", "POST /whip chunked", "POST /whip 1448 + rest"],
)
async def test_an_offer_in_several_segments_gets_201_and_a_session_that_becomes_ready(
    precreated: bool, chunks: bool, video: bool
) -> None:
    async with running_server() as app:
        path, headers = "/whip", SDP
        if precreated:
            async with grpc_stub(app) as stub:
                session = await stub.CreateSession(pb.CreateSessionRequest())
            path = f"/whip/{session.id}"
            headers = {**SDP, "Authorization": f"Bearer {session.token}"}
        pc, player = await sendonly_offer(video)
        try:
            offer = pc.localDescription.sdp.encode()
            response = await send_in_pieces(
                app.http_port, "POST", path, offer, headers, chunks=chunks
            )
            assert response.status == 201, response.text
            await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
            await until_ready(app, response.headers["location"].rsplit("/", 1)[1])
        finally:
            await close_peer_connection(pc)
            if player.audio is not None:
                player.audio.stop()


async def test_a_whep_offer_in_several_segments_gets_201_and_connects() -> None:
    async with running_server() as app:
        publisher = await publish(app.base_url)
        pc = await recvonly_offer()
        connected = asyncio.get_running_loop().create_future()

        @pc.on("connectionstatechange")
        def changed() -> None:
            if pc.connectionState == "connected" and not connected.done():
                connected.set_result(None)

        try:
            offer = pc.localDescription.sdp.encode()
            path = f"/whep/{publisher.session_id}"
            response = await send_in_pieces(app.http_port, "POST", path, offer, SDP)
            assert response.status == 201, response.text
            await pc.setRemoteDescription(RTCSessionDescription(response.text, "answer"))
            await asyncio.wait_for(connected, 20)
        finally:
            await close_peer_connection(pc)
            await publisher.vanish()


async def test_trickle_patches_in_several_segments_are_read_whole() -> None:
    async with running_server() as app:
        publisher = await publish(app.base_url)
        player_pc = await recvonly_offer()
        try:
            whep = await send_in_pieces(
                app.http_port,
                "POST",
                f"/whep/{publisher.session_id}",
                player_pc.localDescription.sdp.encode(),
                SDP,
            )
            assert whep.status == 201, whep.text
            for location in (publisher.location, whep.headers["location"]):
                response = await send_in_pieces(
                    app.http_port, "PATCH", location, FRAGMENT, TRICKLE, parts=FRAGMENT_PARTS
                )
                assert response.status == 204, (location, response.status, response.text)
        finally:
            await close_peer_connection(player_pc)
            await publisher.vanish()


async def test_a_listening_request_in_several_segments_is_read_whole() -> None:
    async with running_server() as app:
        publisher = await publish(app.base_url)
        try:
            body = b'{"listening": true, "wait_for_ready": true}'
            path = f"/whip/{publisher.session_id}/listening"
            response = await send_in_pieces(app.http_port, "POST", path, body, JSON)
            assert response.status == 200, response.text
            assert '"listening": true' in response.text
        finally:
            await publisher.vanish()


async def test_a_body_that_stops_arriving_gets_408_on_every_route_that_reads_one() -> None:
    async with running_server(http_body_timeout=0.5) as app:
        publisher = await publish(app.base_url)
        sid = publisher.session_id
        try:
            offer = (await recvonly_offer_sdp()).encode()
            for method, path, headers, body in [
                ("POST", "/whip", SDP, offer),
                ("PATCH", publisher.location, TRICKLE, FRAGMENT),
                ("POST", f"/whip/{sid}/listening", JSON, b'{"listening": false}'),
                ("POST", f"/whep/{sid}", SDP, offer),
            ]:
                reader, writer = await connect(app.http_port)
                try:
                    head = request_head(method, path, headers, body)
                    await write_in_pieces(writer, [head, body[: len(body) // 2]])
                    response = await read_response(reader)
                    assert response.status == 408, (path, response.status, response.text)
                    assert "not received in full within 0.5 s" in response.text, response.text
                    await closed_by_server(reader)
                finally:
                    writer.close()
        finally:
            await publisher.vanish()


async def recvonly_offer_sdp() -> str:
    pc = await recvonly_offer()
    try:
        return str(pc.localDescription.sdp)
    finally:
        await close_peer_connection(pc)


MARKER = "S3CRETMARKER"
TOKEN = "server-token-1"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@contextlib.contextmanager
def every_log_record() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(level=logging.NOTSET)
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def whole(method: str, path: str, headers: dict[str, str], body: bytes) -> bytes:
    return request_head(method, path, headers, body) + body


def requests_carrying(marker: str, session_id: str) -> list[bytes]:
    """Requests that put ``marker`` in a header or the request line, valid and not."""
    secret = f"Bearer {marker}"
    long = secret + "x" * 9000
    return [
        whole("GET", "/whip", {"Authorization": long}, b""),
        whole("POST", "/whip", {"Authorization": secret, **SDP}, b"v=0\r\n"),
        whole("POST", "/whip", {"X-Anything": long}, b""),
        whole("POST", "/whip", {"Authorization": f"{secret}\x01\x7f"}, b""),
        whole("GET", f"/whip/{session_id}/events?token={marker}{'x' * 9000}", {}, b""),
        whole("POST", "/whip", {"Content-Type": f"text/{marker}", **AUTH}, b"v=0\r\n"),
        whole("POST", "/whip", {"Content-Encoding": marker, **SDP, **AUTH}, b"v=0\r\n"),
        whole("PATCH", f"/whip/{session_id}", {"If-Match": marker, **TRICKLE, **AUTH}, FRAGMENT),
        whole("GET", f"/whip/{session_id}/events", {"Last-Event-ID": marker, **AUTH}, b""),
        whole("GET", "/whip", {"Content-Length": marker}, b""),
        whole("GET", "/whip", {"Origin": long}, b""),
        whole("GET", "/whip", {f"{marker}\x00": "x"}, b""),
        f"{marker} /whip HTTP/1.1\r\nHost: x\r\n\r\n".encode(),
        f"\x16\x03\x01{marker}\r\n\r\n".encode(),
    ]


async def test_no_log_record_carries_a_header_value_or_the_request_line() -> None:
    with every_log_record() as records:
        async with running_server(token=TOKEN) as app:
            async with grpc_stub(app, token=TOKEN) as stub:
                session = await stub.CreateSession(pb.CreateSessionRequest())
            for request in requests_carrying(MARKER, session.id):
                reader, writer = await connect(app.http_port)
                try:
                    writer.write(request)
                    answer = await closed_by_server(reader)
                    assert answer.startswith(b"HTTP/1."), (request[:60], answer[:80])
                    assert int(answer.split(b" ", 2)[1]) < 500, (request[:60], answer[:200])
                finally:
                    writer.close()
    formatter = logging.Formatter()
    leaked = [
        f"{r.name} {r.levelname}: {formatter.format(r)[:200]}"
        for r in records
        if MARKER in formatter.format(r)
    ]
    assert any(r.name.startswith("aiohttp") for r in records)  # aiohttp's lines were seen
    assert not leaked, leaked


async def test_clients_that_never_finish_their_headers_are_disconnected() -> None:
    async with running_server(http_header_timeout=1.0) as app:
        port = app.http_port
        silent = await connect(port)
        slow = await connect(port)
        stalled = await connect(port)
        idle_after_a_request = await connect(port)

        async def a_header_line_now_and_then() -> None:
            slow[1].write(b"GET /healthz HTTP/1.1\r\n")
            with contextlib.suppress(ConnectionError):
                while not slow[0].at_eof():
                    slow[1].write(b"X-Slow: 1\r\n")
                    await slow[1].drain()
                    await asyncio.sleep(0.2)  # the pace of the slow client being tested

        stalled[1].write(b"POST /whip HTTP/1.1\r\nHost: x\r\nContent-Ty")
        idle_after_a_request[1].write(request_head("GET", "/healthz", {}, b"", close=False))
        assert (await read_response(idle_after_a_request[0])).status == 200
        dribbling = asyncio.create_task(a_header_line_now_and_then())
        try:
            async with asyncio.timeout(30):
                for reader, _ in (silent, slow, stalled, idle_after_a_request):
                    await closed_by_server(reader)
                    served = await send_in_pieces(port, "GET", "/healthz")
                    assert served.status == 200  # others are served meanwhile
        finally:
            dribbling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await dribbling
            for _, writer in (silent, slow, stalled, idle_after_a_request):
                writer.close()


def refused(app: HarkApp) -> float:
    for line in app.metrics.exposition().decode().splitlines():
        if line.startswith("hark_http_connections_refused_total "):
            return float(line.split(" ")[1])
    raise AssertionError("hark_http_connections_refused_total is not exported")


async def test_open_connections_per_client_address_are_bounded() -> None:
    async with running_server(max_connections_per_ip=3, http_header_timeout=60.0) as app:
        port = app.http_port
        held = [await connect(port) for _ in range(3)]
        try:
            reader, writer = await connect(port)
            async with asyncio.timeout(20):
                answer = await closed_by_server(reader)
            writer.close()
            assert answer == b"" or answer.startswith(b"HTTP/1.1 503"), answer
            assert b"" == answer or b"--max-connections-per-ip" in answer
            assert refused(app) == 1
            other = await connect(port, source="127.0.0.2")
            other[1].write(request_head("GET", "/healthz", {}, b""))
            assert (await read_response(other[0])).status == 200
            other[1].close()
            held.pop()[1].close()
            async with asyncio.timeout(20):
                while not await served_from_first_address(port):
                    pass
        finally:
            for _, writer in held:
                writer.close()


async def served_from_first_address(port: int) -> bool:
    """True once a request from 127.0.0.1 is served, False while it is refused."""
    try:
        return (await send_in_pieces(port, "GET", "/healthz")).status == 200
    except (ConnectionError, asyncio.IncompleteReadError):
        return False


async def test_compressed_bodies_get_415_before_and_after_auth_never_500() -> None:
    garbage = b"\x1f\x8b\x08 not really gzip" * 8
    async with running_server(token=TOKEN) as app:
        for coding in ("gzip", "deflate"):
            for auth, status in (({}, 401), (AUTH, 415)):
                headers = {**SDP, **auth, "Content-Encoding": coding}
                response = await send_in_pieces(app.http_port, "POST", "/whip", garbage, headers)
                assert response.status == status, (coding, response.status, response.text)
                if status == 415:
                    assert "Content-Encoding" in response.text, response.text
                    assert response.headers["accept-encoding"] == "identity"


async def test_bad_revisions_and_deep_json_get_400_naming_the_problem() -> None:
    async with running_server() as app:
        publisher = await publish(app.base_url)
        events = f"{publisher.location}/events"
        try:
            for bad in ("²", "9" * 4301, "-1", "1e3"):
                by_header = await send_in_pieces(
                    app.http_port, "GET", events, headers={"Last-Event-ID": bad}
                )
                assert by_header.status == 400, by_header.text
                assert "Last-Event-ID must be a revision number" in by_header.text
                query = "%C2%B2" if bad == "²" else bad
                by_query = await send_in_pieces(
                    app.http_port, "GET", f"{events}?since_revision={query}"
                )
                assert by_query.status == 400, by_query.text
                assert "since_revision must be a revision number" in by_query.text
            deep = await send_in_pieces(
                app.http_port, "POST", f"{publisher.location}/listening", b"[" * 60000, JSON
            )
            assert deep.status == 400, deep.text
            assert "nested too deeply" in deep.text
        finally:
            await publisher.vanish()


async def test_a_tls_client_that_never_handshakes_is_disconnected(tmp_path: pathlib.Path) -> None:
    write(tmp_path, "server", *issue("localhost", issue("hark test CA")))
    async with running_server(
        http_tls_cert=str(tmp_path / "server.pem"),
        http_tls_key=str(tmp_path / "server.key"),
        http_header_timeout=1.0,
    ) as app:
        reader, writer = await connect(app.http_port)
        try:
            writer.write(b"\x16\x03\x01")  # the start of a ClientHello, and no more
            async with asyncio.timeout(30):
                await closed_by_server(reader)
        finally:
            writer.close()


async def test_a_flood_of_bad_requests_cannot_flood_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each refused request is logged up to a budget; the rest are counted, and still answered."""
    caplog.set_level(logging.INFO, logger="media.web.middleware")
    async with running_server() as app, aiohttp.ClientSession() as http:
        statuses = []
        for _ in range(120):
            async with http.post(app.base_url + "/whip", data="x" * 500) as response:
                statuses.append(response.status)
        async with http.get(app.base_url + "/metrics") as response:
            metrics = await response.text()
    lines = [r for r in caplog.records if r.name == "media.web.middleware"]
    assert statuses == [415] * 120
    assert 50 <= len(lines) < 120
    assert all(len(r.getMessage()) < 300 for r in lines)
    unlogged = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("hark_http_client_errors_unlogged_total")
    )
    assert unlogged == 120 - len(lines)


async def test_open_connections_in_all_are_bounded() -> None:
    async with running_server(max_connections=2, http_header_timeout=60.0) as app:
        port = app.http_port
        held = [await connect(port, source=f"127.0.0.{n}") for n in (2, 3)]
        try:
            reader, writer = await connect(port, source="127.0.0.4")
            async with asyncio.timeout(20):
                answer = await closed_by_server(reader)
            writer.close()
            assert answer == b"" or b"--max-connections)" in answer, answer
            assert refused(app) == 1
        finally:
            for _, held_writer in held:
                held_writer.close()
