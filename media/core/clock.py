"""The one clock Hark reads: wall time that never jumps.

Event timestamps must be wall time, but timeouts must not fire when NTP steps the system clock, so
the clock is anchored to wall time once and then advanced by the monotonic clock.
"""

from __future__ import annotations

import time


class Clock:
    def __init__(self) -> None:
        self._wall_anchor = time.time()
        self._mono_anchor = time.monotonic()

    def now(self) -> float:
        """Seconds since the epoch, monotonic."""
        return self._wall_anchor + (time.monotonic() - self._mono_anchor)
