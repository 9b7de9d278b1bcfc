"""The resumable watch of every session (WatchSessions' local half), on a real table without
peers."""

from __future__ import annotations

import pytest

from media.core.clock import Clock
from media.core.event_log import Position
from media.core.events import CloseReason, SessionEvent, SessionState, StateChanged
from media.core.session import Origin, Timeouts
from media.errors import SubscriberTooSlow
from media.server.event_feed import Fed, FeedWatch
from media.server.session_table import SessionTable
from media.server.watch import SnapshotItem


def table(capacity: int = 64) -> SessionTable:
    return SessionTable(
        Clock(),
        timeouts=Timeouts(),
        closed_retention=60,
        max_sessions=10,
        event_log_capacity=capacity,
    )


async def take(watch: FeedWatch, count: int) -> list[Fed]:
    return [await anext(watch) for _ in range(count)]


def snapshot_ids(fed: list[Fed]) -> list[str]:
    return [f.item.snapshot.id for f in fed if isinstance(f.item, SnapshotItem)]


async def test_a_fresh_watch_gives_snapshots_whose_last_carries_the_position() -> None:
    sessions = table()
    created = [sessions.create(Origin.API) for _ in range(3)]
    with sessions.watch_everything(None, fresh=True, include_closed=False, heartbeat_s=60) as w:
        opening = await take(w, 3)
        assert snapshot_ids(opening) == [live.id for live in created]
        assert not any(f.item.resync for f in opening if isinstance(f.item, SnapshotItem))
        incarnation = sessions.feed.log.incarnation
        assert [f.position for f in opening] == [
            Position(incarnation, None),
            Position(incarnation, None),
            Position(incarnation, 3),
        ], "resuming in the middle of the snapshots starts over"
        created[0].close(CloseReason.API_END, "done")
        (closing,) = await take(w, 1)
        assert isinstance(closing.item, SessionEvent) and closing.position.seq == 4
    await sessions.shutdown()


async def test_a_position_in_the_log_resumes_with_exactly_the_events_after_it() -> None:
    sessions = table()
    first = sessions.create(Origin.API)
    with sessions.watch_everything(None, fresh=True, include_closed=False, heartbeat_s=60) as w:
        (snapshot,) = await take(w, 1)
    position = snapshot.position
    second = sessions.create(Origin.API)
    first.close(CloseReason.API_END, "done")
    with sessions.watch_everything(
        position, fresh=False, include_closed=False, heartbeat_s=60
    ) as resumed:
        replayed = await take(resumed, 2)
    assert [
        (f.item.session_id, f.item.revision) for f in replayed if isinstance(f.item, SessionEvent)
    ] == [
        (second.id, 1),
        (first.id, 2),
    ]
    assert [f.position.seq for f in replayed] == [2, 3]
    await sessions.shutdown()


@pytest.mark.parametrize("why", ["too old", "another incarnation", "no position", "cut snapshots"])
async def test_what_cannot_be_replayed_comes_as_resync_snapshots_closed_ones_included(
    why: str,
) -> None:
    sessions = table(capacity=2)
    gone = sessions.create(Origin.API)
    kept = sessions.create(Origin.API)
    incarnation = sessions.feed.log.incarnation
    position = {
        "too old": Position(incarnation, 0),
        "another incarnation": Position("0ther", 2),
        "no position": None,
        "cut snapshots": Position(incarnation, None),
    }[why]
    gone.close(CloseReason.API_END, "done")
    sessions.create(Origin.API)
    with sessions.watch_everything(
        position, fresh=False, include_closed=False, heartbeat_s=60
    ) as w:
        opening = await take(w, 3)
    assert snapshot_ids(opening)[:2] == [gone.id, kept.id]
    assert all(isinstance(f.item, SnapshotItem) and f.item.resync for f in opening)
    assert opening[-1].position == Position(incarnation, 4)
    await sessions.shutdown()


async def test_a_watcher_that_falls_behind_the_log_is_told_to_resume() -> None:
    sessions = table(capacity=4)
    with sessions.watch_everything(None, fresh=True, include_closed=False, heartbeat_s=60) as w:
        for _ in range(5):
            sessions.create(Origin.API)
        with pytest.raises(SubscriberTooSlow, match="resume_token"):
            await anext(w)
    await sessions.shutdown()


async def test_an_announcing_watch_of_nothing_says_where_it_stands_at_once() -> None:
    sessions = table()
    sessions.create(Origin.API).close(CloseReason.API_END, "done")
    with sessions.watch_everything(
        None, fresh=True, include_closed=False, heartbeat_s=60, announce=True
    ) as w:
        (first,) = await take(w, 1)
    assert first.item is None and first.position == Position(sessions.feed.log.incarnation, 2)
    await sessions.shutdown()


async def test_shutdown_ends_the_watch_after_the_closing_events() -> None:
    sessions = table()
    live = sessions.create(Origin.API)
    with sessions.watch_everything(None, fresh=True, include_closed=False, heartbeat_s=60) as w:
        await take(w, 1)
        await sessions.shutdown()
        rest = [fed async for fed in w]
    payloads = [f.item.payload for f in rest if isinstance(f.item, SessionEvent)]
    assert [(p.state, p.close_reason) for p in payloads if isinstance(p, StateChanged)] == [
        (SessionState.CLOSED, CloseReason.SHUTDOWN)
    ]
    assert live.closed
    assert sessions.watcher_count() == 0
