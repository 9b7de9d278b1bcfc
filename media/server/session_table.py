"""Live sessions by id: admission and limits, each session's next deadline, the closed sessions
kept for ``--closed-retention``, and watch streams.

Nothing polls: each session's next deadline (asked of the pure core, or its retention end once
closed) is one ``loop.call_at`` timer. Everything here runs on the event loop and never awaits
between reading a session and subscribing to it, so a watcher can neither miss nor see twice an
event that fires while it is being set up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final

from media.core.clock import Clock
from media.core.event_log import Position
from media.core.events import CloseReason, SessionEvent, SessionState, StateChanged
from media.core.load_governor import LoadGovernor
from media.core.segmenter import SegmenterConfig
from media.core.session import Origin, Session, SessionSnapshot, Timeouts
from media.core.session_ids import Owner
from media.core.speech_settings import SpeechSettings
from media.errors import (
    CapacityExceeded,
    Draining,
    ReadyDeadlineExceeded,
    RevisionOutOfRange,
    SessionNotFound,
)
from media.metrics import Metrics
from media.server.auth import SessionTokens, new_secret
from media.server.event_feed import EVENT_LOG_CAPACITY, EventFeed, FeedWatch
from media.server.live_session import LiveSession
from media.server.watch import SnapshotItem, Subscription, Watch, WatchItem

logger = logging.getLogger(__name__)

OVERLOAD_RETRY_AFTER_S: Final = 5
STALL_GRACE_S: Final = 0.2
"""A deadline timer this late was held up by a stalled loop: it waits this long once more, so
the media and the lag sample queued behind the stall are taken in before it judges silence."""


class _Deadline:
    """A session's armed timer, and the clock time it stands for."""

    __slots__ = ("handle", "when", "deferred")

    def __init__(self, handle: asyncio.TimerHandle, when: float, deferred: bool) -> None:
        self.handle = handle
        self.when = when
        self.deferred = deferred


class SessionTable:
    def __init__(
        self,
        clock: Clock,
        *,
        timeouts: Timeouts,
        closed_retention: float,
        max_sessions: int,
        event_retention: int = 256,
        speech: SpeechSettings | None = None,
        metrics: Metrics | None = None,
        max_watchers: int = 1000,
        max_players: int = 8,
        max_playback_queue_ms: int = 60_000,
        governor: LoadGovernor | None = None,
        owner: Owner | None = None,
        tokens: SessionTokens | None = None,
        event_log_capacity: int = EVENT_LOG_CAPACITY,
        reorder_frames: int = 1,
    ) -> None:
        self.reorder_frames = reorder_frames
        self.owner = owner or Owner("local")
        self.tokens = tokens or SessionTokens(new_secret())
        self.governor = governor or LoadGovernor(0.0)
        self.max_watchers = max_watchers
        self.max_players = max_players
        self.max_playback_queue_ms = max_playback_queue_ms
        self.clock = clock
        self.metrics = metrics or Metrics()
        self.speech = speech or SpeechSettings()
        self.timeouts = timeouts
        self.closed_retention = closed_retention
        self.max_sessions = max_sessions
        self.event_retention = event_retention
        self.observers: list[Callable[[SessionEvent, Session], None]] = []
        self._sessions: dict[str, LiveSession] = {}
        self._deadlines: dict[str, _Deadline] = {}
        self.feed = EventFeed(event_log_capacity)
        self._feed_watchers = 0
        self._releasing: set[asyncio.Task[None]] = set()
        self._draining = False
        self._negotiating = 0
        self._shut = False
        self._a_session_closed = asyncio.Event()

    # lifecycle

    def drain(self) -> None:
        """Take no new sessions from now on."""
        self._draining = True

    async def shutdown(self) -> None:
        """Close every session with SHUTDOWN, end every watcher, release all media."""
        self._draining = True
        self._shut = True
        for live in list(self._sessions.values()):
            live.close(CloseReason.SHUTDOWN, "server shutting down")
        self.feed.finish()
        for deadline in self._deadlines.values():
            deadline.handle.cancel()
        self._deadlines.clear()
        while self._releasing:
            await asyncio.wait(set(self._releasing))

    async def wait_all_closed(self) -> None:
        """Return once no session is open (what ``drain`` waits for)."""
        while self.live_count():
            self._a_session_closed.clear()
            await self._a_session_closed.wait()

    # admission

    @property
    def draining(self) -> bool:
        return self._draining

    def live_count(self) -> int:
        return sum(1 for live in self._sessions.values() if not live.closed)

    @contextlib.contextmanager
    def reserve(self) -> Iterator[None]:
        """Hold a place for a session whose offer is being negotiated: peers that are being built
        count against --max-sessions, so a burst of POSTs cannot build more than fit."""
        self.check_capacity()
        self._negotiating += 1
        try:
            yield
        finally:
            self._negotiating -= 1

    def check_capacity(self, *, reserved: bool = False) -> None:
        """Refuse a new session when draining, full or overloaded; ``reserved``: the caller holds
        one of the places being negotiated, so it does not count against itself."""
        if self._draining:
            self.metrics.sessions_refused.labels("draining").inc()
            raise Draining("server is draining and takes no new sessions")
        live = self.live_count() + self._negotiating - (1 if reserved else 0)
        if live >= self.max_sessions:
            self.metrics.sessions_refused.labels("max_sessions").inc()
            raise CapacityExceeded(
                f"at capacity: {live} live or negotiating sessions "
                f"(--max-sessions {self.max_sessions})",
                retry_after_s=2,
            )
        if not self.governor.may_admit(self.clock.now()):
            self.metrics.sessions_refused.labels("overloaded").inc()
            raise CapacityExceeded(self.overload_detail(), retry_after_s=OVERLOAD_RETRY_AFTER_S)

    def overload_detail(self) -> str:
        """Why the node refuses new sessions while overloaded, for people."""
        governor = self.governor
        lag_ms = governor.mean_lag(self.clock.now()) * 1000
        if not governor.overloaded:
            return (
                f"busy: event loop lag averaged {lag_ms:.0f} ms over the last "
                f"{governor.window_s:g} s, over half of --max-loop-lag-ms "
                f"{governor.max_lag_s * 1000:.0f}; one new session per {governor.settle_s:g} s"
            )
        return (
            f"overloaded: event loop lag averaged {lag_ms:.0f} ms over the last "
            f"{governor.window_s:g} s (--max-loop-lag-ms {governor.max_lag_s * 1000:.0f}); "
            f"{self.live_count()} live sessions keep running, new ones are refused"
        )

    # sessions

    def create(
        self,
        origin: Origin,
        *,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        ttl: float | None = None,
        with_token: bool = False,
        reserved: bool = False,
    ) -> LiveSession:
        self.check_capacity(reserved=reserved)
        sid = session_id or self.new_id()
        timeouts = self.timeouts
        if ttl:
            timeouts = Timeouts(timeouts.ready, timeouts.media, ttl)
        session = Session(
            sid,
            origin,
            self.clock.now(),
            timeouts=timeouts,
            metadata=metadata,
            retain_events=self.event_retention,
        )
        live = LiveSession(
            session,
            clock=self.clock,
            metrics=self.metrics,
            speech=self.speech,
            on_events=self._published,
            token=self.tokens.mint(sid) if with_token else None,
            max_players=self.max_players,
            max_playback_queue_ms=self.max_playback_queue_ms,
            reorder_frames=self.reorder_frames,
        )
        self._sessions[sid] = live
        self.governor.admitted(self.clock.now())
        live.log.info("created (%s)", origin.name)
        self._published(live, session.events_after(0) or [])
        return live

    def restore_closed(
        self, session_id: str, origin: Origin, reason: CloseReason, detail: str
    ) -> LiveSession:
        """A session an earlier incarnation of this process owned, readable as closed for
        --closed-retention (no capacity check: it holds no media)."""
        session = Session(session_id, origin, self.clock.now(), timeouts=self.timeouts)
        live = LiveSession(
            session,
            clock=self.clock,
            metrics=self.metrics,
            speech=self.speech,
            on_events=self._published,
        )
        self._sessions[session_id] = live
        live.close(reason, detail)  # counted as closed (again), not as created
        return live

    def new_id(self) -> str:
        """A fresh session id naming this process as its owner."""
        return self.owner.new_session_id()

    def get(self, session_id: str) -> LiveSession:
        """The session, open or closed (within retention); ``SessionNotFound`` otherwise."""
        live = self._sessions.get(session_id)
        if live is None:
            raise SessionNotFound(session_id)
        return live

    def get_open(self, session_id: str) -> LiveSession:
        """The session if it is open; ``SessionClosed`` (naming why) or ``SessionNotFound``."""
        live = self.get(session_id)
        live.check_open()
        return live

    def all(self) -> Iterable[LiveSession]:
        return self._sessions.values()

    async def read_receiver_stats(self) -> None:
        """Traffic, RTP loss and jitter from aiortc's receiver stats, read when scraped."""
        reading_ids = []
        for live in list(self.all()):
            if live.publisher is not None:
                reading = await live.publisher.read_stats()
                self.metrics.observe_receiver(
                    live.id, reading.packets, reading.octets, reading.lost_since_last
                )
                if reading.jitter_s is not None:
                    self.metrics.rtp_jitter.observe(reading.jitter_s)
                reading_ids.append(live.id)
        self.metrics.received.keep_only(reading_ids)

    def close(self, session_id: str, reason: CloseReason, detail: str = "") -> SessionSnapshot:
        """Close the session (idempotent); its media is released in the background."""
        live = self.get(session_id)
        live.close(reason, detail)
        return live.snapshot()

    # listening

    async def start_listening(
        self,
        session_id: str,
        *,
        wait: bool = False,
        wait_limit: float | None = None,
        segmenter: SegmenterConfig | None = None,
        aggressiveness: int | None = None,
    ) -> SessionSnapshot:
        """Listen. Before READY this fails ``NotReady``, unless ``wait``: then it waits for
        READY (``ReadyDeadlineExceeded`` after ``wait_limit`` seconds; ``SessionClosed`` when it
        closes first)."""
        live = self.get(session_id)
        if wait and live.session.state is not SessionState.READY:
            try:
                await asyncio.wait_for(self.wait_ready(session_id), wait_limit)
            except TimeoutError:
                raise ReadyDeadlineExceeded(session_id, live.session.state.name) from None
        return live.start_listening(segmenter, aggressiveness)

    def stop_listening(self, session_id: str) -> SessionSnapshot:
        return self.get(session_id).stop_listening()

    async def wait_ready(self, session_id: str) -> SessionSnapshot:
        """Wait until the session is READY; raise SessionClosed if it closes first."""
        live = self.get(session_id)
        with self.watch(session_id, 0, heartbeat_s=3600, counted=False) as watch:
            async for _ in watch:
                if live.session.state is SessionState.READY:
                    return live.snapshot()
                live.check_open()
        live.check_open()
        return live.snapshot()  # the table shut down while this waited

    # watch streams

    def watch(
        self, session_id: str, since_revision: int, *, heartbeat_s: float, counted: bool = True
    ) -> Watch:
        """One session's events: a snapshot (``since_revision`` 0), or what came after
        ``since_revision`` (a ``resync`` snapshot when that is no longer retained), then every
        event until ``CLOSED``. Checks happen here, before the caller answers anything.
        ``counted``: a watch stream for the metrics (not an internal wait)."""
        live = self.get(session_id)
        session = live.session
        if since_revision > session.revision:
            raise RevisionOutOfRange(
                f"since_revision {since_revision} is ahead of session {session_id!r}, "
                f"whose latest revision is {session.revision}"
            )
        self._check_watchers()
        initial: list[WatchItem]
        if since_revision == 0:
            initial = [SnapshotItem(session.snapshot())]
        else:
            missed = session.events_after(since_revision)
            initial = (
                list(missed) if missed is not None else [SnapshotItem(session.snapshot(), True)]
            )
        subscription = None
        if not session.closed:
            subscription = Subscription()
            subscription.delivered_revision = session.revision
            live.watchers.add(subscription)

        gauge = self.metrics.watch_streams if counted else None

        def release() -> None:
            if gauge is not None:
                gauge.dec()
            if subscription is not None:
                live.watchers.discard(subscription)

        if gauge is not None:
            gauge.inc()
        return Watch(
            initial, subscription, heartbeat_s=heartbeat_s, ends_at_close=True, release=release
        )

    def watch_everything(
        self,
        position: Position | None,
        *,
        fresh: bool,
        include_closed: bool,
        heartbeat_s: float,
        announce: bool = False,
    ) -> FeedWatch:
        """Every session's events, resumable from ``position`` (see ``media.server.event_feed``),
        until shutdown."""
        self._check_watchers()
        opening = self.feed.open(
            position,
            self._retained_snapshots,
            fresh=fresh,
            include_closed=include_closed,
            announce=announce,
        )
        self._feed_watchers += 1

        def release() -> None:
            self.metrics.watch_streams.dec()
            self._feed_watchers -= 1

        self.metrics.watch_streams.inc()
        ended = self.feed.finished or (self._draining and not self._sessions)
        return FeedWatch(self.feed, opening, heartbeat_s=heartbeat_s, ended=ended, release=release)

    def _retained_snapshots(self, include_closed: bool) -> list[SessionSnapshot]:
        return [
            live.snapshot() for live in self._sessions.values() if include_closed or not live.closed
        ]

    def watcher_count(self) -> int:
        return self._feed_watchers + sum(live.watcher_count for live in self._sessions.values())

    def _check_watchers(self) -> None:
        count = self.watcher_count()
        if count >= self.max_watchers:
            raise CapacityExceeded(
                f"at capacity: {count} watch streams (--max-watchers {self.max_watchers})"
            )

    # events and deadlines

    def _published(self, live: LiveSession, events: list[SessionEvent]) -> None:
        closed = False
        for event in events:
            self.feed.append(event)
            self.metrics.observe_event(event, live.session)
            for observe in self.observers:
                observe(event, live.session)
            if isinstance(event.payload, StateChanged):
                live.log.debug("r%d %s", event.revision, event.payload.state.name)
                closed = closed or event.payload.state is SessionState.CLOSED
        if closed:
            self._a_session_closed.set()
            self._release(live)
        self._schedule(live)

    def _release(self, live: LiveSession) -> None:
        task = asyncio.get_running_loop().create_task(live.aclose(), name=f"hark-close-{live.id}")
        self._releasing.add(task)
        task.add_done_callback(self._released)

    def _released(self, task: asyncio.Task[None]) -> None:
        self._releasing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("releasing a session's media failed", exc_info=task.exception())

    def _deadline_of(self, live: LiveSession) -> float | None:
        session = live.session
        if session.closed:
            assert session.closed_time is not None
            return session.closed_time + self.closed_retention
        return session.next_deadline()

    def _schedule(self, live: LiveSession, *, deferred: bool = False) -> None:
        """Arm the session's timer for its next deadline, unless one at least as early is armed
        (a timer that fires early just asks again, so media arriving never re-arms it)."""
        when = None if self._shut else self._deadline_of(live)
        armed = self._deadlines.get(live.id)
        if armed is not None:
            if when is not None and armed.when <= when and not deferred:
                return
            armed.handle.cancel()
            del self._deadlines[live.id]
        if when is None:
            return
        loop = asyncio.get_running_loop()
        delay = STALL_GRACE_S if deferred else max(0.0, when - self.clock.now())
        handle = loop.call_at(loop.time() + delay, self._deadline_reached, live)
        self._deadlines[live.id] = _Deadline(handle, when, deferred)

    def _deadline_reached(self, live: LiveSession) -> None:
        armed = self._deadlines.pop(live.id, None)
        now = self.clock.now()
        if armed is not None and not armed.deferred and now - armed.when > STALL_GRACE_S:
            self._schedule(live, deferred=True)  # the loop was stalled: see STALL_GRACE_S
            return
        if live.closed:
            if live.session.closed_time is not None and (
                now - live.session.closed_time >= self.closed_retention
            ):
                del self._sessions[live.id]
                return
        else:
            try:
                live.handle_timer(self.governor.stalled_since)
            except Exception:
                live.log.exception("checking the session's timeouts failed; closing it")
                live.close(CloseReason.ERROR, "internal error checking timeouts")
        if live.id not in self._deadlines:
            self._schedule(live)
