"""Test helpers: a real Hark server on port 0 and a real aiortc WHIP publisher."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import pathlib
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import av
import grpc
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaPlayer
from aiortc.rtp import is_rtcp

from media.app import HarkApp
from media.config import Config
from media.rtc.negotiation import close_peer_connection
from media.v1 import media_pb2 as pb
from media.v1 import media_pb2_grpc

FIXTURES = pathlib.Path(__file__).parent / "fixtures"
SPEECH = FIXTURES / "speech.ogg"


def fixture_pcm(rate: int = 16000) -> list[tuple[bytes, int]]:
    """Each Opus packet of the speech fixture decoded by libopus at ``rate`` (mono), with its first
    sample on the media clock: what a publisher's ``OpusInput`` hands the speech pipeline."""
    from media.audio.opus_decoder import OpusDecoder

    decoder, decoded, start = OpusDecoder(rate), [], 0
    with av.open(str(SPEECH)) as container:
        for packet in container.demux(audio=0):
            pcm = decoder.decode(bytes(packet)) if packet.size else None
            if pcm is not None:
                decoded.append((pcm, start))
                start += len(pcm) // 2
    return decoded


def truth(name: str = "speech.json") -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())  # type: ignore[no-any-return]


def server_config(**overrides: Any) -> Config:
    # max_loop_lag_ms=0: an in-process server shares its loop with the test's own peers, so its
    # loop lag measures the test, not the server (test_admission turns it on).
    base = Config(http_port=0, grpc_port=0, heartbeat_interval=1.0, rate_limit=0, max_loop_lag_ms=0)
    return dataclasses.replace(base, **overrides)


@contextlib.asynccontextmanager
async def running_server(**overrides: Any) -> AsyncIterator[HarkApp]:
    app = HarkApp(server_config(**overrides))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


@contextlib.asynccontextmanager
async def grpc_stub(
    app: HarkApp, token: str | None = None
) -> AsyncIterator[media_pb2_grpc.MediaServiceStub]:
    async with grpc.aio.insecure_channel(app.grpc_target) as channel:
        stub = media_pb2_grpc.MediaServiceStub(channel)
        if token is not None:
            stub = _AuthStub(stub, token)  # type: ignore[assignment]
        yield stub


class _AuthStub:
    """Adds the bearer token to every call."""

    def __init__(self, stub: media_pb2_grpc.MediaServiceStub, token: str) -> None:
        self._stub = stub
        self._metadata = (("authorization", f"Bearer {token}"),)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("metadata", self._metadata)
            return method(request, **kwargs)

        return call


@dataclasses.dataclass
class Publisher:
    pc: RTCPeerConnection
    player: MediaPlayer
    location: str
    etag: str
    session_id: str
    answer: str
    base_url: str
    token: str | None

    @property
    def url(self) -> str:
        return self.base_url + self.location

    async def delete(self) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.delete(self.url, headers=_auth(self.token)) as response:
                return response.status

    async def vanish(self) -> None:
        """Stop sending without telling the server."""
        await close_peer_connection(self.pc)
        with contextlib.suppress(Exception):
            if self.player.audio is not None:
                self.player.audio.stop()


def _auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def publish(
    base_url: str,
    path: str = "/whip",
    *,
    token: str | None = None,
    fixture: pathlib.Path = SPEECH,
    wrap: Callable[[Any], Any] | None = None,
) -> Publisher:
    """Publish ``fixture`` over WHIP without re-encoding it, like a browser would."""
    player = MediaPlayer(str(fixture), decode=False)
    pc = RTCPeerConnection()
    track = wrap(player.audio) if wrap else player.audio
    pc.addTransceiver(track, direction="sendonly")
    await pc.setLocalDescription(await pc.createOffer())
    headers = {"Content-Type": "application/sdp", **_auth(token)}
    async with aiohttp.ClientSession() as http:
        async with http.post(base_url + path, data=pc.localDescription.sdp, headers=headers) as r:
            body = await r.text()
            if r.status != 201:
                await pc.close()
                raise AssertionError(f"WHIP POST answered {r.status}: {body}")
            location = r.headers["Location"]
            etag = r.headers["ETag"]
    await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    return Publisher(
        pc=pc,
        player=player,
        location=location,
        etag=etag,
        session_id=location.rsplit("/", 1)[1],
        answer=body,
        base_url=base_url,
        token=token,
    )


def swap_sent_packets(pc: RTCPeerConnection, every: int) -> bool:
    """Reorder ``pc``'s outgoing RTP as a network would: every ``every``th packet leaves right
    after the one that follows it (RTCP untouched). False when aiortc's sending path moved.

    aiortc sends each protected packet through ``RTCDtlsTransport._send_rtp`` (private; the
    contract tests check it is still there); sequence numbers are assigned before, so the
    receiver sees them out of order.
    """
    transport = pc.getSenders()[0].transport
    original = getattr(transport, "_send_rtp", None)
    if original is None or not asyncio.iscoroutinefunction(original):
        return False
    sent = 0
    held: bytes | None = None

    async def send_swapped(data: bytes) -> None:
        nonlocal sent, held
        if is_rtcp(data):
            await original(data)
            return
        sent += 1
        if held is None and sent % every == 0:
            held = data
            return
        await original(data)
        if held is not None:
            late, held = held, None
            await original(late)

    transport._send_rtp = send_swapped
    return True


async def eventually(
    condition: Callable[[], bool | Awaitable[bool]], what: str, timeout: float = 10.0
) -> None:
    """Poll ``condition`` until it holds, for what only polling can observe (a metric, a count).

    Fails naming ``what`` once ``timeout`` passes; the deadline is a bound, never a measurement.
    """
    try:
        async with asyncio.timeout(timeout):
            while not await _holds(condition):
                await asyncio.sleep(0.02)  # the polling interval, not a wait for anything
    except TimeoutError:
        raise AssertionError(f"never true within {timeout} s: {what}") from None


async def _holds(condition: Callable[[], bool | Awaitable[bool]]) -> bool:
    outcome = condition()
    return await outcome if isinstance(outcome, Awaitable) else outcome


async def next_event(stream: Any, timeout: float = 10.0) -> pb.SessionEvent:
    """The next non-heartbeat event of a watch stream."""
    while True:
        event = await asyncio.wait_for(stream.read(), timeout)
        if event is grpc.aio.EOF:
            raise AssertionError("watch stream ended")
        assert isinstance(event, pb.SessionEvent)
        if event.WhichOneof("payload") != "heartbeat":
            return event


async def events_until(watch: Any, kind: str, timeout: float = 10.0) -> list[pb.SessionEvent]:
    """Events read from ``watch`` up to and including the first with payload ``kind``."""
    seen: list[pb.SessionEvent] = []
    while not seen or seen[-1].WhichOneof("payload") != kind:
        seen.append(await next_event(watch, timeout))
    return seen


async def collect_until_closed(stream: Any, timeout: float = 30.0) -> list[pb.SessionEvent]:
    """Every non-heartbeat event until the stream completes."""
    events: list[pb.SessionEvent] = []
    async with asyncio.timeout(timeout):
        while (event := await stream.read()) is not grpc.aio.EOF:
            if event.WhichOneof("payload") != "heartbeat":
                events.append(event)
    return events


# A single process, or the supervisor of --workers N once every worker serves.
STARTED = re.compile(
    r"hark serving(?: with \d+ workers)?: HTTP on [\d.]+:(\d+), gRPC on [\d.]+:(\d+)"
)


class HarkProcess:
    def __init__(self, *args: str) -> None:
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None
        self.log: list[str] = []
        self.http_port = self.grpc_port = 0

    async def __aenter__(self) -> HarkProcess:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "media",
            "serve",
            "--http-port",
            "0",
            "--grpc-port",
            "0",
            *self.args,
            stderr=asyncio.subprocess.PIPE,
            env=env,
        )
        assert self.proc.stderr is not None
        async with asyncio.timeout(20):
            while True:
                line = (await self.proc.stderr.readline()).decode()
                assert line, "hark exited before serving:\n" + "".join(self.log)
                self.log.append(line)
                if match := STARTED.search(line):
                    self.http_port, self.grpc_port = int(match[1]), int(match[2])
                    return self

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def wait(self, timeout: float) -> int:
        assert self.proc is not None and self.proc.stderr is not None
        async with asyncio.timeout(timeout):
            rest = await self.proc.stderr.read()
            self.log.append(rest.decode())
            return await self.proc.wait()
