"""RTP timestamps as a count that does not wrap. Pure."""

from __future__ import annotations

from typing import Final

RTP_WRAP: Final = 1 << 32
_HALF: Final = 1 << 31
REORDER_WINDOW: Final = 24000  # 0.5 s at Opus' 48 kHz: later than this is not a late packet


class TimestampUnwrapper:
    """32-bit RTP timestamps → a count that does not wrap, 0 at the first packet. Pure.

    A late (reordered) packet unwraps to a value before its successor's; crossing 2**32 is no jump.
    A step back of more than ``reorder_window`` is no late packet but a discontinuity (a sender
    that restarted its clock): the count goes on from where it was, one step on, and never jumps.
    """

    def __init__(self, reorder_window: int = REORDER_WINDOW) -> None:
        self._reorder_window = reorder_window
        self._last: int | None = None
        self._extended = 0
        self._step = 0

    def unwrap(self, timestamp: int) -> int:
        if self._last is None:
            self._last = timestamp
            return 0
        delta = (timestamp - self._last) % RTP_WRAP
        if delta >= _HALF:
            delta -= RTP_WRAP
        if delta < -self._reorder_window:
            return self._restart_at(timestamp)
        value = self._extended + delta
        if delta > 0:
            self._last = timestamp
            self._extended = value
            self._step = delta
        return value

    def _restart_at(self, timestamp: int) -> int:
        self._last = timestamp
        self._extended += self._step
        return self._extended
