"""Live sessions by id: creation and limits, timeouts, retention of closed sessions, and watchers.

Everything here runs on the event loop and never awaits between reading a session and subscribing
to it, so a watcher can neither miss nor see twice an event that fires while it is being set up.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import secrets
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Protocol

from av import AudioFrame

from media.audio.speech_pipeline import SpeechEvent, SpeechPipeline, SpeechSettings
from media.core.clock import Clock
from media.core.events import (
    CloseReason,
    EndReason,
    InterruptReason,
    PlaybackEvent,
    SessionEvent,
    SessionState,
    SpeechStarted,
    StateChanged,
)
from media.core.load_governor import LoadGovernor
from media.core.segmenter import SegmenterConfig
from media.core.session import Origin, Session, SessionSnapshot, Timeouts
from media.errors import (
    CapacityExceeded,
    Draining,
    RevisionOutOfRange,
    SessionClosed,
    SessionNotFound,
    SubscriberTooSlow,
)
from media.metrics import Metrics
from media.rtc.agent_voice import AgentVoice
from media.rtc.player import PlayerPeer, Source
from media.rtc.relay import PublisherRelay

logger = logging.getLogger(__name__)

REAP_INTERVAL_S: Final = 0.2
WATCHER_QUEUE_LIMIT: Final = 1024
OVERLOAD_RETRY_AFTER_S: Final = 5


class MediaHandle(Protocol):
    """What the registry needs of a session's media (its peer connection)."""

    async def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class SnapshotItem:
    """A watch stream's snapshot message; ``resync`` when replay was impossible."""

    snapshot: SessionSnapshot
    resync: bool = False


WatchItem = SessionEvent | SnapshotItem


class _End:
    """Marks the end of a subscription."""


END: Final = _End()


class Subscription:
    """One watcher's ordered queue of events."""

    def __init__(self, limit: int = WATCHER_QUEUE_LIMIT) -> None:
        self._queue: deque[SessionEvent] = deque()
        self._limit = limit
        self._wake = asyncio.Event()
        self._finished = False
        self._overflowed = False
        self.delivered_revision = 0

    def push(self, event: SessionEvent) -> None:
        if self._overflowed or self._finished:
            return
        if len(self._queue) >= self._limit:
            self._overflowed = True
        else:
            self._queue.append(event)
        self._wake.set()

    def finish(self) -> None:
        self._finished = True
        self._wake.set()

    async def get(self, timeout: float) -> SessionEvent | _End | None:
        """The next event; ``None`` after ``timeout`` idle seconds; ``END`` once finished."""
        while not self._queue:
            if self._overflowed:
                raise SubscriberTooSlow(
                    f"watcher fell more than {self._limit} events behind; reconnect with "
                    f"since_revision={self.delivered_revision} to resume"
                )
            if self._finished:
                return END
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout)
            except TimeoutError:
                return None
        event = self._queue.popleft()
        self.delivered_revision = event.revision
        return event


@dataclass(eq=False)
class Entry:
    """A session and what the server keeps beside it."""

    session: Session
    audio: SpeechPipeline
    voice: AgentVoice
    relay: PublisherRelay
    token: str | None = field(default=None, repr=False)
    media: MediaHandle | None = None
    etag: str = ""
    watchers: set[Subscription] = field(default_factory=set)
    players: dict[str, PlayerPeer] = field(default_factory=dict)


def new_session_id() -> str:
    """144 random bits, URL-safe."""
    return secrets.token_urlsafe(18)


def tokens_match(given: str | None, expected: str | None) -> bool:
    if given is None or expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


class Registry:
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
    ) -> None:
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
        self._entries: dict[str, Entry] = {}
        self._global_watchers: set[Subscription] = set()
        self._media_closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._draining = False

    # lifecycle

    def start(self) -> None:
        if self._reaper is None:
            self._reaper = asyncio.create_task(self._reap_forever(), name="hark-registry-reaper")

    def drain(self) -> None:
        """Take no new sessions from now on."""
        self._draining = True

    async def shutdown(self) -> None:
        """Close every session with SHUTDOWN, end every watcher, close all media."""
        self._draining = True
        for entry in list(self._entries.values()):
            self.close(entry.session.id, CloseReason.SHUTDOWN, "server shutting down")
        for sub in self._global_watchers:
            sub.finish()
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        while self._media_closing:
            await asyncio.gather(*self._media_closing, return_exceptions=True)

    # sessions

    @property
    def draining(self) -> bool:
        return self._draining

    def live_count(self) -> int:
        return sum(1 for e in self._entries.values() if not e.session.closed)

    def check_capacity(self) -> None:
        if self._draining:
            self.metrics.sessions_refused.labels("draining").inc()
            raise Draining("server is draining and takes no new sessions")
        live = self.live_count()
        if live >= self.max_sessions:
            self.metrics.sessions_refused.labels("max_sessions").inc()
            raise CapacityExceeded(
                f"at capacity: {live} live sessions (--max-sessions {self.max_sessions})",
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

    def create(
        self,
        origin: Origin,
        *,
        session_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        ttl: float | None = None,
        with_token: bool = False,
    ) -> Entry:
        self.check_capacity()
        sid = session_id or new_session_id()
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
        audio = SpeechPipeline(
            self.speech, lambda event: self._speech_event(sid, event), self.metrics
        )
        voice = AgentVoice(
            sid,
            lambda events: self._playback_events(sid, events),
            self.metrics,
            self.max_playback_queue_ms,
        )
        entry = Entry(
            session,
            audio,
            voice,
            PublisherRelay(self.metrics),
            token=secrets.token_urlsafe(24) if with_token else None,
        )
        self._entries[sid] = entry
        self.governor.admitted(self.clock.now())
        logger.info("session %s: created (%s)", sid, origin.name)
        self._publish(entry, session.events_after(0) or [])
        return entry

    def lookup(self, session_id: str) -> Entry:
        entry = self._entries.get(session_id)
        if entry is None:
            raise SessionNotFound(session_id)
        return entry

    def lookup_open(self, session_id: str) -> Entry:
        entry = self.lookup(session_id)
        session = entry.session
        if session.closed:
            assert session.close_reason is not None
            raise SessionClosed(session_id, session.close_reason.name, session.close_detail)
        return entry

    def entries(self) -> Iterable[Entry]:
        return self._entries.values()

    def attach_publisher(self, entry: Entry, media: MediaHandle, etag: str) -> None:
        events = entry.session.publisher_attached(self.clock.now())
        entry.media = media
        entry.etag = etag
        self._publish(entry, events)

    def transport_connected(self, session_id: str) -> None:
        entry = self._entries.get(session_id)
        if entry is not None:
            self._publish(entry, entry.session.transport_connected(self.clock.now()))

    def transport_failed(self, session_id: str, detail: str) -> None:
        self._close_if_open(session_id, CloseReason.ICE_FAILED, detail)

    def internal_error(self, session_id: str, detail: str) -> None:
        self._close_if_open(session_id, CloseReason.ERROR, detail)

    def _close_if_open(self, session_id: str, reason: CloseReason, detail: str) -> None:
        entry = self._entries.get(session_id)
        if entry is not None and not entry.session.closed:
            self.close(session_id, reason, detail)

    def media_received(self, session_id: str) -> None:
        entry = self._entries.get(session_id)
        if entry is not None:
            entry.session.media_received(self.clock.now())

    def audio_decoded(self, session_id: str, frame: AudioFrame) -> None:
        entry = self._entries.get(session_id)
        if entry is None or entry.session.closed:
            return
        self.metrics.frames_decoded.inc()
        events = entry.session.audio_decoded(self.clock.now())
        if events:
            self._publish(entry, events)
        entry.audio.push(frame)

    def opus_received(self, session_id: str, payload: bytes, timestamp: int) -> None:
        entry = self._entries.get(session_id)
        if entry is not None:
            entry.relay.forward(payload, timestamp)

    def rtp_stats(self, session_id: str, lost: int, jitter_s: float) -> None:
        if lost > 0:
            self.metrics.rtp_packets_lost.inc(lost)
        self.metrics.rtp_jitter.observe(jitter_s)

    def start_listening(
        self,
        session_id: str,
        segmenter: SegmenterConfig | None = None,
        aggressiveness: int | None = None,
    ) -> SessionSnapshot:
        """Listen (idempotent); the VAD overrides apply when listening starts."""
        entry = self.lookup(session_id)
        events = entry.session.set_listening(True, self.clock.now())
        if events:
            self._publish(entry, events)
            entry.audio.start(
                segmenter or self.speech.segmenter,
                self.speech.aggressiveness if aggressiveness is None else aggressiveness,
            )
        return entry.session.snapshot()

    def stop_listening(self, session_id: str) -> SessionSnapshot:
        entry = self.lookup(session_id)
        if not entry.session.closed:
            entry.audio.stop(EndReason.STOPPED)
        self._publish(entry, entry.session.set_listening(False, self.clock.now()))
        return entry.session.snapshot()

    def _speech_event(self, session_id: str, event: SpeechEvent) -> None:
        entry = self._entries.get(session_id)
        if entry is not None:
            self._publish(entry, entry.session.speech(event, self.clock.now()))
            if isinstance(event, SpeechStarted) and entry.session.listening:
                entry.voice.interrupt(InterruptReason.USER_SPEECH)

    def _playback_events(self, session_id: str, events: list[PlaybackEvent]) -> None:
        entry = self._entries.get(session_id)
        if entry is not None:
            self._publish(entry, entry.session.playback(events, self.clock.now()))

    # WHEP players

    def check_player_room(self, entry: Entry) -> None:
        if len(entry.players) >= self.max_players:
            raise CapacityExceeded(
                f"session {entry.session.id!r} has {len(entry.players)} WHEP players "
                f"(--max-players-per-session {self.max_players})",
                retry_after_s=5,
            )

    def add_player(self, entry: Entry, player: PlayerPeer) -> None:
        """Attach a negotiated player to its open session (the caller closes it if this raises)."""
        session = entry.session
        assert not session.closed
        self.check_player_room(entry)
        entry.players[player.id] = player
        if player.source is Source.AGENT:
            entry.voice.add_player(player.track)
        else:
            entry.relay.add_player(player.track)
        self.metrics.players.labels(player.source.value).inc()
        logger.info(
            "session %s: WHEP player %s (%s) joined", session.id, player.id, player.source.value
        )

    def remove_player(self, session_id: str, player_id: str, reason: str) -> None:
        entry = self._entries.get(session_id)
        player = entry.players.pop(player_id, None) if entry is not None else None
        if entry is None or player is None:
            return
        entry.voice.remove_player(player.track)
        entry.relay.remove_player(player.track)
        self.metrics.players.labels(player.source.value).dec()
        self.metrics.players_closed.labels(reason).inc()
        logger.info("session %s: WHEP player %s left (%s)", session_id, player_id, reason)
        self._own(player.close(), f"hark-close-player-{player_id}")

    def player_gone(self, player: PlayerPeer, reason: str) -> None:
        self.remove_player(player.session_id, player.id, reason)

    def close(self, session_id: str, reason: CloseReason, detail: str = "") -> SessionSnapshot:
        """Close the session (idempotent) and release its media."""
        entry = self.lookup(session_id)
        if not entry.session.closed:
            entry.audio.close()
            entry.voice.shut()
        events = entry.session.close(reason, detail, self.clock.now())
        if events:
            logger.info("session %s: closed %s %s", session_id, reason.name, detail)
            self._publish(entry, events)
            self._release_media(entry)
        return entry.session.snapshot()

    async def wait_ready(self, session_id: str) -> SessionSnapshot:
        """Wait until the session is READY; raise SessionClosed if it closes first."""
        entry = self.lookup(session_id)
        initial, sub = self.subscribe(session_id, 0)
        try:
            while entry.session.state is not SessionState.READY:
                if entry.session.closed or sub is None:
                    entry_session = entry.session
                    assert entry_session.close_reason is not None
                    raise SessionClosed(
                        session_id, entry_session.close_reason.name, entry_session.close_detail
                    )
                await sub.get(timeout=3600)
            return entry.session.snapshot()
        finally:
            if sub is not None:
                self.unsubscribe(session_id, sub)

    # watchers

    def subscribe(
        self, session_id: str, since_revision: int
    ) -> tuple[list[WatchItem], Subscription | None]:
        """What to send first, and the subscription for what follows (None if already closed)."""
        entry = self.lookup(session_id)
        session = entry.session
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
        if session.closed:
            return initial, None
        sub = Subscription()
        sub.delivered_revision = session.revision
        entry.watchers.add(sub)
        return initial, sub

    def unsubscribe(self, session_id: str, sub: Subscription) -> None:
        entry = self._entries.get(session_id)
        if entry is not None:
            entry.watchers.discard(sub)

    def subscribe_all(self, include_closed: bool) -> tuple[list[WatchItem], Subscription]:
        self._check_watchers()
        initial: list[WatchItem] = [
            SnapshotItem(e.session.snapshot())
            for e in self._entries.values()
            if include_closed or not e.session.closed
        ]
        sub = Subscription()
        if self._draining and not self._entries:
            sub.finish()
        self._global_watchers.add(sub)
        return initial, sub

    def unsubscribe_all(self, sub: Subscription) -> None:
        self._global_watchers.discard(sub)

    def watcher_count(self) -> int:
        return len(self._global_watchers) + sum(len(e.watchers) for e in self._entries.values())

    def _check_watchers(self) -> None:
        count = self.watcher_count()
        if count >= self.max_watchers:
            raise CapacityExceeded(
                f"at capacity: {count} watch streams (--max-watchers {self.max_watchers})"
            )

    # internals

    def _publish(self, entry: Entry, events: Iterable[SessionEvent]) -> None:
        for event in events:
            for sub in entry.watchers:
                sub.push(event)
            for sub in self._global_watchers:
                sub.push(event)
            self.metrics.observe_event(event, entry.session)
            for observe in self.observers:
                observe(event, entry.session)
            if isinstance(event.payload, StateChanged):
                logger.debug(
                    "session %s: r%d %s", event.session_id, event.revision, event.payload.state.name
                )

    def _release_media(self, entry: Entry) -> None:
        media, entry.media = entry.media, None
        if media is not None:
            self._own(media.close(), f"hark-close-media-{entry.session.id}")
        for player_id in list(entry.players):
            self.remove_player(entry.session.id, player_id, "SESSION_CLOSED")
        entry.relay.close()
        self._own(entry.voice.close(), f"hark-close-voice-{entry.session.id}")

    def _own(self, closing: Coroutine[None, None, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(closing, name=name)
        self._media_closing.add(task)
        task.add_done_callback(self._media_closed)

    def _media_closed(self, task: asyncio.Task[None]) -> None:
        self._media_closing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.warning("closing media failed", exc_info=task.exception())

    def _reap(self) -> None:
        now = self.clock.now()
        for sid, entry in list(self._entries.items()):
            session = entry.session
            if session.closed:
                assert session.closed_time is not None
                if now - session.closed_time >= self.closed_retention:
                    del self._entries[sid]
                continue
            due = session.due_timeout(now, self.governor.stalled_since)
            if due is not None:
                self.close(sid, *due)

    async def _reap_forever(self) -> None:
        loop = asyncio.get_running_loop()
        deferred = False
        while True:
            due = loop.time() + REAP_INTERVAL_S
            await asyncio.sleep(REAP_INTERVAL_S)
            if loop.time() - due > REAP_INTERVAL_S and not deferred:
                # Woken by the end of a stall: let the media and the lag sample queued behind it
                # in first, so that the stall is not taken for silent publishers.
                deferred = True
                continue
            deferred = False
            try:
                self._reap()
            except Exception:
                logger.exception("registry reaper failed; continuing")
