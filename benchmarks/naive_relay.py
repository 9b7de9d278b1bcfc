"""Baseline for benchmarks/playback.py: the naïve aiortc relay, one Opus encode per WHEP player.

    python benchmarks/naive_relay.py      # prints "port N" once listening on 127.0.0.1

POST /whip answers a publisher's offer (``Location: /whip/{id}``); its decoded frames are read
and counted through an aiortc ``MediaRelay``. POST /whep/{id} answers a player's ``recvonly``
offer with ``relay.subscribe(publisher_track)``: every player's ``RTCRtpSender`` gets decoded
frames and encodes them again with its own Opus encoder, which is what Hark's forwarding avoids.
GET /stats returns {"publishers": n, "players": n, "frames": n}. No auth, no limits, no cleanup
beyond closing everything at exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any

import aioice.ice
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.contrib.media import MediaRelay
from aiortc.mediastreams import MediaStreamError
from bare_receiver import serve

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


@dataclass
class Publisher:
    relay: MediaRelay
    track: Any = None


peers: set[RTCPeerConnection] = set()
publishers: dict[str, Publisher] = {}
tasks: set[asyncio.Task[None]] = set()
stats = {"publishers": 0, "players": 0, "frames": 0}


async def consume(track: Any) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
            stats["frames"] += 1


def start(coro: Any) -> None:
    task = asyncio.ensure_future(coro)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


def answer(pc: RTCPeerConnection, location: str) -> web.Response:
    return web.Response(
        status=201,
        text=pc.localDescription.sdp,
        content_type="application/sdp",
        headers={"Location": location},
    )


async def whip(request: web.Request) -> web.Response:
    pc = RTCPeerConnection()
    peers.add(pc)
    publisher = Publisher(MediaRelay())
    session_id = str(len(publishers) + 1)
    publishers[session_id] = publisher

    @pc.on("track")
    def on_track(track: Any) -> None:
        if track.kind == "audio" and publisher.track is None:
            publisher.track = track
            start(consume(publisher.relay.subscribe(track)))

    await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    stats["publishers"] += 1
    return answer(pc, f"/whip/{session_id}")


async def whep(request: web.Request) -> web.Response:
    publisher = publishers.get(request.match_info["id"])
    if publisher is None or publisher.track is None:
        return web.Response(status=404, text="no such publisher")
    pc = RTCPeerConnection()
    peers.add(pc)
    await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
    # The naïve way: a relayed track of decoded frames, re-encoded by this player's sender.
    pc.addTrack(publisher.relay.subscribe(publisher.track))
    await pc.setLocalDescription(await pc.createAnswer())
    stats["players"] += 1
    return answer(pc, f"/whep/{request.match_info['id']}/{stats['players']}")


async def get_stats(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(stats), content_type="application/json")


async def main() -> None:
    app = web.Application()
    app.router.add_post("/whip", whip)
    app.router.add_post("/whep/{id}", whep)
    app.router.add_get("/stats", get_stats)
    await serve(app, peers, tasks)


if __name__ == "__main__":
    asyncio.run(main())
