"""The session state machine and its event log: pure, no asyncio, time passed in as ``now``.

``NEW → CONNECTING → CONNECTED → READY → CLOSED``; transitions only move forward and ``CLOSED`` is
reachable from every state. Every change is a :class:`SessionEvent` whose revision is one more than
the previous event's, so a watcher can tell exactly what it has missed.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from media.core.events import (
    CloseReason,
    EventPayload,
    ListeningChanged,
    PlaybackEvent,
    SessionEvent,
    SessionState,
    SpeechEnded,
    SpeechStarted,
    StateChanged,
)
from media.errors import NotReady, PublisherExists, SessionClosed


class Origin(enum.IntEnum):
    WHIP = 1
    API = 2


@dataclass(frozen=True, slots=True)
class SessionSnapshot:
    id: str
    state: SessionState
    listening: bool
    revision: int
    origin: Origin
    created_time: float
    ready_time: float | None
    closed_time: float | None
    close_reason: CloseReason | None
    close_detail: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds; see ``hark serve --help`` for what each one ends."""

    ready: float = 10.0
    media: float = 5.0
    session_ttl: float = 60.0


class Session:
    """One publisher's session. Methods return the events they caused, oldest first."""

    def __init__(
        self,
        session_id: str,
        origin: Origin,
        now: float,
        *,
        timeouts: Timeouts,
        metadata: Mapping[str, str] | None = None,
        retain_events: int = 256,
    ) -> None:
        self.id = session_id
        self.origin = origin
        self.metadata: Mapping[str, str] = MappingProxyType(dict(metadata or {}))
        self.timeouts = timeouts
        self.state = SessionState.NEW
        self.listening = False
        self.revision = 0
        self.created_time = now
        self.ready_time: float | None = None
        self.closed_time: float | None = None
        self.close_reason: CloseReason | None = None
        self.close_detail = ""
        self._connecting_time: float | None = None
        self._last_media_time: float | None = None
        self._stall_credit = 0.0
        self._log: deque[SessionEvent] = deque(maxlen=retain_events)
        self._emit(now, StateChanged(SessionState.NEW, None))

    @property
    def connecting_time(self) -> float | None:
        """When the publisher's offer was answered."""
        return self._connecting_time

    @property
    def closed(self) -> bool:
        return self.state is SessionState.CLOSED

    def publisher_attached(self, now: float) -> list[SessionEvent]:
        """An offer was accepted and answered: ``NEW → CONNECTING``."""
        self._check_open()
        if self.state is not SessionState.NEW:
            raise PublisherExists(
                f"session {self.id!r} already has a publisher ({self.state.name})"
            )
        self._connecting_time = now
        return [self._move(now, SessionState.CONNECTING)]

    def transport_connected(self, now: float) -> list[SessionEvent]:
        """ICE and DTLS are up. Late or repeated reports change nothing."""
        if self.state is not SessionState.CONNECTING:
            return []
        return [self._move(now, SessionState.CONNECTED)]

    def media_received(self, now: float) -> None:
        """RTP arrived; keeps the session from ``MEDIA_TIMEOUT``."""
        self._media_arrived(now)

    def audio_decoded(self, now: float) -> list[SessionEvent]:
        """An audio frame was decoded; the first one makes the session READY."""
        self._media_arrived(now)
        if self.state in (SessionState.READY, SessionState.CLOSED, SessionState.NEW):
            return []
        events = self.transport_connected(now)
        self.ready_time = now
        events.append(self._move(now, SessionState.READY))
        return events

    def set_listening(self, listening: bool, now: float) -> list[SessionEvent]:
        """Turn listening on or off. Idempotent; turning it on needs a READY session."""
        self._check_open()
        if listening and self.state is not SessionState.READY:
            raise NotReady(self.id, self.state.name)
        if listening == self.listening:
            return []
        self.listening = listening
        return [self._emit(now, ListeningChanged(listening))]

    def speech(self, payload: SpeechStarted | SpeechEnded, now: float) -> list[SessionEvent]:
        """Record a speech event from the session's listening pipeline."""
        if self.closed:
            return []
        return [self._emit(now, payload)]

    def playback(self, payloads: list[PlaybackEvent], now: float) -> list[SessionEvent]:
        """Record what happened to the agent's playbacks (the last ones may precede CLOSED)."""
        if self.closed:
            return []
        return [self._emit(now, payload) for payload in payloads]

    def close(self, reason: CloseReason, detail: str, now: float) -> list[SessionEvent]:
        """Close for ``reason``. Closing a closed session changes nothing."""
        if self.closed:
            return []
        previous = self.state
        self.state = SessionState.CLOSED
        self.listening = False
        self.closed_time = now
        self.close_reason = reason
        self.close_detail = detail
        return [self._emit(now, StateChanged(SessionState.CLOSED, previous, reason, detail))]

    def next_deadline(self) -> float | None:
        """When a timeout may next run out (ask ``handle_timer`` then); ``None`` once closed."""
        t = self.timeouts
        if self.state is SessionState.NEW:
            return self.created_time + t.session_ttl
        if self.state in (SessionState.CONNECTING, SessionState.CONNECTED):
            assert self._connecting_time is not None
            return self._connecting_time + t.ready
        if self.state is SessionState.READY:
            assert self._last_media_time is not None
            return self._last_media_time + t.media + self._stall_credit
        return None

    def handle_timer(
        self, now: float, loop_stalled: Callable[[float], float] | None = None
    ) -> list[SessionEvent]:
        """Close the session if a timeout has run out at ``now`` (see ``due_timeout``)."""
        due = self.due_timeout(now, loop_stalled)
        return [] if due is None else self.close(*due, now)

    def due_timeout(
        self, now: float, loop_stalled: Callable[[float], float] | None = None
    ) -> tuple[CloseReason, str] | None:
        """The timeout that has run out at ``now``, with a detail for people, if any.

        ``loop_stalled(since)`` says how long the server itself was stalled after ``since``; that
        time does not count towards ``MEDIA_TIMEOUT``, since the media may have been waiting, and
        it moves ``next_deadline`` on by as much until media arrives again.
        """
        t = self.timeouts
        if self.state is SessionState.NEW and now - self.created_time >= t.session_ttl:
            return CloseReason.EXPIRED, f"no publisher within {t.session_ttl:g} s"
        if self.state in (SessionState.CONNECTING, SessionState.CONNECTED):
            assert self._connecting_time is not None
            if now - self._connecting_time >= t.ready:
                return (
                    CloseReason.READY_TIMEOUT,
                    f"no audio decoded within {t.ready:g} s (stuck in {self.state.name})",
                )
        if self.state is SessionState.READY:
            assert self._last_media_time is not None
            silent = now - self._last_media_time
            if silent >= t.media and loop_stalled is not None:
                self._stall_credit = loop_stalled(self._last_media_time)
                silent -= self._stall_credit
            if silent >= t.media:
                return CloseReason.MEDIA_TIMEOUT, f"no RTP received for {t.media:g} s"
        return None

    def events_after(self, revision: int) -> list[SessionEvent] | None:
        """Every event after ``revision``, or ``None`` when some of them are no longer retained."""
        if revision >= self.revision:
            return []
        if not self._log or self._log[0].revision > revision + 1:
            return None
        skip = revision + 1 - self._log[0].revision
        return list(self._log)[skip:]

    def snapshot(self) -> SessionSnapshot:
        return SessionSnapshot(
            id=self.id,
            state=self.state,
            listening=self.listening,
            revision=self.revision,
            origin=self.origin,
            created_time=self.created_time,
            ready_time=self.ready_time,
            closed_time=self.closed_time,
            close_reason=self.close_reason,
            close_detail=self.close_detail,
            metadata=self.metadata,
        )

    def _media_arrived(self, now: float) -> None:
        self._last_media_time = now
        self._stall_credit = 0.0

    def _check_open(self) -> None:
        if self.closed:
            assert self.close_reason is not None
            raise SessionClosed(self.id, self.close_reason.name, self.close_detail)

    def _move(self, now: float, state: SessionState) -> SessionEvent:
        assert state > self.state, f"{self.state.name} → {state.name} moves backwards"
        previous = self.state
        self.state = state
        return self._emit(now, StateChanged(state, previous))

    def _emit(self, now: float, payload: EventPayload) -> SessionEvent:
        self.revision += 1
        event = SessionEvent(self.id, self.revision, now, payload)
        self._log.append(event)
        return event
