"""Test helpers for the return path: a real aiortc WHEP player, PlayAudio calls, and plain-Python
audio analysis (a tone's frequency, frame energy) of what the player heard."""

from __future__ import annotations

import array
import asyncio
import contextlib
import dataclasses
import functools
import math
import re
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import AudioFrame

from media.audio.pcm import Downmixer
from media.rtc.compat import set_jitter_frames
from media.rtc.negotiation import close_peer_connection
from media.v1 import media_pb2 as pb

RATE = 48000
SILENCE_DBFS = -50.0


@dataclasses.dataclass
class Heard:
    """One decoded frame: when it came out of the player's decoder (wall time) and its samples."""

    time: float
    samples: array.array[int]

    @functools.cached_property
    def dbfs(self) -> float:
        return dbfs(self.samples)


@dataclasses.dataclass
class Listener:
    """A WHEP player: an aiortc peer that only receives, and everything it decoded."""

    pc: RTCPeerConnection
    url: str
    token: str | None
    answer: str = ""
    heard: list[Heard] = dataclasses.field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def samples(self, since: float = 0.0) -> array.array[int]:
        out = array.array("h")
        for frame in self.heard:
            if frame.time >= since:
                out.extend(frame.samples)
        return out

    async def delete(self) -> int:
        async with aiohttp.ClientSession() as http:
            async with http.delete(self.url, headers=auth(self.token)) as response:
                return response.status

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        await close_peer_connection(self.pc)


def opus_payload_type(sdp: str) -> int:
    match = re.search(r"a=rtpmap:(\d+) opus/48000", sdp, re.IGNORECASE)
    assert match, "no Opus in the SDP"
    return int(match.group(1))


def auth(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def recvonly_offer() -> RTCPeerConnection:
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc


async def listen(
    base_url: str, session_id: str, *, token: str | None = None, source: str | None = None
) -> Listener:
    """Open a WHEP player on the session and start recording what it decodes."""
    pc = await recvonly_offer()
    query = f"?source={source}" if source else ""
    headers = {"Content-Type": "application/sdp", **auth(token)}
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base_url}/whep/{session_id}{query}", data=pc.localDescription.sdp, headers=headers
        ) as r:
            body = await r.text()
            if r.status != 201:
                await pc.close()
                raise AssertionError(f"WHEP POST answered {r.status}: {body}")
            location = r.headers["Location"]
    listener = Listener(pc, base_url + location, token, body)
    tracks: asyncio.Queue[Any] = asyncio.Queue()
    pc.on("track", tracks.put_nowait)
    await pc.setRemoteDescription(RTCSessionDescription(body, "answer"))
    track = await asyncio.wait_for(tracks.get(), 5)
    receiver = next(t.receiver for t in pc.getTransceivers() if t.receiver.track is track)
    set_jitter_frames(receiver, 1)
    listener.task = asyncio.create_task(_record(track, listener.heard))
    return listener


async def _record(track: Any, heard: list[Heard]) -> None:
    mono = Downmixer(RATE)
    while True:
        try:
            frame = await track.recv()
        except MediaStreamError:
            return
        assert isinstance(frame, AudioFrame)
        heard.append(Heard(time.time(), array.array("h", mono.convert(frame))))


@contextlib.asynccontextmanager
async def listening(
    base_url: str, session_id: str, *, token: str | None = None, source: str | None = None
) -> AsyncIterator[Listener]:
    listener = await listen(base_url, session_id, token=token, source=source)
    try:
        yield listener
    finally:
        await listener.close()


# audio


def tone(frequency: float, seconds: float, rate: int = RATE, level: float = 0.5) -> bytes:
    """A sine tone as 16-bit mono PCM."""
    count = round(seconds * rate)
    amplitude = level * 32767
    samples = array.array(
        "h", (round(amplitude * math.sin(2 * math.pi * frequency * i / rate)) for i in range(count))
    )
    return samples.tobytes()


def dbfs(samples: Iterable[int]) -> float:
    values = list(samples)
    if not values:
        return -120.0
    power = sum(v * v for v in values) / len(values)
    return 10 * math.log10(power / 32768**2) if power > 0 else -120.0


def frequency(samples: array.array[int], rate: int = RATE) -> float:
    """A steady tone's frequency from its upward zero crossings, interpolated between samples."""
    crossings: list[float] = []
    for i in range(1, len(samples)):
        a, b = samples[i - 1], samples[i]
        if a < 0 <= b:
            crossings.append(i - 1 + (-a) / (b - a))
    if len(crossings) < 2:
        return 0.0
    return (len(crossings) - 1) * rate / (crossings[-1] - crossings[0])


def loud(heard: Iterable[Heard]) -> list[Heard]:
    return [frame for frame in heard if frame.dbfs > SILENCE_DBFS]


def fell_silent(heard: list[Heard]) -> bool:
    """The player heard sound, and has decoded silence since: it heard all of it."""
    if not heard or heard[-1].dbfs > SILENCE_DBFS:
        return False
    return any(frame.dbfs > SILENCE_DBFS for frame in reversed(heard))


# PlayAudio


def play_requests(
    session_id: str,
    pcm: bytes,
    *,
    rate: int = RATE,
    channels: int = 1,
    chunk_ms: int = 100,
    mode: int = pb.ENQUEUE,
    interrupt_on_speech: bool | None = None,
    playback_id: str = "",
) -> list[pb.PlayAudioRequest]:
    start = pb.PlayAudioStart(
        session_id=session_id,
        sample_rate=rate,
        channels=channels,
        mode=mode,  # type: ignore[arg-type]
        playback_id=playback_id,
    )
    if interrupt_on_speech is not None:
        start.interrupt_on_speech = interrupt_on_speech
    step = rate * chunk_ms // 1000 * 2 * channels
    return [pb.PlayAudioRequest(start=start)] + [
        pb.PlayAudioRequest(pcm=pcm[i : i + step]) for i in range(0, len(pcm), step)
    ]


async def requests_of(messages: list[pb.PlayAudioRequest]) -> AsyncIterator[pb.PlayAudioRequest]:
    for message in messages:
        yield message


async def hold_open(
    first: list[pb.PlayAudioRequest],
    release: asyncio.Event,
    then: Iterable[pb.PlayAudioRequest] = (),
) -> AsyncIterator[pb.PlayAudioRequest]:
    """Send ``first``, keep the stream open until ``release`` is set, then send ``then``."""
    for message in first:
        yield message
    await release.wait()
    for message in then:
        yield message
