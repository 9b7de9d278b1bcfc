"""The session table's watch streams and start_listening, on a real table without peers."""

from __future__ import annotations

import asyncio

import pytest
from aiortc.rtp import RtpPacket

from media.core.clock import Clock
from media.core.events import CloseReason, ListeningChanged, SessionState, StateChanged
from media.core.session import Origin, Timeouts
from media.errors import NotReady, ReadyDeadlineExceeded, SessionClosed
from media.server.session_table import SessionTable
from media.server.watch import SnapshotItem, WatchItem


def table() -> SessionTable:
    return SessionTable(Clock(), timeouts=Timeouts(), closed_retention=60, max_sessions=10)


class UnusedPublisher:
    """Stands in for a publisher's peer connection, which these tests never use."""

    async def close(self) -> None:
        pass


def silence() -> RtpPacket:
    """An RTP packet of 20 ms of Opus silence."""
    return RtpPacket(payload_type=111, sequence_number=0, timestamp=0, payload=b"\xf8\xff\xfe")


def closed_state(item: WatchItem | None) -> bool:
    return (
        item is not None
        and not isinstance(item, SnapshotItem)
        and isinstance(item.payload, StateChanged)
        and item.payload.state is SessionState.CLOSED
    )


async def test_a_watch_gives_the_snapshot_then_events_and_heartbeats_and_ends_at_close() -> None:
    sessions = table()
    live = sessions.create(Origin.API)
    seen: list[WatchItem | None] = []
    with sessions.watch(live.id, 0, heartbeat_s=0.01) as watch:
        assert live.watcher_count == 1
        async for item in watch:
            seen.append(item)
            if item is None and not live.closed:
                live.close(CloseReason.API_END, "done")
    assert isinstance(seen[0], SnapshotItem) and seen[0].snapshot.state is SessionState.NEW
    assert None in seen, "an idle watch hears heartbeats"
    assert closed_state(seen[-1]), "the watch ends with CLOSED"
    assert live.watcher_count == 0, "leaving the watch unsubscribes"
    assert sessions.metrics.watch_streams._value.get() == 0
    await sessions.shutdown()


async def test_a_watch_of_a_closed_session_replays_and_ends() -> None:
    sessions = table()
    live = sessions.create(Origin.API)
    live.close(CloseReason.API_END)
    with sessions.watch(live.id, 1, heartbeat_s=60) as watch:
        items = [item async for item in watch]
    assert len(items) == 1 and closed_state(items[0])
    await sessions.shutdown()


async def test_watching_every_session_sees_new_ones_and_ends_at_shutdown() -> None:
    sessions = table()
    first = sessions.create(Origin.API)
    seen: list[WatchItem | None] = []

    async def follow() -> None:
        with sessions.watch_everything(
            None, fresh=True, include_closed=False, heartbeat_s=60
        ) as watch:
            async for fed in watch:
                seen.append(fed.item)

    following = asyncio.ensure_future(follow())
    await asyncio.sleep(0)  # the follower takes its snapshot before the next session exists
    second = sessions.create(Origin.API)
    await sessions.shutdown()
    await asyncio.wait_for(following, 10)
    assert isinstance(seen[0], SnapshotItem) and seen[0].snapshot.id == first.id
    ids = [
        item.session_id
        for item in seen[1:]
        if item is not None and not isinstance(item, SnapshotItem)
    ]
    assert second.id in ids and first.id in ids, "the new session and both closings are seen"


async def test_start_listening_without_wait_names_the_state_and_with_wait_times_out() -> None:
    sessions = table()
    live = sessions.create(Origin.API)
    with pytest.raises(NotReady, match="is NEW, not READY"):
        await sessions.start_listening(live.id)
    with pytest.raises(ReadyDeadlineExceeded, match="still NEW"):
        await sessions.start_listening(live.id, wait=True, wait_limit=0.01)
    assert live.watcher_count == 0
    await sessions.shutdown()


async def test_start_listening_with_wait_fails_when_the_session_closes_first() -> None:
    sessions = table()
    live = sessions.create(Origin.API)
    waiting = asyncio.ensure_future(sessions.start_listening(live.id, wait=True))
    while live.watcher_count == 0:
        await asyncio.sleep(0)
    live.close(CloseReason.API_END, "changed my mind")
    with pytest.raises(SessionClosed, match="changed my mind"):
        await waiting
    await sessions.shutdown()


async def test_start_listening_with_wait_listens_once_ready() -> None:
    sessions = table()
    live = sessions.create(Origin.API)
    waiting = asyncio.ensure_future(sessions.start_listening(live.id, wait=True))
    while live.watcher_count == 0:
        await asyncio.sleep(0)
    live.attach_publisher(UnusedPublisher(), '"etag"')
    live.opus_received(silence())
    snapshot = await asyncio.wait_for(waiting, 10)
    assert snapshot.listening and snapshot.state is SessionState.READY
    assert isinstance(live.session.events_after(0)[-1].payload, ListeningChanged)  # type: ignore[index]
    await sessions.shutdown()
