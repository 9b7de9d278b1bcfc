"""The watch of every session this process holds, resumable: every event goes into one numbered
log (``media.core.event_log``), and each WatchSessions stream is a cursor into it, so a watcher
that reconnects with its position gets exactly the events it missed.

A stream starts with a snapshot of each session (or, resuming, with the events after its
position; or, when that is impossible, with snapshots of every retained session marked
``resync``), then the log from there on. Every item carries the position a watcher stands at once
it has it: during the opening snapshots that is ``seq=None`` (resuming there starts over), the
last snapshot carries the log's position when they were taken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from media.core.event_log import EventLog, Position, Replay
from media.core.events import SessionEvent
from media.core.session import SessionSnapshot
from media.errors import SubscriberTooSlow
from media.server.watch import SnapshotItem, WatchItem

EVENT_LOG_CAPACITY: Final = 8192


@dataclass(frozen=True, slots=True)
class Fed:
    """One message of a resumable watch (``item`` None: a heartbeat), and where it leaves the
    watcher."""

    item: WatchItem | None
    position: Position


class EventFeed:
    """This process's numbered log of every session event, and the wake-up of its readers."""

    def __init__(self, capacity: int = EVENT_LOG_CAPACITY, incarnation: str | None = None) -> None:
        self.log: EventLog[SessionEvent] = EventLog(capacity, incarnation)
        self._appended = asyncio.Event()
        self.finished = False

    def append(self, event: SessionEvent) -> None:
        self.log.append(event)
        self._wake()

    def finish(self) -> None:
        """Shutdown: every stream ends once it has read what is logged."""
        self.finished = True
        self._wake()

    def _wake(self) -> None:
        appended, self._appended = self._appended, asyncio.Event()
        appended.set()

    def open(
        self,
        position: Position | None,
        snapshots: Callable[[bool], Iterable[SessionSnapshot]],
        *,
        fresh: bool,
        include_closed: bool,
        announce: bool,
    ) -> list[Fed]:
        """The opening items of a stream that stood at ``position``.

        ``fresh``: no earlier stream (plain snapshots, not resync); ``snapshots(include_closed)``
        lists the retained sessions; ``announce``: say the position at once even when there is
        no session to show (a member of a cluster-wide watch tells the merging one where it is).
        """
        log = self.log
        now = log.position()
        if not fresh:
            resumed = log.resume(position)
            if isinstance(resumed, Replay):
                replayed = [
                    Fed(event, Position(log.incarnation, seq)) for seq, event in resumed.entries
                ]
                return replayed or ([Fed(None, now)] if announce else [])
        taken = list(snapshots(include_closed or not fresh))
        pending = Position(log.incarnation, None)
        opening = [
            Fed(SnapshotItem(snap, resync=not fresh), now if last else pending)
            for last, snap in ((index == len(taken) - 1, snap) for index, snap in enumerate(taken))
        ]
        return opening or ([Fed(None, now)] if announce else [])

    async def read(self, after: int, heartbeat_s: float) -> list[Fed]:
        """The items logged after ``after``, waiting up to ``heartbeat_s`` for one; ``[]`` once
        finished; a single heartbeat after an idle ``heartbeat_s``."""
        log = self.log
        while True:
            if after < log.first_seq - 1:
                raise SubscriberTooSlow(
                    f"watcher fell more than {log.first_seq - 1 - after} events behind the "
                    f"{EVENT_LOG_CAPACITY} this process keeps; reconnect with the resume_token "
                    "of the last message to resume"
                )
            if after < log.last_seq:
                return [
                    Fed(event, Position(log.incarnation, seq)) for seq, event in log.after(after)
                ]
            if self.finished:
                return []
            appended = self._appended
            try:
                await asyncio.wait_for(appended.wait(), heartbeat_s)
            except TimeoutError:
                return [Fed(None, Position(log.incarnation, after))]


class FeedWatch:
    """One resumable watch stream: its opening items, then what the feed logs after them. Use it
    as a context manager: leaving it calls ``release`` once."""

    def __init__(
        self,
        feed: EventFeed,
        opening: list[Fed],
        *,
        heartbeat_s: float,
        ended: bool,
        release: Callable[[], None],
    ) -> None:
        self._feed = feed
        self._pending = list(reversed(opening))
        self._cursor = feed.log.last_seq
        self._heartbeat_s = heartbeat_s
        self._ended = ended
        self._release: Callable[[], None] | None = release

    def __enter__(self) -> FeedWatch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        release, self._release = self._release, None
        if release is not None:
            release()

    def __aiter__(self) -> FeedWatch:
        return self

    async def __anext__(self) -> Fed:
        if not self._pending and not self._ended:
            fed = await self._feed.read(self._cursor, self._heartbeat_s)
            if not fed:
                self._ended = True
            for item in fed:
                if item.position.seq is not None:
                    self._cursor = max(self._cursor, item.position.seq)
            self._pending = list(reversed(fed))
        if not self._pending:
            raise StopAsyncIteration
        return self._pending.pop()
