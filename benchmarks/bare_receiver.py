"""Baseline for benchmarks/load.py: a bare aiortc WHIP receiver that only consumes decoded frames.

    python benchmarks/bare_receiver.py      # prints "port N" once listening on 127.0.0.1

POST /whip answers an offer; every audio track's frames are read and counted. GET /stats returns
{"sessions": n, "frames": n}. No VAD, no events, no gRPC: what Hark's per-session cost is held to.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import Any

import aioice.ice
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]

peers: set[RTCPeerConnection] = set()
tasks: set[asyncio.Task[None]] = set()
stats = {"sessions": 0, "frames": 0}


async def consume(track: Any) -> None:
    with contextlib.suppress(MediaStreamError):
        while True:
            await track.recv()
            stats["frames"] += 1


async def whip(request: web.Request) -> web.Response:
    pc = RTCPeerConnection()
    peers.add(pc)

    @pc.on("track")
    def on_track(track: Any) -> None:
        task = asyncio.ensure_future(consume(track))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await pc.setRemoteDescription(RTCSessionDescription(await request.text(), "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    stats["sessions"] += 1
    return web.Response(
        status=201,
        text=pc.localDescription.sdp,
        content_type="application/sdp",
        headers={"Location": f"/whip/{id(pc)}"},
    )


async def get_stats(request: web.Request) -> web.Response:
    return web.Response(text=json.dumps(stats), content_type="application/json")


async def serve(app: web.Application, peers: set[Any], tasks: set[asyncio.Task[None]]) -> None:
    """Serve ``app`` on a free loopback port, say which, and on SIGINT/SIGTERM close it all."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"port {port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.gather(*(pc.close() for pc in peers), return_exceptions=True)
    await runner.cleanup()


async def main() -> None:
    app = web.Application()
    app.router.add_post("/whip", whip)
    app.router.add_get("/stats", get_stats)
    await serve(app, peers, tasks)


if __name__ == "__main__":
    asyncio.run(main())
