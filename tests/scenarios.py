"""Scenarios the tests assert on and ``benchmarks/timings.py`` times: one copy of each."""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from media.app import HarkApp
from media.v1 import media_pb2 as pb
from tests.listening import Heard, fell_silent, listening, play_requests, requests_of, tone
from tests.support import Publisher, events_until, eventually, next_event, publish


@dataclasses.dataclass
class BargeIn:
    events: list[pb.SessionEvent]  # the session's, up to PlaybackInterrupted
    reply: Any  # the PlayAudio call's answer
    heard: list[Heard]  # what the WHEP player decoded, until the agent fell silent


async def barge_in(app: HarkApp, stub: Any) -> BargeIn:
    """An agent tone plays to a WHEP player; the user (the speech fixture) starts talking over it
    while listening; returns once the player has heard the agent fall silent."""
    session = await stub.CreateSession(pb.CreateSessionRequest())
    watch = stub.WatchSession(pb.WatchSessionRequest(session_id=session.id))
    await next_event(watch)
    async with listening(app.base_url, session.id, token=session.token) as player:
        talking = asyncio.ensure_future(
            stub.PlayAudio(requests_of(play_requests(session.id, tone(440, 20.0))))
        )
        await events_until(watch, "playback_started")
        publisher = await publish(app.base_url, f"/whip/{session.id}", token=session.token)
        await stub.StartListening(
            pb.StartListeningRequest(session_id=session.id, wait_for_ready=True), timeout=10
        )
        events = await events_until(watch, "playback_interrupted")
        reply = await asyncio.wait_for(talking, 5)
        await eventually(lambda: fell_silent(player.heard), "the agent falls silent")
        await publisher.delete()
    return BargeIn(events, reply, player.heard)


async def listening_publisher(app: HarkApp, stub: Any) -> tuple[Publisher, Any]:
    """A READY, listening publisher and a watch of its session past the snapshot."""
    publisher = await publish(app.base_url)
    sid = publisher.session_id
    await stub.StartListening(
        pb.StartListeningRequest(session_id=sid, wait_for_ready=True), timeout=10
    )
    watch = stub.WatchSession(pb.WatchSessionRequest(session_id=sid))
    await next_event(watch)
    return publisher, watch
