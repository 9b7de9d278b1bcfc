"""Thousands of generated malformed requests: never a 5xx, never INTERNAL or UNKNOWN, no traceback.

The server runs on its own thread and event loop, exactly as in production; hypothesis drives
plain blocking HTTP and gRPC clients at it.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import logging
import socket
import threading
import traceback
import zlib
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from media.app import HarkApp
from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc
from tests.offers import OFFER
from tests.support import publish, server_config

OFFER_LINES = OFFER.split("\r\n")
PATHS = ["/whip", "/whip/", "/whip/nope", "/whip/x/y", "/healthz", "/readyz", "/metrics", "/"]
METHODS = ["GET", "POST", "PATCH", "DELETE", "OPTIONS", "PUT", "HEAD"]
CONTENT_TYPES = [
    "application/sdp",
    "application/trickle-ice-sdpfrag",
    "text/plain",
    "application/json",
    "application/sdp; charset=utf-8",
    "",
    "multipart/form-data; boundary=x",
]

header_text = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=0, max_size=60
)


class ServerThread:
    """A real Hark server on its own thread and loop; collects every log record at WARNING+."""

    def __init__(self, **overrides: Any) -> None:
        self.overrides = overrides
        self.records: list[logging.LogRecord] = []
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self.app: HarkApp | None = None

    def __enter__(self) -> ServerThread:
        handler = logging.Handler(level=logging.WARNING)
        handler.emit = self.records.append  # type: ignore[method-assign]
        self._handler = handler
        logging.getLogger().addHandler(handler)
        self._thread = threading.Thread(target=self._run, name="hark-server", daemon=True)
        self._thread.start()
        assert self._ready.wait(20), "server did not start"
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self.app = HarkApp(server_config(**self.overrides))
        await self.app.start()
        self._ready.set()
        await self._stop.wait()
        await self.app.stop()

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)
        logging.getLogger().removeHandler(self._handler)

    @property
    def port(self) -> int:
        assert self.app is not None
        return self.app.http_port

    def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, str, http.client.HTTPMessage]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read().decode(errors="replace"), response.headers
        finally:
            connection.close()


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    # A Content-Length longer than the body sent is a body that never completes: 408 after
    # --http-body-timeout, kept short so that such examples stay quick.
    with ServerThread(
        ready_timeout=60.0, max_sessions=10_000, heartbeat_interval=0.05, http_body_timeout=0.25
    ) as running:
        yield running


def check(status: int, body: str, context: object) -> None:
    assert status < 500, (status, body, context)
    if status >= 400:
        assert body.strip(), f"{status} without a reason: {context!r}"


def live_session(server: ServerThread) -> tuple[str, str]:
    """A session with a publisher that never connects (the server waits --ready-timeout)."""
    status, body, headers = server.request(
        "POST", "/whip", OFFER.encode(), {"Content-Type": "application/sdp"}
    )
    assert status == 201, body
    return headers["Location"], headers["ETag"]


HYPOTHESIS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,
)


@st.composite
def mutated_offers(draw: st.DrawFn) -> bytes:
    lines = list(OFFER_LINES)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["drop", "dup", "garble", "insert", "truncate", "swap"]))
        index = draw(st.integers(0, len(lines) - 1))
        if op == "drop" and len(lines) > 1:
            del lines[index]
        elif op == "dup":
            lines.insert(index, lines[index])
        elif op == "garble":
            line = lines[index]
            at = draw(st.integers(0, max(0, len(line) - 1)))
            lines[index] = line[:at] + draw(st.text(max_size=8)) + line[at + 1 :]
        elif op == "insert":
            lines.insert(index, draw(st.text(max_size=40)))
        elif op == "truncate":
            lines = lines[: index + 1]
        elif op == "swap":
            other = draw(st.integers(0, len(lines) - 1))
            lines[index], lines[other] = lines[other], lines[index]
    text = "\r\n".join(lines)
    return (
        text.encode("utf-8", errors="surrogatepass")
        if draw(st.booleans())
        else text.encode("utf-8", errors="replace")
    )


@settings(HYPOTHESIS, max_examples=500)
@given(offer=mutated_offers())
def test_mutated_sdp_offers(server: ServerThread, offer: bytes) -> None:
    status, body, headers = server.request(
        "POST", "/whip", offer, {"Content-Type": "application/sdp"}
    )
    check(status, body, offer)
    if status == 201:
        assert server.request("DELETE", headers["Location"])[0] == 200


@settings(HYPOTHESIS, max_examples=600)
@given(
    method=st.sampled_from(METHODS),
    path=st.one_of(st.sampled_from(PATHS), st.text(min_size=1, max_size=30).map(lambda p: "/" + p)),
    content_type=st.sampled_from(CONTENT_TYPES),
    body=st.binary(max_size=2000),
)
def test_random_requests(
    server: ServerThread, method: str, path: str, content_type: str, body: bytes
) -> None:
    quoted = "".join(
        c if 33 <= ord(c) < 127 and c not in "?#%" else f"%{ord(c) & 0xFF:02X}" for c in path
    )
    headers = {"Content-Type": content_type} if content_type else {}
    status, text, _ = server.request(method, quoted, body, headers)
    if method == "HEAD":
        assert status < 500, (method, quoted)
    else:
        check(status, text, (method, quoted, content_type, body[:40]))


@settings(HYPOTHESIS, max_examples=400)
@given(
    fragment=st.one_of(
        st.text(max_size=300),
        st.lists(
            st.sampled_from(
                [
                    "a=ice-ufrag:Hk3n",
                    "a=ice-ufrag:zzzz",
                    "a=ice-pwd:abcdefghijklmnopqrstuvwx",
                    "m=audio 9 UDP/TLS/RTP/SAVPF 111",
                    "a=mid:0",
                    "a=mid:7",
                    "a=candidate:1 1 udp 2130706431 127.0.0.1 50000 typ host",
                    "a=candidate:1 1 udp 99999999999999999999 127.0.0.1 70000 typ host",
                    "a=candidate:x y z",
                    "a=candidate:1 1 tcp 1 ::1 9 typ host tcptype active",
                    "a=candidate:1 1 udp 1 not-an-ip 9 typ relay raddr 1.2.3.4 rport 5",
                    "a=end-of-candidates",
                    "garbage",
                    "",
                ]
            ),
            max_size=8,
        ).map("\r\n".join),
    ),
    if_match=st.one_of(st.none(), st.just("*"), header_text),
)
def test_broken_trickle_fragments(
    server: ServerThread, fragment: str, if_match: str | None
) -> None:
    location, etag = _session(server)
    headers = {"Content-Type": "application/trickle-ice-sdpfrag"}
    if if_match is not None:
        headers["If-Match"] = if_match
    status, text, _ = server.request(
        "PATCH", location, fragment.encode("utf-8", errors="replace"), headers
    )
    check(status, text, fragment)


_SESSIONS: dict[int, tuple[str, str]] = {}


def _session(server: ServerThread) -> tuple[str, str]:
    if id(server) not in _SESSIONS:
        _SESSIONS[id(server)] = live_session(server)
    return _SESSIONS[id(server)]


@settings(HYPOTHESIS, max_examples=300)
@given(
    authorization=st.one_of(st.none(), header_text, header_text.map(lambda t: "Bearer " + t)),
    if_match=st.one_of(st.none(), header_text),
    content_length=st.one_of(st.none(), st.integers(-5, 10**9).map(str), header_text),
    method=st.sampled_from(["POST", "PATCH", "DELETE", "GET"]),
)
def test_bad_headers(
    server: ServerThread,
    authorization: str | None,
    if_match: str | None,
    content_length: str | None,
    method: str,
) -> None:
    location, _ = _session(server)
    headers = {"Content-Type": "application/sdp"}
    if authorization is not None:
        headers["Authorization"] = authorization
    if if_match is not None:
        headers["If-Match"] = if_match
    body = b"v=0\r\n"
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    try:
        connection.putrequest(method, location if method != "POST" else "/whip")
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.putheader("Content-Length", content_length or str(len(body)))
        connection.endheaders()
        try:
            connection.send(body)
            response = connection.getresponse()
        except (ConnectionError, http.client.HTTPException):
            return  # the server may hang up on a framing error: that is not a 5xx
        status = response.status
        text = response.read().decode(errors="replace")
    finally:
        connection.close()
    check(status, text, headers)


def raw_request(
    port: int, method: str, path: str, headers: list[tuple[str, bytes]], body: bytes = b""
) -> tuple[int, str]:
    """One request on a raw socket, header values sent as given bytes (non-ASCII included).

    A 2xx answer's body is not read: it may be an endless event stream."""
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
    head += b"".join(name.encode() + b": " + value + b"\r\n" for name, value in headers)
    head += f"Content-Length: {len(body)}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + body)
        received = b""
        while b"\r\n\r\n" not in received and (chunk := sock.recv(65536)):
            received += chunk
        status = int(received.split(b" ", 2)[1])
        if status >= 300:
            while chunk := sock.recv(65536):
                received += chunk
    return status, received.partition(b"\r\n\r\n")[2].decode(errors="replace")


HOSTILE_VALUES: list[bytes] = [
    "²".encode(),
    "é ü ☃ 😀".encode(),
    b"\xff\xfe\x80",
    b"9" * 4301,
    b"x" * 8000,
    b"x" * 9000,
    "Bearer ²".encode(),
    b"gzip",
]
HOSTILE_QUERY_VALUES = ["%C2%B2", "%FF%FE", "9" * 4301, "x" * 8000, "x" * 9000, "-1", ""]
HEADERS_HARK_READS = [
    "Authorization",
    "Content-Type",
    "Content-Encoding",
    "If-Match",
    "Last-Event-ID",
    "Origin",
]
QUERY_HARK_READS = ["token", "since_revision", "source"]


def every_route(session: str) -> list[tuple[str, str, list[tuple[str, bytes]], bytes]]:
    """A request for each route Hark serves, valid but for what the test adds to it."""
    sdp = [("Content-Type", b"application/sdp")]
    trickle = [("Content-Type", b"application/trickle-ice-sdpfrag")]
    json_type = [("Content-Type", b"application/json")]
    return [
        ("POST", "/whip", sdp, b"v=0\r\n"),
        ("POST", session, sdp, b"v=0\r\n"),
        ("PATCH", session, trickle, b"a=end-of-candidates\r\n"),
        ("GET", session, [], b""),
        ("DELETE", "/whip/nope", [], b""),
        ("OPTIONS", session, [], b""),
        ("GET", f"{session}/events", [], b""),
        ("POST", f"{session}/listening", json_type, b'{"listening": false}'),
        ("POST", session.replace("/whip/", "/whep/"), sdp, b"v=0\r\n"),
        ("GET", session.replace("/whip/", "/whep/"), [], b""),
        ("PATCH", session.replace("/whip/", "/whep/") + "/nope", trickle, b"a=mid:0\r\n"),
        ("DELETE", session.replace("/whip/", "/whep/") + "/nope", [], b""),
    ]


def test_non_ascii_and_huge_values_in_every_header_hark_reads_on_every_route(
    server: ServerThread,
) -> None:
    location, _ = _session(server)
    for method, path, base, body in every_route(location):
        for header in HEADERS_HARK_READS:
            for value in HOSTILE_VALUES:
                headers = [h for h in base if h[0] != header] + [(header, value)]
                status, text = raw_request(server.port, method, path, headers, body)
                check(status, text, (method, path, header, value[:20]))


def test_non_ascii_and_huge_values_in_every_query_parameter_on_every_route(
    server: ServerThread,
) -> None:
    location, _ = _session(server)
    for method, path, headers, body in every_route(location):
        for name in QUERY_HARK_READS:
            for value in HOSTILE_QUERY_VALUES:
                query = f"{path}?{name}={value}"
                status, text = raw_request(server.port, method, query, headers, body)
                check(status, text, (method, path, name, value[:20]))


CONTENT_CODINGS = [b"gzip", b"deflate", b"br", b"x-gzip", b"gzip, deflate", b"GZIP", "²".encode()]


def test_content_codings_on_every_route_that_reads_a_body(server: ServerThread) -> None:
    location, _ = _session(server)
    garbage = b"\x1f\x8b garbage that inflates to nothing" * 4
    for method, path, headers, body in every_route(location):
        if not body:
            continue
        for coding in CONTENT_CODINGS:
            for payload in (garbage, gzip.compress(body), zlib.compress(body)):
                sent = [*headers, ("Content-Encoding", coding)]
                status, text = raw_request(server.port, method, path, sent, payload)
                check(status, text, (method, path, coding))
                if status not in (404, 409):
                    assert status == 415 and "Content-Encoding" in text, (path, status, text)


vad_numbers = st.one_of(
    st.none(), st.integers(0, 2**32 - 1), st.floats(allow_nan=True, allow_infinity=True)
)


@settings(HYPOTHESIS, max_examples=400)
@given(
    rpc=st.sampled_from(
        ["Get", "End", "Start", "Stop", "Watch", "Create", "Stream", "List", "WatchAll"]
    ),
    session_id=st.text(max_size=200),
    number=st.integers(0, 2**64 - 1),
    ratio=st.floats(allow_nan=True, allow_infinity=True),
    ms=vad_numbers,
    enum=st.integers(-(2**31), 2**31 - 1),
    metadata=st.dictionaries(st.text(max_size=200), st.text(max_size=2000), max_size=70),
)
def test_bad_grpc_arguments(
    server: ServerThread,
    rpc: str,
    session_id: str,
    number: int,
    ratio: float,
    ms: Any,
    enum: int,
    metadata: dict[str, str],
) -> None:
    assert server.app is not None
    with grpc.insecure_channel(server.app.grpc_target) as channel:
        stub = media_pb2_grpc.MediaServiceStub(channel)
        vad: dict[str, Any] = {"start_ratio": ratio}
        if isinstance(ms, int):
            vad["end_silence_ms"] = ms
            vad["aggressiveness"] = ms
        try:
            if rpc == "Get":
                stub.GetSession(pb.GetSessionRequest(session_id=session_id), timeout=5)
            elif rpc == "End":
                stub.EndSession(pb.EndSessionRequest(session_id=session_id), timeout=5)
            elif rpc == "Start":
                request = pb.StartListeningRequest(
                    session_id=session_id, wait_for_ready=False, vad=pb.VadOptions(**vad)
                )
                stub.StartListening(request, timeout=5)
            elif rpc == "Stop":
                stub.StopListening(pb.StopListeningRequest(session_id=session_id), timeout=5)
            elif rpc == "Watch":
                request = pb.WatchSessionRequest(session_id=session_id, since_revision=number)
                next(iter(stub.WatchSession(request, timeout=1)))
            elif rpc == "Create":
                request = pb.CreateSessionRequest(metadata=metadata, ttl_seconds=ratio)
                created = stub.CreateSession(request, timeout=5)
                stub.EndSession(pb.EndSessionRequest(session_id=created.id), timeout=5)
            elif rpc == "Stream":
                request = pb.StreamAudioRequest(
                    session_id=session_id, mode=enum, sample_rate=number % 2**32
                )
                next(iter(stub.StreamAudio(request, timeout=0.5)))
            elif rpc == "List":
                stub.ListSessions(
                    pb.ListSessionsRequest(include_closed=bool(number % 2)), timeout=5
                )
            else:
                next(iter(stub.WatchSessions(pb.WatchSessionsRequest(), timeout=1)))
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
                rpc,
                error.details(),  # type: ignore[attr-defined]
            )
            if code != grpc.StatusCode.DEADLINE_EXCEEDED:
                assert error.details(), rpc  # type: ignore[attr-defined]


def test_zz_the_server_is_still_healthy_and_logged_no_traceback(server: ServerThread) -> None:
    """Runs last in this module: after everything above, a normal publish still works."""
    assert server.app is not None

    async def normal_publish() -> int:
        publisher = await publish(server.app.base_url if server.app else "")
        try:
            return await publisher.delete()
        finally:
            await publisher.vanish()

    assert asyncio.run(normal_publish()) == 200
    metrics = server.app.metrics
    sent = sum(
        sample.value
        for family in (metrics.http_requests, metrics.grpc_requests)
        for metric in family.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    )
    print(f"\nhostile suite: {sent:.0f} HTTP and gRPC requests answered")
    assert sent >= 2000
    problems = [
        r
        for r in server.records
        if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage()
    ]
    described = [
        f"{r.name}: {r.getMessage()} {traceback.format_exception(*r.exc_info)[-1:]}"
        if r.exc_info
        else f"{r.name}: {r.getMessage()}"
        for r in problems[:5]
    ]
    assert not problems, described
