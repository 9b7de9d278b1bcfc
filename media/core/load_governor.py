"""The node's own load, from event-loop lag samples: overloaded or not, and how long the loop was
stalled. Pure: samples and ``now`` in, answers out; the sampler that feeds it lives in the app.

A sample is how late a periodic timer fired: a sample taken at ``t`` with lag ``L`` says the loop
could not run anything new from ``t - L`` to ``t``. The node is overloaded when the mean lag of the
last ``window_s`` exceeds ``max_lag_s``, and stays so until it falls below half of that
(hysteresis, so admission does not flap at the edge).

The lag shows a new session's cost only after it: its connection, then the listening and
StreamAudio work a backend starts once it is READY, then the averaging window. Sessions arriving
faster than that would all be admitted on the strength of a lag that does not count them yet. So
while the node is *warm* (mean lag above half the limit) ``may_admit`` allows one new session
per ``settle_s`` after the last one ``admitted``, so the lag has time to show each before the next.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Final

DEFAULT_WINDOW_S: Final = 2.0
DEFAULT_HISTORY_S: Final = 30.0
DEFAULT_SETTLE_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class LoadState:
    overloaded: bool
    mean_lag_s: float


class LoadGovernor:
    def __init__(
        self,
        max_lag_s: float,
        *,
        window_s: float = DEFAULT_WINDOW_S,
        history_s: float = DEFAULT_HISTORY_S,
        settle_s: float = DEFAULT_SETTLE_S,
    ) -> None:
        """``max_lag_s`` 0 turns admission by load off (lag is still recorded)."""
        self.max_lag_s = max_lag_s
        self.window_s = window_s
        self.settle_s = settle_s
        self._last_admitted: float | None = None
        self._history_s = max(history_s, window_s)
        self._samples: deque[tuple[float, float]] = deque()
        self._first: float | None = None
        self._overloaded = False

    @property
    def overloaded(self) -> bool:
        return self._overloaded

    def observe(self, now: float, lag_s: float) -> bool:
        """Record a lag sample taken at ``now``; True when this changed ``overloaded``."""
        if self._first is None:
            self._first = now
        self._samples.append((now, max(0.0, lag_s)))
        while self._samples and self._samples[0][0] < now - self._history_s:
            self._samples.popleft()
        was = self._overloaded
        self._overloaded = self._judge(now)
        return was != self._overloaded

    def may_admit(self, now: float) -> bool:
        """Whether a new session may start at ``now`` (``admitted`` then counts it)."""
        return self.max_lag_s <= 0 or not (self._overloaded or self._settling(now))

    def admitted(self, now: float) -> None:
        """A new session started at ``now``: while warm, the next waits ``settle_s``."""
        self._last_admitted = now

    def warm(self, now: float) -> bool:
        """Lag above half the limit: new sessions are paced, one per ``settle_s``.

        Not before a whole window was seen: a node's own start-up work shows in its first lag
        samples, and its first sessions must not be paced for it.
        """
        if self.max_lag_s <= 0 or self._first is None or now - self._first < self.window_s:
            return False
        return self.mean_lag(now) > self.max_lag_s / 2

    def _settling(self, now: float) -> bool:
        last = self._last_admitted
        return last is not None and now - last < self.settle_s and self.warm(now)

    def mean_lag(self, now: float) -> float:
        """Mean lag of the samples taken in the last ``window_s``."""
        recent = [lag for time, lag in self._samples if time >= now - self.window_s]
        return sum(recent) / len(recent) if recent else 0.0

    def stalled_since(self, start: float) -> float:
        """Seconds after ``start`` during which the loop was stalled (as far as history reaches)."""
        stalled = 0.0
        for time, lag in reversed(self._samples):
            if time <= start:
                break
            stalled += min(lag, time - start)
        return stalled

    def state(self, now: float) -> LoadState:
        return LoadState(self._overloaded, self.mean_lag(now))

    def _judge(self, now: float) -> bool:
        if self.max_lag_s <= 0:
            return False
        assert self._first is not None
        newest_lag = self._samples[-1][1]
        if now - self._first < self.window_s and newest_lag < self.window_s:
            return False  # too little seen yet, and no stall as long as the window itself
        mean = self.mean_lag(now)
        if self._overloaded:
            return mean >= self.max_lag_s / 2
        return mean > self.max_lag_s
