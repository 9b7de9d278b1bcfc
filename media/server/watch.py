"""Watch streams: one subscriber's ordered queue of session events, and the ``Watch`` iterator
that WatchSession and the SSE endpoint read (snapshot or replay first, then live events, ``None``
for a heartbeat after each idle interval). WatchSessions reads ``media.server.event_feed``."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from media.core.events import SessionEvent, SessionState, StateChanged
from media.core.session import SessionSnapshot
from media.errors import SubscriberTooSlow

WATCHER_QUEUE_LIMIT: Final = 1024


@dataclass(frozen=True, slots=True)
class SnapshotItem:
    """A watch stream's snapshot message; ``resync`` when replay was impossible."""

    snapshot: SessionSnapshot
    resync: bool = False


WatchItem = SessionEvent | SnapshotItem


class _End:
    """Marks the end of a subscription."""


END: Final = _End()


def is_closing_event(event: SessionEvent) -> bool:
    payload = event.payload
    return isinstance(payload, StateChanged) and payload.state is SessionState.CLOSED


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


class Watch:
    """One watch stream: ``initial`` items first, then what ``subscription`` receives, with
    ``None`` standing for a heartbeat after every ``heartbeat_s`` idle seconds.

    It ends when the subscription finishes (shutdown), or, with ``ends_at_close``, after a
    ``CLOSED`` event; it raises ``SubscriberTooSlow`` for a watcher that fell behind. Use it as a
    context manager: leaving it calls ``release`` once (unsubscribe, metrics).
    """

    def __init__(
        self,
        initial: Iterable[WatchItem],
        subscription: Subscription | None,
        *,
        heartbeat_s: float,
        ends_at_close: bool,
        release: Callable[[], None],
    ) -> None:
        self._initial = deque(initial)
        self._subscription = subscription
        self._heartbeat_s = heartbeat_s
        self._ends_at_close = ends_at_close
        self._release: Callable[[], None] | None = release
        self._ended = subscription is None

    @property
    def delivered_revision(self) -> int:
        """The revision of the last live event handed out (0 before any)."""
        return 0 if self._subscription is None else self._subscription.delivered_revision

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        release, self._release = self._release, None
        self._ended = True
        if release is not None:
            release()

    def __aiter__(self) -> Watch:
        return self

    async def __anext__(self) -> WatchItem | None:
        if self._initial:
            return self._initial.popleft()
        if self._ended or self._subscription is None:
            raise StopAsyncIteration
        item = await self._subscription.get(self._heartbeat_s)
        if isinstance(item, _End):
            self._ended = True
            raise StopAsyncIteration
        if item is not None and self._ends_at_close and is_closing_event(item):
            self._ended = True
        return item
